"""Ctrl-C, SIGTERM and SIGHUP mid-way through ``queue requeue``, ``queue drain`` and ``queue
restore``, end to end: each runs as a real process on a long list (100,000 messages for a
requeue, 30,000 for the slower drain and restore; small move batches, so the run lasts long
enough to be stopped), gets the signal once it has moved some, and must exit 130
saying exactly how many messages it moved for good and where: the counts in its message and in
the ``--json`` error document's ``done`` equal what Redis (and the backup file) hold. The rerun
its hint names then completes the operation, nothing twice."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis_bytes as rb
from faultrelay import expired_so_far, left_in_redis, signalled_twice
from helpers import _EMPTY_DIR, QUEUE_BATCH_LAUNCHER, cli_env, outcomes, read_as_restore, reap

from esctl import errors, queues, servers
from esctl.interrupts import HeldInterrupts
from esctl.queues import scripts

N = 100_000
"""Messages in the list a requeue is stopped in."""
SHORTER = 30_000
"""Messages in the list a drain or a restore is stopped in (each drain batch is fsynced)."""
BATCH = 20
"""Messages per script call (the commands' default is 1,000): 5,000 batches per full run."""
SUB = "Learning.ReportingService.Worker-Interrupt"
TYPE = "ItemScoreUpdated"
TIMEOUT_S = 60.0
STOPS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
IDS = ["SIGINT", "SIGTERM", "SIGHUP"]


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """Whatever happens in a test, no esctl process it started outlives it."""
    yield
    reap(_started)


def payload(number: int) -> bytes:
    return orjson.dumps(
        {
            "$type": f"Learning.ScoringService.Domain.Events.{TYPE}, Learning.ScoringService.Domain",
            "Id": f"item-{number}",
            "TimeStamp": "2025-03-01T12:00:00.0000001+00:00",
            "Version": 1,
            "AggregateType": "ItemScore",
        }
    )


ORIGINAL = [payload(i) for i in range(N)]
"""The list, head to tail."""


def fill(client: redis.Redis, key: str, n: int = N) -> None:
    """``key`` holds the first ``n`` messages of ORIGINAL."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(key)
    for i in range(0, n, 10_000):
        pipe.rpush(key, *ORIGINAL[i : min(n, i + 10_000)])
    pipe.execute()


def start(
    url: str, env: str, *args: str, batch: int = BATCH, wrapper: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """``esctl queue ARGS`` in batches of ``batch``, run by ``wrapper`` (``nohup``) if given."""
    options = ("--redis-url", url, "--env", env, "--yes", "--json")
    launcher = [sys.executable, "-c", QUEUE_BATCH_LAUNCHER, str(batch)]
    proc = subprocess.Popen(
        [*wrapper, *launcher, "queue", *args, *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=_EMPTY_DIR,  # esctl from PYTHONPATH, not from the folder pytest runs in
        start_new_session=True,  # signalled by its pid alone
    )
    _started.append(proc)
    return proc


def stop_when(
    proc: subprocess.Popen[bytes], stop: signal.Signals, moved: Callable[[], bool]
) -> tuple[int, dict[str, Any], str]:
    """Signal ``proc`` (its own pid only) once ``moved()`` holds; its exit code, the --json
    error document and stderr."""
    deadline = time.monotonic() + TIMEOUT_S
    while not moved():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "it never started moving"
        time.sleep(0.002)
    proc.send_signal(stop)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    text = err.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    document = json.loads(out) if out.strip() else {}
    return proc.returncode, document, text


def said(stop: signal.Signals) -> str:
    """How the message of a run stopped by ``stop`` begins."""
    return {
        signal.SIGTERM: "stopped by SIGTERM",
        signal.SIGHUP: re.escape("stopped by SIGHUP (the terminal hung up)"),
    }.get(stop, "interrupted")


def number(text: str) -> int:
    return int(text.replace(",", ""))


def interrupted_error(document: dict[str, Any], message: str) -> dict[str, Any]:
    """The error of an interrupted run's --json document: its message is the one on stderr."""
    assert document["exit_code"] == 130, document
    error = document["error"]
    assert error["kind"] == "interrupted", document
    assert error["message"] in message, (document, message)
    assert all(type(n) is int for n in error["done"].values()), document
    return error


def run(url: str, env: str, *args: str) -> dict[str, Any]:
    """A command run to its end (exit 0), in batches of the usual size; its summary."""
    proc = start(url, env, *args, batch=scripts.MOVE_BATCH)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def notified(pubsub: Any) -> int:
    """Notifications ``pubsub`` got (waiting a moment for the first)."""
    count = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            count += 1
        elif count:
            break
    return count


@pytest.mark.parametrize("stop", STOPS, ids=IDS)
def test_an_interrupted_requeue_says_what_it_requeued(
    stop: signal.Signals, redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    ref = queues.QueueRef(SUB, env_name, TYPE)
    source, destination = ref.key("processing"), ref.key("published")
    redis_client.sadd(f"Subscribers:{{{env_name}:{TYPE}}}", SUB)
    fill(redis_client, source)
    notifications = redis_client.pubsub(ignore_subscribe_messages=True)
    notifications.subscribe(ref.channel)
    proc = start(redis_test_url, env_name, "requeue", SUB, TYPE, "--from", "processing")
    code, document, err = stop_when(proc, stop, lambda: redis_client.llen(destination) > 0)
    assert code == 130, err

    requeued = redis_client.llen(destination)
    assert 0 < requeued < N and redis_client.llen(source) == N - requeued
    found = re.search(
        rf"{said(stop)}; ([\d,]+) messages? requeued from (\S+) to (\S+) before it stopped; "
        r"the other ([\d,]+) selected messages were not moved",
        err,
    )
    assert found is not None, err
    assert (number(found[1]), found[2], found[3]) == (requeued, source, destination), err
    assert number(found[4]) == N - requeued, err
    assert "rerun the same command to requeue the rest" in err, err
    error = interrupted_error(document, err)
    assert error["done"] == {"requeued": requeued, "gone": 0}, error
    # the subscribers were told of what moved (the one PUBLISH, sent on the way out)
    assert notified(notifications) == 1

    summary = run(redis_test_url, env_name, "requeue", SUB, TYPE, "--from", "processing")
    assert (summary["requeued"], summary["gone"], summary["failed"]) == (N - requeued, 0, 0)
    assert not redis_client.exists(source)
    assert rb.lrange(redis_client, destination) == ORIGINAL  # each once, in order


def test_a_requeue_started_with_sighup_ignored_goes_on_after_one(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    """``nohup esctl …`` (or any parent that leaves SIGHUP ignored): the command was meant to
    outlive its terminal, so a SIGHUP mid-way changes nothing; it requeues the whole list."""
    ref = queues.QueueRef(SUB, env_name, TYPE)
    source, destination = ref.key("processing"), ref.key("published")
    fill(redis_client, source)
    requeue = ("requeue", SUB, TYPE, "--from", "processing")
    proc = start(redis_test_url, env_name, *requeue, wrapper=("nohup",))
    deadline = time.monotonic() + TIMEOUT_S
    while not redis_client.llen(destination):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "it never started moving"
        time.sleep(0.002)
    proc.send_signal(signal.SIGHUP)
    assert redis_client.llen(destination) < N  # it came mid-way
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["requeued"] == N
    assert rb.lrange(redis_client, destination) == ORIGINAL


def removed_in(path: Path) -> int:
    """Records the backup file marks removed."""
    marked = outcomes(*read_as_restore(path))
    return sum(1 for outcome in marked.values() if outcome == "removed")


@pytest.mark.parametrize("stop", STOPS, ids=IDS)
def test_an_interrupted_drain_says_what_it_drained_into_its_backup_file(
    stop: signal.Signals,
    redis_client: redis.Redis,
    redis_test_url: str,
    env_name: str,
    tmp_path: Path,
) -> None:
    ref = queues.QueueRef(SUB, env_name, TYPE)
    key = ref.key("dead")
    redis_client.sadd(f"Subscribers:{{{env_name}:{TYPE}}}", SUB)
    fill(redis_client, key, SHORTER)
    path = tmp_path / "dead.jsonl.zst"
    drain = ("drain", SUB, TYPE, "--list", "dead")
    proc = start(redis_test_url, env_name, *drain, "--to-file", str(path))
    code, document, err = stop_when(proc, stop, lambda: redis_client.llen(key) < SHORTER)
    assert code == 130, err

    drained = SHORTER - redis_client.llen(key)
    assert 0 < drained < SHORTER
    assert removed_in(path) == drained  # the file marks every batch that ran, no more
    found = re.search(
        rf"{said(stop)}; ([\d,]+) messages? drained from (\S+) before it stopped: backed up in "
        r"(\S+) and removed from Redis; the other ([\d,]+) selected messages were not removed",
        err,
    )
    assert found is not None, err
    assert (number(found[1]), found[2], found[3]) == (drained, key, str(path)), err
    assert number(found[4]) == SHORTER - drained, err
    assert "rerun with a new --to-file to drain the rest" in err, err
    error = interrupted_error(document, err)
    assert error["done"] == {"drained": drained, "gone": 0}, error

    # as the hint says: the same --to-file is refused, a new one drains the rest
    proc = start(redis_test_url, env_name, *drain, "--to-file", str(path))
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 2 and "already exists" in json.loads(out)["error"]["message"]
    rest = tmp_path / "rest.jsonl.zst"
    assert (
        run(redis_test_url, env_name, *drain, "--to-file", str(rest))["drained"]
        == SHORTER - drained
    )
    assert not redis_client.exists(key)
    # and the interrupted run's file puts back exactly what it drained
    assert run(redis_test_url, env_name, "restore", str(path))["restored"] == drained
    assert run(redis_test_url, env_name, "restore", str(rest))["restored"] == SHORTER - drained
    assert rb.lrange(redis_client, key) == ORIGINAL[:SHORTER]


def drained_to_restore(
    client: redis.Redis, ref: queues.QueueRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str]:
    """A subscribed dead-letter list of SHORTER messages drained whole (in large batches) to
    a backup file, for a restore to put back: the file and the restore's progress key."""
    client.sadd(f"Subscribers:{{{ref.env}:{ref.event_type}}}", ref.subscriber)
    fill(client, ref.key("dead"), SHORTER)
    path = tmp_path / "dead.jsonl.zst"
    with monkeypatch.context() as patched:
        patched.setattr(scripts, "MOVE_BATCH", 10_000)
        assert queues.drain(client, ref, queues.DrainOptions(to_file=path)).drained == SHORTER
    return path, ref.restore_progress_key("dead", read_as_restore(path)[0].backup_id)


@pytest.mark.parametrize("stop", STOPS, ids=IDS)
def test_an_interrupted_restore_says_what_it_restored_and_the_rerun_skips_it(
    stop: signal.Signals,
    redis_client: redis.Redis,
    redis_test_url: str,
    env_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = queues.QueueRef(SUB, env_name, TYPE)
    key = ref.key("dead")
    path, progress_key = drained_to_restore(redis_client, ref, tmp_path, monkeypatch)

    proc = start(redis_test_url, env_name, "restore", str(path))
    code, document, err = stop_when(proc, stop, lambda: redis_client.llen(key) > 0)
    assert code == 130, err

    restored = redis_client.llen(key)
    assert 0 < restored < SHORTER and int(redis_client.get(progress_key) or 0) == restored
    found = re.search(
        rf"{said(stop)}; ([\d,]+) messages? of (\S+) restored to (\S+) before it stopped; "
        r"the other ([\d,]+) were not restored",
        err,
    )
    assert found is not None, err
    assert (number(found[1]), found[2], found[3]) == (restored, str(path), key), err
    assert number(found[4]) == SHORTER - restored, err
    assert "rerun the same restore to continue" in err, err
    error = interrupted_error(document, err)
    assert error["done"] == {"restored": restored}, error

    summary = run(redis_test_url, env_name, "restore", str(path))
    assert (summary["restored"], summary["already_restored"]) == (SHORTER - restored, restored)
    assert rb.lrange(redis_client, key) == ORIGINAL[:SHORTER]


# --- stopped before anything moved ------------------------------------------------------------


def interrupt(seconds: float) -> None:
    """A Ctrl-C during the --grace wait."""
    raise KeyboardInterrupt


def test_a_requeue_or_drain_interrupted_while_selecting_says_nothing_moved(
    redis_client: redis.Redis, env_name: str, tmp_path: Path
) -> None:
    ref = queues.QueueRef(SUB, env_name, TYPE)
    redis_client.sadd(f"Subscribers:{{{env_name}:{TYPE}}}", SUB)
    redis_client.rpush(ref.key("dead"), *ORIGINAL[:10])
    selection = queues.Selection(grace=timedelta(minutes=1))
    with pytest.raises(errors.Interrupted) as requeue:
        queues.requeue(
            redis_client,
            ref,
            queues.RequeueOptions(source="dead", selection=selection),
            queues.Hooks(sleep=interrupt),
        )
    assert requeue.value.done == {"requeued": 0, "gone": 0}
    assert requeue.value.state == (
        f"nothing was requeued from {ref.key('dead')} (it stopped while selecting messages)"
    )
    path = tmp_path / "dead.jsonl.zst"
    with pytest.raises(errors.Interrupted) as drain:
        queues.drain(
            redis_client,
            ref,
            queues.DrainOptions(to_file=path, selection=selection),
            queues.Hooks(sleep=interrupt),
        )
    assert drain.value.done == {"drained": 0, "gone": 0}
    assert drain.value.state.startswith(f"nothing was drained from {ref.key('dead')}")
    assert not path.exists() and redis_client.llen(ref.key("dead")) == 10
    assert not redis_client.exists(ref.lock_key)  # given back


def test_a_ctrl_c_as_a_drain_batch_is_let_go_finds_it_counted(
    redis_client: redis.Redis, env_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal comes the moment Ctrl-C is no longer held after a batch ran (in the CI run
    that found it, 'nothing was drained' of a list a batch had left): the batch is counted
    inside the hold, so what it says is what Redis lost."""
    ref = queues.QueueRef(SUB, env_name, TYPE)
    key = ref.key("dead")
    fill(redis_client, key, 100)
    monkeypatch.setattr(scripts, "MOVE_BATCH", 10)
    real = HeldInterrupts.holding
    blocks: list[int] = []

    @contextlib.contextmanager
    def let_go_into_a_ctrl_c(self: HeldInterrupts) -> Iterator[None]:
        with real(self):
            yield
        blocks.append(len(blocks))
        if len(blocks) == 3:
            raise KeyboardInterrupt  # as the signal does, right after the handler is back

    monkeypatch.setattr(HeldInterrupts, "holding", let_go_into_a_ctrl_c)
    path = tmp_path / "dead.jsonl.zst"
    with pytest.raises(errors.Interrupted) as stopped:
        queues.drain(redis_client, ref, queues.DrainOptions(to_file=path))
    drained = 100 - redis_client.llen(key)
    assert drained == 30
    assert stopped.value.done == {"drained": drained, "gone": 0}
    assert removed_in(path) == drained


# --- a second signal while Redis does not answer ------------------------------------------------

PAUSE_MS = 6_000
"""How long Redis holds every write (CLIENT PAUSE … WRITE) when a run is signalled twice: the
run must have exited well before it ends."""
PROMPT_S = 3.0
"""How soon after the second signal it must have exited (its lock's release is waited for
about a second)."""


def stop_twice(
    proc: subprocess.Popen[bytes],
    admin: redis.Redis,
    signals: tuple[signal.Signals, signal.Signals],
    moved: Callable[[], bool],
) -> tuple[int, dict[str, Any], str]:
    """Once ``moved()`` holds, make Redis hold every write (a batch then waits for its answer),
    signal ``proc`` (its own pid only) twice, and check it exits promptly, while Redis still
    holds the writes; then let Redis answer again. Its exit code, --json error document and
    stderr (words joined by single spaces)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not moved():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "it never started moving"
        time.sleep(0.002)
    admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
    try:
        time.sleep(0.3)  # its batch in hand waits for Redis's answer
        proc.send_signal(signals[0])
        time.sleep(0.3)
        assert proc.poll() is None, "the first signal did not wait for the batch in hand"
        proc.send_signal(signals[1])
        signalled = time.monotonic()
        out, err = proc.communicate(timeout=TIMEOUT_S)
        took = time.monotonic() - signalled
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    text = " ".join(err.decode("utf-8", "replace").split())
    assert "Traceback" not in text, text
    assert took < PROMPT_S, f"it waited {took:.1f} s for Redis after the second signal: {text}"
    document = json.loads(out) if out.strip() else {}
    return proc.returncode, document, text


def said_by(signals: tuple[signal.Signals, ...]) -> str:
    return "stopped by SIGTERM" if signal.SIGTERM in signals else "interrupted"


UNANSWERED = (
    "is not known (a second signal stopped the wait for Redis's answer"  # (the words after vary)
)


def check_the_lock_was_left(
    client: redis.Redis, ref: queues.QueueRef, message: str, error: dict[str, Any]
) -> None:
    """Redis never answered the release of the queue lock (it still held every write): the
    hint says so, and the lock is there, to expire on its own. The test then deletes it, as
    its expiry would, for the rerun."""
    assert (
        f"Redis did not answer the release of the queue lock {ref.lock_key}: it expires 30 s "
        "after its last renewal, and a rerun before then exits 75" in error["hint"]
    ), error
    assert error["hint"] in message
    assert client.exists(ref.lock_key)
    client.delete(ref.lock_key)


def test_a_second_signal_stops_a_requeue_that_waits_on_redis_and_says_what_is_in_doubt(
    fresh_redis: servers.LocalRedis, env_name: str
) -> None:
    """Twice SIGINT while the requeue's batches in flight wait for a Redis that does not answer:
    it exits at once, counting what was answered and saying how many messages were sent in
    batches whose answers it did not read; each batch is atomic, so the lists hold at least
    the ones counted, at most those and the ones in doubt, each message once."""
    client = redis.Redis.from_url(fresh_redis.url)
    admin = redis.Redis.from_url(fresh_redis.url)
    ref = queues.QueueRef(SUB, env_name, TYPE)
    source, destination = ref.key("processing"), ref.key("published")
    client.sadd(f"Subscribers:{{{env_name}:{TYPE}}}", SUB)
    fill(client, source)
    signals = (signal.SIGINT, signal.SIGINT)
    proc = start(fresh_redis.url, env_name, "requeue", SUB, TYPE, "--from", "processing")
    code, document, err = stop_twice(proc, admin, signals, lambda: client.llen(destination) > 0)
    assert code == 130, err

    found = re.search(
        rf"{said_by(signals)}; ([\d,]+) messages? requeued from (\S+) to (\S+) before it "
        r"stopped; whether the ([\d,]+) selected messages sent after them were moved "
        + re.escape(UNANSWERED)
        + r"; each batch ran whole or not at all\); the other ([\d,]+) were not sent; the "
        r"notification was not sent, or not answered",
        err,
    )
    assert found is not None, err
    requeued, doubt, rest = number(found[1]), number(found[4]), number(found[5])
    assert (found[2], found[3]) == (source, destination), err
    assert doubt > 0 and doubt % BATCH == 0 and requeued + doubt + rest == N, err
    error = interrupted_error(document, err)
    assert error["done"] == {"requeued": requeued, "gone": 0, "requeued_in_doubt": doubt}
    moved = client.llen(destination)
    assert requeued <= moved <= requeued + doubt
    assert client.llen(source) + moved == N  # each message in one list: the moves are whole
    check_the_lock_was_left(client, ref, err, error)

    summary = run(fresh_redis.url, env_name, "requeue", SUB, TYPE, "--from", "processing")
    assert (summary["requeued"], summary["failed"]) == (N - moved, 0)
    assert rb.lrange(client, destination) == ORIGINAL  # each once, in order
    client.close()
    admin.close()


def test_a_second_signal_stops_a_drain_that_waits_on_redis_and_says_what_is_in_doubt(
    fresh_redis: servers.LocalRedis, env_name: str, tmp_path: Path
) -> None:
    """Twice SIGTERM while a removal batch waits for a Redis that does not answer: it exits
    at once, the batch in doubt; the backup file does not mark it, and `queue restore` puts
    back exactly what was removed, the batch's removals too when it ran (from its outcome in
    Redis)."""
    client = redis.Redis.from_url(fresh_redis.url)
    admin = redis.Redis.from_url(fresh_redis.url)
    ref = queues.QueueRef(SUB, env_name, TYPE)
    key = ref.key("dead")
    client.sadd(f"Subscribers:{{{env_name}:{TYPE}}}", SUB)
    fill(client, key, SHORTER)
    path = tmp_path / "dead.jsonl.zst"
    signals = (signal.SIGTERM, signal.SIGTERM)
    proc = start(fresh_redis.url, env_name, "drain", SUB, TYPE, "--to-file", str(path))
    code, document, err = stop_twice(proc, admin, signals, lambda: client.llen(key) < SHORTER)
    assert code == 130, err

    found = re.search(
        rf"{said_by(signals)}; ([\d,]+) messages? drained from (\S+) before it stopped: backed "
        r"up in (\S+) and removed from Redis; whether the batch of ([\d,]+) removals sent when "
        r"it stopped ran "
        + re.escape(UNANSWERED)
        + r"\): its messages may have been removed from (\S+) \(the batch ran whole or not at "
        r"all\); (\S+) holds them, not marked drained; if the batch ran, Redis recorded its "
        r"outcome in (\S+) in the same call, and `esctl queue restore (\S+)` reads it there",
        err,
    )
    assert found is not None, err
    drained, doubt = number(found[1]), number(found[4])
    assert (found[2], found[5]) == (key, key) and found[3] == found[6] == found[8] == str(path)
    survey, _ = read_as_restore(path)
    assert found[7] == ref.drain_outcome_key("dead", survey.backup_id), err
    assert doubt == BATCH and removed_in(path) == drained, err
    error = interrupted_error(document, err)
    assert error["done"] == {"drained": drained, "gone": 0, "drained_in_doubt": doubt}
    removed = SHORTER - client.llen(key)
    assert drained <= removed <= drained + doubt
    check_the_lock_was_left(client, ref, err, error)

    restored = run(fresh_redis.url, env_name, "restore", str(path))
    assert restored["restored"] == removed  # the batch in doubt's too, when it ran
    assert rb.lrange(client, key) == ORIGINAL[:SHORTER]
    client.close()
    admin.close()


def test_a_second_signal_stops_a_restore_that_waits_on_redis_and_says_what_is_in_doubt(
    fresh_redis: servers.LocalRedis, env_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT then SIGTERM while a restore batch waits for a Redis that does not answer: it
    exits at once, the batch in doubt; Redis's progress counter counts it if it ran, so the
    rerun restores the rest, nothing twice."""
    client = redis.Redis.from_url(fresh_redis.url)
    admin = redis.Redis.from_url(fresh_redis.url)
    ref = queues.QueueRef(SUB, env_name, TYPE)
    key = ref.key("dead")
    path, progress_key = drained_to_restore(client, ref, tmp_path, monkeypatch)
    signals = (signal.SIGINT, signal.SIGTERM)
    proc = start(fresh_redis.url, env_name, "restore", str(path))
    code, document, err = stop_twice(proc, admin, signals, lambda: client.llen(key) > 0)
    assert code == 130, err

    found = re.search(
        rf"{said_by(signals)}; ([\d,]+) messages? of (\S+) restored to (\S+) before it "
        r"stopped; whether the batch of ([\d,]+) messages sent to (\S+) when it stopped was "
        r"restored "
        + re.escape(UNANSWERED)
        + r"\): all of it or none, and Redis's progress counter (\S+) counts it in the same "
        r"call if it was; the other ([\d,]+) were not sent",
        err,
    )
    assert found is not None, err
    restored, doubt, rest = number(found[1]), number(found[4]), number(found[7])
    assert (found[2], found[3], found[5], found[6]) == (str(path), key, key, progress_key)
    assert doubt == BATCH and restored + doubt + rest == SHORTER, err
    assert "so is the batch in doubt if it ran (if it did not, the rerun restores it)" in err
    error = interrupted_error(document, err)
    assert error["done"] == {"restored": restored, "restored_in_doubt": doubt}
    back = client.llen(key)
    assert restored <= back <= restored + doubt
    assert int(client.get(progress_key) or 0) == back  # counted with each batch
    check_the_lock_was_left(client, ref, err, error)

    summary = run(fresh_redis.url, env_name, "restore", str(path))
    assert (summary["restored"], summary["already_restored"]) == (SHORTER - back, back)
    assert rb.lrange(client, key) == ORIGINAL[:SHORTER]
    client.close()
    admin.close()


# --- a second signal while the lock is given back -----------------------------------------------


LEFT = (
    "a signal stopped the release of the queue lock {key}, which may still be held: it "
    "expires 30 s after its last renewal, and a rerun before then exits 75"
)
"""What an interrupted run's hint says of a lock a signal stopped the release of."""


@pytest.mark.parametrize(
    ("command", "first_at", "signals"),
    [
        ("requeue", b"LRANGE", (signal.SIGINT, signal.SIGINT)),
        ("requeue", b"PUBLISH", (signal.SIGTERM, signal.SIGTERM)),
        ("drain", b"LRANGE", (signal.SIGTERM, signal.SIGINT)),
        ("restore", b"esctl:restore:", (signal.SIGINT, signal.SIGTERM)),
    ],
    ids=["requeue-selecting", "requeue-notifying", "drain-selecting", "restore-preparing"],
)
def test_a_second_signal_while_the_lock_is_given_back_is_said_to_leave_it(
    command: str,
    first_at: bytes,
    signals: tuple[signal.Signals, signal.Signals],
    redis_client: redis.Redis,
    redis_test_url: str,
    env_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first signal that comes outside a wait on Redis (selecting messages, settling a
    restore's records) or inside one (the notification's answer, held), and a second one
    while the run gives its lock back: the release does not reach Redis, the lock stays until
    it expires, and a rerun before then exits 75. The run's message says so, as it does when
    Redis did not answer the release (it said nothing, and 'rerun the same command')."""
    ref = queues.QueueRef(SUB, env_name, TYPE)
    redis_client.sadd(f"Subscribers:{{{env_name}:{TYPE}}}", SUB)
    if command == "restore":
        path, _ = drained_to_restore(redis_client, ref, tmp_path, monkeypatch)
        args: tuple[str, ...] = ("restore", str(path))
        state = f"nothing of {path} was restored"
    elif command == "drain":
        fill(redis_client, ref.key("dead"), 1_000)
        path = tmp_path / "dead.jsonl.zst"
        args = ("drain", SUB, TYPE, "--list", "dead", "--to-file", str(path))
        state = f"nothing was drained from {ref.key('dead')} (it stopped while selecting messages)"
    else:
        fill(redis_client, ref.key("processing"), 1_000)
        args = ("requeue", SUB, TYPE, "--from", "processing")
        state = (
            f"nothing was requeued from {ref.key('processing')} (it stopped while selecting "
            "messages)"
            if first_at == b"LRANGE"
            else f"1,000 messages requeued from {ref.key('processing')} to "
            f"{ref.key('published')} before it stopped; that was every selected message"
        )
    expired = expired_so_far(redis_client)
    with signalled_twice(redis_test_url, first_at, signals) as (through, started):
        proc = start(through, env_name, *args)
        started(proc.pid)
        out, err = proc.communicate(timeout=TIMEOUT_S)
    message = " ".join(err.decode("utf-8", "replace").split())
    assert proc.returncode == 130 and "Traceback" not in message, message
    assert f"{said_by(signals)}; {state}" in message, message
    left = LEFT.format(key=ref.lock_key)
    assert left in message, message
    error = interrupted_error(json.loads(out), message)
    assert error["hint"].endswith(left), error
    if command == "drain":
        assert not path.exists()

    if not left_in_redis(redis_client, [ref.lock_key], expired):
        return  # (it expired on its own already: nothing for a rerun to find)
    rerun = start(redis_test_url, env_name, *args)
    out, _ = rerun.communicate(timeout=TIMEOUT_S)
    assert rerun.returncode == 75, out
    assert f"holds the lock {ref.lock_key}" in json.loads(out)["error"]["message"]

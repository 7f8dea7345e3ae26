"""Crash safety of the queue commands that change a queue, end to end: ``queue requeue``,
``queue drain`` and ``queue restore`` run as real processes on a 30,000-message list (small
move batches) and are killed with SIGKILL at random points of their progress, observed in Redis.
After every kill, the three lists plus what the backup file holds (read as restore reads it)
are exactly the original multiset (it has equal messages: no message twice, none lost), and a
rerun of the same command completes the operation.

While a requeue runs, every observation of ProcessingEvents + PublishedEvents is taken in one
MULTI: the total never dips, so no message is ever between the two lists (a move split into a
removal and a later push fails here).

The random points come from a seed printed by the test; ``ESCTL_CRASH_SEED=N`` replays one."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis_bytes as rb
from helpers import QUEUE_BATCH_LAUNCHER, cli_env, outcomes, read_as_restore

from esctl import errors, layout, queues, servers
from esctl.queues.backup import value_bytes

N = 30_000
"""Messages in the list: 30 of the commands' 1,000-message selection pages, so kills land in
every phase of a page; each kill refills the list, so N is most of the test's time."""
BATCH = 100
"""Messages per script call (the commands' default is 1,000): 300 batches per full run."""
KILLS = {"requeue": 7, "drain": 4, "restore": 4}
"""Kills per command in one run, at random points (a new seed each run). The requeue keeps
seven: its lists are also watched while it runs."""
SUB = "Learning.ReportingService.Worker-Crash"
TYPE = "ItemScoreUpdated"
RUN_TIMEOUT_S = 60.0
EXIT_LOCKED = 75


def payload(number: int) -> bytes:
    return orjson.dumps(
        {
            "$type": f"Learning.ScoringService.Domain.Events.{TYPE}, Learning.ScoringService.Domain",
            "Id": f"item-{number}",
            "TimeStamp": "2025-03-01T12:00:00.0000001+00:00",
            "Version": 1 + number % 3,
            "AggregateType": "ItemScore",
            "Score": number % 11,
        }
    )


def original_list(rng: random.Random) -> list[bytes]:
    """N messages, head to tail: distinct ones, 300 that repeat one of them somewhere else in
    the list, and one message five times in a row."""
    distinct = [payload(i) for i in range(N - 304)]
    repeats = [distinct[rng.randrange(len(distinct))] for _ in range(300)]
    values = distinct + repeats
    rng.shuffle(values)
    at = rng.randrange(len(values))
    values[at:at] = [values[at]] * 4
    assert len(values) == N
    return values


@dataclass
class Harness:
    client: redis.Redis
    url: str
    env: str
    folder: Path
    seed: int
    original: list[bytes]
    ref: queues.QueueRef = field(init=False)
    multiset: Counter[bytes] = field(init=False)
    events: Any = field(init=False)
    """Keyspace notifications of the queue's keys (lists, lock, drain and restore records)."""
    seen: list[str] = field(default_factory=list)
    """Keys changed since the last command started."""
    samples: int = 0
    """Observations of a requeue's two lists taken while messages were on both."""
    dips: list[str] = field(default_factory=list)
    """Observations where ProcessingEvents + PublishedEvents did not hold every message."""
    runs: int = 0

    def __post_init__(self) -> None:
        self.ref = queues.QueueRef(SUB, self.env, TYPE)
        self.multiset = Counter(self.original)
        self.events = self.client.pubsub(ignore_subscribe_messages=True)
        self.events.psubscribe(f"__keyspace@0__:*{{{self.env}:{TYPE}}}*")

    def key(self, which: str) -> str:
        return self.ref.key(which)

    def fill(self, which: str) -> None:
        """Make ``which`` the original list and the other two lists empty."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(*(self.key(w) for w in queues.QUEUE_LISTS))
        for i in range(0, N, 10_000):
            pipe.rpush(self.key(which), *self.original[i : i + 10_000])
        pipe.execute()

    def lists(self) -> Counter[bytes]:
        found: Counter[bytes] = Counter()
        for which in queues.QUEUE_LISTS:
            found.update(rb.lrange(self.client, self.key(which)))
        return found

    @property
    def options(self) -> list[str]:
        return ["--redis-url", self.url, "--env", self.env, "--yes", "--json"]

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        self.runs += 1
        out = (self.folder / f"run{self.runs}.out").open("wb")
        err = (self.folder / f"run{self.runs}.err").open("wb")
        with out, err:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    QUEUE_BATCH_LAUNCHER,
                    str(BATCH),
                    "queue",
                    *args,
                    *self.options,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=cli_env(),
                start_new_session=True,
            )

    def output(self) -> tuple[Any, str]:
        """The last run's JSON document and stderr."""
        err = (self.folder / f"run{self.runs}.err").read_text()
        text = (self.folder / f"run{self.runs}.out").read_text()
        return (json.loads(text) if text.strip() else None), err

    def run(self, *args: str) -> Any:
        """Run a command to its end; its JSON document (exit 0 required)."""
        proc = self.start(*args)
        code = proc.wait(timeout=RUN_TIMEOUT_S)
        document, err = self.output()
        assert code == 0, f"seed {self.seed}: {args} exited {code}: {err[-2000:]}"
        return document

    def kill_when(self, args: tuple[str, ...], reached: Callable[[], bool]) -> bool:
        """Start the command and SIGKILL it the moment ``reached()`` holds, checked after each
        change the command makes to the queue's keys (a keyspace notification). True when it
        was killed, False when it finished first."""
        while self.events.get_message(timeout=0):  # what earlier commands did
            pass
        self.seen = []
        before = max(int(c["id"]) for c in self.client.client_list())
        proc = self.start(*args)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while proc.poll() is None:
            if reached():
                os.kill(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, f"seed {self.seed}: {args} did not end"
            event = self.events.get_message(timeout=1.0)  # the next change (or a second)
            if event is not None:
                self.seen.append(rb.as_bytes(event["channel"]).decode())
        code = proc.wait(timeout=RUN_TIMEOUT_S)
        if code == 0:
            return False
        assert code == -signal.SIGKILL, f"seed {self.seed}: {args} exited {code}: {self.output()}"
        self.settled(before)
        return True

    def settled(self, before: int) -> None:
        """Wait until Redis has closed every connection of the killed command (client ids
        above ``before``): a script it had sent just before the kill (a pipelined batch) may
        still be in Redis's input, run after the kill. Once Redis has closed the connection it
        has run it or dropped it, and the lists show all the command did."""
        mine = self.client.client_id()
        deadline = time.monotonic() + 10
        while any(
            int(c["id"]) > before and int(c["id"]) != mine for c in self.client.client_list()
        ):
            assert time.monotonic() < deadline, f"seed {self.seed}: the killed run's connection"
            time.sleep(0.01)

    def free_lock(self, check_refused: bool, *, finished: bool) -> None:
        """A killed run's lock stays until its TTL (30 s) runs out; the rerun would exit 75
        until then. Deleting it stands for the wait. ``finished``: the run had made all its
        moves when the kill came, so it may have given its lock back first (the kill lands a
        moment after the check that chose it: CI saw it once, on a restore's last batch)."""
        if not self.client.exists(self.ref.lock_key):
            assert finished, f"seed {self.seed}: a killed run leaves its lock"
            return
        if check_refused:
            proc = self.start("requeue", SUB, TYPE, "--from", "dead")
            assert proc.wait(timeout=RUN_TIMEOUT_S) == EXIT_LOCKED, self.output()
        self.client.delete(self.ref.lock_key)

    def requeue_total(self) -> int:
        """ProcessingEvents + PublishedEvents in one MULTI (an atomic observation); records a
        dip below N. Returns how many messages were moved so far."""
        pipe = self.client.pipeline(transaction=True)
        pipe.llen(self.key("processing"))
        pipe.llen(self.key("published"))
        processing, published = pipe.execute()
        if processing + published != N:
            self.dips.append(f"processing {processing} + published {published} != {N}")
        if processing and published:
            self.samples += 1
        return N - int(processing)


def check(harness: Harness, found: Counter[bytes], what: str) -> None:
    if found != harness.multiset:
        lost = harness.multiset - found
        extra = found - harness.multiset
        pytest.fail(
            f"seed {harness.seed}, {what}: {sum(lost.values())} messages lost, "
            f"{sum(extra.values())} more than there were"
        )


def crash_requeue(h: Harness, rng: random.Random, kills: int) -> dict[str, int]:
    args = ("requeue", SUB, TYPE, "--from", "processing")
    done = 0
    while done < kills:
        h.fill("processing")
        target = rng.randrange(1, N)

        def far_enough(target: int = target) -> bool:
            return h.requeue_total() >= target

        if not h.kill_when(args, far_enough):
            continue  # it finished before the point: no kill, draw again
        done += 1
        moved = h.requeue_total()
        assert h.dips == [], f"seed {h.seed}: messages were seen in neither list: {h.dips[:3]}"
        check(h, h.lists(), f"requeue killed after {moved} moves")
        h.free_lock(check_refused=done == 1, finished=moved == N)
        summary = h.run(*args)
        assert summary["requeued"] == N - moved and summary["failed"] == 0
        assert not h.client.exists(h.key("processing"))
        # every batch went, whole, to the tail: the list is as it was, in order
        assert rb.lrange(h.client, h.key("published")) == h.original, f"seed {h.seed}"
    return {"requeue kills": done}


def restorable(h: Harness, path: Path, selected: Counter[bytes]) -> tuple[Counter[bytes], int]:
    """What the backup file holds that the list no longer has, read as restore reads it: the
    records a removal took (from the file's outcomes, settled from Redis where a kill came
    between a removal and its record); and how many of them the file itself did not record.
    ``selected``: the list when the drain started (the file must hold all of it)."""
    if not path.exists():
        return Counter(), 0
    try:
        survey, records = read_as_restore(path)
    except errors.UsageError as exc:
        assert "before removing anything" in str(exc), exc  # the first frame is torn
        return Counter(), 0
    assert Counter(value_bytes(r) for r in records) == selected, f"seed {h.seed}"
    in_file = outcomes(survey, records)
    if not survey.settle(h.client):
        # killed before it wrote its outcome record, so before its first removal
        assert h.client.llen(h.key("dead")) == selected.total()
    settled = outcomes(survey, records)
    removed = [r for r in records if settled.get(int(r["n"])) == "removed"]
    unrecorded = sum(1 for r in removed if int(r["n"]) not in in_file)
    return Counter(value_bytes(r) for r in removed), unrecorded


def crash_drain(h: Harness, rng: random.Random, kills: int) -> dict[str, int]:
    points = ["backup", "backup", "first", "first"] + ["random"] * (kills - 4)
    rng.shuffle(points)
    counts: Counter[str] = Counter()
    restored_both = False
    while points:
        point = points[-1]
        h.fill("dead")
        path = h.folder / f"drain{h.runs}.jsonl.zst"
        args = ("drain", SUB, TYPE, "--list", "dead", "--to-file", str(path))
        target = rng.randrange(1, N)

        def reached(point: str = point, path: Path = path, target: int = target) -> bool:
            if point == "backup":  # its outcome record is written: the first removal is next
                return any(":esctl:drain:" in key for key in h.seen)
            removed = N - int(h.client.llen(h.key("dead")))
            return removed >= (1 if point == "first" else target)  # right after removal began

        if not h.kill_when(args, reached):
            continue
        points.pop()
        counts[f"drain kills ({point})"] += 1
        removed, unrecorded = restorable(h, path, h.multiset)
        left = N - int(h.client.llen(h.key("dead")))
        check(h, h.lists() + removed, f"drain killed ({point}) after {left} removals")
        counts["drain kills between a removal and its record in the file"] += unrecorded > 0
        h.free_lock(check_refused=False, finished=left == N)
        rerun = h.folder / f"rerun{h.runs}.jsonl.zst"
        summary = h.run("drain", SUB, TYPE, "--list", "dead", "--to-file", str(rerun))
        assert summary["drained"] == N - left and summary["failed"] == 0
        assert not h.client.exists(h.key("dead"))
        again, _ = restorable(h, rerun, h.multiset - removed)
        check(h, removed + again, f"drain ({point}) and its rerun")
        if not restored_both and removed:
            # once: both files restored through the CLI give the list back exactly
            restored_both = True
            for file in (path, rerun):
                h.run("restore", str(file), "--include-unknown")
            assert rb.lrange(h.client, h.key("dead")) == h.original, f"seed {h.seed}"
    assert restored_both, f"seed {h.seed}: no drain was killed after its first removal"
    return dict(counts)


def crash_restore(h: Harness, rng: random.Random, kills: int) -> dict[str, int]:
    h.fill("dead")
    path = h.folder / "full.jsonl.zst"
    assert h.run("drain", SUB, TYPE, "--list", "dead", "--to-file", str(path))["drained"] == N
    survey, records = read_as_restore(path)
    assert survey.complete and Counter(value_bytes(r) for r in records) == h.multiset
    progress = h.ref.restore_progress_key("dead", survey.backup_id)
    done = 0
    while done < kills:
        h.client.delete(h.key("dead"), progress)
        target = rng.randrange(1, N)

        def restored(target: int = target) -> bool:
            return int(h.client.llen(h.key("dead"))) >= target

        if not h.kill_when(("restore", str(path)), restored):
            continue
        done += 1
        count = int(h.client.get(progress) or 0)
        # the records restored so far are the ones nearest the tail, in place; the rest are
        # only in the file, and the counter says exactly how many went
        assert rb.lrange(h.client, h.key("dead")) == h.original[N - count :], f"seed {h.seed}"
        rest = sorted(records, key=lambda r: int(r["position"]))[count:]
        check(h, h.lists() + Counter(value_bytes(r) for r in rest), "restore killed")
        h.free_lock(check_refused=False, finished=count == N)
        summary = h.run("restore", str(path))
        assert (summary["already_restored"], summary["restored"]) == (count, N - count)
        assert rb.lrange(h.client, h.key("dead")) == h.original, f"seed {h.seed}"
    return {"restore kills": done}


@pytest.fixture
def notifying_redis() -> Iterator[servers.LocalRedis]:
    """A Redis of the test's own that publishes keyspace notifications of list and string
    commands: the test waits for the commands' changes instead of polling."""
    server = servers.start_redis(extra_args=["--notify-keyspace-events", "Kl$"])
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_kill_9_of_requeue_drain_and_restore_loses_and_duplicates_nothing(
    tmp_path: Path, notifying_redis: servers.LocalRedis, env_name: str
) -> None:
    seed = int(os.environ.get("ESCTL_CRASH_SEED") or secrets.randbits(32))
    print(f"ESCTL_CRASH_SEED={seed}")
    rng = random.Random(seed)
    client = redis.Redis.from_url(notifying_redis.url)
    h = Harness(client, notifying_redis.url, env_name, tmp_path, seed, original_list(rng))
    client.sadd(layout.subscribers_key(env_name, TYPE), SUB)
    started = time.monotonic()
    counts: dict[str, int] = {}
    for name, crash in (
        ("requeue", crash_requeue),
        ("drain", crash_drain),
        ("restore", crash_restore),
    ):
        counts |= crash(h, rng, KILLS[name])
        print(f"{name}: {time.monotonic() - started:.1f} s")
    h.events.close()
    client.close()
    print(f"{counts}; {h.runs} runs; {h.samples} observations mid-requeue")
    assert h.dips == [], f"seed {seed}: a requeue's lists were seen without some messages"
    assert h.samples >= 20, f"seed {seed}: too few observations while a requeue ran"
    kills = sum(v for k, v in counts.items() if "between" not in k)
    assert kills == sum(KILLS.values())


def traced_calls(trace: str) -> list[tuple[str, str]]:
    """``(syscall, its first argument and data as strace shows them)`` in the order the calls
    returned (a call another thread interrupted is placed where it resumed)."""
    pending: dict[str, str] = {}
    calls = []
    for line in trace.splitlines():
        pid, _, rest = line.partition(" ")  # the pid, padded with spaces to a fixed width
        rest = rest.lstrip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest.removesuffix("<unfinished ...>")
            continue
        if rest.startswith("<... "):
            rest = pending.pop(pid, "") + rest.partition("resumed>")[2]
        name, _, arguments = rest.partition("(")
        calls.append((name, arguments))
    return calls


def test_drain_fsyncs_the_backup_and_its_folder_before_each_removal(
    tmp_path: Path, redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    """Durability cannot be tested by pulling the power, so the order of the system calls is:
    drain runs under strace, and the backup file's first frame must be written and fsynced,
    and its folder fsynced, before the first removal script is sent to Redis; and each batch's
    outcome must be written and fsynced before the next removal."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    ref = queues.QueueRef(SUB, env_name, TYPE)
    redis_client.rpush(ref.key("dead"), *(payload(i) for i in range(1000)))
    folder = tmp_path / "backups"
    folder.mkdir()
    path = folder / "d.jsonl.zst"
    trace = tmp_path / "trace.txt"
    syscalls = "trace=openat,write,sendto,sendmsg,fsync,fdatasync,sync_file_range"
    command = [strace, "-f", "-qq", "-yy", "-s", "400", "-e", syscalls, "-o", str(trace)]
    command += [sys.executable, "-c", QUEUE_BATCH_LAUNCHER, "300", "queue", "drain", SUB, TYPE]
    command += ["--to-file", str(path), "--redis-url", redis_test_url, "--env", env_name]
    result = subprocess.run(
        [*command, "--yes", "--json"], env=cli_env(), capture_output=True, timeout=RUN_TIMEOUT_S
    )
    if result.returncode != 0 and b"ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.decode()[-300:]}")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert json.loads(result.stdout)["drained"] == 1000
    assert not redis_client.exists(ref.key("dead"))

    kinds: list[str] = []  # what each relevant call did, in order
    for name, arguments in traced_calls(trace.read_text()):
        target = re.match(r"\d+<(.*?)>[,)]", arguments)  # the file descriptor's path (-yy)
        if target and target[1] == str(path) and name != "openat":
            kinds.append(f"{'write' if name == 'write' else 'fsync'} backup")
        elif target and target[1] == str(folder) and name != "openat":
            kinds.append("fsync folder")
        elif name in ("sendto", "sendmsg") and "SCRIPT" in arguments and "LOAD" in arguments:
            if kinds and kinds[-1] == "remove":
                kinds.pop()  # that EVALSHA was refused (NOSCRIPT): it is sent again
        elif name in ("sendto", "sendmsg") and "EVAL" in arguments and ref.key("dead") in arguments:
            kinds.append("remove")
    removals = [i for i, kind in enumerate(kinds) if kind == "remove"]
    assert len(removals) >= 4, kinds  # 1,000 messages in batches of 300
    before = kinds[: removals[0]]
    assert "write backup" in before, "the backup was not written before the first removal"
    last_write = len(before) - 1 - before[::-1].index("write backup")
    assert "fsync backup" in before[last_write:], f"not fsynced before the first removal: {kinds}"
    assert "fsync folder" in before, f"its folder was not fsynced before the first removal: {kinds}"
    for previous, current in itertools.pairwise(removals):
        between = kinds[previous:current]
        assert "write backup" in between, f"a batch's outcome was not written: {kinds}"
        last_write = len(between) - 1 - between[::-1].index("write backup")
        assert "fsync backup" in between[last_write:], f"an outcome was not fsynced: {kinds}"

"""``esctl compress`` when a write fails part-way, on a Redis of the test's own: out of memory
(maxmemory with noeviction), an ACL user refused some of the hashes, a lost connection. The
run stops after the round trip that failed, says exactly what it compressed (every call of
that round trip that ran included) and sends nothing after it; a rerun finishes the job with
the store an uninterrupted run leaves. What was written is read back with the independent
writer's reader."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import independent_writer as iw
import lostlock
import pytest
import redis
import redis_bytes as rb
from credservers import PASSWORD, acl_users, set_user, user_url
from helpers import cli_env, run_cli

from esctl import compress, errors, layout, locks, redisio, servers
from esctl.compress import Candidate, CompressOptions

THRESHOLD = 1000
SMALL_BATCH = 48 * 1024
"""Bytes of values per round of compare-and-sets in these tests: several rounds per store."""
ROUND_TRIP = 16
"""Compare-and-set calls per round trip in these tests (fewer than a round holds)."""


AT_THIRD_ROUND = f"""
import os, sys
import redis
import esctl.compress as compress

compress.BATCH_BYTES = {SMALL_BATCH}
real = compress._write
rounds = []

def at_third_round(client, candidates, *args, **kwargs):
    rounds.append(len(candidates))
    if len(rounds) == 3:
        admin = redis.Redis.from_url(os.environ["ADMIN_URL"])
        if os.environ["AT_THIRD_ROUND"] == "fill up":
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", used - 100_000)
        else:  # "cut": every connection but this one closed by the server
            admin.client_kill_filter(_type="normal", skipme=True)
    return real(client, candidates, *args, **kwargs)

compress._write = at_third_round
sys.argv[0] = "esctl"
from esctl.cli.app import main
main()
"""
"""``esctl ARGS`` whose Redis (``$ADMIN_URL``), at the command's third round of
compare-and-sets, goes over maxmemory (``AT_THIRD_ROUND=fill up``) or closes esctl's
connections (``cut``); everything else is the real command."""


def compress_cli(url: str, app: str, at_third_round: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", AT_THIRD_ROUND, "compress", "--redis-url", url, "--app", app,
         "--yes", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**cli_env(), "ADMIN_URL": url, "AT_THIRD_ROUND": at_third_round},
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    return result


def contents(client: redis.Redis) -> dict[bytes, Any]:
    """Every key of the database with its value (hashes and lists; other types dumped)."""
    out: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = rb.hgetall(client, key)
        elif kind == b"list":
            out[key] = rb.lrange(client, key)
        else:
            out[key] = (kind, client.dump(key))
    return out


def write(client: redis.Redis, app: str) -> list[iw.TruthEvent]:
    """The test store (plain payloads only); returns its events over the threshold."""
    truth = iw.write_store(
        client, app=app, aggregates=300, threshold=None, legacy_share=0.0, seed=3
    )
    big = [e for e in truth.events() if len(e.payload.encode("utf-8")) > THRESHOLD]
    assert len(big) > 200
    return big


def compressed_now(client: redis.Redis, big: Sequence[iw.TruthEvent]) -> int:
    """How many of ``big`` are stored compressed, each checked to read back as its payload."""
    count = 0
    for event in big:
        stored = rb.hget(client, event.hash_key, event.commit_id)
        assert stored is not None
        if stored.startswith(b"H4sI"):
            assert iw.gunzip_base64(stored) == event.payload
            count += 1
        else:
            assert stored == event.payload.encode("utf-8")
    return count


def oom_errors(client: redis.Redis) -> int:
    """Commands the server refused with OOM so far: while Redis stays over maxmemory, every
    compare-and-set call sent is one."""
    return int(client.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


@pytest.fixture
def reference(app_name: str) -> Iterator[dict[bytes, Any]]:
    """The store an uninterrupted compress leaves (the same store, on a server of its own)."""
    server = servers.start_redis()
    try:
        client = redis.Redis.from_url(server.url)
        write(client, app_name)
        with redisio.connect(server.url) as esctl_client:
            summary = compress.compress(esctl_client, CompressOptions(app=app_name))
        assert summary.failed == 0 and summary.total.compressed > 0
        yield contents(client)
        client.close()
    finally:
        server.stop()


def test_out_of_memory_mid_run_stops_after_that_round_trip_and_a_rerun_finishes(
    fresh_redis: servers.LocalRedis,
    app_name: str,
    reference: dict[bytes, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis refuses the HSETs once it is over maxmemory: the run counts the values its calls
    replaced, lists each call that failed, sends no call after the round trip that failed, and
    exits 1; a rerun once memory is freed compresses the rest."""
    monkeypatch.setattr(compress, "BATCH_BYTES", SMALL_BATCH)
    monkeypatch.setattr(compress, "CALLS_PER_ROUND_TRIP", ROUND_TRIP, raising=False)
    admin = redis.Redis.from_url(fresh_redis.url)
    big = write(admin, app_name)
    rounds: list[int] = []

    def fill_up(candidates: Sequence[Candidate]) -> None:
        rounds.append(len(candidates))
        if len(rounds) == 3:
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", used - 100_000)

    with redisio.connect(fresh_redis.url) as client:
        summary = compress.compress(client, CompressOptions(app=app_name), before_write=fill_up)
    sent_after = oom_errors(admin)

    assert len(rounds) == 3, "no round of values is read for writing after the failed one"
    assert 0 < sent_after <= ROUND_TRIP, "only the round trip that failed was sent"
    assert summary.failed == sent_after  # every call of it failed: Redis stayed full
    problems = [p for p in summary.problems if p["kind"] == "write_failed"]
    assert len(problems) == summary.failed and all("OOM" in p["detail"] for p in problems)
    assert summary.total.compressed == compressed_now(admin, big) > 0

    admin.config_set("maxmemory", 0)
    with redisio.connect(fresh_redis.url) as client:
        again = compress.compress(client, CompressOptions(app=app_name))
    assert again.failed == 0
    assert (
        summary.total.compressed + again.total.compressed == len(big) == compressed_now(admin, big)
    )
    assert contents(admin) == reference
    admin.close()


def interrupted_at_round(number: int) -> Callable[[Sequence[Candidate]], None]:
    """A ``before_write`` hook: Ctrl-C or SIGTERM (a KeyboardInterrupt) before the writes of
    round ``number`` of compare-and-sets."""
    rounds: list[int] = []

    def hook(candidates: Sequence[Candidate]) -> None:
        rounds.append(len(candidates))
        if len(rounds) == number:
            raise KeyboardInterrupt

    return hook


def test_ctrl_c_between_round_trips_says_what_was_compressed_and_a_rerun_finishes(
    fresh_redis: servers.LocalRedis,
    app_name: str,
    reference: dict[bytes, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C or SIGTERM (a KeyboardInterrupt) before the third round's writes: the run says
    how many values it compressed, exactly what Redis holds compressed."""
    monkeypatch.setattr(compress, "BATCH_BYTES", SMALL_BATCH)
    admin = redis.Redis.from_url(fresh_redis.url)
    big = write(admin, app_name)

    with redisio.connect(fresh_redis.url) as client, pytest.raises(errors.Interrupted) as caught:
        compress.compress(
            client, CompressOptions(app=app_name), before_write=interrupted_at_round(3)
        )
    written = compressed_now(admin, big)
    assert 0 < written < len(big)
    assert caught.value.done == {"compressed": written}
    assert (
        caught.value.state
        == f"compress had compressed {written:,} values (each whole and readable)"
    )
    assert caught.value.hint.startswith("rerun the same command to compress the rest")

    with redisio.connect(fresh_redis.url) as client:
        again = compress.compress(client, CompressOptions(app=app_name))
    assert written + again.total.compressed == len(big) == compressed_now(admin, big)
    assert contents(admin) == reference
    admin.close()


def test_a_second_signal_while_the_lock_is_given_back_says_it_may_be_held(
    fresh_redis: servers.LocalRedis, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between round trips, then a second one while compress gives its lock back: the
    lock stays until it expires (a rerun before then exits 75), and the message says so with
    what was compressed. It used to end as a bare KeyboardInterrupt ("the state was left
    consistent"), its counts lost, the lock not mentioned."""
    monkeypatch.setattr(compress, "BATCH_BYTES", SMALL_BATCH)
    admin = redis.Redis.from_url(fresh_redis.url)
    big = write(admin, app_name)

    run_script = locks._run_script

    def release_stopped(client: Any, script: str, *args: Any) -> Any:
        if script == locks._RELEASE_SCRIPT:
            raise KeyboardInterrupt  # the second signal, before the release reaches Redis
        return run_script(client, script, *args)

    monkeypatch.setattr(locks, "_run_script", release_stopped)
    with redisio.connect(fresh_redis.url) as client, pytest.raises(errors.Interrupted) as caught:
        compress.compress(
            client, CompressOptions(app=app_name), before_write=interrupted_at_round(3)
        )
    written = compressed_now(admin, big)
    assert caught.value.done == {"compressed": written}
    key = layout.compress_lock_key(app_name)
    assert caught.value.hint.endswith(
        f"; a signal stopped the release of the compress lock {key}, which may still be held: "
        "it expires 30 s after its last renewal, and a rerun before then exits 75"
    ), caught.value.hint
    assert admin.exists(key)
    admin.close()


def test_ctrl_c_awaiting_a_round_trip_says_its_values_may_have_been_compressed(
    fresh_redis: servers.LocalRedis, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal comes while the replies of a round trip are awaited: the calls sent ran (or
    not) whole, and the run says that many more may have been compressed, no fewer."""
    monkeypatch.setattr(compress, "BATCH_BYTES", SMALL_BATCH)
    monkeypatch.setattr(compress, "CALLS_PER_ROUND_TRIP", ROUND_TRIP, raising=False)
    admin = redis.Redis.from_url(fresh_redis.url)
    big = write(admin, app_name)
    real = redisio.eval_pipelined
    trips: list[int] = []

    def reply_lost_at_third(*args: Any, **kwargs: Any) -> Any:
        replies = real(*args, **kwargs)  # (the server ran them)
        trips.append(len(replies))
        if len(trips) == 3:
            raise KeyboardInterrupt
        return replies

    monkeypatch.setattr(redisio, "eval_pipelined", reply_lost_at_third)
    with redisio.connect(fresh_redis.url) as client, pytest.raises(errors.Interrupted) as caught:
        compress.compress(client, CompressOptions(app=app_name))
    done = caught.value.done
    assert done is not None and done["in_flight"] > 0
    assert done["compressed"] + done["in_flight"] == compressed_now(admin, big) < len(big)
    assert f"the {done['in_flight']:,} values of the round trip in flight may have been " in (
        caught.value.state
    )
    admin.close()


def test_out_of_memory_mid_run_through_the_cli_says_what_was_compressed(
    fresh_redis: servers.LocalRedis, app_name: str
) -> None:
    """The command's summary counts what was written, the error on stderr says the run
    stopped, what failed and what was compressed in all; exit 1."""
    admin = redis.Redis.from_url(fresh_redis.url)
    big = write(admin, app_name)
    result = compress_cli(fresh_redis.url, app_name, "fill up")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    written = compressed_now(admin, big)
    assert 0 < document["compressed"] == written < len(big)
    assert document["failed"] > 0
    assert document["problems_total"] == document["failed"]
    message = " ".join(result.stderr.split())
    assert "compress stopped" in message and "OOM" in message
    assert f"{written:,} values were compressed in all" in message
    assert "nothing after that round trip was sent" in message
    admin.close()


def test_a_user_refused_some_hashes_stops_and_the_error_says_what_was_compressed(
    fresh_redis: servers.LocalRedis, app_name: str, reference: dict[bytes, Any]
) -> None:
    """An ACL user that may write only some of the partition hashes (the README's rules with a
    narrower key pattern): Redis refuses the calls on the others and runs the rest of the same
    round trip. The permission error names the hash refused and says how many values were
    compressed (as many as Redis holds compressed); with the README's rules a rerun finishes
    the job."""
    admin = redis.Redis.from_url(fresh_redis.url)
    big = write(admin, app_name)
    rules = acl_users(app_name, "env")["esctl-compress"]
    everything = f"~EventStore:{app_name}:*"
    assert everything in rules
    some = [f"~EventStore:{app_name}:[0-4]*" if r == everything else r for r in rules]
    set_user(admin, "esctl-compress", some)
    admin.script_load(compress.COMPARE_AND_SET)  # as a run before this one left it
    url = user_url(fresh_redis.port, "esctl-compress")

    result = run_cli("compress", "--redis-url", url, "--app", app_name, "--yes", "--json")

    assert result.returncode == 1, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "permission"
    written = compressed_now(admin, big)
    assert 0 < written < len(big)
    message = " ".join(error["message"].split())
    assert f"refused EVALSHA on EventStore:{app_name}:" in message
    assert f"{written:,} values were compressed in all" in message
    assert "nothing after that round trip was sent" in message

    set_user(admin, "esctl-compress", rules)
    result = run_cli("compress", "--redis-url", url, "--app", app_name, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["compressed"] == len(big) - written
    assert contents(admin) == reference
    admin.close()


def test_a_connection_lost_mid_run_exits_1_saying_what_was_compressed_and_a_rerun_finishes(
    fresh_redis: servers.LocalRedis, app_name: str, reference: dict[bytes, Any]
) -> None:
    """Redis closes esctl's connection before the third round trip of compare-and-sets: exit 1
    with a connection error that says how many values were compressed (as many as Redis holds
    compressed) and that those of the round trip in flight may have been too; the rerun
    finishes the job."""
    admin = redis.Redis.from_url(fresh_redis.url)
    big = write(admin, app_name)

    result = compress_cli(fresh_redis.url, app_name, "cut")

    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "connection"
    written = compressed_now(admin, big)
    assert 0 < written < len(big)
    message = " ".join(error["message"].split())
    assert f"compress had compressed {written:,} values" in message
    assert "of the round trip in flight may have been compressed too" in message
    assert "rerun" in error["hint"]

    result = run_cli(
        "compress", "--redis-url", fresh_redis.url, "--app", app_name, "--yes", "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["compressed"] == len(big) - written
    assert contents(admin) == reference
    admin.close()


def test_a_lock_lost_mid_run_stops_before_the_next_round_trip_saying_what_was_compressed(
    redis_client: redis.Redis,
    redis_test_url: str,
    app_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another compress takes the lock while the third round of values is being read: no
    compare-and-set of that round is sent; the error names the lock and says how many values
    were compressed (as many as Redis holds compressed: the first two rounds); once the other
    run is gone, a rerun finishes the job."""
    monkeypatch.setattr(compress, "BATCH_BYTES", SMALL_BATCH)
    locks = lostlock.ShortLocks(monkeypatch)
    big = write(redis_client, app_name)
    rounds: list[list[Candidate]] = []

    def take_the_lock(candidates: Sequence[Candidate]) -> None:
        rounds.append(list(candidates))
        if len(rounds) == 3:
            locks.take_away(redis_client)

    with (
        redisio.connect(redis_test_url) as client,
        pytest.raises(errors.ServerError) as lost,
    ):
        compress.compress(client, CompressOptions(app=app_name), before_write=take_the_lock)

    key = layout.compress_lock_key(app_name)
    written = compressed_now(redis_client, big)
    assert written == len(rounds[0]) + len(rounds[1]) > 0
    third = {(c.key, c.field) for c in rounds[2]}
    assert third
    assert all(
        not rb.hget(redis_client, e.hash_key, e.commit_id).startswith(b"H4sI")  # type: ignore[union-attr]
        for e in big
        if (e.hash_key, e.commit_id.encode()) in third
    ), "nothing of the third round was sent"
    message = " ".join(str(lost.value).split())
    assert message.startswith(f"lost the compress lock: {key} was taken or deleted by someone else")
    assert f"compress had compressed {written:,} values" in message
    assert "in flight" not in message
    assert isinstance(lost.value, errors.LockLost) and lost.value.key == key
    assert "rerun" in (lost.value.hint or "")

    locks.give_back(redis_client)
    with redisio.connect(redis_test_url) as client:
        again = compress.compress(client, CompressOptions(app=app_name))
    assert again.failed == 0 and again.total.compressed == len(big) - written
    assert compressed_now(redis_client, big) == len(big)

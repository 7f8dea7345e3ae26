"""esctl.locks on real servers: what every user of a lock relies on. The queue lock's renewal and
loss are tested in test_queue_ops.py, each command's exit 75 with the command."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import time

import orjson
import psycopg
import pytest
import redis
from faultrelay import FaultRelay, script_sha
from helpers import run_cli
from psycopg import sql

from esctl import locks, queues, servers
from esctl.errors import LockHeld
from esctl.locks import AdvisoryLock, RedisLock, not_given_back, session_name


def redis_lock(client: redis.Redis, keys: list[str]) -> RedisLock:
    return RedisLock(client, keys, name="test lock", stopped="stopped", hint="rerun")


def test_a_redis_lock_takes_all_its_keys_or_none(redis_client: redis.Redis) -> None:
    redis_client.set("esctl:lock:test:b", "someone else", px=60_000)
    keys = ["esctl:lock:test:c", "esctl:lock:test:b", "esctl:lock:test:a"]
    held = r"\(someone else\) holds the lock esctl:lock:test:b; nothing was done"
    with pytest.raises(LockHeld, match=held), redis_lock(redis_client, keys):
        pass
    assert not redis_client.exists("esctl:lock:test:a")  # taken first, given back
    assert not redis_client.exists("esctl:lock:test:c")
    assert redis_client.get("esctl:lock:test:b") == b"someone else"
    with redis_lock(redis_client, ["esctl:lock:test:a", "esctl:lock:test:a"]) as lock:
        assert lock.keys == ["esctl:lock:test:a"]
        assert redis_client.get("esctl:lock:test:a") == lock.token.encode()
        assert 0 < redis_client.pttl("esctl:lock:test:a") <= lock.ttl_ms
    assert not redis_client.exists("esctl:lock:test:a")


@pytest.mark.parametrize("at", [1, 2])
def test_a_redis_lock_interrupted_as_it_is_taken_gives_back_what_it_set(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, at: int
) -> None:
    """Ctrl-C (or SIGTERM) just as Redis answered a SET of the lock: nothing of the lock stays
    (it stayed until it expired: a rerun within 30 s exited 75, 'another run holds the lock')."""
    keys = ["esctl:lock:test:x", "esctl:lock:test:y"]
    real = redis_client.set
    sets: list[object] = []

    def set_then_ctrl_c(*args: object, **kwargs: object) -> object:
        answer = real(*args, **kwargs)  # type: ignore[arg-type]
        sets.append(answer)
        if len(sets) == at:
            raise KeyboardInterrupt
        return answer

    monkeypatch.setattr(redis_client, "set", set_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt), redis_lock(redis_client, keys):
        pass
    assert sets == [True] * at
    assert not redis_client.exists(*keys)


def test_a_hurried_redis_lock_is_given_back_when_redis_answers_and_left_when_it_does_not(
    fresh_redis: servers.LocalRedis,
) -> None:
    """After a second Ctrl-C stopped a wait on Redis (``hurry``), the exit waits a moment only:
    the lock is given back when Redis answers, else left to expire (``given_back`` False; here
    the release, still waiting in the background, runs once Redis answers again)."""
    client = redis.Redis.from_url(fresh_redis.url)
    admin = redis.Redis.from_url(fresh_redis.url)
    with redis_lock(client, ["esctl:lock:test:h"]) as lock:
        lock.hurry(0.5)
    assert lock.given_back and not client.exists("esctl:lock:test:h")
    lock = redis_lock(client, ["esctl:lock:test:h"]).__enter__()
    admin.execute_command("CLIENT", "PAUSE", 3_000, "WRITE")
    try:
        lock.hurry(0.5)
        started = time.monotonic()
        lock.__exit__(None, None, None)  # (a with block's exit) while Redis holds every write
        took = time.monotonic() - started
        assert took < 1.5 and not lock.given_back
        assert admin.get("esctl:lock:test:h") == lock.token.encode()  # (reads are answered)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    client.close()
    admin.close()


def test_a_signal_while_a_redis_lock_is_given_back_leaves_it_and_says_so(
    redis_client: redis.Redis, redis_test_url: str
) -> None:
    """A Ctrl-C while a lock is given back (here as its release goes out: a relay holds it, so
    Redis never gets it) stops the release: the lock stays until it expires, ``left`` and
    ``cut_short`` say so, and ``not_given_back`` says a signal stopped the release (not that
    Redis did not answer it). A lock given back, and one never taken, add nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in esctl's CLI
    try:
        relay = FaultRelay(
            redis_test_url,
            script_sha(locks._RELEASE_SCRIPT),
            1,
            before=lambda: os.kill(os.getpid(), signal.SIGINT),
            hold=True,
        )
        with relay:
            client = redis.Redis.from_url(relay.url)
            lock = redis_lock(client, ["esctl:lock:test:s"])
            with pytest.raises(KeyboardInterrupt), lock:
                pass
            client.close()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert lock.left and lock.cut_short and not lock.given_back and not lock.hurried
    assert redis_client.get("esctl:lock:test:s") == lock.token.encode()
    assert not_given_back(lock) == (
        "; a signal stopped the release of the test lock esctl:lock:test:s, which may still be "
        "held: it expires 30 s after its last renewal, and a rerun before then exits 75"
    )
    given = redis_lock(redis_client, ["esctl:lock:test:g"])
    with given:
        pass
    never = redis_lock(redis_client, ["esctl:lock:test:n"])
    assert (
        not given.left and not never.left and not_given_back(given) == not_given_back(never) == ""
    )


def test_an_advisory_lock_is_held_for_the_block_and_free_right_after(pg_dsn: str) -> None:
    with AdvisoryLock(pg_dsn, "esctl:test:lock", what="test") as held:
        assert held.conn is not None
        again = AdvisoryLock(
            pg_dsn, "esctl:test:lock", what="test", held="another copy runs", hint="wait"
        )
        with pytest.raises(LockHeld, match=r"^another copy runs: ") as caught, again:
            pass
        assert caught.value.message.endswith("; nothing was done")
        assert caught.value.hint is not None and caught.value.hint.startswith("wait; ")
        with AdvisoryLock(pg_dsn, "esctl:test:other", what="test"):
            pass  # another name: another lock
    assert held.conn is None
    # unlocked before the connection closed: a rerun started right away gets it
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended('esctl:test:lock', 0))"
        ).fetchone()
        assert row == (True,)


def test_an_advisory_lock_held_by_esctl_names_the_command_process_and_machine(
    pg_dsn: str,
) -> None:
    """What an operator finds at exit 75 is which esctl run to look at: its command, its pid
    and its machine (the session's application_name), not just PostgreSQL's backend pid."""
    name = session_name("migrate prune")
    assert name.startswith(f"esctl migrate prune (pid {os.getpid()} on {socket.gethostname()}"[:63])
    with (
        AdvisoryLock(pg_dsn, "esctl:test:named", what="migrate prune"),
        pytest.raises(LockHeld) as caught,
        AdvisoryLock(pg_dsn, "esctl:test:named", what="x"),
    ):
        pass
    assert f"application {name!r}" in caught.value.message, caught.value.message


def test_a_session_name_fits_what_postgresql_keeps() -> None:
    """PostgreSQL keeps 63 bytes of application_name: a long name keeps the command and pid."""
    name = session_name("migrate restore-pruned")
    assert name.startswith(f"esctl migrate restore-pruned (pid {os.getpid()} on ")
    assert len(name.encode()) <= 63 and name.isascii()


def test_an_advisory_lock_is_released_when_the_block_raises(pg_dsn: str) -> None:
    with pytest.raises(RuntimeError), AdvisoryLock(pg_dsn, "esctl:test:lock", what="test"):
        raise RuntimeError("the run failed")
    with AdvisoryLock(pg_dsn, "esctl:test:lock", what="test"):
        pass


def test_a_redis_over_maxmemory_refusing_the_lock_is_named_with_what_to_do(
    fresh_redis: servers.LocalRedis,
) -> None:
    """Under noeviction, Redis refuses the lock's SET: the error names the lock key, says
    nothing was done and how to free memory, and the command exits 1 with the list untouched."""
    client = redis.Redis.from_url(fresh_redis.url)
    q = queues.QueueRef("Learning.ReportingService.Worker", "production", "ItemScoreCreated")
    stuck = [orjson.dumps({"Id": f"a{i}", "Version": 1}) for i in range(3)]
    client.lpush(q.key("processing"), *stuck)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used - 100_000)

    result = run_cli(
        "queue", "requeue", q.subscriber, q.event_type, "--env", q.env,
        "--redis-url", fresh_redis.url, "--yes", "--json",
    )  # fmt: skip

    assert result.returncode == 1, result.stderr
    error = orjson.loads(result.stdout)["error"]
    assert "answered with an error: command not allowed when used memory" in error["message"]
    assert error["message"].endswith(
        f"; esctl could not take its lock {q.lock_key}, so nothing was done"
    )
    assert "maxmemory" in error["hint"] and "esctl doctor" in error["hint"]
    client.config_set("maxmemory", 0)
    assert client.lrange(q.key("processing"), 0, -1) == list(reversed(stuck))
    assert not client.exists(q.lock_key)
    client.close()


def test_a_held_advisory_lock_names_its_holding_session_and_how_to_end_a_dead_one(
    pg_dsn: str,
) -> None:
    """The 3 a.m. case: the error names the session holding the lock (pid, user, application,
    address, start and age, state) and the hint the statement that ends it, with its pid."""
    with psycopg.connect(pg_dsn, autocommit=True, application_name="lost-node-run") as holder:
        row = holder.execute(
            "SELECT pg_backend_pid(), pg_try_advisory_lock(hashtextextended('esctl:test:dead', 0))"
        ).fetchone()
        assert row is not None and row[1]
        pid = row[0]
        with (
            pytest.raises(LockHeld) as caught,
            AdvisoryLock(pg_dsn, "esctl:test:dead", what="test"),
        ):
            pass
    message, hint = caught.value.message, caught.value.hint or ""
    assert f"held by PostgreSQL session pid {pid} (" in message, message
    assert "application 'lost-node-run'" in message
    assert re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, [\d.]+s ago", message), message
    assert "state idle" in message and "from " in message
    assert message.endswith("; nothing was done")
    assert f"`SELECT pg_terminate_backend({pid})`" in hint, hint
    assert hint.startswith("wait for it to finish; from cron, exit code 75")


def test_a_held_advisory_lock_says_what_pg_stat_activity_hides_from_this_user(
    pg_dsn: str,
) -> None:
    """A user without rights on the holder's session sees its pid, user and application in
    pg_locks and pg_stat_activity, not its address, start or state: the error says so and
    still gives the pid to end."""
    role = f"esctl_lock_test_{secrets.token_hex(4)}"
    with psycopg.connect(pg_dsn, autocommit=True, application_name="other-user-run") as holder:
        holder.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        try:
            pid = holder.execute("SELECT pg_backend_pid()").fetchone()
            holder.execute("SELECT pg_advisory_lock(hashtextextended('esctl:test:hidden', 0))")
            as_role = psycopg.conninfo.make_conninfo(pg_dsn, user=role)
            with (
                pytest.raises(LockHeld) as caught,
                AdvisoryLock(as_role, "esctl:test:hidden", what="test"),
            ):
                pass
        finally:
            holder.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert pid is not None
    message = caught.value.message
    assert f"PostgreSQL session pid {pid[0]} (" in message, message
    assert "application 'other-user-run'" in message
    assert "its address, start and state are hidden from this user" in message
    assert "pg_read_all_stats" in message
    assert f"`SELECT pg_terminate_backend({pid[0]})`" in (caught.value.hint or "")

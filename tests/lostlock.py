"""Taking a run's Redis lock away while it runs, for the tests of what each command does then:
its locks made with a short time to live (renewed every second, so a loss is noticed within
about a second), their keys set to another run's token, and a wait until the run's renewal has
noticed (its ``check()`` raises from then on). Also a client that calls back after each call of
one script, to take the lock away between two batches, and the command line run with its lock
taken away part-way."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis
from helpers import cli_env, wait_for

from esctl.locks import RedisLock

TTL_MS = 3000
"""The locks' time to live in these tests: renewed every second (a stalled renewal thread on a
loaded machine still meets it)."""

OTHER_RUN = b"otherhost:4242:0123456789ab"
"""The token another run's lock holds."""


class ShortLocks:
    """Every :class:`RedisLock` made while the test runs gets :data:`TTL_MS`; ``made`` lists
    them, the last one made last."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[RedisLock] = []
        real = RedisLock.__init__

        def short(lock: RedisLock, *args: Any, **kwargs: Any) -> None:
            kwargs["ttl_ms"] = TTL_MS
            real(lock, *args, **kwargs)
            self.made.append(lock)

        monkeypatch.setattr(RedisLock, "__init__", short)

    def take_away(self, client: redis.Redis) -> RedisLock:
        """Another run takes the last lock made (every key of it), and this returns once the
        renewal has noticed."""
        lock = self.made[-1]
        for key in lock.keys:
            client.set(key, OTHER_RUN)
        wait_for(lambda: lock.lost is not None, "the renewal noticed the lock was taken")
        return lock

    def give_back(self, client: redis.Redis) -> None:
        """The other run ends: its locks are gone (a rerun may take them)."""
        for lock in self.made:
            for key in lock.keys:
                if client.get(key) == OTHER_RUN:
                    client.delete(key)


class ScriptHook(redis.Redis):
    """A client that calls ``hook(n)`` after the n-th EVALSHA of the script whose SHA1 is
    ``sha`` returned (set both after connecting)."""

    sha: str = ""
    hook: Callable[[int], object] = staticmethod(lambda n: None)
    calls: int = 0

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        reply = super().evalsha(sha, numkeys, *keys_and_args)
        if sha == self.sha:
            self.calls += 1
            self.hook(self.calls)
        return reply


_CLI = """
import importlib, os, sys, time
import redis
from esctl.locks import RedisLock

made = []
real_init = RedisLock.__init__

def short(lock, *args, **kwargs):
    kwargs["ttl_ms"] = int(os.environ["LOSTLOCK_TTL_MS"])
    real_init(lock, *args, **kwargs)
    made.append(lock)

RedisLock.__init__ = short
for setting in filter(None, os.environ["LOSTLOCK_SET"].split(",")):
    where, _, value = setting.partition("=")
    module, _, name = where.partition(":")
    setattr(importlib.import_module(module), name, int(value))
module, _, path = os.environ["LOSTLOCK_AT"].partition(":")
owner = importlib.import_module(module)
*parents, name = path.split(".")
for parent in parents:
    owner = getattr(owner, parent)
real = getattr(owner, name)
calls = []

def take_away_after(*args, **kwargs):
    result = real(*args, **kwargs)
    calls.append(1)
    if len(calls) == int(os.environ["LOSTLOCK_NTH"]):
        lock = made[-1]
        admin = redis.Redis.from_url(os.environ["LOSTLOCK_URL"])
        for key in lock.keys:
            admin.set(key, os.environ["LOSTLOCK_OTHER"])
        deadline = time.monotonic() + 30
        while lock.lost is None and time.monotonic() < deadline:
            time.sleep(0.01)
    return result

setattr(owner, name, take_away_after)
sys.argv[0] = "esctl"
from esctl.cli.app import main
main()
"""


def run_cli_losing_the_lock(
    url: str, at: str, nth: int, args: list[str], *, settings: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``esctl ARGS`` whose lock (made with :data:`TTL_MS`) another run takes (at ``url``)
    once the ``nth`` call of ``at`` (``module:name`` or ``module:Class.method``) returned,
    waiting until the renewal noticed; ``settings``: ``module:NAME=number`` set first (a batch
    size)."""
    result = subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={
            **cli_env(), "LOSTLOCK_URL": url, "LOSTLOCK_AT": at, "LOSTLOCK_NTH": str(nth),
            "LOSTLOCK_SET": ",".join(settings), "LOSTLOCK_TTL_MS": str(TTL_MS),
            "LOSTLOCK_OTHER": OTHER_RUN.decode(),
        },
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result

"""The locks that keep two esctl runs off the same work: a Redis lock renewed while a run lasts
(queues, compress, replay into queues) and a PostgreSQL advisory lock held on its own connection
(migrate, prune, replay checkpoints). Both raise LockHeld on entry when another run holds them."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from esctl import redisio
from esctl.config import redact
from esctl.errors import EsctlError, LockHeld, LockLost

if TYPE_CHECKING:
    import psycopg

REDIS_LOCK_TTL_MS = 30_000
"""A Redis lock expires this long after its last renewal (a crashed run's lock frees itself)."""

_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _run_script(
    client: redisio.RedisClient, script: str, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """EVALSHA with a fallback to EVAL the first time a server sees the script. Raises
    redis-py's exceptions (the callers decide what a failure means)."""
    return client.register_script(script)(keys=list(keys), args=list(args))


class RedisLock:
    """A lock on one or more Redis keys: ``SET key token NX PX ttl``, renewed by a thread while
    held, released with a compare-and-delete (never someone else's lock). Raises LockHeld on
    entry when any of the keys is held (having taken nothing). ``check()`` raises LockLost (a
    ServerError) ``lost the {name}: why; {stopped}`` (with ``hint``) once a renewal found the
    lock gone (taken or deleted by someone else, or not renewable for its TTL); ``lost`` and
    ``lost_key`` say so without raising. A run that catches it stops sending and reports what
    it did, the lost lock as the reason it stopped.

    ``token`` and ``ttl_ms`` are public so that a server-side script can check the lock is
    still this run's (a fencing token) and renew it in the same call."""

    def __init__(
        self,
        client: redisio.RedisClient,
        keys: Iterable[str],
        *,
        name: str,
        stopped: str,
        hint: str,
        ttl_ms: int = REDIS_LOCK_TTL_MS,
    ) -> None:
        self.client = client
        self.keys = sorted(set(keys))  # one order for every run: two runs never deadlock
        self.name = name
        self.stopped = stopped
        self.hint = hint
        self.ttl_ms = ttl_ms
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.held: list[str] = []
        self.lost: str | None = None
        """Set (once, by the renewal thread) when the lock was found gone: why, naming its key."""
        self.lost_key: str | None = None
        """The key of the lock that was found gone (set before ``lost``)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RedisLock:
        key = self.keys[0] if self.keys else ""
        try:
            for key in self.keys:
                if not self.client.set(key, self.token, nx=True, px=self.ttl_ms):
                    holder = self.client.get(key)
                    ttl = self.client.pttl(key)
                    self._release()
                    who = redisio.key_str(holder) if holder else "another run"
                    raise LockHeld(
                        f"another esctl run ({who}) holds the lock {key}; nothing was done",
                        hint=f"wait for it to finish (its lock expires {max(ttl, 0) / 1000:.0f} s "
                        "after its last renewal if it died); from cron, exit code 75 means "
                        "the previous run is still going",
                    )
                self.held.append(key)
        except redisio.REDIS_ERRORS as exc:
            self._release()
            error = redisio.wrap_errors(self.client, exc)
            if isinstance(error, EsctlError):
                error.add(f"esctl could not take its lock {key}, so nothing was done")
            raise error from exc
        self._thread = threading.Thread(target=self._renew, name="esctl-redis-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._release()

    def check(self) -> None:
        """LockLost when a renewal found the lock gone."""
        lost = self.lost
        if lost:
            raise LockLost(
                f"lost the {self.name}: {lost}; {self.stopped}",
                key=self.lost_key or "",
                why=lost,
                hint=self.hint,
            )

    def _renew(self) -> None:
        interval = self.ttl_ms / 3000
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            key = self.held[0] if self.held else ""
            try:
                for key in self.held:
                    if not _run_script(
                        self.client, _RENEW_SCRIPT, [key], [self.token, self.ttl_ms]
                    ):
                        self._found_lost(key, f"{key} was taken or deleted by someone else")
                        return
                last_ok = time.monotonic()
            except redisio.REDIS_ERRORS as exc:
                if time.monotonic() - last_ok > self.ttl_ms / 1000:
                    why = f"could not renew {key} for {self.ttl_ms / 1000:.0f} s"
                    self._found_lost(key, f"{why}: {redact(str(exc))}")
                    return

    def _found_lost(self, key: str, why: str) -> None:
        self.lost_key = key
        self.lost = why

    def _release(self) -> None:
        for key in self.held:
            with contextlib.suppress(*redisio.REDIS_ERRORS):
                _run_script(self.client, _RELEASE_SCRIPT, [key], [self.token])
        self.held = []


class AdvisoryLock:
    """A session-level PostgreSQL advisory lock on ``name``, held on its own connection for as
    long as the ``with`` block runs: released when the process dies (kill -9 included), so a
    crashed cron run never blocks the next one. Raises LockHeld(``held``, ``hint``) on entry
    when another session holds it."""

    def __init__(
        self,
        dsn: str,
        name: str,
        *,
        held: str | None = None,
        hint: str = "wait for it to finish; nothing was done",
    ) -> None:
        self.dsn = dsn
        self.name = name
        self.held = held if held is not None else f"another esctl run holds the lock {name!r}"
        self.hint = hint
        self.conn: psycopg.Connection | None = None

    def __enter__(self) -> AdvisoryLock:
        # Imported here: the queue commands use this module and never load the driver.
        from esctl import pg

        conn = pg.connect(self.dsn, autocommit=True, application_name="esctl lock")
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (self.name,)
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        if not row or not row[0]:
            conn.close()
            raise LockHeld(self.held, hint=self.hint)
        self.conn = conn
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.conn is None:
            return
        import psycopg

        try:
            # Unlock before closing: the server frees a closed session's locks a moment
            # later, and an immediate rerun would find the lock still held (exit 75).
            with contextlib.suppress(psycopg.Error):
                self.conn.execute(
                    "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (self.name,)
                )
            self.conn.close()
        finally:
            self.conn = None

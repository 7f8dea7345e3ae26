"""The queue commands' lock: one mutating esctl run at a time on a subscriber's lists
(``esctl:lock:{ENV:TYPE}:SUB``). Its token fences every script's change
(:mod:`esctl.queues.scripts`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from esctl import redisio
from esctl.locks import REDIS_LOCK_TTL_MS, RedisLock
from esctl.queues.refs import QueueRef


def queue_lock(
    client: redisio.RedisClient, refs: Sequence[QueueRef], *, ttl_ms: int = REDIS_LOCK_TTL_MS
) -> RedisLock:
    """The queue commands' lock on every queue of ``refs`` (:class:`esctl.locks.RedisLock`;
    LockHeld when another run holds one of them). Its token fences every script's change."""
    return RedisLock(
        client,
        (r.lock_key for r in refs),
        name="queue lock",
        stopped="stopped (every move so far is complete)",
        hint="make sure no other esctl run works on this queue, then rerun",
        ttl_ms=ttl_ms,
    )


@contextlib.contextmanager
def maybe_locked(
    client: redisio.RedisClient, refs: Sequence[QueueRef], dry_run: bool
) -> Iterator[RedisLock | None]:
    """The lock, or None for a dry run (which changes nothing, so takes no lock)."""
    if dry_run:
        yield None
        return
    with queue_lock(client, refs) as lock:
        yield lock


def check_held(lock: RedisLock | None) -> None:
    """ServerError when a run's lock was lost (nothing to check without one)."""
    if lock is not None:
        lock.check()

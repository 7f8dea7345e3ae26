"""The queue commands' lock: one mutating esctl run at a time on a subscriber's lists
(``esctl:lock:{ENV:TYPE}:SUB``). Its token fences every script's change
(:mod:`esctl.queues.scripts`)."""

from __future__ import annotations

from collections.abc import Sequence

from esctl import redisio
from esctl.errors import LockLost
from esctl.locks import REDIS_LOCK_TTL_MS, RedisLock
from esctl.queues.refs import QueueRef

NO_OTHER_RUN = "make sure no other esctl run works on this queue"
LOST_HINT = f"{NO_OTHER_RUN}, then rerun"
"""What to do about a lost queue lock (the lock's hint, and a stopped run's problem)."""

LOST_LOCK = "lost the queue lock"
"""How the reason a run stopped for its lost lock begins (:func:`lost_lock`)."""

FENCED = "ESCTL_LOCK"
"""The first word of a script's error reply when the lock is no longer this run's (the guard
in :mod:`esctl.queues.scripts`): that batch did not run."""


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
        hint=LOST_HINT,
        ttl_ms=ttl_ms,
    )


def check_held(lock: RedisLock | None) -> None:
    """ServerError when a run's lock was lost (nothing to check without one)."""
    if lock is not None:
        lock.check()


def is_fenced(error: object) -> bool:
    """Whether a batch's error (a reply or an exception) is the guard's: the lock was no longer
    this run's, so the batch changed nothing."""
    return str(error).startswith(FENCED)


def lost_lock(lost: LockLost | None = None, *, key: str = "", batch: str = "") -> str:
    """Why a run stopped for its lost queue lock: ``lost``, what the renewal found; else a
    ``batch`` (``"2 moves"``) whose script found the lock ``key`` no longer this run's."""
    if lost is not None:
        return f"{LOST_LOCK}: {lost.why}"
    return (
        f"{LOST_LOCK}: {key} is no longer held by this run (a batch of {batch} "
        "found it so, and did not run)"
    )


def notification_missed(sent: bool, notified: bool, broke: bool) -> str:
    """What an interrupted run's state adds when it ``sent`` messages to a list (or may
    have) and its notification did not go out: a second signal (``broke``) may have stopped
    it, else it failed. Nothing otherwise."""
    if not sent or notified:
        return ""
    how = "was not sent, or not answered" if broke else "failed"
    return f"; the notification {how} (subscribers pick them up on their next one)"

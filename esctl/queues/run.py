"""One run of a queue command that changes a list: what the caller plugs in (:class:`Hooks`),
and, for requeue and drain, the run itself: the queue lock, the selection under it, and what
Ctrl-C or SIGTERM left (:func:`selected_run`), with the summary fields both share
(:class:`SelectedSummary`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from esctl import redisio
from esctl.errors import Interrupted
from esctl.interrupts import HeldInterrupts
from esctl.locks import RedisLock, after_broken_wait, not_given_back
from esctl.queues.confirm import Confirm
from esctl.queues.lock import queue_lock
from esctl.queues.messages import MessageInfo
from esctl.queues.progress import OnPhase, OnProgress
from esctl.queues.refs import QueueRef
from esctl.queues.selection import SelectingOptions, Snapshot, select_locked


@dataclass(frozen=True)
class Hooks:
    """What the caller of a requeue, drain or restore plugs into the run."""

    confirm: Confirm | None = None
    """Asked before the first change (Refused when it says no); None: nothing to ask."""
    on_progress: OnProgress | None = None
    """The messages moved of those selected (:mod:`esctl.queues.progress`): once the run holds
    its lock and is confirmed (not for a dry run or an empty selection), then per batch
    counted."""
    on_phase: OnPhase | None = None
    """The steps before the moves, holding the lock (:mod:`esctl.queues.progress`)."""
    sleep: Callable[[float], None] = time.sleep
    """How a ``--grace`` selection waits between its two looks."""


@dataclass(slots=True)
class SelectedSummary:
    """What a requeue's and a drain's summaries share: the queue, what was examined and
    selected, what was gone or failed, and the problems."""

    dry_run: bool
    subscriber: str
    env: str
    event_type: str
    examined: int
    """Messages in the list when it was (last) snapshotted."""
    selected: int
    gone: int
    """Selected, but no longer in the list when esctl came to it (a consumer took it, or the
    library's retry job moved it): not moved, never duplicated."""
    failed: int
    """Selected messages esctl could not move or cannot say whether it moved (a server error or
    a lost connection mid-batch): non-zero makes the command exit non-zero."""
    problems: list[dict[str, str]]
    messages: list[MessageInfo]
    """Dry run: the selected messages."""
    selection: dict[str, Any]
    elapsed_s: float


@dataclass(slots=True)
class SelectedRun:
    """A run inside :func:`selected_run`: its selection, its held signals and its lock."""

    snap: Snapshot
    held: HeldInterrupts
    lock: RedisLock | None
    """None for a dry run, which changes nothing."""

    @property
    def locked(self) -> RedisLock:
        """The lock, of a run that changes something."""
        assert self.lock is not None  # held whenever not a dry run
        return self.lock


@contextlib.contextmanager
def selected_run(
    client: redisio.RedisClient,
    ref: QueueRef,
    which: str,
    options: SelectingOptions,
    hooks: Hooks,
    *,
    retry_keys: bool,
    interrupted: Callable[[HeldInterrupts], Interrupted],
) -> Iterator[SelectedRun]:
    """The selection from ``which`` holding the queue's lock (none for a dry run), for the
    block to act on; Ctrl-C (or SIGTERM) is held where the block says (``run.held``), and is
    checked once it ends. When a signal stops the run, ``interrupted`` says what the run left
    (it is given the held signals: ``held.in_doubt``), and its hint says too when the lock may
    still be held (a signal stopped its release, or Redis did not answer it). A second signal
    that stopped a wait for Redis leaves the connection to be settled
    (:func:`esctl.locks.after_broken_wait`) before the lock is given back."""
    held = HeldInterrupts()
    lock = None if options.dry_run else queue_lock(client, [ref])
    try:
        selecting = select_locked(
            client,
            ref,
            which,
            options,
            lock=lock,
            retry_keys=retry_keys,
            sleep=hooks.sleep,
            on_phase=hooks.on_phase,
        )
        with selecting as snap:
            try:
                yield SelectedRun(snap, held, lock)
            finally:
                if held.broke:
                    after_broken_wait(client, lock)
            held.check()  # a Ctrl-C held during the last batch sent: it is counted
    except KeyboardInterrupt as exc:
        if options.dry_run or isinstance(exc, Interrupted):
            raise
        error = interrupted(held)
        error.hint += not_given_back(lock)  # however the signals fell
        raise error from exc

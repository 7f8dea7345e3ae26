"""``queue requeue``: move stuck messages (ProcessingEvents) or dead letters back to the tail of
PublishedEvents, where a consumer takes them next, one atomic move each, then notify the
subscribers. How moves stay atomic and always end: ``docs/design/queues.md``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from esctl import inflight, redisio
from esctl.config import redact
from esctl.errors import Interrupted, LockLost, UsageError
from esctl.interrupts import HeldInterrupts
from esctl.locks import RedisLock
from esctl.queues.confirm import Plan, require_confirmation
from esctl.queues.lock import (
    LOST_HINT,
    LOST_LOCK,
    is_fenced,
    lost_lock,
    notification_missed,
)
from esctl.queues.progress import OnProgress, reporter
from esctl.queues.refs import QueueRef, problem, summary_document
from esctl.queues.run import Hooks, SelectedSummary, selected_run
from esctl.queues.scripts import MOVE_SCRIPT, notify, refusal_hint
from esctl.queues.selection import (
    Candidate,
    SelectingOptions,
    Snapshot,
    batches,
    direction,
)
from esctl.units import counted

_END = object()
"""The end of the replies (:func:`_move`)."""


@dataclass(frozen=True)
class RequeueOptions(SelectingOptions):
    source: str = "processing"
    """``processing`` (stuck messages) or ``dead`` (dead letters)."""
    keep_retry_data: bool = False


@dataclass(slots=True)
class RequeueSummary(SelectedSummary):
    source: str
    source_key: str
    destination_key: str
    requeued: int
    retry_data_cleared: int
    notified: bool

    def as_dict(self) -> dict[str, Any]:
        return summary_document(
            self,
            "dry_run subscriber env event_type source source_key destination_key examined"
            " selected requeued gone failed retry_data_cleared notified problems messages"
            " selection elapsed_s",
        )


def requeue(
    client: redisio.RedisClient,
    ref: QueueRef,
    options: RequeueOptions,
    hooks: Hooks = Hooks(),
) -> RequeueSummary:
    """Move selected messages of ProcessingEvents (or DeadLetters) back to the tail of
    PublishedEvents, where RPOPLPUSH takes them next, oldest taken first; then PUBLISH one
    notification on ``ENV:TYPE`` so live subscribers drain them.

    Each move is atomic (LREM one occurrence; only if it was there, RPUSH): a message a
    consumer finished or took meanwhile is counted ``gone``, never duplicated, never lost.
    Requeued dead letters get their RetryData hash deleted in the same script unless
    ``keep_retry_data``. The selection is a snapshot: the run always ends. Holds the queue's
    lock (LockHeld when another run has it) unless ``dry_run``; asks ``hooks.confirm`` before
    the first move (Refused when it says no). Ctrl-C (or SIGTERM) stops the sending; the
    batches sent are answered and counted, the notification goes out, and Interrupted says
    what moved. A second one while Redis does not answer stops the wait: Interrupted then
    also says how many messages were sent in batches whose answers were not read (in doubt)
    (:func:`esctl.queues.run.selected_run`). Progress: per answered batch; the phases
    ``reading list`` and ``selecting``."""
    started = time.perf_counter()
    if options.source not in ("processing", "dead"):
        raise UsageError(
            f"cannot requeue from {options.source!r}",
            hint="use `--from processing` or `--from dead`",
        )
    options.selection.check(options.source)
    clear = options.source == "dead" and not options.keep_retry_data
    summary: RequeueSummary | None = None

    def interrupted(held: HeldInterrupts) -> Interrupted:
        return _interrupted(ref, options, summary, held)

    selecting = selected_run(
        client, ref, options.source, options, hooks, retry_keys=clear, interrupted=interrupted
    )
    with selecting as run:
        snap, held = run.snap, run.held
        summary = RequeueSummary(
            **snap.summary_fields(ref, options),
            source=options.source,
            source_key=snap.key,
            destination_key=ref.key("published"),
            requeued=0,
            retry_data_cleared=0,
            notified=False,
        )
        if options.dry_run or not snap.count:
            summary.elapsed_s = time.perf_counter() - started
            return summary
        plan = Plan("requeue", snap.count, snap.key, ref.key("published"))
        require_confirmation(hooks.confirm, plan)
        with held.holding():  # the notification goes out whatever stops the moves
            try:
                _move(client, ref, snap, summary, run.locked, held, hooks.on_progress)
            finally:
                if summary.requeued and not held.broke:
                    with held.waiting():
                        summary.notified = notify(client, ref.channel, summary.problems)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _interrupted(
    ref: QueueRef,
    options: RequeueOptions,
    summary: RequeueSummary | None,
    held: HeldInterrupts,
) -> Interrupted:
    """What Ctrl-C or SIGTERM left: the batches sent before it were answered and counted
    (Ctrl-C is held while they are with Redis), so ``summary`` says exactly what moved; when
    a second signal stopped the wait for Redis, ``held.in_doubt`` messages were sent in
    batches whose answers were not read (each batch ran whole or not at all)."""
    source = ref.key(options.source)
    if summary is None or not summary.selected:
        state = f"nothing was requeued from {source}"
        if summary is None:
            state += " (it stopped while selecting messages)"
        return Interrupted(
            state,
            hint="rerun the same command",
            done={"requeued": 0, "gone": 0},
        )
    moved, gone, doubt = summary.requeued, summary.gone, held.in_doubt
    left = summary.selected - moved - gone - doubt
    state = (
        f"{counted(moved, 'message')} requeued from {source} to {summary.destination_key} "
        "before it stopped"
    )
    if gone:
        state += f" ({gone:,} more gone: taken meanwhile, not moved)"
    if doubt:
        state += _in_doubt(doubt, after=bool(moved or gone))
    stopped = [p["detail"] for p in summary.problems if p["kind"] == "move_failed"]
    if stopped:  # the run was stopping for another reason too: what it says of the rest
        state += f"; {stopped[0]}"
    elif left:
        verb = "was" if left == 1 else "were"
        if doubt:
            state += f"; the other {left:,} {verb} not sent"
        else:
            state += f"; the other {counted(left, 'selected message')} {verb} not moved"
    elif not doubt:
        state += "; that was every selected message"
    state += notification_missed(bool(moved or doubt), summary.notified, held.broke)
    done = {"requeued": moved, "gone": gone}
    if doubt:
        done["requeued_in_doubt"] = doubt
    return Interrupted(state, hint=_rerun(source, options, held), done=done)


def _in_doubt(doubt: int, *, after: bool) -> str:
    """What an interruption says of the ``doubt`` messages sent and not answered (``after``
    those it counts)."""
    return (
        f"; whether the {counted(doubt, 'selected message')} sent {'after them ' if after else ''}"
        f"{'was' if doubt == 1 else 'were'} moved is not known (a second signal stopped the wait "
        "for Redis's answer; each batch ran whole or not at all)"
    )


def _rerun(source: str, options: RequeueOptions, held: HeldInterrupts) -> str:
    """An interrupted requeue's hint."""
    hint = (
        f"rerun the same command to requeue the rest: it selects again from what is left in "
        f"{source}, and what was requeued is no longer there (nothing is moved twice"
    )
    if held.in_doubt:
        hint += (
            ": a batch in doubt has run by the time a rerun takes the queue lock, or never "
            "runs, since each checks the lock is this run's"
        )
    hint += ")"
    if options.selection.limit is not None:
        hint += "; --limit counts afresh"
    return hint


def _move(
    client: redisio.RedisClient,
    ref: QueueRef,
    snap: Snapshot,
    summary: RequeueSummary,
    lock: RedisLock,
    held: HeldInterrupts,
    on_progress: OnProgress | None = None,
) -> None:
    """The moves, a batch per script call, several calls in flight (as many as the round trip
    to Redis calls for: :func:`esctl.inflight.depth_for`), each still one atomic step, run in
    the order sent. After an error reply, a lost connection or a lost lock (the renewal found
    it gone, or a batch's script did: that batch did not run) nothing more is sent; the
    replies of the calls already sent are still counted. A refusal (NOPERM: the script checks
    the user's rights before any change) raises PermissionDenied when no batch ran; once one
    did (before it, or sent behind it: the rights a batch needs depend on its RetryData keys),
    the summary says what moved and what was refused. A Ctrl-C ``held`` stops the sending
    as a lost lock does (the replies still due are read and counted); the caller raises it.
    A second one while it waits for them stops the wait (KeyboardInterrupt): ``held.in_doubt``
    is then the messages of the batches sent and not answered. ``on_progress``: the counts
    before the first batch, then after each answer is counted (Ctrl-C still held)."""
    report = reporter(on_progress, snap.count, lambda: (summary.requeued, summary.gone))
    report()  # holding the lock, confirmed: the bar may be drawn now
    pace = inflight.Pace(start=2, least=2, latency_s=redisio.round_trip(client))
    sent: list[int] = []  # batch sizes, in the order sent
    stop: list[str] = []  # why the run stops, the first reason first
    ran = 0  # batches Redis ran
    denied: Exception | None = None  # the refusal that stopped the run

    def calls() -> Iterator[tuple[Any, ...]]:
        done = 0
        # head to tail, read back a page at a time: the oldest is pushed last, to the tail
        for batch in batches(snap.head_first()):
            # send no more; the replies still due are read
            if stop or held.caught or _lost(lock, stop):
                return
            sent.append(len(batch))
            yield _move_call(ref, snap, summary, lock, batch, done)
            done += len(batch)

    answered = 0
    try:
        for reply in _waited(redisio.windowed(client, calls(), pace), held):
            size = sent[answered]
            answered += 1
            if isinstance(reply, Exception):
                denied = _stopping(reply, size, ref, summary, stop) or denied
                continue
            ran += 1
            _count(reply, size, summary)
            report()  # after the count: never between an answer and it
    except redisio.REDIS_ERRORS as exc:
        unsure = sum(sent[answered:])
        stop.insert(
            0,
            f"lost the connection during {len(sent) - answered} batch(es) of {unsure} moves "
            f"to {summary.destination_key} ({redact(str(exc))})",
        )
        then = " (the batches may have completed: every move in each is whole)"
    except KeyboardInterrupt:
        _broken(held, sum(sent[answered:]), stop, summary, snap.key)
        raise
    else:
        then = ""
        if denied is not None and not ran:  # nothing was changed: the refusal is the answer
            raise redisio.permission_denied(redisio.describe(client), denied)
    summary.failed = snap.count - summary.requeued - summary.gone
    if stop:
        detail = _hinted(client, _stopped(stop[0], summary, then), denied)
        summary.problems.append(problem("move_failed", snap.key, detail))


def _broken(
    held: HeldInterrupts, unanswered: int, stop: list[str], summary: RequeueSummary, key: str
) -> None:
    """When a second signal stopped the wait (``held.broke``) for the answers of batches of
    ``unanswered`` messages: they are in doubt; a reason the sending had stopped for already
    (``stop``) is the run's problem, for the interruption to say."""
    if not held.broke:
        return
    held.in_doubt = unanswered
    if stop:
        summary.problems.append(problem("move_failed", key, stop[0]))


def _count(reply: Any, size: int, summary: RequeueSummary) -> None:
    """Count the answer of a batch of ``size`` moves that ran."""
    flags, cleared = reply
    moved = sum(1 for f in flags if int(f) == 1)
    summary.requeued += moved
    summary.gone += size - moved
    summary.retry_data_cleared += int(cleared)


def _waited(replies: Iterator[Any], held: HeldInterrupts) -> Iterator[Any]:
    """``replies``, each waited for as :meth:`HeldInterrupts.waiting` (a second Ctrl-C stops
    the wait); closed however it ends (a wait broken off: its connection is closed, never
    used again)."""
    try:
        while True:
            with held.waiting():
                reply = next(replies, _END)
            if reply is _END:
                return
            yield reply
    finally:
        close = getattr(replies, "close", None)
        if close is not None:
            close()


def _lost(lock: RedisLock, stop: list[str]) -> bool:
    """Whether the lock was found gone (then ``stop`` says so)."""
    try:
        lock.check()
    except LockLost as exc:
        stop.append(lost_lock(exc))
        return True
    return False


def _stopping(
    reply: Exception, size: int, ref: QueueRef, summary: RequeueSummary, stop: list[str]
) -> Exception | None:
    """A batch's error ``reply``: the first stops the run (``stop`` says why); when that is a
    refusal (NOPERM: refused before any change in it), the refusal."""
    if stop:
        return None
    stop.append(_refused(reply, size, ref, summary))
    return reply if redisio.is_denied(reply) else None


def _refused(reply: Exception, size: int, ref: QueueRef, summary: RequeueSummary) -> str:
    """Why a batch's error ``reply`` stops the run (its script found the lock no longer this
    run's: the lost lock; the batch did not run)."""
    if is_fenced(reply):
        return lost_lock(key=ref.lock_key, batch=f"{size} moves")
    return (
        f"Redis refused a batch of {size} moves to {summary.destination_key} ({redact(str(reply))})"
    )


def _stopped(reason: str, summary: RequeueSummary, then: str) -> str:
    """The problem of a run stopped for ``reason``, with what it did and did not do (``then``:
    what may have happened to the batches whose replies never came)."""
    if then or not reason.startswith(LOST_LOCK):
        return f"{reason}; {summary.failed} selected messages not requeued{then}"
    return (
        f"{reason}; nothing more was sent, and every batch already sent was answered and is "
        f"counted ({summary.requeued} requeued, {summary.gone} gone); {summary.failed} "
        f"selected messages not requeued; {LOST_HINT} to requeue the rest"
    )


def _hinted(client: redisio.RedisClient, detail: str, denied: Exception | None) -> str:
    """A stopped run's problem ``detail``, with what to do about a refusal (``denied``)."""
    return detail if denied is None else f"{detail}; {refusal_hint(client, denied)}"


def _move_call(
    ref: QueueRef,
    snap: Snapshot,
    summary: RequeueSummary,
    lock: RedisLock,
    batch: list[Candidate],
    done: int,
) -> tuple[Any, ...]:
    """One batch's EVAL of the move script (``done``: messages in the batches before it)."""
    keys: list[str] = [ref.lock_key, snap.key, summary.destination_key]
    slots: dict[str, int] = {}
    key_index: list[int] = []
    for c in batch:
        if c.retry_key is None:
            key_index.append(0)
            continue
        if c.retry_key not in slots:
            keys.append(c.retry_key)
            slots[c.retry_key] = len(keys)  # Lua's KEYS is 1-based
        key_index.append(slots[c.retry_key])
    args: list[Any] = [lock.token, lock.ttl_ms, *direction(batch, done, snap.length)]
    args.append(len(batch))
    args += [c.value for c in batch]
    args += key_index
    # EVAL, not EVALSHA: a NOSCRIPT answer re-sent later would run out of order
    return ("EVAL", MOVE_SCRIPT, len(keys), *keys, *args)

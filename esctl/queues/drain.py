"""``queue drain``: back up the selected messages of one list to a new file, then remove them,
one batch at a time, recording each batch's outcome in the file (``--discard``: remove without
a backup). Why in that order, and why in batches: ``docs/design/queues.md``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from esctl import redisio
from esctl.backupfile import BackupWriter
from esctl.config import redact
from esctl.errors import Interrupted, LockLost, Refused
from esctl.interrupts import HeldInterrupts
from esctl.locks import RedisLock
from esctl.queues.backup import (
    EMPTY_OUTCOME,
    OUTCOME_TTL_MS,
    create_backup,
    record_complete,
    record_outcome,
)
from esctl.queues.confirm import Plan, require_confirmation
from esctl.queues.lock import (
    LOST_HINT,
    is_fenced,
    lost_lock,
)
from esctl.queues.progress import PhaseReporter, counting, reporter
from esctl.queues.refs import QueueRef, check_list_name, problem, summary_document
from esctl.queues.run import Hooks, SelectedSummary, selected_run
from esctl.queues.scripts import REMOVE_SCRIPT, failure_text, refusal_hint
from esctl.queues.selection import SelectingOptions, Snapshot, batches, direction
from esctl.units import counted


@dataclass(frozen=True)
class DrainOptions(SelectingOptions):
    which: str = "dead"
    to_file: Path | None = None
    discard: bool = False
    """Remove without a backup (only when explicitly asked for)."""


@dataclass(slots=True)
class DrainSummary(SelectedSummary):
    list_name: str
    key: str
    drained: int
    backup_file: str | None
    backup_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return summary_document(
            self,
            "dry_run subscriber env event_type key examined selected drained gone failed"
            " backup_file backup_id problems messages selection elapsed_s list_name",
        )


def drain(
    client: redisio.RedisClient,
    ref: QueueRef,
    options: DrainOptions,
    hooks: Hooks = Hooks(),
) -> DrainSummary:
    """Back up, then remove, the selected messages of one list.

    The backup (``to_file``, created 0600, never overwritten) holds every selected message and
    is fsynced, with its folder, before the first removal. Removal is count-aware LREM in
    server-side scripts: exactly the backed-up values, so messages that arrive meanwhile stay.
    Each batch's outcome (removed, or gone because a consumer took it first) is appended to the
    file before the next batch. Without ``to_file`` it refuses unless ``discard``. Holds the
    queue's lock unless ``dry_run``; asks ``hooks.confirm`` before writing anything. Ctrl-C (or
    SIGTERM) waits for the batch in hand and its outcome record, then Interrupted says what
    was drained. A second one while Redis does not answer stops the wait: Interrupted then
    also says the batch in hand is in doubt, and what the backup file and Redis know of it
    (:func:`esctl.queues.run.selected_run`). Progress: after the backup is written, then per
    batch once its outcome is recorded; the phases ``reading list``, ``selecting`` and, once
    confirmed, ``backing up`` (the messages written to the backup file)."""
    started = time.perf_counter()
    which = check_list_name(options.which)
    options.selection.check(which)
    if options.to_file is None and not options.discard and not options.dry_run:
        raise Refused(
            "drain removes messages: it needs a backup file (--to-file PATH.jsonl.zst)",
            hint="pass `--to-file PATH.jsonl.zst`, or `--discard --yes` to drop them without a "
            "backup",
        )
    if options.to_file is not None and options.to_file.exists():
        raise Refused(
            f"the backup file {options.to_file} already exists; esctl never overwrites a backup",
            hint="choose a new --to-file name",
        )
    summary: DrainSummary | None = None

    def interrupted(held: HeldInterrupts) -> Interrupted:
        return _interrupted(ref, options, which, summary, held)

    selecting = selected_run(
        client, ref, which, options, hooks, retry_keys=False, interrupted=interrupted
    )
    with selecting as run:
        snap = run.snap
        summary = DrainSummary(
            **snap.summary_fields(ref, options),
            list_name=which,
            key=snap.key,
            drained=0,
            backup_file=None,
            backup_id=None,
        )
        # Nothing selected still leaves the backup asked for (empty, complete): a script
        # that drains to a file and later restores it finds the file either way.
        if options.dry_run or (not snap.count and options.to_file is None):
            summary.elapsed_s = time.perf_counter() - started
            return summary
        action = "drain" if options.to_file is not None else "discard"
        report = reporter(hooks.on_progress, snap.count, lambda: (summary.drained, summary.gone))
        if snap.count:
            plan = Plan(action, snap.count, snap.key, _str(options.to_file))
            require_confirmation(hooks.confirm, plan)
        writer = None
        if options.to_file is not None:
            messages = snap.tail_first()
            if snap.count:  # holding the lock, confirmed: a bar may show the backup written
                messages = counting(
                    messages, PhaseReporter(hooks.on_phase, "backing up", snap.count)
                )
            writer, summary.backup_id = create_backup(
                options.to_file,
                ref,
                which,
                snap.length,
                snap.count,
                messages,
                options.selection.describe(),
                snap.now,
            )
            summary.backup_file = str(options.to_file)
        if snap.count:
            report()  # holding the lock, confirmed, the backup on disk: the removals' bar
        try:
            _remove(client, snap, summary, writer, run.locked, ref, which, run.held, report)
        finally:
            if writer is not None:
                writer.close()
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _interrupted(
    ref: QueueRef,
    options: DrainOptions,
    which: str,
    summary: DrainSummary | None,
    held: HeldInterrupts,
) -> Interrupted:
    """What Ctrl-C or SIGTERM left: it is held while a removal batch runs and its outcome is
    written to the backup file, so ``summary`` counts exactly the batches that ran, and the
    file marks them; when a second signal stopped the wait for Redis, the ``held.in_doubt``
    messages of the batch in hand may or may not have been removed (:func:`_in_doubt`)."""
    key = ref.key(which)
    path = _str(options.to_file)
    if summary is None or (summary.backup_file is None and path is not None):
        # stopped before the backup was written whole: no removal was sent
        state = f"nothing was drained from {key}"
        hint = "rerun the same command"
        if options.to_file is not None and options.to_file.exists():  # drain made it
            state += f"; the backup file {path} was left unfinished"
            hint = f"delete {path} (it marks nothing drained), or choose a new --to-file, and rerun"
        elif summary is None:
            state += " (it stopped while selecting messages)"
        return Interrupted(state, hint=hint, done={"drained": 0, "gone": 0})
    drained, gone, doubt = summary.drained, summary.gone, held.in_doubt
    done = {"drained": drained, "gone": gone}
    if doubt:
        done["drained_in_doubt"] = doubt
    left = summary.selected - drained - gone - doubt
    stopped = [p["detail"] for p in summary.problems if p["kind"] == "remove_failed"]
    if path is not None and not (drained or gone or stopped or doubt):
        return Interrupted(
            f"nothing was drained from {key}; the backup file {path} holds the selected "
            "messages, none marked drained",
            hint=f"delete {path}, or choose a new --to-file, and rerun (esctl never overwrites "
            "a backup file)",
            done=done,
        )
    state = _head(drained, key, path, doubt)
    if gone:
        state += f" ({gone:,} more gone: taken by a consumer first, not removed)"
    if doubt:
        outcome_key = ref.drain_outcome_key(which, str(summary.backup_id))
        state += _in_doubt(doubt, key, path, outcome_key)
    if stopped:  # the run was stopping for another reason too: what it says of the rest
        state += f"; {stopped[0]}"
    else:
        state += _rest(left, doubt, path)
    return Interrupted(state, hint=_rerun(key, path, drained, doubt), done=done)


def _head(drained: int, key: str, path: str | None, doubt: int) -> str:
    """How an interrupted drain's state begins: what it ``drained`` for certain (``path``: the
    backup file, None with --discard; ``doubt``: messages in doubt)."""
    if not drained and doubt:
        return f"nothing was {'removed' if path is None else 'drained'} from {key} for certain"
    if path is None:
        return (
            f"{counted(drained, 'message')} removed from {key} for good (--discard) before it "
            "stopped"
        )
    return (
        f"{counted(drained, 'message')} drained from {key} before it stopped: backed up in "
        f"{path} and removed from Redis"
    )


def _rerun(key: str, path: str | None, drained: int, doubt: int) -> str:
    """An interrupted drain's hint (``path``: the backup file, None with --discard)."""
    if path is None:
        return (
            "rerun the same command to discard the rest: it selects again from what is left "
            f"in {key}"
        )
    hint = "rerun with a new --to-file to drain the rest (esctl never overwrites a backup file)"
    if drained or doubt:
        hint += (
            f"; `esctl queue restore {path}` puts back the {counted(drained, 'message')} drained"
        )
    if doubt:
        hint += " and what the batch in doubt removed, if it ran"
    return hint


def _rest(left: int, doubt: int, path: str | None) -> str:
    """What an interrupted drain says of the ``left`` selected messages it did not send (after
    the ``doubt`` in doubt; ``path``: the backup file, None with --discard)."""
    if not left:
        return "" if doubt else "; that was every selected message"
    verb = "was" if left == 1 else "were"
    if doubt:
        text = f"; the other {left:,} {verb} not sent"
    else:
        text = f"; the other {counted(left, 'selected message')} {verb} not removed"
    if path is not None:
        text += f" ({path} holds {'it' if left == 1 else 'them'} too, not marked drained)"
    return text


def _in_doubt(doubt: int, key: str, path: str | None, outcome_key: str) -> str:
    """What an interrupted drain says of the batch of ``doubt`` removals a second signal
    stopped the wait for (``path``: the backup file, None with --discard; ``outcome_key``:
    where the removal script records the batch's outcome, with the batch)."""
    text = (
        f"; whether the batch of {doubt:,} removals sent when it stopped ran is not known (a "
        f"second signal stopped the wait for Redis's answer): its messages may have been "
        f"removed from {key} (the batch ran whole or not at all)"
    )
    if path is None:
        return text + " for good (--discard)"
    return text + (
        f"; {path} holds them, not marked drained; if the batch ran, Redis recorded its outcome "
        f"in {outcome_key} in the same call, and `esctl queue restore {path}` reads it there: "
        "it puts back what the batch removed if it ran, and none of its messages if it did not "
        "(they are still in the list)"
    )


def _stopped(exc: Exception, size: int, summary: DrainSummary, lock_key: str) -> str:
    """What a drain stopped by ``exc`` during a batch of ``size`` says of the selected
    messages it did not drain (``summary.failed``: that batch and the ones after it)."""
    failed = summary.failed
    if is_fenced(exc):  # the guard found the lock no longer this run's
        return _lost(lost_lock(key=lock_key, batch=f"{size} removals"), summary)
    if not redisio.is_lost(exc):  # Redis's answer: the batch did not run (the guard)
        return (
            f"a batch of {size} removals failed ({failure_text(exc)}); {failed} selected "
            "messages may still be in the list (the backup file does not mark them drained)"
        )
    after = failed - size
    rest = (
        "it was the last batch"
        if not after
        else f"the {after} selected message{'s' if after > 1 else ''} after it "
        f"{'were' if after > 1 else 'was'} not removed (the backup file does not mark "
        f"{'them' if after > 1 else 'it'} drained)"
    )
    return (
        f"lost the connection during a batch of {size} removals ({redact(str(exc))}): it may "
        "have run (every removal in it is whole; queue restore reads its outcome from Redis); "
        + rest
    )


def _lost(reason: str, summary: DrainSummary) -> str:
    """What a drain stopped by its lost lock (``reason``) says: what it did, and of the
    selected messages it did not drain (``summary.failed``)."""
    text = (
        f"{reason}; nothing more was sent: {summary.drained} drained and {summary.gone} gone "
        f"before that, {summary.failed} selected messages not removed"
    )
    if summary.backup_file is None:  # --discard
        return f"{text}; {LOST_HINT} to drain the rest"
    return (
        f"{text} (the backup file does not mark them drained); {LOST_HINT} (with a new "
        "--to-file) to drain the rest"
    )


def _send_batch(
    client: redisio.RedisClient,
    send: Callable[[], Any],
    numbers: list[int],
    writer: BackupWriter | None,
    held: HeldInterrupts,
    summary: DrainSummary,
    report: Callable[[], None],
) -> tuple[list[int], list[int]] | Exception:
    """Send one removal batch (``send``: its script call), record its outcome in the backup
    file, count it in ``summary`` and ``report`` it, Ctrl-C ``held`` meanwhile (then the caller
    stops): the record numbers removed and gone, or the error it failed with. A batch answered
    LOADING did not run: it is sent again once Redis has loaded its data set (waited for
    between the tries, where Ctrl-C is not held; one held during the try stops the drain
    there)."""
    while True:
        failure: Exception | None = None
        with held.holding():
            try:
                with held.waiting():  # a second Ctrl-C stops the wait: the batch is in doubt
                    flags = send()
            except redisio.REDIS_ERRORS as exc:
                failure = exc
            except KeyboardInterrupt:
                if held.broke:
                    held.in_doubt = len(numbers)
                raise
            else:
                removed = [n for n, f in zip(numbers, flags, strict=True) if int(f) == 1]
                gone = [n for n, f in zip(numbers, flags, strict=True) if int(f) != 1]
                if writer is not None:
                    record_outcome(writer, removed, gone)
                summary.drained += len(removed)
                summary.gone += len(gone)
                report()  # after the count, Ctrl-C still held
                return removed, gone
        if held.caught and redisio.may_be_loading(failure):  # it did not run
            raise KeyboardInterrupt from failure
        if not redisio.loaded_again(client, failure):
            return failure


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _remove(
    client: redisio.RedisClient,
    snap: Snapshot,
    summary: DrainSummary,
    writer: BackupWriter | None,
    lock: RedisLock,
    ref: QueueRef,
    which: str,
    held: HeldInterrupts,
    report: Callable[[], None],
) -> None:
    """The removals, a batch at a time, each batch's outcome recorded in the backup file before
    the next is sent. A Ctrl-C ``held`` while a batch runs stops the run once it is counted
    (KeyboardInterrupt); the caller checks ``held`` after the last batch. ``report``: called
    once each batch is counted."""
    script = client.register_script(REMOVE_SCRIPT)
    keys = [ref.lock_key, snap.key]
    if writer is not None:
        assert summary.backup_id is not None  # set with the writer
        # The outcome record exists before the first removal: a restore that finds it knows
        # that any record neither the file nor it accounts for was never removed.
        keys.append(ref.drain_outcome_key(which, summary.backup_id))
        try:
            # (answered LOADING it did not run: sent again once Redis has loaded its data set)
            redisio.after_loading(
                client, partial(client.set, keys[2], EMPTY_OUTCOME, px=OUTCOME_TTL_MS)
            )
        except redisio.REDIS_ERRORS as exc:
            summary.failed = snap.count
            summary.problems.append(
                problem(
                    "remove_failed",
                    snap.key,
                    f"cannot write {keys[2]} ({redact(str(exc))}); nothing was removed",
                )
            )
            return
    done = 0
    # head to tail, read back a page at a time; record numbers count in consumption order, so
    # the k-th selected message from the head is record count - 1 - k
    for batch in batches(snap.head_first()):
        held.check()  # a Ctrl-C held during the batch before: it is counted
        numbers = [snap.count - 1 - (done + k) for k in range(len(batch))]
        try:
            lock.check()
        except LockLost as exc:  # send no more: the batches so far are counted and recorded
            summary.failed = snap.count - done
            summary.problems.append(
                problem("remove_failed", snap.key, _lost(lost_lock(exc), summary))
            )
            return
        args: list[Any] = [lock.token, lock.ttl_ms, *direction(batch, done, snap.length)]
        args.append(len(batch))
        args += [c.value for c in batch]
        args += numbers
        args.append(OUTCOME_TTL_MS)
        send = partial(script, keys=keys, args=args)
        outcome = _send_batch(client, send, numbers, writer, held, summary, report)
        if isinstance(outcome, Exception):
            failure = outcome
            denied = redisio.is_denied(failure)  # refused before any change (the script checks)
            if denied and not done:  # nothing was removed: the refusal is the answer
                raise redisio.permission_denied(redisio.describe(client), failure) from failure
            summary.failed = snap.count - done
            detail = _stopped(failure, len(batch), summary, ref.lock_key)
            if denied:  # rules changed mid-run: the batches before it were removed
                detail += f"; {refusal_hint(client, failure)}"
            summary.problems.append(problem("remove_failed", snap.key, detail))
            return
        done += len(batch)
    if writer is not None:
        record_complete(writer, summary.drained, summary.gone)

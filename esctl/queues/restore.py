"""``queue restore``: put the messages of a drain's backup file back, each at its place in the
list it came from (or at the tail of another queue), never one twice: progress is counted in
Redis with each batch. How the places are kept: ``docs/design/queues.md``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from esctl import redisio
from esctl.config import redact
from esctl.errors import Interrupted, LockLost, ServerError, UsageError
from esctl.interrupts import HeldInterrupts
from esctl.locks import RedisLock, after_broken_wait, not_given_back
from esctl.queues import scripts
from esctl.queues.backup import (
    Backup,
    backup_ref,
    read_backup,
    read_header,
    settle_outcomes,
    value_bytes,
)
from esctl.queues.confirm import Confirm, Plan, require_confirmation
from esctl.queues.lock import (
    NO_OTHER_RUN,
    is_fenced,
    lost_lock,
    notification_missed,
    queue_lock,
)
from esctl.queues.progress import OnPhase, OnProgress, PhaseReporter, reporter
from esctl.queues.refs import QueueRef, check_list_name, ensure_known, problem
from esctl.queues.scripts import RESTORE_SCRIPT, failure_text, notify, refusal_hint
from esctl.units import counted

RESTORE_PROGRESS_TTL_MS = 30 * 24 * 3600 * 1000
"""How long Redis remembers how much of a backup file was restored (so a rerun does not
restore it twice)."""


@dataclass(frozen=True)
class RestoreOptions:
    target: QueueRef | None = None
    """Restore into this queue instead of where the messages came from."""
    target_list: str | None = None
    """With ``target``: which of its lists (default: the list they were drained from)."""
    include_unknown: bool = False
    """Also restore records whose removal the file does not confirm (a drain that crashed)."""
    dry_run: bool = False
    expect_env: str | None = None
    """Refuse a file drained from another environment (unless ``target`` is given)."""


@dataclass(slots=True)
class RestoreTarget:
    key: str
    records: int
    restored: int
    already_restored: int


@dataclass(slots=True)
class RestoreSummary:
    dry_run: bool
    backup_file: str
    backup_id: str
    records: int
    restorable: int
    restored: int
    already_restored: int
    """Restored by an earlier run of the same file into the same list (never twice)."""
    gone: int
    """Records a consumer took before the drain removed them: not restored."""
    unknown: int
    """Records whose removal neither the file nor Redis confirms (the drain stopped mid-batch
    and its outcome record in Redis is gone)."""
    kept: int
    """Records the drain never removed (it was killed or stopped first; known from its outcome
    record in Redis): still in the list, or drained again by a later run. Not restored."""
    failed: int
    targets: list[RestoreTarget]
    notified: bool
    problems: list[dict[str, str]]
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Group:
    ref: QueueRef
    which: str
    key: str
    progress_key: str
    positions: list[int]
    values: list[bytes]
    done: int = 0


def restore(
    client: redisio.RedisClient,
    path: str | Path,
    options: RestoreOptions,
    *,
    confirm: Confirm | None = None,
    on_progress: OnProgress | None = None,
    on_phase: OnPhase | None = None,
) -> RestoreSummary:
    """Put the messages of a drain's backup file back: into the list each came from, at the
    same distance from the tail (so a list drained and restored with nothing else happening
    is byte-identical to before, and messages that arrived meanwhile stay newer); or, with
    ``target``, at the tail of that list (taken next), in their original order. Then one
    notification per event type.

    Records the drain marked ``gone`` are skipped (a consumer had them). Progress is counted
    in Redis atomically with each batch, so rerunning after a failure, or restoring the same
    file again, never restores a message twice. Unless ``dry_run`` it holds the locks of the
    queue the file was drained from and of the target queue while it reads the file, the
    drain's outcome record and the progress counters, and while it restores: a drain of that
    queue still finishing, or another restore, cannot change them between the reading and the
    restoring (:func:`_locked_refs`). Asks ``confirm`` first. Ctrl-C (or SIGTERM) waits for
    the batch in hand, the notification goes out, then Interrupted says what was restored. A
    second one while Redis does not answer stops the wait: Interrupted then also says the
    batch in hand is in doubt, and that a rerun goes on from what Redis counted.
    ``on_progress`` gets the messages restored of those still to restore: once the run holds
    the locks and is confirmed (not for a dry run or when nothing is left to restore), then per
    answered batch; ``on_phase``, before that, the file's records read (``reading backup``) and
    put in order (``preparing``), holding the locks (:mod:`esctl.queues.progress`)."""
    started = time.perf_counter()
    if options.target_list is not None:
        check_list_name(options.target_list)
    if options.dry_run:  # changes nothing: no lock, and what it reads is a moment's picture
        backup = read_backup(path)
        _check_env(backup.path, backup.header, options)
        if options.target is not None:
            ensure_known(client, options.target)
        dry, _, _ = _plan(client, backup, options, None)
        dry.elapsed_s = time.perf_counter() - started
        return dry
    header = read_header(path)
    _check_env(Path(path), header, options)
    if options.target is not None:
        ensure_known(client, options.target)
    refs = _locked_refs(Path(path), header, options)
    held = HeldInterrupts()
    lock: RedisLock | None = None
    summary: RestoreSummary | None = None
    try:
        with queue_lock(client, refs) as lock:
            # Read holding the locks: what decides what to restore is what the restore finds
            backup = read_backup(path, on_phase=on_phase)
            summary, groups, todo = _plan(client, backup, options, on_phase)
            _check_locked(backup, groups, refs)
            if todo == 0:
                summary.elapsed_s = time.perf_counter() - started
                return summary
            try:
                destination = ", ".join(g.key for g in groups)
                require_confirmation(confirm, Plan("restore", todo, str(backup.path), destination))
                report = reporter(on_progress, todo, lambda: (summary.restored, 0))
                report()  # holding the locks, confirmed: the bar may be drawn now
                _restore_all(client, groups, summary, lock, held, report)
            finally:
                if held.broke:
                    after_broken_wait(client, lock)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        if summary is None:  # stopped before it knew what to restore: nothing was
            raise Interrupted(
                f"nothing of {path} was restored (it stopped while reading the backup file)",
                hint="rerun the same restore",
                done={"restored": 0},
            ) from exc
        raise _interrupted(summary, todo, groups, held, lock) from exc
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _check_env(path: Path, header: dict[str, Any], options: RestoreOptions) -> None:
    """UsageError for a file drained from another environment than ``expect_env`` (unless it
    is restored to a ``target``)."""
    if options.target is None and options.expect_env and header.get("env") != options.expect_env:
        raise UsageError(
            f"{path} was drained from env {header.get('env')!r}, not {options.expect_env!r}",
            hint="drop --env to restore it where it came from, or pass `--to SUB TYPE` to move it",
        )


def _locked_refs(path: Path, header: dict[str, Any], options: RestoreOptions) -> list[QueueRef]:
    """The queues whose locks a restore holds: the one the file was drained from (its drain
    holds that lock while it runs and records its outcomes, in the file and in Redis: holding
    it, the restore reads them whole) and the one it restores into (another restore into it
    holds that lock while it moves the progress counters)."""
    refs = {backup_ref(path, header)}
    if options.target is not None:
        refs.add(options.target)
    return sorted(refs)


def _check_locked(backup: Backup, groups: list[_Group], refs: list[QueueRef]) -> None:
    """UsageError when the file holds records of a queue its header does not name (so not
    locked): esctl's drain writes one queue's messages per file."""
    for group in groups:
        if group.ref not in refs:
            raise UsageError(
                f"{backup.path}: records of {group.key}, a queue its header does not name; "
                "nothing was restored",
                hint="pass a file written by `esctl queue drain --to-file`",
            )


def _plan(
    client: redisio.RedisClient,
    backup: Backup,
    options: RestoreOptions,
    on_phase: OnPhase | None,
) -> tuple[RestoreSummary, list[_Group], int]:
    """What to restore from ``backup``: its records' outcomes settled from the drain's record
    in Redis, the records to restore in their target lists, and what each list's progress
    counter says is restored already; the summary so far, the groups, and how many messages
    are left to restore. ``on_phase``: the phase ``preparing``, per record."""
    header = backup.header
    preparing = PhaseReporter(on_phase, "preparing", len(backup.records))
    problems: list[dict[str, str]] = []
    settle_outcomes(client, backup)
    take = {"removed"} | ({"unknown"} if options.include_unknown else set())
    chosen: list[dict[str, Any]] = []
    unknown = kept = gone = 0
    outcomes = backup.outcomes
    for r in backup.records:
        outcome = outcomes.get(int(r["n"]), "unknown")
        if outcome == "unknown":
            unknown += 1
        elif outcome == "kept":
            kept += 1
        elif outcome == "gone":
            gone += 1
        if outcome in take:
            chosen.append(r)
    if unknown:
        problems.append(
            problem(
                "outcome_unknown",
                str(header.get("key")),
                f"the drain that wrote {backup.path} stopped before recording whether "
                f"{unknown} messages were removed; "
                + (
                    "they are restored (--include-unknown)"
                    if options.include_unknown
                    else "they are not restored: check the list, and pass --include-unknown to "
                    "restore them too"
                ),
            )
        )
    groups = _restore_groups(backup, chosen, options, preparing)
    progress = redisio.pipelined(client, [("GET", g.progress_key) for g in groups])
    for g, reply in zip(groups, progress, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(f"cannot read {g.progress_key}: {reply}")
        g.done = min(int(reply or 0), len(g.values))
    preparing.finish()
    summary = RestoreSummary(
        dry_run=options.dry_run,
        backup_file=str(backup.path),
        backup_id=backup.backup_id,
        records=len(backup.records),
        restorable=len(chosen),
        restored=0,
        already_restored=sum(g.done for g in groups),
        gone=gone,
        unknown=unknown,
        kept=kept,
        failed=0,
        targets=[RestoreTarget(g.key, len(g.values), 0, g.done) for g in groups],
        notified=False,
        problems=problems,
        elapsed_s=0.0,
    )
    return summary, groups, sum(len(g.values) - g.done for g in groups)


def _restore_all(
    client: redisio.RedisClient,
    groups: list[_Group],
    summary: RestoreSummary,
    lock: RedisLock,
    held: HeldInterrupts,
    report: Callable[[], None],
) -> None:
    """Restore each group in turn, then notify the event types that got messages back (also
    when a failure or Ctrl-C stops the run: KeyboardInterrupt once that is done; not when a
    second Ctrl-C stopped a wait for Redis, which may not answer)."""
    try:
        for g, target in zip(groups, summary.targets, strict=True):
            _restore_group(client, g, target, summary, lock, held, report)
            if summary.failed or held.caught:
                break
    finally:
        if not held.broke:
            with held.holding(), held.waiting():  # the notification goes out, also on Ctrl-C
                channels = {
                    g.ref.channel
                    for g, t in zip(groups, summary.targets, strict=True)
                    if t.restored
                }
                notified = [notify(client, c, summary.problems) for c in sorted(channels)]
                summary.notified = bool(notified) and all(notified)
    held.check()


def _interrupted(
    summary: RestoreSummary,
    todo: int,
    groups: list[_Group],
    held: HeldInterrupts,
    lock: RedisLock | None,
) -> Interrupted:
    """What Ctrl-C or SIGTERM left: it is held while a batch is with Redis, which counts each
    batch in the file's progress counter with the batch, so ``summary`` says exactly what was
    restored, and a rerun of the same file goes on after it. When a second signal stopped the
    wait for Redis, the batch in hand (``held.in_doubt`` messages) may or may not have been
    restored: its list's progress counter knows, and a rerun goes on from it."""
    restored, doubt = summary.restored, held.in_doubt
    into = [t for t in summary.targets if t.restored]
    where = (
        into[0].key
        if len(into) == 1
        else ", ".join(f"{t.key} ({counted(t.restored, 'message')})" for t in into)
    )
    if restored:
        state = f"{counted(restored, 'message')} of {summary.backup_file} restored to {where}"
    else:
        state = f"nothing of {summary.backup_file} was restored{' for certain' if doubt else ''}"
    state += " before it stopped"
    if doubt:
        state += _in_doubt(doubt, groups, summary)
    stopped = [p["detail"] for p in summary.problems if p["kind"] == "restore_failed"]
    left = todo - restored - doubt
    if stopped:  # the run was stopping for another reason too: what it says of the rest
        state += f"; {stopped[0]}"
    elif left:
        verb = "was" if left == 1 else "were"
        state += f"; the other {left:,} {verb} not {'sent' if doubt else 'restored'}"
    elif not doubt:
        state += "; that was all of it"
    state += notification_missed(bool(restored or doubt), summary.notified, held.broke)
    hint = (
        f"rerun the same restore to continue: Redis counts what is restored with each "
        f"batch, so the {counted(restored + summary.already_restored, 'message')} already back "
        "are skipped, never restored twice"
    )
    done = {"restored": restored}
    if doubt:
        hint += ", and so is the batch in doubt if it ran (if it did not, the rerun restores it)"
        done["restored_in_doubt"] = doubt
    if held.broke:
        hint += not_given_back(lock)
    return Interrupted(state, hint=hint, done=done)


def _in_doubt(doubt: int, groups: list[_Group], summary: RestoreSummary) -> str:
    """What an interrupted restore says of the batch of ``doubt`` messages a second signal
    stopped the wait for: the one in hand, of the first list not restored whole (the lists are
    restored one after the other)."""
    group = next(
        g
        for g, t in zip(groups, summary.targets, strict=True)
        if g.done + t.restored < len(g.values)
    )
    return (
        f"; whether the batch of {counted(doubt, 'message')} sent to {group.key} when it "
        f"stopped was restored is not known (a second signal stopped the wait for Redis's "
        f"answer): all of it or none, and Redis's progress counter {group.progress_key} "
        "counts it in the same call if it was"
    )


def _restore_groups(
    backup: Backup, chosen: list[dict[str, Any]], options: RestoreOptions, phase: PhaseReporter
) -> list[_Group]:
    """Records per target list, by position from the tail. Positions are renumbered past the
    records that are not restored, so what comes back closes up as the list did. Each record
    looked at is added to ``phase``."""
    all_by_key: dict[str, list[dict[str, Any]]] = {}
    for r in backup.records:
        all_by_key.setdefault(str(r["key"]), []).append(r)
    chosen_numbers = {int(r["n"]) for r in chosen}
    groups: dict[str, _Group] = {}
    for source_key, records in all_by_key.items():
        records.sort(key=lambda r: int(r["position"]))
        skipped = 0
        kept: list[tuple[int, bytes]] = []
        for r in records:
            phase.add()
            if int(r["n"]) not in chosen_numbers:
                # a record the drain never removed is still in the list: it keeps its place
                if backup.outcomes.get(int(r["n"])) != "kept":
                    skipped += 1
                continue
            try:
                kept.append((int(r["position"]) - skipped, value_bytes(r)))
            except (ValueError, TypeError) as exc:
                raise UsageError(
                    f"{backup.path}: record {r.get('n')} has an unreadable value: {exc}"
                ) from None
        if not kept:
            continue
        first = records[0]
        if options.target is not None:
            ref = options.target
            which = options.target_list or str(first["list"])
            positions = list(range(len(kept)))  # the tail: taken next, in their order
        else:
            ref = QueueRef(str(first["subscriber"]), str(first["env"]), str(first["event_type"]))
            which = str(first["list"])
            positions = [p for p, _ in kept]
            if ref.key(which) != source_key:
                raise UsageError(
                    f"{backup.path}: record key {source_key} does not match its fields"
                )
        key = ref.key(which)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(
                ref, which, key, ref.restore_progress_key(which, backup.backup_id), [], []
            )
        elif options.target is not None:
            offset = len(group.positions)
            positions = [p + offset for p in positions]
        group.positions += positions
        group.values += [v for _, v in kept]
    return list(groups.values())


def _restore_group(
    client: redisio.RedisClient,
    group: _Group,
    target: RestoreTarget,
    summary: RestoreSummary,
    lock: RedisLock,
    held: HeldInterrupts,
    report: Callable[[], None],
) -> None:
    """Restore what is left of ``group``, a batch per script call, each counted (in ``target``
    and ``summary``) as it is answered, then ``report``-ed. Ctrl-C is ``held`` while a batch
    is with Redis and its answer is counted and reported; then the run stops (the caller
    raises it). Between batches it stops the run at once: everything restored is counted."""
    script = client.register_script(RESTORE_SCRIPT)
    start = group.done
    total = len(group.values)

    def counted_batch(end: int) -> None:
        nonlocal start
        target.restored += end - start
        summary.restored += end - start
        start = end
        report()  # after the count (when answered, Ctrl-C still held)

    while start < total and not held.caught:
        restored = target.restored
        try:
            lock.check()
        except LockLost as exc:  # send no more: what was restored is counted and announced
            summary.failed += total - start
            detail = _lost(lost_lock(exc), restored, total - start)
            summary.problems.append(problem("restore_failed", group.key, detail))
            break
        end = start + 1
        size = len(group.values[start])
        while end < total and end - start < scripts.MOVE_BATCH and size < scripts.MOVE_BATCH_BYTES:
            size += len(group.values[end])
            end += 1
        k = end - start
        args: list[Any] = [lock.token, lock.ttl_ms, start, RESTORE_PROGRESS_TTL_MS, k]
        args += group.positions[start:end]
        args += group.values[start:end]
        keys = [group.ref.lock_key, group.key, group.progress_key]

        def send(keys: list[str] = keys, args: list[Any] = args, end: int = end) -> None:
            with held.waiting():  # a second Ctrl-C stops the wait: the batch is in doubt
                script(keys=keys, args=args)
            counted_batch(end)  # with Ctrl-C still held

        try:
            # a batch answered LOADING did not run: sent again once Redis has loaded
            redisio.after_loading(client, held.around(send))
        except KeyboardInterrupt:
            if held.broke:
                held.in_doubt = k
            raise
        except redisio.REDIS_ERRORS as exc:
            ran = redisio.is_lost(exc) and _progress(client, group) == end
            if ran:  # Redis counted it with the batch, atomically
                counted_batch(end)
            denied = redisio.is_denied(exc)  # refused before any change (the script checks)
            if denied and not summary.restored:  # this run changed nothing
                raise redisio.permission_denied(redisio.describe(client), exc) from exc
            summary.failed += total - start
            detail = _stopped(exc, k, total - start, group.ref.lock_key, restored, ran=ran)
            if denied:  # rules changed mid-run: the batches before it were restored
                detail += f"; {refusal_hint(client, exc)}"
            summary.problems.append(problem("restore_failed", group.key, detail))
            break


_RERUN = "rerun the same restore to continue (progress is kept in Redis, nothing is restored twice)"


def _progress(client: redisio.RedisClient, group: _Group) -> int | None:
    """The messages of ``group`` Redis has restored (its progress counter), read on a new
    connection after one was lost; None when Redis cannot be reached now either."""
    try:
        reply = client.get(group.progress_key)
    except redisio.REDIS_ERRORS:
        return None
    return int(reply or 0)


def _lost(reason: str, restored: int, failed: int) -> str:
    """What a restore stopped by its lost lock (``reason``) says: the ``restored`` messages of
    the list before that, and the ``failed`` ones it did not restore."""
    return (
        f"{reason}; nothing more was sent: {restored} messages restored to this list before "
        f"that, {failed} not restored; {NO_OTHER_RUN}, then {_RERUN}"
    )


def _stopped(
    exc: Exception, size: int, failed: int, lock_key: str, restored: int, *, ran: bool = False
) -> str:
    """What a restore stopped by ``exc`` during a batch of ``size`` says of the ``failed``
    messages it did not restore (that batch and the ones after it, or with ``ran`` only those
    after it: the connection was lost after Redis ran the batch, as its progress counter read
    again says; ``restored``: those of the list it restored before)."""
    if ran:
        return (
            f"lost the connection during a batch of {size} ({redact(str(exc))}): it ran "
            f"(Redis's progress counter, read again, says so; it is counted); "
            f"{_after(failed, 'sent')}; {_RERUN}"
        )
    if is_fenced(exc):  # the guard found the lock no longer this run's
        return _lost(lost_lock(key=lock_key, batch=f"{size}"), restored, failed)
    if not redisio.is_lost(exc):  # Redis's answer: the batch did not run (the guard)
        return (
            f"a batch of {size} failed ({failure_text(exc)}); {failed} messages not restored; "
            + _RERUN
        )
    return (
        f"lost the connection during a batch of {size} ({redact(str(exc))}): it may have run "
        f"(all of it or none; Redis's progress counter knows which, and could not be read "
        f"again); {_after(failed - size, 'restored')}; {_RERUN}"
    )


def _after(messages: int, done: str) -> str:
    """What became of the ``messages`` after the batch a restore stopped at (``done``:
    ``sent``, ``restored``): none were."""
    if not messages:
        return "it was the last batch"
    return (
        f"the {messages} message{'s' if messages > 1 else ''} after it "
        f"{'were' if messages > 1 else 'was'} not {done}"
    )

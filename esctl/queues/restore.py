"""``queue restore``: put the messages of a drain's backup file back, each at its place in the
list it came from (or at the tail of another queue), never one twice: progress is counted in
Redis with each batch. How the places are kept: ``docs/design/queues.md``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from esctl import redisio
from esctl.backupfile import open_backup
from esctl.config import redact
from esctl.errors import Interrupted, LockLost, ServerError, UsageError
from esctl.interrupts import HeldInterrupts
from esctl.locks import RedisLock, after_broken_wait, not_given_back
from esctl.queues import scripts
from esctl.queues.backup import (
    GONE,
    KEPT,
    UNMARKED,
    BackupChanged,
    BackupSurvey,
    backup_ref,
    read_header,
    survey_backup,
    value_bytes,
)
from esctl.queues.confirm import Plan, require_confirmation
from esctl.queues.lock import (
    NO_OTHER_RUN,
    is_fenced,
    lost_lock,
    notification_missed,
    queue_lock,
)
from esctl.queues.progress import OnPhase, PhaseReporter, reporter
from esctl.queues.refs import QueueRef, check_list_name, ensure_known, problem
from esctl.queues.run import Hooks
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
    """One target list: the records of the file's list keys ``sources`` (their key ids, in
    order) to restore into it, ``total`` of them, ``done`` already (its progress counter)."""

    ref: QueueRef
    which: str
    key: str
    progress_key: str
    sources: list[int]
    total: int = 0
    done: int = 0


def restore(
    client: redisio.RedisClient,
    path: str | Path,
    options: RestoreOptions,
    hooks: Hooks = Hooks(),
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
    restoring (:func:`_locked_refs`). It reads the file twice, keeping little of it between
    (memory does not grow with the file): first what decides what to restore
    (:func:`~esctl.queues.backup.survey_backup`), then the messages as their batches are sent;
    a file written to between the two readings stops the run there (a ``restore_failed``
    problem), never restored from both. Asks ``hooks.confirm`` first. Ctrl-C (or SIGTERM) waits for
    the batch in hand, the notification goes out, then Interrupted says what was restored. A
    second one while Redis does not answer stops the wait: Interrupted then also says the
    batch in hand is in doubt, and that a rerun goes on from what Redis counted. Progress
    (:class:`~esctl.queues.run.Hooks`): the messages restored of those still to restore, per
    answered batch; the phases, holding the locks: the file's records read (``reading
    backup``), then settled and counted per list (``preparing``)."""
    started = time.perf_counter()
    if options.target_list is not None:
        check_list_name(options.target_list)
    if options.dry_run:  # changes nothing: no lock, and what it reads is a moment's picture
        with open_backup(Path(path)) as handle:
            survey = survey_backup(path, handle)
        _check_env(survey.path, survey.header, options)
        if options.target is not None:
            ensure_known(client, options.target)
        dry, _, _ = _plan(client, survey, options, None)
        dry.elapsed_s = time.perf_counter() - started
        return dry
    header = read_header(path)
    _check_env(Path(path), header, options)
    if options.target is not None:
        ensure_known(client, options.target)
    refs = _locked_refs(Path(path), header, options)
    held = HeldInterrupts()
    lock = queue_lock(client, refs)
    summary: RestoreSummary | None = None
    try:
        with lock, open_backup(Path(path)) as handle:
            # Read holding the locks: what decides what to restore is what the restore finds.
            # The first reading keeps what decides, the second sends the values (same handle)
            survey = survey_backup(path, handle, on_phase=hooks.on_phase)
            summary, groups, todo = _plan(client, survey, options, hooks.on_phase)
            _check_locked(survey.path, groups, refs)
            if todo == 0:
                summary.elapsed_s = time.perf_counter() - started
                return summary
            try:
                destination = ", ".join(g.key for g in groups)
                require_confirmation(
                    hooks.confirm, Plan("restore", todo, str(survey.path), destination)
                )
                report = reporter(hooks.on_progress, todo, lambda: (summary.restored, 0))
                report()  # holding the locks, confirmed: the bar may be drawn now
                _restore_all(client, survey, options, groups, summary, lock, held, report)
            finally:
                if held.broke:
                    after_broken_wait(client, lock)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        if summary is None:  # stopped before it knew what to restore: nothing was
            error = Interrupted(
                f"nothing of {path} was restored (it stopped while reading the backup file)",
                hint="rerun the same restore",
                done={"restored": 0},
            )
        else:
            error = _interrupted(summary, todo, groups, held)
        error.hint += not_given_back(lock)  # however the signals fell
        raise error from exc
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


def _check_locked(path: Path, groups: list[_Group], refs: list[QueueRef]) -> None:
    """UsageError when the file holds records of a queue its header does not name (so not
    locked): esctl's drain writes one queue's messages per file."""
    for group in groups:
        if group.ref not in refs:
            raise UsageError(
                f"{path}: records of {group.key}, a queue its header does not name; "
                "nothing was restored",
                hint="pass a file written by `esctl queue drain --to-file`",
            )


def _plan(
    client: redisio.RedisClient,
    survey: BackupSurvey,
    options: RestoreOptions,
    on_phase: OnPhase | None,
) -> tuple[RestoreSummary, list[_Group], int]:
    """What to restore from the file ``survey`` read: its records' outcomes settled from the
    drain's record in Redis, the records to restore per target list, and what each list's
    progress counter says is restored already; the summary so far, the groups, and how many
    messages are left to restore. ``on_phase``: the phase ``preparing``, per record."""
    header = survey.header
    preparing = PhaseReporter(on_phase, "preparing", survey.records)
    problems: list[dict[str, str]] = []
    survey.settle(client)
    take = _taken(options)
    tally = [0, 0, 0, 0]  # records per outcome code
    chosen = [0] * len(survey.keys)  # records to restore per list key
    outcome, key_ids, add = survey.outcomes.get, survey.key_ids, preparing.add
    for index, number in enumerate(survey.numbers):
        code = outcome(number)
        tally[code] += 1
        if take[code]:
            chosen[key_ids[index]] += 1
        add()
    unknown, kept, gone = tally[UNMARKED], tally[KEPT], tally[GONE]
    if unknown:
        problems.append(
            problem(
                "outcome_unknown",
                str(header.get("key")),
                f"the drain that wrote {survey.path} stopped before recording whether "
                f"{unknown} messages were removed; "
                + (
                    "they are restored (--include-unknown)"
                    if options.include_unknown
                    else "they are not restored: check the list, and pass --include-unknown to "
                    "restore them too"
                ),
            )
        )
    groups = _restore_groups(survey, chosen, options)
    progress = redisio.pipelined(client, [("GET", g.progress_key) for g in groups])
    for g, reply in zip(groups, progress, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(f"cannot read {g.progress_key}: {reply}")
        g.done = min(int(reply or 0), g.total)
    preparing.finish()
    summary = RestoreSummary(
        dry_run=options.dry_run,
        backup_file=str(survey.path),
        backup_id=survey.backup_id,
        records=survey.records,
        restorable=sum(chosen),
        restored=0,
        already_restored=sum(g.done for g in groups),
        gone=gone,
        unknown=unknown,
        kept=kept,
        failed=0,
        targets=[RestoreTarget(g.key, g.total, 0, g.done) for g in groups],
        notified=False,
        problems=problems,
        elapsed_s=0.0,
    )
    return summary, groups, sum(g.total - g.done for g in groups)


def _taken(options: RestoreOptions) -> tuple[bool, bool, bool, bool]:
    """Per outcome code, whether its records are restored: those removed, and with
    ``include_unknown`` those whose outcome is unknown."""
    return (options.include_unknown, True, False, False)


def _restore_all(
    client: redisio.RedisClient,
    survey: BackupSurvey,
    options: RestoreOptions,
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
            messages = _messages(survey, g, options)
            try:
                _restore_group(client, g, messages, target, summary, lock, held, report)
            finally:
                messages.close()
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
    return Interrupted(state, hint=hint, done=done)


def _in_doubt(doubt: int, groups: list[_Group], summary: RestoreSummary) -> str:
    """What an interrupted restore says of the batch of ``doubt`` messages a second signal
    stopped the wait for: the one in hand, of the first list not restored whole (the lists are
    restored one after the other)."""
    group = next(
        g for g, t in zip(groups, summary.targets, strict=True) if g.done + t.restored < g.total
    )
    return (
        f"; whether the batch of {counted(doubt, 'message')} sent to {group.key} when it "
        f"stopped was restored is not known (a second signal stopped the wait for Redis's "
        f"answer): all of it or none, and Redis's progress counter {group.progress_key} "
        "counts it in the same call if it was"
    )


def _restore_groups(
    survey: BackupSurvey, chosen: list[int], options: RestoreOptions
) -> list[_Group]:
    """The target lists of the ``chosen`` records (per list key of the file) and which list
    keys' records go into each, in the file's order of the keys: the list each came from (its
    record with the lowest position names it), or ``options.target``. UsageError for an
    unreadable value among the records to restore, or a record key that does not match its
    fields."""
    groups: dict[str, _Group] = {}
    take = _taken(options)
    for key_id, facts in enumerate(survey.keys):
        if not chosen[key_id]:
            continue
        unreadable = [
            u
            for u in survey.unreadable
            if u.key_id == key_id and take[survey.outcomes.get(u.number)]
        ]
        if unreadable:
            u = min(unreadable, key=lambda u: (u.position, u.index))  # the first in order
            raise UsageError(f"{survey.path}: record {u.shown} has an unreadable value: {u.error}")
        first = facts.lowest
        if options.target is not None:
            ref = options.target
            which = options.target_list or str(first["list"])
        else:
            ref = QueueRef(str(first["subscriber"]), str(first["env"]), str(first["event_type"]))
            which = str(first["list"])
            if ref.key(which) != facts.name:
                raise UsageError(
                    f"{survey.path}: record key {facts.name} does not match its fields"
                )
        key = ref.key(which)
        group = groups.get(key)
        if group is None:
            progress_key = ref.restore_progress_key(which, survey.backup_id)
            group = groups[key] = _Group(ref, which, key, progress_key, [])
        group.sources.append(key_id)
        group.total += chosen[key_id]
    return list(groups.values())


def _messages(
    survey: BackupSurvey, group: _Group, options: RestoreOptions
) -> Generator[tuple[int, bytes], None, None]:
    """``(position from the tail, value)`` of each record to restore into ``group``, in the
    order they are sent: per list key of the file, by position (records of equal positions in
    the file's order). Positions are renumbered past the records that are not restored, so what
    comes back closes up as the list did; with ``options.target``, they count from the tail
    (taken next, in their order). Read from the file again (BackupChanged when it changed)."""
    take = _taken(options)
    to_tail = options.target is not None
    rank = {key_id: r for r, key_id in enumerate(group.sources)}
    codes = survey.outcomes
    dense = codes.dense  # (no outcome changes now)
    skipped = [0] * len(group.sources)  # per list key: its records before, not restored
    sent = 0
    for _, number, key_id, record in _in_order(survey, group, rank):
        r = rank.get(key_id)
        if r is None:
            continue  # another group's
        code = dense[number] if 0 <= number < len(dense) else codes.get(number)
        if not take[code]:
            # a record the drain never removed is still in the list: it keeps its place
            if code != KEPT:
                skipped[r] += 1
            continue
        value = record["value"]
        try:
            if type(value) is str and record.get("encoding") != "base64":
                value = value.encode("utf-8")
            else:
                value = value_bytes(record)
            position = sent if to_tail else int(record["position"]) - skipped[r]
        except (KeyError, ValueError, TypeError):
            raise survey.changed() from None
        yield position, value
        sent += 1
    if sent != group.total:
        raise survey.changed()


def _in_order(
    survey: BackupSurvey, group: _Group, rank: dict[int, int]
) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """The records of the file (:meth:`BackupSurvey.records_again`) so that those of
    ``group``'s list keys (their ``rank`` in it) come key after key, by position, then index.
    A file as drain writes it has them in that order already: it is read as it comes.
    Otherwise (its records were reordered, or its keys interleaved) the group's records are
    read whole and sorted."""
    keys = [survey.keys[k] for k in group.sources]
    if all(k.in_order for k in keys) and all(a.last < b.first for a, b in itertools.pairwise(keys)):
        return survey.records_again()
    try:
        held = [
            (rank[key_id], int(record["position"]), index, number, key_id, record)
            for index, number, key_id, record in survey.records_again()
            if key_id in rank
        ]
    except (KeyError, TypeError, ValueError):
        raise survey.changed() from None
    held.sort(key=lambda r: r[:3])
    return (r[2:] for r in held)


def _restore_group(
    client: redisio.RedisClient,
    group: _Group,
    messages: Iterator[tuple[int, bytes]],
    target: RestoreTarget,
    summary: RestoreSummary,
    lock: RedisLock,
    held: HeldInterrupts,
    report: Callable[[], None],
) -> None:
    """Restore what is left of ``group`` (its records ``messages``, read as they are sent),
    a batch per script call, each counted (in ``target`` and ``summary``) as it is answered,
    then ``report``-ed. Ctrl-C is ``held`` while a batch is with Redis and its answer is
    counted and reported; then the run stops (the caller raises it). Between batches it stops
    the run at once: everything restored is counted."""
    script = client.register_script(RESTORE_SCRIPT)
    start = group.done
    total = group.total
    left = itertools.islice(messages, start, None)  # those restored already are passed over

    def counted_batch(end: int) -> None:
        nonlocal start
        target.restored += end - start
        summary.restored += end - start
        start = end
        report()  # after the count (when answered, Ctrl-C still held)

    while start < total and not held.caught:
        restored = target.restored
        try:
            positions, values = _batch(left, total - start)
        except UsageError as exc:  # the file changed, or cannot be read again: send no more
            summary.failed += total - start
            detail = f"{exc}; nothing more was sent: {_done(restored, total - start)}; "
            detail += exc.hint or _RERUN
            summary.problems.append(problem("restore_failed", group.key, detail))
            break
        try:
            lock.check()
        except LockLost as exc:  # send no more: what was restored is counted and announced
            summary.failed += total - start
            detail = _lost(lost_lock(exc), restored, total - start)
            summary.problems.append(problem("restore_failed", group.key, detail))
            break
        k = len(values)
        end = start + k
        args: list[Any] = [lock.token, lock.ttl_ms, start, RESTORE_PROGRESS_TTL_MS, k]
        args += positions
        args += values
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


def _batch(messages: Iterator[tuple[int, bytes]], left: int) -> tuple[list[int], list[bytes]]:
    """The positions and values of the next batch of ``messages`` (``left`` of them to come):
    at most ``MOVE_BATCH``, and no more once the values reach ``MOVE_BATCH_BYTES``
    (BackupChanged when they end early: the file changed)."""
    positions: list[int] = []
    values: list[bytes] = []
    size = 0
    limit, cap = min(left, scripts.MOVE_BATCH), scripts.MOVE_BATCH_BYTES
    for position, value in messages:
        positions.append(position)
        values.append(value)
        size += len(value)
        if len(values) >= limit or size >= cap:
            return positions, values
    raise BackupChanged("the backup file ended early: it changed while it was read")


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
        f"{reason}; nothing more was sent: {_done(restored, failed)}; {NO_OTHER_RUN}, then {_RERUN}"
    )


def _done(restored: int, failed: int) -> str:
    return f"{restored} messages restored to this list before that, {failed} not restored"


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

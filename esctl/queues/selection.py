"""Which messages of a list a requeue or drain takes: a :class:`Selection` applied to a snapshot
of the list (``LRANGE``, taken when the command starts, twice with ``grace``, streamed to a
temporary file and read back a page at a time), and the batches the selected messages are then
changed in. Why snapshots, and why on disk: ``docs/design/queues.md``."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import redis.exceptions

from esctl import redisio
from esctl.errors import EsctlError, ServerError, UsageError
from esctl.locks import RedisLock
from esctl.queues import scripts
from esctl.queues.lock import check_held
from esctl.queues.messages import (
    MessageInfo,
    describe_message,
    id_and_age,
    resolve_now,
    retry_infos,
)
from esctl.queues.progress import OnPhase, PhaseReporter
from esctl.queues.refs import QueueRef, ensure_known, problem
from esctl.scratch import scratch_error
from esctl.units import format_bytes


@dataclass(frozen=True)
class Selection:
    """Which messages of a list a requeue or drain takes. All criteria must hold."""

    older_than: timedelta | None = None
    """Payload TimeStamp older than this."""
    grace: timedelta | None = None
    """Two snapshots this far apart: only messages present in both, count-aware (a value seen
    twice, then once, is taken once). Equal values cannot be told apart: one taken and an equal
    one arriving during the grace period count as one still there."""
    aggregates: frozenset[str] = frozenset()
    exception_contains: str | None = None
    """Dead letters whose RetryData LastException contains this text (case-insensitive)."""
    min_retries: int | None = None
    """Dead letters whose RetryData RetryCount is at least this."""
    limit: int | None = None
    """At most this many, the next ones in consumption order first."""

    @property
    def needs_retry_data(self) -> bool:
        return self.exception_contains is not None or self.min_retries is not None

    @property
    def needs_decoding(self) -> bool:
        return self.older_than is not None or bool(self.aggregates) or self.needs_retry_data

    def check(self, which: str) -> None:
        if self.needs_retry_data and which != "dead":
            raise UsageError(
                "--exception-contains and --min-retries select dead letters by their RetryData",
                hint="use them with the dead list (`--from dead` / `--list dead`)",
            )
        if self.limit is not None and self.limit < 1:
            raise UsageError("--limit must be at least 1")

    def describe(self) -> dict[str, Any]:
        return {
            "older_than_s": self.older_than.total_seconds() if self.older_than else None,
            "grace_s": self.grace.total_seconds() if self.grace else None,
            "aggregates": sorted(self.aggregates),
            "exception_contains": self.exception_contains,
            "min_retries": self.min_retries,
            "limit": self.limit,
        }


@dataclass(slots=True)
class Candidate:
    index: int
    """Head-to-tail index in the snapshot the selection was made on."""
    value: bytes
    aggregate_id: str | None
    """Decoded only when the selection or the RetryData needs it."""
    info: MessageInfo | None
    """Dry runs: what is shown of the message."""
    retry_key: str | None


PAGE = 1000
"""Messages of a snapshot read back (and selected) at a time. Read at call time: tests patch it."""


class SpilledList:
    """A snapshot of a list on a temporary file (unlinked from the start): its values in
    head-to-tail order, as RESP bulk strings, with the file offset of every :data:`PAGE`-th
    value, so pages are read back from either end with only one page in memory."""

    def __init__(self) -> None:
        self.page = PAGE
        self.length = 0
        self.offsets = array("Q")
        self.size = 0
        try:
            self.file = tempfile.TemporaryFile(prefix="esctl-queue-snapshot-")  # noqa: SIM115
        except OSError as exc:
            raise self._failed(exc) from None

    def add_page(self, data: bytes, n: int) -> None:
        """Append ``n`` values (at most a page, a whole one unless it is the last) as RESP bulk
        strings."""
        self.offsets.append(self.size)
        try:
            self.file.write(data)
        except OSError as exc:
            raise self._failed(exc) from None
        self.size += len(data)
        self.length += n

    def _failed(self, exc: OSError) -> EsctlError:
        """A full or unwritable temporary folder: said as such, not as a Redis error."""
        after = f" (after {format_bytes(self.size)})" if self.size else ""
        return scratch_error(
            f"the list's snapshot{after}",
            exc,
            room="room for the whole list (about its size in Redis)",
        )

    def add_values(self, values: list[bytes]) -> None:
        for start in range(0, len(values), self.page):
            chunk = values[start : start + self.page]
            data = b"".join(b"$%d\r\n%s\r\n" % (len(v), v) for v in chunk)
            self.add_page(data, len(chunk))

    def pages(self) -> int:
        return len(self.offsets)

    def read_page(self, number: int) -> list[bytes]:
        """The values of page ``number`` (indices ``number * page`` on), head to tail."""
        self.file.flush()
        self.file.seek(self.offsets[number])
        end = self.offsets[number + 1] if number + 1 < len(self.offsets) else self.size
        data = self.file.read(end - self.offsets[number])
        return redisio.bulk_values(data, min(self.page, self.length - number * self.page))

    def tail_first(self) -> Iterator[tuple[int, bytes]]:
        """(index, value) in consumption order: the tail first."""
        for number in range(self.pages() - 1, -1, -1):
            values = self.read_page(number)
            base = number * self.page
            for offset in range(len(values) - 1, -1, -1):
                yield base + offset, values[offset]

    def head_first(self) -> Iterator[tuple[int, bytes]]:
        for number in range(self.pages()):
            base = number * self.page
            for offset, value in enumerate(self.read_page(number)):
                yield base + offset, value

    def close(self) -> None:
        self.file.close()


@dataclass(slots=True)
class Snapshot:
    key: str
    now: datetime
    """The moment the messages' ages were measured from."""
    length: int
    count: int
    """How many messages are selected."""
    spilled: SpilledList
    """The list as it was snapshotted (the second snapshot with ``grace``)."""
    chosen: bytearray
    """One bit per snapshot index: selected."""
    problems: list[dict[str, str]]
    infos: list[MessageInfo]
    """Dry runs: what is shown of the selected messages, in consumption order."""
    retry_ref: QueueRef | None
    """Dead letters whose RetryData hash goes with the move: their queue."""

    def summary_fields(self, ref: QueueRef, options: SelectingOptions) -> dict[str, Any]:
        """The fields a requeue's and a drain's summaries share, as this selection left them:
        the queue, what was examined and selected, and nothing done yet."""
        return {
            "dry_run": options.dry_run,
            "subscriber": ref.subscriber,
            "env": ref.env,
            "event_type": ref.event_type,
            "examined": self.length,
            "selected": self.count,
            "gone": 0,
            "failed": 0,
            "problems": self.problems,
            "messages": self.shown(),
            "selection": options.selection.describe(),
            "elapsed_s": 0.0,
        }

    def shown(self) -> list[MessageInfo]:
        """What a dry run shows of the selected messages (nothing when not described)."""
        return self.infos

    def is_chosen(self, index: int) -> bool:
        return bool(self.chosen[index >> 3] & (1 << (index & 7)))

    def head_first(self) -> Iterator[Candidate]:
        """The selected messages, head to tail (ascending index), read back page by page."""
        chosen, retry_ref, now = self.chosen, self.retry_ref, self.now
        for index, value in self.spilled.head_first():
            if not chosen[index >> 3] & (1 << (index & 7)):
                continue
            retry_key = None
            if retry_ref is not None:
                aggregate_id, _ = id_and_age(value, now)
                if aggregate_id is not None:
                    retry_key = retry_ref.retry_data_key(aggregate_id)
            yield Candidate(index, value, None, None, retry_key)

    def tail_first(self) -> Iterator[tuple[int, bytes]]:
        """(position from the tail, value) of the selected messages, in consumption order."""
        for index, value in self.spilled.tail_first():
            if self.is_chosen(index):
                yield self.length - 1 - index, value


@dataclass(frozen=True)
class SelectingOptions:
    """What a requeue's or a drain's options say about the selection."""

    selection: Selection = field(default_factory=Selection)
    dry_run: bool = False
    now: datetime | None = None
    """The moment ages are measured from; None: the clock, when the command starts."""


@contextlib.contextmanager
def select_locked(
    client: redisio.RedisClient,
    ref: QueueRef,
    which: str,
    options: SelectingOptions,
    *,
    lock: RedisLock | None,
    retry_keys: bool,
    sleep: Callable[[float], None],
    on_phase: OnPhase | None = None,
) -> Iterator[Snapshot]:
    """The selection from ``which`` (:func:`select_messages`, described for a dry run), with
    the queue's ``lock`` (None for a dry run, which changes nothing) taken before it and held
    until the block ends: the caller keeps it, to say whether it was given back when a
    signal stopped the run (:func:`esctl.locks.not_given_back`). UsageError when esctl does
    not know the queue. ``on_phase``: the list read and the selection, as the phases
    ``reading list`` and ``selecting`` (:mod:`esctl.queues.progress`), once the lock is
    held (never for a dry run)."""
    now = resolve_now(options.now)
    ensure_known(client, ref)
    with lock if lock is not None else contextlib.nullcontext():
        snap = select_messages(
            client,
            ref,
            which,
            options.selection,
            now,
            describe=options.dry_run,
            retry_keys=retry_keys,
            lock=lock,
            sleep=sleep,
            on_phase=on_phase if lock is not None else None,
        )
        try:
            yield snap
        finally:
            snap.spilled.close()


def select_messages(
    client: redisio.RedisClient,
    ref: QueueRef,
    which: str,
    selection: Selection,
    now: datetime,
    *,
    describe: bool,
    retry_keys: bool,
    lock: RedisLock | None,
    sleep: Callable[[float], None],
    on_phase: OnPhase | None = None,
) -> Snapshot:
    """Snapshot the list (twice, ``grace`` apart, when asked) onto a temporary file and pick the
    messages, a page at a time. ``describe``: keep what a dry run shows of each;
    ``retry_keys``: name each dead letter's RetryData hash (to delete it with the move).
    ``on_phase``: the messages read (``reading list``; ``reading list again``, the second
    snapshot), then those examined, of the list's length (``selecting``)."""
    key = ref.key(which)
    spilled = _snapshot(client, key, PhaseReporter(on_phase, "reading list", None))
    try:
        if selection.grace is not None:
            first = Counter(_digest(value) for _, value in spilled.head_first())
            spilled.close()
            sleep(selection.grace.total_seconds())
            check_held(lock)
            again = PhaseReporter(on_phase, "reading list again", None)
            spilled = _snapshot(client, key, again)
            candidates = _still_there(spilled, first)
        else:
            candidates = spilled.tail_first()
        snap = Snapshot(
            key,
            now,
            spilled.length,
            0,
            spilled,
            bytearray((spilled.length + 7) // 8),
            [],
            [],
            ref if which == "dead" and retry_keys else None,
        )
        selecting = PhaseReporter(on_phase, "selecting", spilled.length)
        _choose(client, ref, which, selection, snap, candidates, describe, retry_keys, selecting)
    except BaseException:
        spilled.close()
        raise
    return snap


def _choose(
    client: redisio.RedisClient,
    ref: QueueRef,
    which: str,
    selection: Selection,
    snap: Snapshot,
    candidates: Iterator[tuple[int, bytes]],
    describe: bool,
    retry_keys: bool,
    phase: PhaseReporter,
) -> None:
    """Mark the selected candidates in ``snap``, a page at a time (the same choice as picking
    from the whole list at once: the first ``limit`` matches in consumption order). ``phase``:
    the messages of the snapshot examined so far (candidates come tail first: those from its
    tail to the last one taken), finished here."""
    decode = describe or retry_keys or selection.needs_decoding
    by_retry_data = which == "dead" and (selection.needs_retry_data or describe or retry_keys)
    limit = selection.limit
    if not decode and not by_retry_data and limit is None and selection.grace is None:
        # no criterion looks at a message: every one of the snapshot is selected
        snap.chosen[:] = b"\xff" * len(snap.chosen)
        snap.count = snap.length
        phase.finish(snap.length)
        return
    while True:
        full = limit is not None and snap.count >= limit
        if full and not selection.needs_retry_data:
            phase.finish()
            return  # without RetryData filters, the first `limit` matches are the selection
        chunk = list(itertools.islice(candidates, PAGE))
        if not chunk:
            phase.finish(snap.length)  # every one examined
            return
        phase.at(snap.length - chunk[-1][0])
        remaining = None if limit is None else limit - snap.count
        picked = _pick(
            iter(chunk),
            snap.length,
            selection,
            snap.now,
            snap.key,
            snap.problems,
            describe=describe,
            decode=decode,
            stop_at=remaining if not selection.needs_retry_data else None,
        )
        if full:
            continue  # read on only for the problems the whole list would report
        if by_retry_data:
            picked = _by_retry_data(client, ref, picked, selection, retry_keys)
        if remaining is not None:
            picked = picked[:remaining]
        for c in picked:
            snap.chosen[c.index >> 3] |= 1 << (c.index & 7)
            if c.info is not None:
                snap.infos.append(c.info)
        snap.count += len(picked)


def _snapshot(client: redisio.RedisClient, key: str, phase: PhaseReporter) -> SpilledList:
    """The list as one ``LRANGE`` saw it, streamed onto a temporary file; ``phase``: its
    length once Redis says it, the messages read so far."""
    spilled = SpilledList()

    def add_page(data: bytes, n: int) -> None:
        spilled.add_page(data, n)
        phase.add(n)

    try:
        try:
            streamed = redisio.stream_list(
                client, key, add_page, page=spilled.page, on_length=phase.set_total
            )
            if streamed is None:  # a cluster: redis-py reads the reply whole
                values = cast(list[bytes], client.lrange(key, 0, -1))
                phase.set_total(len(values))
                spilled.add_values(values)
                phase.at(len(values))
            phase.finish()
        except redis.exceptions.ResponseError as exc:
            if str(exc).startswith("NOPERM"):
                denied = redis.exceptions.NoPermissionError(str(exc))
                raise redisio.wrap_errors(client, denied) from exc
            raise ServerError(
                f"cannot read {key}: {exc}",
                hint="the key is expected to be a list (docs/layout.md §4)",
            ) from None
        except redisio.REDIS_ERRORS as exc:
            raise redisio.wrap_errors(client, exc) from exc
    except BaseException:
        spilled.close()
        raise
    return spilled


def _digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


def _still_there(spilled: SpilledList, first: Counter[bytes]) -> Iterator[tuple[int, bytes]]:
    """(index, value) in consumption order, of the messages also in the first snapshot, counted
    (a value seen twice, then once, is yielded once)."""
    for index, value in spilled.tail_first():
        digest = _digest(value)
        if first[digest] <= 0:
            continue  # arrived after the first snapshot: not stuck by observation
        first[digest] -= 1
        yield index, value


def _pick(
    candidates: Iterator[tuple[int, bytes]],
    length: int,
    selection: Selection,
    now: datetime,
    key: str,
    problems: list[dict[str, str]],
    *,
    describe: bool,
    decode: bool,
    stop_at: int | None,
) -> list[Candidate]:
    """The candidates the age and aggregate criteria keep, in consumption order (at most
    ``stop_at``)."""
    min_age = selection.older_than.total_seconds() if selection.older_than is not None else None
    picked: list[Candidate] = []
    for index, value in candidates:
        position = length - 1 - index
        info = describe_message(value, position, now) if describe else None
        aggregate_id: str | None = None
        if decode:
            if info is not None:
                aggregate_id, age = info.aggregate_id, info.age_s
            else:
                aggregate_id, age = id_and_age(value, now)
            if min_age is not None:
                if age is None:
                    slow = info or describe_message(value, position, now)
                    why = "; ".join(p["detail"] for p in slow.problems) or "missing"
                    detail = f"message at position {position} has no readable TimeStamp ({why})"
                    problems.append(problem("no_timestamp", key, f"{detail}; not selected"))
                    continue
                if age <= min_age:
                    continue
            if selection.aggregates and aggregate_id not in selection.aggregates:
                continue
        picked.append(Candidate(index, value, aggregate_id, info, None))
        if stop_at is not None and len(picked) >= stop_at:
            break
    return picked


def _by_retry_data(
    client: redisio.RedisClient,
    ref: QueueRef,
    picked: list[Candidate],
    selection: Selection,
    retry_keys: bool,
) -> list[Candidate]:
    """Dead letters: attach each one's RetryData, keep those the RetryData criteria accept."""
    ids = [c.aggregate_id for c in picked if c.aggregate_id is not None]
    infos = retry_infos(client, ref, ids)
    needle = (selection.exception_contains or "").casefold()
    kept: list[Candidate] = []
    for c in picked:
        retry = infos.get(c.aggregate_id) if c.aggregate_id is not None else None
        if c.info is not None:
            c.info.retry = retry
        if selection.exception_contains is not None and (
            retry is None or needle not in (retry.last_exception or "").casefold()
        ):
            continue
        if selection.min_retries is not None and (
            retry is None or (retry.retry_count or 0) < selection.min_retries
        ):
            continue
        if retry_keys and c.aggregate_id is not None:
            c.retry_key = ref.retry_data_key(c.aggregate_id)
        kept.append(c)
    return kept


def batches(candidates: Iterable[Candidate]) -> Iterator[list[Candidate]]:
    """Head-to-tail order (ascending index), cut by count and bytes."""
    batch: list[Candidate] = []
    size = 0
    for c in candidates:
        batch.append(c)
        size += len(c.value)
        if len(batch) >= scripts.MOVE_BATCH or size >= scripts.MOVE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def direction(batch: Sequence[Candidate], done_before: int, length: int) -> list[int]:
    """The script arguments that say where to look for the batch's values: from the head (1)
    or the tail (-1), whichever end has fewer messages in front of the batch (moves go
    head-to-tail, so what is left before it is unselected messages only; after it, everything
    further on); and 1 when, in the snapshot, the batch was exactly the run of messages at that
    end (then the script checks it still is and takes it with one LTRIM)."""
    from_head = batch[0].index - done_before
    from_tail = length - 1 - batch[-1].index
    contiguous = batch[-1].index - batch[0].index == len(batch) - 1
    if from_head <= from_tail:
        return [1, int(contiguous and from_head == 0)]
    return [-1, int(contiguous and from_tail == 0)]

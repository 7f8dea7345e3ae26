"""``compress``: gzip+base64 in place the event and snapshot payloads the library left plain.

Values are rewritten as .NET's GZipStream + base64 write them (the store's own gzip header
bytes), each by a compare-and-set that never overwrites a concurrent write, and only after the
library's reading rule gives the identical text back; idempotent and safe to interrupt. Never
prints or exits. Design: docs/design/compress.md.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from esctl import codec, layout, redisio
from esctl.config import redact
from esctl.documents import document
from esctl.errors import EsctlError, Interrupted, ServerError, UsageError
from esctl.locks import RedisLock, not_given_back
from esctl.units import counted

DEFAULT_THRESHOLD = codec.DEFAULT_COMPRESSION_THRESHOLD
EVENTS = "events"
SNAPSHOTS = "snapshots"
FAMILIES = (EVENTS, SNAPSHOTS)

HSCAN_COUNT = 1000
"""Fields asked per HSCAN round trip (partition hashes are small: one round trip each)."""
CALL_FIELDS = 256
"""Fields per compare-and-set call: one call blocks Redis for well under a millisecond."""
CALL_BYTES = 1 << 20
"""A call is also cut when its old and new values reach this many bytes."""
BATCH_BYTES = 8 << 20
"""Values held before a round of compare-and-set calls is sent (bounds esctl's memory)."""
CALLS_PER_ROUND_TRIP = redisio.PIPELINE_CHUNK
"""Compare-and-set calls sent in one round trip; their replies are read (and a failed call
stops the run) before the next round trip is sent."""
MAX_PROBLEMS = 1000
"""Problems listed in the summary (all are counted)."""
HEADER_SAMPLE_HASHES = 200
"""Payload hashes per family read (one HSCAN page each) to learn the store's gzip header."""
HEADER_SAMPLE_VALUES = 1000
"""Compressed values enough to decide the store's gzip header."""

COMPARE_AND_SET = """
-- KEYS[1]: one hash. ARGV: field, value read, new value; repeated.
-- Per field: 1 = replaced, 2 = already holds the new value (a field HSCAN returned twice),
-- 0 = changed or deleted since it was read (left as it is).
-- An ACL user refused HSET (Redis 7) is told so before anything is read or written.
if redis.acl_check_cmd and not redis.acl_check_cmd('HSET', KEYS[1], 'f', 'v') then
  return redis.error_reply('NOPERM this user has no permissions to run the HSET command on '
    .. KEYS[1] .. '; nothing was changed')
end
local out = {}
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if current == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    out[#out + 1] = 1
  elseif current == ARGV[i + 2] then
    out[#out + 1] = 2
  else
    out[#out + 1] = 0
  end
end
return out
"""

Kind = Literal["plain_over_threshold", "compressed", "below_threshold", "invalid_utf8"]


def classify(value: bytes, threshold: int) -> Kind:
    """What compress would do with a stored value: ``plain_over_threshold`` (rewrite it),
    ``compressed`` (starts with ``H4sI``: the library already tries to gunzip it, valid or
    not), ``below_threshold`` (the library keeps it plain too), ``invalid_utf8`` (not text:
    left alone and reported)."""
    if value.startswith(codec.GZIP_BASE64_PREFIX):
        return "compressed"
    if len(value) <= threshold:
        return "below_threshold"
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "plain_over_threshold"


def compressed_value(
    value: bytes, header: codec.GzipHeader = codec.DEFAULT_GZIP_HEADER
) -> bytes | None:
    """The library's compressed form of a plain value (with ``header``), or None when it would
    not decode back to the identical text through the library's reading rule (never expected;
    checked for every value before it is written)."""
    text = value.decode("utf-8")
    new = codec.gzip_base64(text, header)
    decoded = codec.decode_value(new)
    if decoded.compressed != "gzip" or decoded.problem is not None or decoded.text != text:
        return None
    return new


# --- finding the payload hashes ------------------------------------------------------------


def _numbered(keys: Sequence[str], prefix: str) -> list[str]:
    """Keys ``prefix<digits>`` only (another app whose name starts with ``APP:`` matches the
    SCAN pattern too)."""
    return [k for k in keys if k.startswith(prefix) and k[len(prefix) :].isdigit()]


def hash_key_pages(
    client: redisio.RedisClient, app: str, families: Sequence[str] = FAMILIES
) -> Iterator[tuple[str, list[str]]]:
    """``(family, keys)`` for every payload hash of ``app``, one SCAN page at a time: the
    partitioned event hashes, the legacy hash (if it exists), then the snapshot hashes."""
    if EVENTS in families:
        prefix = layout.legacy_event_hash_key(app) + ":"
        for _, keys in redisio.scan_pages(client, layout.event_hash_pattern(app), type_="hash"):
            mine = _numbered(keys, prefix)
            if mine:
                yield EVENTS, mine
        legacy = layout.legacy_event_hash_key(app)
        (kind,) = redisio.pipelined(client, [("TYPE", legacy)])
        if redisio.key_str(kind) == "hash":
            yield EVENTS, [legacy]
    if SNAPSHOTS in families:
        prefix = f"Snapshots:{app}:"
        for _, keys in redisio.scan_pages(client, layout.snapshot_hash_pattern(app), type_="hash"):
            mine = _numbered(keys, prefix)
            if mine:
                yield SNAPSHOTS, mine


def _pairs(flat: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]


def hash_field_pages(
    client: redisio.RedisClient, keys: Sequence[str], *, count: int = HSCAN_COUNT
) -> Iterator[tuple[str, list[tuple[bytes, bytes]]]]:
    """``(key, [(field, value), …])`` per HSCAN reply, for every field of every key (pipelined:
    one round trip asks every key still being scanned for its next page). A field may come
    twice on a single server (HSCAN's guarantee); a key deleted meanwhile simply ends. On a
    cluster a hash whose slot moves meanwhile is read again where it went, each field handed
    out once (:func:`redisio.hash_pages`)."""
    for key, flat in redisio.hash_pages(client, keys, count=count):
        yield key, _pairs(flat)


# --- the gzip header ------------------------------------------------------------------------


@dataclass
class HeaderChoice:
    """The gzip header compress writes, and where it came from: ``store`` (the majority of the
    sampled compressed values), ``option`` (``gzip_os``) or ``default`` (no compressed value
    found, no option)."""

    header: codec.GzipHeader
    source: Literal["store", "option", "default"]
    seen: Counter[codec.GzipHeader] = field(default_factory=Counter)
    """Headers of the sampled compressed values that decode (the library's writers')."""

    @property
    def disagree(self) -> bool:
        """The store's compressed values carry more than one header (services on both Linux
        and Windows, say): each is read the same; the majority was written."""
        return len(self.seen) > 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "os": self.header.os,
            "os_name": self.header.os_name,
            "xfl": self.header.xfl,
            "source": self.source,
            "sampled": [
                {"os": h.os, "os_name": h.os_name, "xfl": h.xfl, "values": n}
                for h, n in sorted(self.seen.items())
            ],
        }


def parse_gzip_os(text: str) -> int:
    """``--gzip-os``: ``unix`` (3), ``windows`` (10) or a number 0-255. Raises UsageError."""
    names = {name: number for number, name in codec.GZIP_OS_NAMES.items()}
    word = text.strip().lower()
    if word in names:
        return names[word]
    try:
        number = int(word, 0)  # 10, 0x0a
    except ValueError:
        number = -1
    if not 0 <= number <= 255:
        raise UsageError(
            f"--gzip-os {text!r} is not unix, windows or a number from 0 to 255",
            hint="unix (3) is what a service on Linux writes, windows (10) one on Windows; "
            "without the option compress copies the byte from the store's compressed values",
        )
    return number


def store_gzip_headers(
    client: redisio.RedisClient,
    app: str,
    families: Sequence[str] = FAMILIES,
    *,
    hashes: int = HEADER_SAMPLE_HASHES,
    values: int = HEADER_SAMPLE_VALUES,
) -> Counter[codec.GzipHeader]:
    """The gzip headers of compressed values already in ``app``'s payload hashes: one HSCAN
    page of each of the first ``hashes`` hashes per family, until ``values`` were found. Only
    values that decode to text count (a value that merely starts with ``H4sI`` was not written
    by a working writer). Read-only."""
    seen: Counter[codec.GzipHeader] = Counter()
    for family in families:
        chosen: list[str] = []
        for _, keys in hash_key_pages(client, app, (family,)):
            chosen.extend(keys[: hashes - len(chosen)])
            if len(chosen) >= hashes:
                break
        replies = redisio.pipelined(client, [("HSCAN", k, 0, "COUNT", 100) for k in chosen])
        for key, reply in zip(chosen, replies, strict=True):
            if isinstance(reply, Exception):
                raise ServerError(f"HSCAN {key} failed: {reply}")
            for _, value in _pairs(reply[1]):
                header = codec.gzip_header_of(value)
                if header is None:
                    continue
                decoded = codec.decode_value(value)
                if decoded.compressed == "gzip" and decoded.problem is None:
                    seen[header] += 1
                    if seen.total() >= values:
                        return seen
    return seen


def choose_gzip_header(
    client: redisio.RedisClient,
    app: str,
    families: Sequence[str] = FAMILIES,
    gzip_os: int | None = None,
) -> HeaderChoice:
    """The header to write: the store's majority (ties: the lowest bytes), its OS byte
    replaced by ``gzip_os`` when given; ``gzip_os`` or Unix's where the store has none."""
    seen = store_gzip_headers(client, app, families)
    majority = min(seen, key=lambda h: (-seen[h], h)) if seen else codec.DEFAULT_GZIP_HEADER
    if gzip_os is not None:
        return HeaderChoice(codec.GzipHeader(majority.xfl, gzip_os), "option", seen)
    return HeaderChoice(majority, "store" if seen else "default", seen)


# --- compress ------------------------------------------------------------------------------


@dataclass
class FamilyCounts:
    """What compress found and did in one family (``events`` or ``snapshots``)."""

    hashes: int = 0
    values_examined: int = 0
    already_compressed: int = 0
    below_threshold: int = 0
    plain_over_threshold: int = 0
    """Plain values over the threshold found (what a dry run would compress)."""
    compressed: int = 0
    """Values replaced (0 in a dry run)."""
    changed_concurrently: int = 0
    """Values a writer changed or deleted between the read and the compare-and-set: kept."""
    invalid_utf8: int = 0
    bytes_before: int = 0
    """Stored bytes of the values compressed (dry run: of those that would be)."""
    bytes_after: int = 0
    """Their stored bytes compressed."""

    def add(self, other: FamilyCounts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def count(self, value: bytes, threshold: int) -> Kind:
        """Count one value examined under the kind :func:`classify` gives it, and return it
        (a plain value over the threshold is counted here; its bytes by the caller)."""
        self.values_examined += 1
        kind = classify(value, threshold)
        if kind == "compressed":
            self.already_compressed += 1
        elif kind == "below_threshold":
            self.below_threshold += 1
        elif kind == "invalid_utf8":
            self.invalid_utf8 += 1
        else:
            self.plain_over_threshold += 1
        return kind


@dataclass
class CompressProgress:
    hashes: int = 0
    values_examined: int = 0
    compressed: int = 0
    """Replaced so far (dry run: found to compress)."""


@dataclass
class Candidate:
    """One plain value over the threshold, read from ``key``, and its compressed form."""

    family: str
    key: str
    field: bytes
    old: bytes
    new: bytes


@dataclass
class Stopped:
    """The round trip of compare-and-set calls that stopped a run: the first call that failed
    (its hash ``key`` and Redis's ``error``), how many of the round trip's ``calls`` failed
    and the values they held. The others of that round trip ran and are counted; nothing was
    sent after it."""

    key: str
    error: str
    calls: int
    failed_calls: int
    values_not_written: int

    def outcome(self, compressed: int) -> str:
        """What the round trip did, and the run before it (``compressed`` values in all)."""
        others = self.calls - self.failed_calls
        return (
            f"{self.failed_calls:,} of the {self.calls:,} calls of that round trip failed "
            f"({self.values_not_written:,} values left as they are)"
            + (f", the other {others:,} ran" if others else "")
            + f"; {compressed:,} values were compressed in all (each whole and readable) and "
            "nothing after that round trip was sent"
        )


class _Stop(Exception):
    """A round trip with a failed compare-and-set: the run goes no further. ``error``: what
    to raise once the values written are counted (a refusal), else the summary says it."""

    def __init__(self, stopped: Stopped, error: EsctlError | None = None) -> None:
        super().__init__(stopped.error)
        self.stopped = stopped
        self.error = error


@dataclass
class CompressSummary:
    app: str
    threshold: int
    dry_run: bool
    families: dict[str, FamilyCounts]
    used_memory_before: int | None
    used_memory_after: int | None
    problems: list[dict[str, str]]
    problems_total: int
    failed: int
    """Compare-and-set calls Redis answered with an error (their fields were not written); the
    run stopped after the round trip that carried them (``stopped``)."""
    elapsed_s: float
    gzip_header: HeaderChoice = field(
        default_factory=lambda: HeaderChoice(codec.DEFAULT_GZIP_HEADER, "default")
    )
    stopped: Stopped | None = None
    """Where the run stopped, when a compare-and-set failed (not in the JSON document: its
    ``failed`` and ``write_failed`` problems say the same)."""

    @property
    def total(self) -> FamilyCounts:
        total = FamilyCounts()
        for counts in self.families.values():
            total.add(counts)
        return total

    def as_dict(self) -> dict[str, Any]:
        total = self.total
        return {
            **document(self, "app threshold dry_run"),
            **document(
                total,
                "hashes values_examined plain_over_threshold compressed changed_concurrently"
                " already_compressed below_threshold invalid_utf8 bytes_before bytes_after",
            ),
            "bytes_saved": total.bytes_before - total.bytes_after,
            "families": {name: vars(counts) for name, counts in self.families.items()},
            **document(self, "used_memory_before used_memory_after"),
            "used_memory_saved": self.used_memory_before - self.used_memory_after
            if self.used_memory_before is not None and self.used_memory_after is not None
            else None,
            "gzip_header": self.gzip_header.as_dict(),
            **document(self, "failed problems problems_total elapsed_s"),
        }


@dataclass
class CompressOptions:
    app: str
    threshold: int = DEFAULT_THRESHOLD
    dry_run: bool = False
    families: tuple[str, ...] = FAMILIES
    gzip_os: int | None = None
    """The gzip header's OS byte; None: the store's (:func:`choose_gzip_header`)."""


def compress_lock(client: redisio.RedisClient, app: str) -> RedisLock:
    """One compress of ``app`` at a time: a :class:`esctl.locks.RedisLock` on
    ``esctl:lock:compress:{APP}``."""
    return RedisLock(
        client,
        [layout.compress_lock_key(app)],
        name="compress lock",
        stopped="stopped (every value written so far is complete and readable)",
        hint="make sure no other esctl compress runs for this app, then rerun the same "
        "command: it skips what is compressed already",
    )


def compress(
    client: redisio.RedisClient,
    opts: CompressOptions,
    *,
    on_progress: Callable[[CompressProgress], None] | None = None,
    before_write: Callable[[Sequence[Candidate]], None] | None = None,
) -> CompressSummary:
    """Compress in place every plain event and snapshot payload of ``opts.app`` over
    ``opts.threshold`` bytes (see the module docstring for the guarantees).

    ``before_write`` is called with each round of candidates after they were read and before
    their compare-and-set is sent (tests use it to write concurrently). Raises LockHeld when
    another compress of the app runs; redis errors become esctl's typed errors."""
    started = time.monotonic()
    # Pointed at one node of a cluster, HSCAN would find that node's hashes only and the run
    # would report a third of the store as all of it.
    families = {name: FamilyCounts() for name in opts.families}
    problems: list[dict[str, str]] = []
    tally = {"problems": 0, "failed": 0, "in_flight": 0}
    progress = CompressProgress()
    report = on_progress or _no_report

    def problem(kind: str, key: str, detail: str) -> None:
        tally["problems"] += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append({"kind": kind, "key": key, "detail": detail})

    used_before = redisio.used_memory_or_none(client)
    stopped: Stopped | None = None
    lock: RedisLock | None = None
    try:
        with contextlib.ExitStack() as stack:
            lock = None if opts.dry_run else stack.enter_context(compress_lock(client, opts.app))
            header = choose_gzip_header(client, opts.app, opts.families, opts.gzip_os)
            report(progress)  # holding the lock: the progress bar may be drawn now

            check = lock.check if lock is not None else _no_check

            def write(candidates: list[Candidate]) -> None:
                _write(client, candidates, families, before_write, problem, tally, progress, check)

            try:
                _scan_and_write(
                    client, opts, header.header, families, progress, report, problem, write
                )
                check()
            except _Stop as stop:
                stopped = stop.stopped
                if stop.error is not None:
                    done = stopped.outcome(sum(c.compressed for c in families.values()))
                    raise stop.error.add(f"compress stopped there: {done}") from None
            except EsctlError as exc:  # a lost connection, a lost lock: say what was written
                if not opts.dry_run:
                    exc.add(_written_before(families, tally["in_flight"]))
                raise
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: the same words
        # Caught once the lock's block is over: a second signal may have stopped its release
        if opts.dry_run or isinstance(exc, Interrupted):
            raise
        counts = {"compressed": sum(c.compressed for c in families.values())}
        if tally["in_flight"]:
            counts["in_flight"] = tally["in_flight"]
        raise Interrupted(
            _written_before(families, tally["in_flight"]),
            hint="rerun the same command to compress the rest (what is compressed already "
            "is left as it is)" + not_given_back(lock),
            done=counts,
        ) from exc
    report(progress)
    return CompressSummary(
        app=opts.app,
        threshold=opts.threshold,
        dry_run=opts.dry_run,
        families=families,
        used_memory_before=used_before,
        used_memory_after=None if opts.dry_run else redisio.used_memory_or_none(client),
        problems=problems,
        problems_total=tally["problems"],
        failed=tally["failed"],
        elapsed_s=time.monotonic() - started,
        gzip_header=header,
        stopped=stopped,
    )


def _scan_and_write(
    client: redisio.RedisClient,
    opts: CompressOptions,
    header: codec.GzipHeader,
    families: dict[str, FamilyCounts],
    progress: CompressProgress,
    report: Callable[[CompressProgress], None],
    problem: Callable[[str, str, str], None],
    write: Callable[[list[Candidate]], None],
) -> None:
    """Read every payload hash, and ``write`` the values to compress a round at a time
    (:data:`BATCH_BYTES`); a dry run only counts them."""
    pending: list[Candidate] = []
    pending_bytes = 0
    for family, keys in hash_key_pages(client, opts.app, opts.families):
        counts = families[family]
        counts.hashes += len(keys)
        progress.hashes += len(keys)
        for key, pairs in hash_field_pages(client, keys):
            for name, value in pairs:
                candidate = _candidate(family, key, name, value, opts, header, counts, problem)
                if candidate is None:
                    continue
                if opts.dry_run:
                    counts.bytes_before += len(value)
                    counts.bytes_after += len(candidate.new)
                    progress.compressed += 1
                    continue
                pending.append(candidate)
                pending_bytes += len(value) + len(candidate.new)
            progress.values_examined = sum(c.values_examined for c in families.values())
            if pending_bytes >= BATCH_BYTES:
                write(pending)
                pending, pending_bytes = [], 0
        report(progress)
    if pending:
        write(pending)


def _no_report(progress: CompressProgress) -> None:
    """The progress callback when the caller gives none."""


def _no_check() -> None:
    """The lock check of a dry run (which takes no lock, and writes nothing)."""


def _candidate(
    family: str,
    key: str,
    name: bytes,
    value: bytes,
    opts: CompressOptions,
    header: codec.GzipHeader,
    counts: FamilyCounts,
    problem: Callable[[str, str, str], None],
) -> Candidate | None:
    """Field ``name`` of hash ``key`` as a value to compress (with ``header``), or None when
    it stays as it is (already compressed, below the threshold, or a problem); counted in
    ``counts``."""
    kind = counts.count(value, opts.threshold)
    if kind == "compressed" or kind == "below_threshold":
        return None
    if kind == "invalid_utf8":
        problem(
            "invalid_utf8",
            key,
            f"field {redisio.key_str(name)}: {len(value)} bytes that are not "
            "UTF-8 text; left as they are",
        )
        return None
    new = compressed_value(value, header)
    if new is None:
        problem(
            "roundtrip_mismatch",
            key,
            f"field {redisio.key_str(name)}: the compressed value would not "
            "decode to the identical text; left as it is",
        )
        return None
    return Candidate(family, key, name, value, new)


def _calls(candidates: Sequence[Candidate]) -> Iterator[list[Candidate]]:
    """Candidates grouped into compare-and-set calls: one hash key per call, bounded in fields
    and bytes."""
    by_key: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_key.setdefault(candidate.key, []).append(candidate)
    for group in by_key.values():
        call: list[Candidate] = []
        size = 0
        for candidate in group:
            if call and (len(call) >= CALL_FIELDS or size >= CALL_BYTES):
                yield call
                call, size = [], 0
            call.append(candidate)
            size += len(candidate.old) + len(candidate.new)
        if call:
            yield call


def compare_and_set(
    client: redisio.RedisClient, key: str, fields: Sequence[tuple[bytes, bytes, bytes]]
) -> list[int]:
    """Run :data:`COMPARE_AND_SET` once on ``key`` for ``(field, expected, new)`` triples;
    returns 1 (replaced), 2 (already new) or 0 (changed meanwhile) per field."""
    (reply,) = redisio.eval_pipelined(
        client, COMPARE_AND_SET, [(1, key, *[part for triple in fields for part in triple])]
    )
    if isinstance(reply, Exception):
        raise ServerError(f"compare-and-set on {key} failed: {reply}")
    return [int(r) for r in reply]


def _write(
    client: redisio.RedisClient,
    candidates: list[Candidate],
    families: dict[str, FamilyCounts],
    before_write: Callable[[Sequence[Candidate]], None] | None,
    problem: Callable[[str, str, str], None],
    tally: dict[str, int],
    progress: CompressProgress,
    check: Callable[[], None],
) -> None:
    """Compare-and-set ``candidates``, :data:`CALLS_PER_ROUND_TRIP` calls per round trip,
    counting each call's outcome. Raises _Stop after a round trip in which a call failed (its
    other calls ran and are counted; nothing more is sent). ``check()`` before each round
    trip: the lock's, which raises LockLost once it was found gone (nothing more is sent)."""
    if before_write is not None:
        before_write(candidates)
    for calls in redisio.chunked(list(_calls(candidates)), CALLS_PER_ROUND_TRIP):
        check()
        tally["in_flight"] = sum(len(call) for call in calls)
        replies = redisio.eval_pipelined(
            client,
            COMPARE_AND_SET,
            [
                (1, call[0].key, *[p for c in call for p in (c.field, c.old, c.new)])
                for call in calls
            ],
            until_failure=True,
        )
        tally["in_flight"] = 0
        failed = [
            (call, reply)
            for call, reply in zip(calls, replies, strict=True)
            if isinstance(reply, Exception)
        ]
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                continue
            for candidate, outcome in zip(call, reply, strict=True):
                counts = families[candidate.family]
                if int(outcome) == 0:
                    counts.changed_concurrently += 1
                elif int(outcome) == 1:
                    counts.compressed += 1
                    counts.bytes_before += len(candidate.old)
                    counts.bytes_after += len(candidate.new)
                    progress.compressed += 1
                # 2: the same field read twice; the first reply counted it
        if not failed:
            continue
        for call, reply in failed:
            tally["failed"] += 1
            problem(
                "write_failed", call[0].key, f"{counted(len(call), 'field')} not written: {reply}"
            )
        first_call, first_reply = failed[0]
        stopped = Stopped(
            key=first_call[0].key,
            error=redact(str(first_reply)),
            calls=len(calls),
            failed_calls=len(failed),
            values_not_written=sum(len(call) for call, _ in failed),
        )
        denied = next(((c, r) for c, r in failed if redisio.is_denied(r)), None)
        if denied is not None:  # the ACL user may not write that hash: an error, exit 1
            call, reply = denied
            server = redisio.describe(client)
            raise _Stop(
                stopped,
                redisio.permission_denied(server, reply, command="EVALSHA", key=call[0].key),
            )
        raise _Stop(stopped)


def _written_before(families: dict[str, FamilyCounts], in_flight: int) -> str:
    """What a run that stops on an error had written (``in_flight``: values of the round
    trip whose replies never came)."""
    compressed = sum(c.compressed for c in families.values())
    text = f"compress had compressed {compressed:,} values (each whole and readable)"
    if in_flight:
        text += (
            f"; the {in_flight:,} values of the round trip in flight may have been compressed "
            "too (each call whole or not at all)"
        )
    return text


# --- sampling (for doctor) -----------------------------------------------------------------


@dataclass
class PayloadSample:
    """Payloads of one family read from a sample of its hashes, counted as a dry run of
    compress counts them (``counts.bytes_before``/``bytes_after``: the plain values over the
    threshold, and their size once compressed; each is compressed to measure it)."""

    family: str
    hashes_sampled: int = 0
    counts: FamilyCounts = field(default_factory=FamilyCounts)


def sample_payloads(
    client: redisio.RedisClient,
    app: str,
    *,
    threshold: int = DEFAULT_THRESHOLD,
    hashes: int = 200,
    fields_per_hash: int = 100,
) -> dict[str, PayloadSample]:
    """Read one HSCAN page (about ``fields_per_hash`` fields) of each of the first ``hashes``
    payload hashes per family in SCAN order (which follows the keys' hash values, not their
    names or age; the legacy hash, when present, counts as one of them) and classify each value
    as :func:`compress` would. Read-only; stops scanning once the sample is complete."""
    out = {name: PayloadSample(name) for name in FAMILIES}
    chosen: dict[str, list[str]] = {name: [] for name in FAMILIES}
    for family in FAMILIES:
        for _, keys in hash_key_pages(client, app, (family,)):
            chosen[family].extend(keys[: hashes - len(chosen[family])])
            if len(chosen[family]) >= hashes:
                break
    for family, keys in chosen.items():
        sample = out[family]
        sample.hashes_sampled = len(keys)
        replies = redisio.pipelined(
            client, [("HSCAN", k, 0, "COUNT", fields_per_hash) for k in keys]
        )
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                raise ServerError(f"HSCAN {key} failed: {reply}")
            for _, value in _pairs(reply[1]):
                if sample.counts.count(value, threshold) == "plain_over_threshold":
                    sample.counts.bytes_before += len(value)
                    sample.counts.bytes_after += len(codec.gzip_base64(value.decode("utf-8")))
    return out


__all__ = [
    "COMPARE_AND_SET",
    "Candidate",
    "CompressOptions",
    "CompressSummary",
    "FamilyCounts",
    "HeaderChoice",
    "PayloadSample",
    "choose_gzip_header",
    "classify",
    "compare_and_set",
    "compress",
    "parse_gzip_os",
    "sample_payloads",
    "store_gzip_headers",
]

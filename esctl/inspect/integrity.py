"""``inspect integrity``: scan a whole event store for what the library would trip over —
orphan hash fields, missing or misplaced payloads, undecodable values, aggregates it would
refuse to load — with exact counts, the first examples of each kind, and memory that does not
grow with the store.

How it stays flat in memory, how ``--shard I/N`` splits the findings, and why orphans are
checked twice: docs/design/integrity.md.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from esctl import codec, layout, redisio, storereads
from esctl.errors import ServerError
from esctl.inspect.commit_index import CommitIndex
from esctl.inspect.locate import list_position
from esctl.inspect.problems import problem_key, stream_problems
from esctl.problems import ProblemsFile, open_problems_file
from esctl.scratch import scratch_error
from esctl.shard import Shard
from esctl.storereads import is_wrong_type
from esctl.streams import PAYLOAD_KINDS, read_streams, validate_stream

INTEGRITY_KINDS = (
    "wrong_key_type",
    "orphan",
    "missing_payload",
    "misplaced_payload",
    *PAYLOAD_KINDS,
    "id_mismatch",
    "version_gap",
    "duplicate_version",
    "version_order",
    "aggregate_type_changed",
    "shared_commit_list",
)
"""Every kind ``inspect integrity`` reports, in the order it lists them."""


@dataclass
class IntegrityProgress:
    phase: str
    """``commit lists``, ``event hashes`` or ``recheck``."""
    commit_lists: int = 0
    """Commit lists checked (with ``--shard``: the shard's)."""
    commits: int = 0
    lists_read: int = 0
    """Commit lists read so far, the other shards' included (their commit ids only)."""
    event_hashes: int = 0
    hash_fields: int = 0


@dataclass
class IntegrityReport:
    app: str
    commit_lists: int
    commits: int
    event_hashes: int
    """Partition hashes scanned (the legacy hash is counted in ``legacy_fields``)."""
    hash_fields: int
    legacy_fields: int
    counts: dict[str, int]
    """Problems found per kind (kinds with none are left out)."""
    aggregates_with_problems: int
    examples: dict[str, list[dict[str, Any]]]
    """The first examples of each kind: ``{"kind", "key", "aggregate_id", "commit_id",
    "detail"}`` (:func:`finding`)."""
    elapsed_s: float
    shard: Shard = field(default_factory=Shard)
    """The share of the store covered (counts above are the shard's; docs/design/integrity.md)."""
    problems_where: str | None = None
    """The --problems-file holding every finding (None: only counted)."""

    @property
    def ok(self) -> bool:
        return not self.counts

    @property
    def problems_total(self) -> int:
        return sum(self.counts.values())

    @property
    def problems(self) -> list[dict[str, Any]]:
        return [p for kind in INTEGRITY_KINDS for p in self.examples.get(kind, [])]

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "shard": str(self.shard),
            "ok": self.ok,
            "commit_lists": self.commit_lists,
            "commits": self.commits,
            "event_hashes": self.event_hashes,
            "hash_fields": self.hash_fields,
            "legacy_fields": self.legacy_fields,
            "aggregates_with_problems": self.aggregates_with_problems,
            "counts": self.counts,
            "problems": self.problems,
            "problem_counts": dict(sorted(self.counts.items())),
            "problems_total": self.problems_total,
            "problems_omitted": self.problems_total - len(self.problems),
            "problems_where": self.problems_where,
            "elapsed_s": round(self.elapsed_s, 3),
        }


class _Tally:
    """Counts per kind and the first ``limit`` examples of each (fixed memory); with ``sink``
    (--problems-file) every finding is also written there as a JSON line, then forgotten."""

    def __init__(self, limit: int, sink: ProblemsFile | None = None) -> None:
        self.limit = limit
        self.sink = sink
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(
        self, kind: str, key: str, detail: str, commit_id: str | None, aggregate_id: str | None
    ) -> None:
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self.limit or self.sink is not None:
            found = finding(kind, key, detail, commit_id, aggregate_id)
            if len(examples) < self.limit:
                examples.append(found)
            self.write(found)

    def write(self, found: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.add(found)


def finding(
    kind: str, key: str, detail: str, commit_id: str | None, aggregate_id: str | None
) -> dict[str, Any]:
    """One reported problem. ``aggregate_id`` names the aggregate whose commit list the problem
    is about or points at the value (None for an orphan: no list names it). Names that are not
    UTF-8 are printed with ``\\xNN``."""
    printable = redisio.printable
    return {
        "kind": kind,
        "key": printable(key),
        "aggregate_id": None if aggregate_id is None else printable(aggregate_id),
        "commit_id": None if commit_id is None else printable(commit_id),
        "detail": printable(detail),
    }


HKEYS_LIMIT = 5000
"""Partition hashes up to this many fields are read with one HKEYS, bigger ones with HSCAN."""


def _hscan_fields(client: redisio.RedisClient, key: str, count: int = 1000) -> Iterator[list[str]]:
    """The field names of hash ``key``, one HSCAN page at a time (values are dropped at once);
    on a cluster each field once even if the hash moves meanwhile (:func:`redisio.hash_pages`)."""
    for _, flat in redisio.hash_pages(client, [key], count=count):
        yield [redisio.key_str(f) for f in flat[0::2]]


def owns_partition(shard: Shard, part: int) -> bool:
    """Whether partition ``part``'s hash fields are ``shard``'s (``part mod N``)."""
    return shard.count == 1 or part % shard.count == shard.index


def owns_commit_id(shard: Shard, commit_id: str) -> bool:
    """Whether a field named ``commit_id`` of the legacy hash, or of the partition hash it
    belongs in, is ``shard``'s: the shard of the commit id's partition. A name that is not
    UTF-8 is hashed as its bytes (no error)."""
    if shard.count == 1:
        return True
    crc = zlib.crc32(commit_id.encode("utf-8", "surrogateescape"))
    return owns_partition(shard, crc % layout.PARTITION_COUNT)


def _hash_pages(
    client: redisio.RedisClient,
    app: str,
    index: CommitIndex,
    scan_count: int,
    shard: Shard,
    on_wrong_type: Callable[[str, str, str], None],
) -> Iterator[list[tuple[str, int | None, list[str]]]]:
    """(hash key, partition or None for legacy, field names) per page, of ``shard``'s fields:
    the legacy hash first (HSCAN pages, the shard's fields kept), then the shard's partition
    hashes (SCAN pages, HKEYS per hash; the other shards' hashes are not read). A key of
    the shard's named as one of them but of another Redis type goes to ``on_wrong_type``
    (key, its type, its family); the legacy hash is shard 0's."""
    yield from _legacy_pages(client, app, scan_count, shard, on_wrong_type)
    # Not SCAN's TYPE hash: a partition key of another type must be seen (HLEN refuses it).
    for _, keys in redisio.scan_pages(client, layout.event_hash_pattern(app), count=scan_count):
        parts: list[tuple[str, int]] = []
        for key in keys:
            try:
                part = layout.event_hash_partition(app, key)
            except ValueError:  # another app's key ("App:Sub:123" under "App")
                continue
            if part is not None and owns_partition(shard, part):
                parts.append((key, part))
        fresh = set(index.new_keys([k for k, _ in parts]))
        parts = [(k, p) for k, p in parts if k in fresh]
        if not parts:
            continue
        lengths = redisio.pipelined(client, [("HLEN", k) for k, _ in parts])
        parts, lengths = _hashes_only(client, parts, lengths, on_wrong_type)
        small = [
            (k, p)
            for (k, p), n in zip(parts, lengths, strict=True)
            if not isinstance(n, Exception) and int(n) <= HKEYS_LIMIT
        ]
        large = [
            (k, p)
            for (k, p), n in zip(parts, lengths, strict=True)
            if isinstance(n, Exception) or int(n) > HKEYS_LIMIT
        ]
        replies = redisio.pipelined(client, [("HKEYS", k) for k, _ in small])
        page: list[tuple[str, int | None, list[str]]] = []
        for (key, part), reply in zip(small, replies, strict=True):
            if isinstance(reply, Exception):
                raise ServerError(f"HKEYS {key} failed: {reply}")
            page.append((key, part, [redisio.key_str(f) for f in reply]))
        yield page
        for key, part in large:
            for fields in _hscan_fields(client, key, scan_count):
                yield [(key, part, fields)]


def _legacy_pages(
    client: redisio.RedisClient,
    app: str,
    scan_count: int,
    shard: Shard,
    on_wrong_type: Callable[[str, str, str], None],
) -> Iterator[list[tuple[str, int | None, list[str]]]]:
    """:func:`_hash_pages` of the legacy hash: the shard's fields, an HSCAN page at a time."""
    legacy = layout.legacy_event_hash_key(app)
    (kind,) = storereads.key_types(client, [legacy])
    if kind == "hash":
        for fields in _hscan_fields(client, legacy, scan_count):
            yield [(legacy, None, [f for f in fields if owns_commit_id(shard, f)])]
    elif kind != "none" and shard.index == 0:
        on_wrong_type(legacy, kind, layout.LEGACY_HASH)


def _hashes_only(
    client: redisio.RedisClient,
    parts: list[tuple[str, int]],
    lengths: list[Any],
    on_wrong_type: Callable[[str, str, str], None],
) -> tuple[list[tuple[str, int]], list[Any]]:
    """``parts`` (partition hash keys and numbers) and their HLEN replies without the keys
    HLEN refused as not hashes (WRONGTYPE), which go to ``on_wrong_type`` with their type."""
    refused = [k for (k, _), n in zip(parts, lengths, strict=True) if is_wrong_type(n)]
    if not refused:
        return parts, lengths
    for key, kind in zip(refused, storereads.key_types(client, refused), strict=True):
        if kind not in ("hash", "none"):  # else changed since: read as it is now, or gone
            on_wrong_type(key, kind, layout.EVENT_HASH)
    gone = set(refused)
    kept = [(k, p, n) for (k, p), n in zip(parts, lengths, strict=True) if k not in gone]
    return [(k, p) for k, p, _ in kept], [n for _, _, n in kept]


def _misplaced_detail(app: str, key: str, commit_id: str, aggregate_id: str | None) -> str:
    right = layout.event_hash_key(app, commit_id)
    whose = (
        f"commit list {layout.commit_list_key(app, aggregate_id)} names it, "
        "but the library looks for it only there"
        if aggregate_id is not None
        else "no commit list names it"
    )
    return f"commit {commit_id} is stored in {key}, but it maps to {right}; " + whose


def check_integrity(
    client: redisio.RedisClient,
    app: str,
    *,
    examples: int = 10,
    scan_count: int = 250,
    shard: Shard | None = None,
    on_progress: Callable[[IntegrityProgress], None] | None = None,
    problems_file: str | None = None,
) -> IntegrityReport:
    """Scan the whole event store of ``app`` and report what is wrong with it: orphan hash
    fields, commit ids with no payload, payloads in another partition than their commit id's,
    undecodable payloads, and aggregates whose versions or types the library would reject
    (kinds: INTEGRITY_KINDS). Counts are exact; the first ``examples`` of each kind are listed.
    Memory does not grow with the store (docs/design/integrity.md). Read-only.

    With ``shard``, only that shard's findings and counts (how findings are split:
    docs/design/integrity.md): the reports of shards 0..N-1 add up to the unsharded report.

    With ``problems_file``, every finding is written there (emptied first) as a JSON line."""
    shard = shard or Shard()
    started = time.monotonic()
    sink = open_problems_file(problems_file)
    try:
        with CommitIndex() as index, contextlib.ExitStack() as stack:
            if sink is not None:
                stack.callback(sink.close)
            tally = _Tally(examples, sink)
            scan = _Scan(client, app, shard, scan_count, index, tally, on_progress)
            scan.check_commit_lists()
            scan.check_event_hashes()
            scan.recheck()
            scan.collect_findings(examples)
    except sqlite3.OperationalError as exc:  # its disk is full
        raise scratch_error(
            "the check's index of commit ids", exc, done="the check stopped (it changes nothing)"
        ) from None
    tally = scan.tally
    counts = {k: tally.counts[k] for k in INTEGRITY_KINDS if tally.counts.get(k)}
    counts.update({k: n for k, n in tally.counts.items() if k not in counts and n})
    return IntegrityReport(
        app=app,
        commit_lists=scan.progress.commit_lists,
        commits=scan.progress.commits,
        event_hashes=scan.progress.event_hashes,
        hash_fields=scan.hash_fields,
        legacy_fields=scan.legacy_fields,
        counts=counts,
        aggregates_with_problems=scan.aggregates_with_problems,
        examples={k: v for k, v in tally.examples.items() if v},
        elapsed_s=time.monotonic() - started,
        shard=shard,
        problems_where=problems_file,
    )


@dataclass
class _Scan:
    """One run of :func:`check_integrity`: its three steps and what they have counted."""

    client: redisio.RedisClient
    app: str
    shard: Shard
    scan_count: int
    index: CommitIndex
    tally: _Tally
    on_progress: Callable[[IntegrityProgress], None] | None
    progress: IntegrityProgress = field(default_factory=lambda: IntegrityProgress("commit lists"))
    aggregates_with_problems: int = 0
    hash_fields: int = 0
    legacy_fields: int = 0

    wrong_types: dict[str, str] = field(default_factory=dict)
    """Event hashes of another Redis type that commit lists lead to (key -> type): few."""

    def report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def wrong_type(self, key: str, kind: str, family: str, aggregate_id: str | None = None) -> None:
        """A store key of another Redis type than the library's: a finding of its own."""
        detail = storereads.wrong_type_detail(key, kind, family)
        self.tally.add("wrong_key_type", key, detail, None, aggregate_id)

    def check_commit_lists(self) -> None:
        """1. Commit lists: the shard's aggregates read and checked page by page; the commit
        ids of the shard's partitions (of every aggregate) spilled to the index."""
        # Not SCAN's TYPE list: a commit list's key of another type is a finding (TYPE tells).
        for _, keys in redisio.scan_pages(
            self.client, layout.commit_list_pattern(self.app), count=self.scan_count
        ):
            keys = self.index.new_keys(keys)
            if not keys:
                continue
            kinds = storereads.key_types(self.client, keys)
            for key, kind in zip(keys, kinds, strict=True):
                if kind not in ("list", "none"):
                    aggregate_id = layout.aggregate_id_from_commit_list_key(self.app, key)
                    if self.shard.owns(aggregate_id):
                        self.wrong_type(key, kind, layout.COMMIT_LIST, aggregate_id)
            keys = [k for k, kind in zip(keys, kinds, strict=True) if kind == "list"]
            ids = [layout.aggregate_id_from_commit_list_key(self.app, k) for k in keys]
            self._check_streams([a for a in ids if self.shard.owns(a)])
            others = [(k, a) for k, a in zip(keys, ids, strict=True) if not self.shard.owns(a)]
            if others:
                listed = storereads.commit_lists(self.client, [k for k, _ in others])
                self.index.add_commits(
                    (c, a)
                    for (_, a), commit_ids in zip(others, listed, strict=True)
                    for c in commit_ids
                    if owns_commit_id(self.shard, c)
                )
            self.progress.lists_read += len(keys)
            self.report()

    def _check_streams(self, aggregate_ids: list[str]) -> None:
        for stream in read_streams(
            self.client, self.app, aggregate_ids, wrong_types=self.wrong_types
        ):
            validate_stream(stream)
            problems = stream_problems(stream)
            if problems:
                self.aggregates_with_problems += 1
            for p in problems:
                self.tally.add(
                    p.kind, problem_key(stream, p), p.detail, p.commit_id, stream.aggregate_id
                )
            self.progress.commit_lists += 1
            self.progress.commits += len(stream.events)
            self.index.add_commits(
                (e.commit_id, stream.aggregate_id)
                for e in stream.events
                if owns_commit_id(self.shard, e.commit_id)
            )

    def check_event_hashes(self) -> None:
        """2. Event hashes: field names against the commit ids of step 1."""
        self.progress.phase = "event hashes"
        self.report()
        pages = _hash_pages(
            self.client, self.app, self.index, self.scan_count, self.shard, self.wrong_type
        )
        for page in pages:
            fields_of_page = [f for _, _, fields in page for f in fields]
            named = self.index.committed(fields_of_page)
            self.index.db.execute("BEGIN")
            for key, part, fields in page:
                if part is None:
                    self.legacy_fields += len(fields)
                else:
                    self.hash_fields += len(fields)
                    self.progress.event_hashes += 1
                self._check_fields(key, part, fields, named)
            self.index.db.execute("COMMIT")
            self.progress.hash_fields = self.hash_fields + self.legacy_fields
            self.report()

    def _check_fields(
        self, key: str, part: int | None, fields: list[str], named: dict[str, str]
    ) -> None:
        for commit_id in fields:
            aggregate_id = named.get(commit_id)
            if part is not None and layout.partition(commit_id) != part:
                # The index knows only the shard's commit ids: another shard's one is
                # described after a pass over the commit lists (_name_misplaced).
                detail = (
                    _misplaced_detail(self.app, key, commit_id, aggregate_id)
                    if owns_commit_id(self.shard, commit_id)
                    else ""
                )
                self.index.add_finding("misplaced_payload", key, commit_id, detail)
            elif aggregate_id is None:
                self.index.add_finding("orphan", key, commit_id, "")

    def recheck(self) -> None:
        """3. Orphan candidates again: a live service may have committed them meanwhile."""
        self.progress.phase = "recheck"
        self.report()
        for rows in self.index.findings("orphan"):
            _recheck_orphans(self.client, self.app, self.index, rows)
        if self.index.count_undescribed("misplaced_payload"):
            _name_misplaced(self.client, self.app, self.index, self.scan_count)

    def collect_findings(self, examples: int) -> None:
        """The hash-side findings (kept in the index) into the tally: counts and examples."""
        for kind, count in self.index.finding_counts().items():
            self.tally.counts[kind] += count
            found = self.index.finding_examples(kind, examples)
            owners = self.index.committed([commit_id for _, commit_id, _ in found])
            self.tally.examples[kind] = [
                finding(kind, key, detail, commit_id, owners.get(commit_id))
                for key, commit_id, detail in found
            ]
            if self.tally.sink is None:
                continue
            for page in self.index.finding_pages(kind):
                owners = self.index.committed([commit_id for _, commit_id, _ in page])
                for key, commit_id, detail in page:
                    self.tally.write(finding(kind, key, detail, commit_id, owners.get(commit_id)))


def _name_misplaced(
    client: redisio.RedisClient, app: str, index: CommitIndex, scan_count: int
) -> None:
    """Describe the misplaced fields whose commit ids are of another shard's partitions (not in
    the index): one more pass over the commit lists, LRANGE only, asks which of them a list
    names. Only a sharded run that found such a field makes it."""
    for _, keys in redisio.scan_pages(
        client, layout.commit_list_pattern(app), type_="list", count=scan_count
    ):
        if not keys:
            continue
        listed = storereads.commit_lists(client, keys)
        owner = {
            c: layout.aggregate_id_from_commit_list_key(app, k)
            for k, commit_ids in zip(keys, listed, strict=True)
            for c in commit_ids
        }
        for rowid, key, commit_id in index.undescribed("misplaced_payload", list(owner)):
            index.describe_finding(rowid, _misplaced_detail(app, key, commit_id, owner[commit_id]))
    while True:
        rows = index.undescribed_batch("misplaced_payload")
        if not rows:
            return
        for rowid, key, commit_id in rows:
            index.describe_finding(rowid, _misplaced_detail(app, key, commit_id, None))


def _recheck_orphans(
    client: redisio.RedisClient, app: str, index: CommitIndex, rows: list[tuple[int, str, str]]
) -> None:
    """Drop orphan candidates that are committed by now (or gone), describe the others from
    their payload (aggregate, version, TimeStamp)."""
    values = redisio.pipelined(client, [("HGET", key, commit_id) for _, key, commit_id in rows])
    parsed: list[tuple[int, str, codec.ParsedEvent]] = []
    lookups: list[tuple[Any, ...]] = []
    for (rowid, _key, commit_id), value in zip(rows, values, strict=True):
        if value is None:  # deleted since (a failed save cleans up after itself)
            index.drop_finding(rowid)
            continue
        if isinstance(value, Exception):
            raise ServerError(f"HGET of {commit_id} failed: {value}")
        _, event = codec.decode_event(value)
        parsed.append((rowid, commit_id, event))
        if event.aggregate_id is not None:
            lookups.append(("LPOS", layout.commit_list_key(app, event.aggregate_id), commit_id))
    positions = iter(redisio.pipelined(client, lookups))
    for rowid, commit_id, event in parsed:
        if event.aggregate_id is None:
            index.describe_finding(
                rowid,
                f"payload of commit {commit_id} that no commit list names (its payload has no "
                "aggregate Id)",
            )
            continue
        list_key = layout.commit_list_key(app, event.aggregate_id)
        position = next(positions)
        if is_wrong_type(position):  # no list to name it: the key is a finding of its own
            position = None
        elif isinstance(position, Exception):
            position = list_position(client, list_key, commit_id)
        if position is not None:
            index.drop_finding(rowid)
            continue
        what = " ".join(
            x
            for x in (
                event.aggregate_type or "aggregate",
                event.aggregate_id,
                f"version {event.version}" if event.version is not None else None,
                f"({event.event_type}, TimeStamp {event.timestamp_text})"
                if event.event_type
                else None,
            )
            if x
        )
        index.describe_finding(
            rowid,
            f"payload of {what} that commit list {list_key} does not name (never committed: a "
            "save that died between HSET and RPUSH)",
        )

"""``inspect stats``: where a store's memory goes — key counts, payload sizes and compression,
``MEMORY USAGE`` per key family (sampled), and events and bytes per event type."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from esctl import codec, layout, redisio, storereads
from esctl.errors import ServerError
from esctl.sampling import Reservoir


@dataclass
class FamilyMemory:
    """``MEMORY USAGE`` of one key family: sampled and extrapolated to all its keys."""

    family: str
    keys: int
    sampled: int
    sampled_bytes: int
    estimated_bytes: int
    share_of_used_memory: float | None


@dataclass
class TypeStats:
    """Committed events of one event type (estimated from the sample unless ``--full``)."""

    event_type: str
    events: int
    stored_bytes: int
    compressed: int

    def as_dict(self, total_events: int, total_bytes: int) -> dict[str, Any]:
        return {
            "event_type": self.event_type,
            "events": self.events,
            "stored_bytes": self.stored_bytes,
            "compressed": self.compressed,
            "share_of_events": round(self.events / total_events, 4) if total_events else 0.0,
            "share_of_bytes": round(self.stored_bytes / total_bytes, 4) if total_bytes else 0.0,
        }


class PayloadTally:
    """Payloads read, added up: events (legacy, compressed), stored bytes (of the compressed
    ones, and their plain text's), and per event type."""

    def __init__(self) -> None:
        self.by_type: dict[str, TypeStats] = {}
        self.events = self.legacy = self.compressed = 0
        self.stored = self.compressed_stored = self.compressed_plain = 0

    def add(self, commit_ids: Sequence[str], values: Sequence[bytes | None]) -> None:
        for commit_id, value in zip(commit_ids, values, strict=True):
            if value is None:
                continue
            decoded, event = codec.decode_event(value)
            event_type = event.event_type or "(unreadable)"
            stats = self.by_type.get(event_type)
            if stats is None:
                stats = self.by_type[event_type] = TypeStats(event_type, 0, 0, 0)
            size = len(value)
            stats.events += 1
            stats.stored_bytes += size
            self.events += 1
            self.stored += size
            if commit_id.isdigit():
                self.legacy += 1
            if decoded.compressed is not None:
                stats.compressed += 1
                self.compressed += 1
                self.compressed_stored += size
                self.compressed_plain += len(decoded.text.encode("utf-8"))


@dataclass
class StatsReport:
    app: str
    env: str | None
    full: bool
    sample: int
    commit_lists: int
    commit_ids: int
    partitioned_hashes: int
    partitioned_fields: int
    legacy_fields: int
    snapshot_hashes: int
    snapshots: int
    queue_lists: dict[str, int]
    queue_messages: dict[str, int]
    examined: PayloadTally
    """The committed events whose payloads were read (the sampled lists', or all with full)."""
    payload_bytes: int
    payload_bytes_exact: bool
    used_memory: int | None
    memory: list[FamilyMemory]
    event_types: list[TypeStats]
    """By stored bytes, largest first; scaled from the sample to all commit ids unless full."""
    elapsed_s: float

    @property
    def store_keys(self) -> int:
        """The app's commit lists, event hashes (partitioned and legacy) and snapshot hashes:
        0 when it has no keys here at all."""
        return (
            self.commit_lists
            + self.partitioned_hashes
            + (1 if self.legacy_fields else 0)
            + self.snapshot_hashes
        )

    @property
    def event_store_bytes(self) -> int:
        """Estimated memory of the event storage (event hashes + legacy hash + commit lists):
        roughly what moving events out of Redis frees."""
        return sum(
            m.estimated_bytes
            for m in self.memory
            if m.family in ("event_hashes", "legacy_hash", "commit_lists")
        )

    def as_dict(self) -> dict[str, Any]:
        total_events = sum(t.events for t in self.event_types)
        total_bytes = sum(t.stored_bytes for t in self.event_types)
        examined = self.examined.events
        return {
            "app": self.app,
            "env": self.env,
            "full": self.full,
            "sample": self.sample,
            "aggregates": self.commit_lists,
            "events": {
                "commit_ids": self.commit_ids,
                "hash_fields": self.partitioned_fields + self.legacy_fields,
                "partitioned_fields": self.partitioned_fields,
                "legacy_fields": self.legacy_fields,
                "partition_hashes": self.partitioned_hashes,
                "legacy_share_examined": round(self.examined.legacy / examined, 4)
                if examined
                else None,
            },
            "snapshots": {"hashes": self.snapshot_hashes, "snapshots": self.snapshots},
            "queues": {"lists": self.queue_lists, "messages": self.queue_messages},
            "payloads": {
                "examined": examined,
                "compressed_share": round(self.examined.compressed / examined, 4)
                if examined
                else None,
                "compression_ratio": round(
                    self.examined.compressed_plain / self.examined.compressed_stored, 3
                )
                if self.examined.compressed_stored
                else None,
                "average_stored_bytes": round(self.examined.stored / examined, 1)
                if examined
                else None,
                "payload_bytes": self.payload_bytes,
                "payload_bytes_exact": self.payload_bytes_exact,
            },
            "memory": {
                "used_memory": self.used_memory,
                "families": [
                    {
                        "family": m.family,
                        "keys": m.keys,
                        "sampled": m.sampled,
                        "sampled_bytes": m.sampled_bytes,
                        "estimated_bytes": m.estimated_bytes,
                        "share_of_used_memory": m.share_of_used_memory,
                    }
                    for m in self.memory
                ],
                "event_store_bytes": self.event_store_bytes,
                "event_store_share": round(self.event_store_bytes / self.used_memory, 4)
                if self.used_memory
                else None,
            },
            "event_types": [t.as_dict(total_events, total_bytes) for t in self.event_types],
            "event_types_exact": self.full or examined == self.commit_ids,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _lengths(
    client: redisio.RedisClient,
    command: str,
    keys: Sequence[str],
    wrong: WrongTypes | None = None,
) -> tuple[int, list[str]]:
    """The lengths of ``keys`` (LLEN or HLEN) added up, and the keys of that length. With
    ``wrong``, a key that holds another Redis type (WRONGTYPE) is recorded there with its type
    (asked only then) and left out; without, it raises ServerError as any error reply does."""
    total = 0
    measured: list[str] = []
    refused: list[str] = []
    for key, reply in zip(
        keys, redisio.pipelined(client, [(command, k) for k in keys]), strict=True
    ):
        if isinstance(reply, Exception):
            if wrong is None or not storereads.is_wrong_type(reply):
                raise ServerError(f"{command} {key} failed: {reply}")
            refused.append(key)
            continue
        total += int(reply)
        measured.append(key)
    if refused and wrong is not None:
        expected = "list" if command == "LLEN" else "hash"
        for key, kind in zip(refused, storereads.key_types(client, refused), strict=True):
            if kind not in (expected, "none"):  # else changed since: as if not seen
                wrong.keys[key] = kind
    return total, measured


@dataclass
class WrongTypes:
    """Keys of the app named as a commit list, a partition hash or the legacy hash that hold
    another Redis type (the library fails on every read of them), as :func:`inspect_stats`
    met them when asked to (``doctor``'s store.key_types)."""

    keys: dict[str, str] = field(default_factory=dict)
    """Key -> its Redis type."""
    hashes: dict[str, str] = field(default_factory=dict)
    """Event hashes of another type met reading the sampled payloads (key -> its type)."""


def _memory_usage(client: redisio.RedisClient, keys: Sequence[str]) -> int:
    total = 0
    for reply in redisio.pipelined(client, [("MEMORY", "USAGE", k) for k in keys]):
        if isinstance(reply, Exception):
            raise ServerError(
                f"MEMORY USAGE failed: {reply}",
                hint="the server or its ACL may not allow MEMORY USAGE",
            )
        total += int(reply or 0)
    return total


Progress = Callable[[str, int], None]
"""Called with a phase (``commit lists``, ``event hashes``, …) and the keys seen so far."""


def inspect_stats(
    client: redisio.RedisClient,
    app: str,
    *,
    env: str | None = None,
    sample: int = 1000,
    full: bool = False,
    seed: int | None = None,
    on_progress: Progress | None = None,
    wrong: WrongTypes | None = None,
) -> StatsReport:
    """Counts, payload sizes, memory per key family and events per type of ``app``'s store.

    Keys are counted with SCAN and pipelined LLEN/HLEN (exact). ``MEMORY USAGE`` is asked of a
    uniform random sample of ``sample`` keys per family (event hashes, commit lists, snapshots,
    queues; the legacy hash is one key, asked once) and scaled to the family's key count.
    Payloads are read for the events of ``sample`` random commit lists (scaled to all commit ids)
    or, with ``full``, for every commit list (exact). Queue lists of ``env``, or of every
    environment when None. Read-only; memory bounded by ``sample``.

    With ``wrong``, the commit lists and event hashes are scanned without SCAN's TYPE filter and
    a key of theirs that holds another Redis type is recorded there (its LLEN or HLEN tells: no
    more commands on a store without one), not counted; an event hash of another type met
    reading the sampled payloads too, instead of raising. The figures are the same either way.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    tally = PayloadTally()

    def progress(phase: str, keys: int) -> None:
        if on_progress is not None:
            on_progress(phase, keys)

    lists = Reservoir[str](sample, rng)
    commit_ids = _count_commit_lists(client, app, lists, tally if full else None, progress, wrong)
    if not full and lists.items:
        _read_sampled_payloads(client, app, lists.items, tally, wrong)
    partitions = Reservoir[str](sample, rng)
    legacy_key = layout.legacy_event_hash_key(app)
    partitioned_fields = _count_hashes(
        client,
        "event hashes",
        layout.event_hash_pattern(app),
        f"{legacy_key}:",
        partitions,
        progress,
        wrong,
    )
    (legacy_type,) = redisio.pipelined(client, [("TYPE", legacy_key)])
    has_legacy = redisio.key_str(legacy_type) == "hash"
    legacy_fields = _lengths(client, "HLEN", [legacy_key])[0] if has_legacy else 0
    if wrong is not None and redisio.key_str(legacy_type) not in ("hash", "none"):
        wrong.keys[legacy_key] = redisio.key_str(legacy_type)
    snapshots = Reservoir[str](sample, rng)
    snapshot_count = _count_hashes(
        client,
        "snapshots",
        layout.snapshot_hash_pattern(app),
        f"Snapshots:{app}:",
        snapshots,
        progress,
    )
    queues = Reservoir[str](sample, rng)
    queue_lists, queue_messages = _count_queues(client, env, queues, progress)

    used = redisio.used_memory_or_none(client)
    families: list[tuple[str, list[str], int]] = [
        ("event_hashes", partitions.items, partitions.seen),
        ("legacy_hash", [legacy_key] if has_legacy else [], 1 if has_legacy else 0),
        ("commit_lists", lists.items, lists.seen),
        ("snapshots", snapshots.items, snapshots.seen),
        ("queues", queues.items, queues.seen),
    ]
    # Events per type, scaled from the examined events to every commit id.
    scale = commit_ids / tally.events if tally.events and not full else 1.0
    if full:
        payload_bytes, exact = tally.stored, True
    else:
        fields = partitioned_fields + legacy_fields
        payload_bytes = round(tally.stored / tally.events * fields) if tally.events else 0
        exact = False
    return StatsReport(
        app=app,
        env=env,
        full=full,
        sample=sample,
        commit_lists=lists.seen,
        commit_ids=commit_ids,
        partitioned_hashes=partitions.seen,
        partitioned_fields=partitioned_fields,
        legacy_fields=legacy_fields,
        snapshot_hashes=snapshots.seen,
        snapshots=snapshot_count,
        queue_lists=queue_lists,
        queue_messages=queue_messages,
        examined=tally,
        payload_bytes=payload_bytes,
        payload_bytes_exact=exact,
        used_memory=used,
        memory=[_family_memory(client, *family, used) for family in families],
        event_types=_event_types(tally, scale),
        elapsed_s=time.monotonic() - started,
    )


def _count_commit_lists(
    client: redisio.RedisClient,
    app: str,
    lists: Reservoir[str],
    tally: PayloadTally | None,
    progress: Progress,
    wrong: WrongTypes | None = None,
) -> int:
    """Sample the commit lists into ``lists`` and count their commit ids; with ``tally`` (a full
    run), read and tally every payload too. With ``wrong``: see :func:`inspect_stats`."""
    commit_ids = 0
    type_ = None if wrong is not None else "list"
    for _, keys in redisio.scan_pages(client, layout.commit_list_pattern(app), type_=type_):
        if not keys:
            continue
        if tally is not None:
            found = None if wrong is None else wrong.keys
            listed = storereads.commit_lists(client, keys, wrong_types=found)
            if wrong is not None:
                kept = [i for i, k in enumerate(keys) if k not in wrong.keys]
                keys, listed = [keys[i] for i in kept], [listed[i] for i in kept]
            flat = [c for ids in listed for c in ids]
            commit_ids += len(flat)
            values, _ = storereads.fetch_values(
                client, app, flat, wrong_types=None if wrong is None else wrong.hashes
            )
            tally.add(flat, values)
        else:
            entries, keys = _lengths(client, "LLEN", keys, wrong)
            commit_ids += entries
        lists.offer(keys)
        progress("commit lists", lists.seen)
    return commit_ids


def _read_sampled_payloads(
    client: redisio.RedisClient,
    app: str,
    keys: Sequence[str],
    tally: PayloadTally,
    wrong: WrongTypes | None = None,
) -> None:
    """Tally the payloads of the sampled commit lists ``keys``, 10,000 at a time."""
    listed = storereads.commit_lists(client, keys, wrong_types=None if wrong is None else {})
    flat = [c for ids in listed for c in ids]
    for start in range(0, len(flat), 10_000):
        chunk = flat[start : start + 10_000]
        hashes = None if wrong is None else wrong.hashes
        values, _ = storereads.fetch_values(client, app, chunk, wrong_types=hashes)
        tally.add(chunk, values)


def _count_hashes(
    client: redisio.RedisClient,
    phase: str,
    pattern: str,
    prefix: str,
    sample: Reservoir[str],
    progress: Progress,
    wrong: WrongTypes | None = None,
) -> int:
    """Sample the hashes SCAN finds for ``pattern`` whose key is ``prefix`` and a number (the
    partition hashes, the snapshot hashes) into ``sample``; their fields, counted. ``phase``
    names them to ``progress``. With ``wrong`` (the partition hashes): see
    :func:`inspect_stats`."""
    fields = 0
    for _, keys in redisio.scan_pages(client, pattern, type_=None if wrong is not None else "hash"):
        mine = [k for k in keys if k[len(prefix) :].isdigit()]
        if mine:
            counted_fields, mine = _lengths(client, "HLEN", mine, wrong)
            sample.offer(mine)
            fields += counted_fields
        progress(phase, sample.seen)
    return fields


def _count_queues(
    client: redisio.RedisClient, env: str | None, queues: Reservoir[str], progress: Progress
) -> tuple[dict[str, int], dict[str, int]]:
    """Sample the queue lists of ``env`` (of every environment when None) into ``queues``;
    (lists, messages) per kind of queue list."""
    lists = dict.fromkeys(layout.QUEUE_LISTS, 0)
    messages = dict.fromkeys(layout.QUEUE_LISTS, 0)
    pattern = layout.queue_pattern(env) if env else "*:{*:*}:*"
    for _, keys in redisio.scan_pages(client, pattern, type_="list"):
        parsed = [(k, layout.parse_queue_key(k)) for k in keys]
        found = [(k, p) for k, p in parsed if p is not None and (env is None or p[1] == env)]
        if not found:
            continue
        queues.offer([k for k, _ in found])
        replies = redisio.pipelined(client, [("LLEN", k) for k, _ in found])
        for (key, parts), reply in zip(found, replies, strict=True):
            if isinstance(reply, Exception):
                raise ServerError(f"LLEN {key} failed: {reply}")
            assert parts is not None
            lists[parts[3]] += 1
            messages[parts[3]] += int(reply)
        progress("queues", queues.seen)
    return lists, messages


def _family_memory(
    client: redisio.RedisClient, name: str, sampled_keys: list[str], count: int, used: int | None
) -> FamilyMemory:
    """``MEMORY USAGE`` of a family's sampled keys, scaled to its ``count`` keys."""
    sampled_bytes = _memory_usage(client, sampled_keys) if sampled_keys else 0
    estimated = round(sampled_bytes / len(sampled_keys) * count) if sampled_keys else 0
    return FamilyMemory(
        name,
        count,
        len(sampled_keys),
        sampled_bytes,
        estimated,
        round(estimated / used, 4) if used else None,
    )


def _event_types(tally: PayloadTally, scale: float) -> list[TypeStats]:
    """The tally's events per type, times ``scale``, by stored bytes (largest first)."""
    return sorted(
        (
            TypeStats(
                t.event_type,
                round(t.events * scale),
                round(t.stored_bytes * scale),
                round(t.compressed * scale),
            )
            for t in tally.by_type.values()
        ),
        key=lambda t: (-t.stored_bytes, t.event_type),
    )

"""A large, clean event store written fast (pipelined), for benchmarks and scale tests:
:func:`write_bulk_store`. Its payloads are the demo's (esctl.demo), without the demo's defects,
queues and snapshots.

Not part of esctl: the tests import it as ``bulk_store``, the benchmarks through
``bench/_common.py`` (which puts this folder on sys.path)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import redis.exceptions

from esctl import codec, layout, redisio
from esctl.demo import dotnet
from esctl.demo.domain import EVENT_TYPES, HISTORY_END, NAMES, PRODUCTS, SENTENCES, list_of, model

_FILLER = " ".join(SENTENCES)  # ~900 UTF-8 bytes of mixed scripts
_ITEM_CREATED = EVENT_TYPES["ItemScoreCreated"]
_ITEM_UPDATED = EVENT_TYPES["ItemScoreUpdated"]
_ORDER_PLACED = EVENT_TYPES["OrderPlaced"]
_ORDER_LINE_ADDED = EVENT_TYPES["OrderLineAdded"]
_LINE_LIST = list_of(model("OrderLine"))
_LINE_MODEL = model("OrderLine")
_NEW_TICKS = dotnet.ticks(datetime(2017, 10, 5, tzinfo=UTC))
"""Events after the layout change are saved between this instant and HISTORY_END."""
_NEW_SPAN = dotnet.ticks(HISTORY_END) - _NEW_TICKS
_OLD_TICKS = dotnet.ticks(datetime(2017, 3, 1, tzinfo=UTC))
"""Aggregates with legacy events start within 150 days of this instant."""
_HOUR = 3600 * dotnet.TICKS_PER_SECOND
_DAY = 24 * _HOUR


def write_bulk_store(
    client: redisio.RedisClient,
    *,
    app: str,
    aggregates: int,
    events_per_aggregate: int | tuple[int, int] = 6,
    compressed_share: float = 0.3,
    legacy_share: float = 0.1,
    seed: int = 1,
    chunk: int = redisio.PIPELINE_CHUNK,
    large_repeats: tuple[int, int] = (1, 6),
) -> int:
    """Write a large, clean store of ``app`` (no defects, no queues) and return the number of
    events written.

    Half the aggregates are ``ItemScore`` (GUID ids), half ``Order`` (integer ids from 1).
    ``events_per_aggregate`` is a count or an inclusive (low, high) range drawn uniformly.
    About ``compressed_share`` of the events are over 1000 bytes (stored gzip+base64; their
    JSON is ``large_repeats`` times ~900 bytes of text, 1-6 KB by default, so that some are
    over PostgreSQL's 2 KB TOAST threshold as in a measured production store); about
    ``legacy_share`` are in the legacy layout (the first half of the events of a random
    ``2 * legacy_share`` of the aggregates). Legacy commit ids continue after the legacy hash's
    current size. Deterministic for a seed; pipelined ``chunk`` commands per round trip; each
    aggregate's payloads are written before its commit list (one RPUSH per aggregate).
    Meant for an app that has no store yet (integer ids would collide otherwise).
    """
    rng = random.Random(seed)
    low, high = (
        events_per_aggregate
        if isinstance(events_per_aggregate, tuple)
        else (events_per_aggregate, events_per_aggregate)
    )
    if low < 1 or high < low:
        raise ValueError(f"bad events_per_aggregate {events_per_aggregate!r}")
    try:
        legacy_counter = int(client.hlen(layout.legacy_event_hash_key(app)))
    except redis.exceptions.RedisError as exc:
        raise redisio.wrap_errors(client, exc) from exc
    store = _BulkStore(
        client,
        app,
        rng,
        chunk,
        legacy_counter,
        events_per_aggregate=(low, high),
        old_share=min(1.0, 2 * legacy_share),
        compressed_share=compressed_share,
        large_repeats=large_repeats,
    )
    written = sum(store.write_aggregate(number) for number in range(1, aggregates + 1))
    store.flush()
    return written


class _BulkStore:
    """One bulk store being written: its settings, the seeded random source, the pipeline.
    ``old_share``: the share of aggregates whose first half of events is in the legacy layout."""

    def __init__(
        self,
        client: redisio.RedisClient,
        app: str,
        rng: random.Random,
        chunk: int,
        legacy_counter: int,
        *,
        events_per_aggregate: tuple[int, int],
        old_share: float,
        compressed_share: float,
        large_repeats: tuple[int, int],
    ) -> None:
        self.client = client
        self.app = app
        self.rng = rng
        self.chunk = chunk
        self.events_per_aggregate = events_per_aggregate
        self.old_share = old_share
        self.compressed_share = compressed_share
        self.large_repeats = large_repeats
        self.legacy_key = layout.legacy_event_hash_key(app)
        self.legacy_counter = legacy_counter
        self.pipe = client.pipeline(transaction=False)
        self.pending = 0

    def send(self, *command: Any) -> None:
        self.pipe.execute_command(*command)
        self.pending += 1

    def flush(self) -> None:
        if self.pending:
            try:
                self.pipe.execute()
            except redis.exceptions.RedisError as exc:
                raise redisio.wrap_errors(self.client, exc) from exc
            self.pipe = self.client.pipeline(transaction=False)
            self.pending = 0

    def write_aggregate(self, number: int) -> int:
        """Write aggregate ``number``'s events, then its commit list; the events written."""
        rng = self.rng
        is_order = number % 2 == 0
        aggregate_id = str(number // 2) if is_order else dotnet.guid(rng)
        n = rng.randint(*self.events_per_aggregate)
        old = rng.random() < self.old_share
        legacy_n = n // 2 if old else 0
        start = (
            _OLD_TICKS + rng.randrange(150 * _DAY) if old else _NEW_TICKS + rng.randrange(_NEW_SPAN)
        )
        offset = rng.choice((0, 0, -300, 120, 540))
        commit_ids: list[str] = []
        for index in range(n):
            if index == legacy_n and old:
                start = _NEW_TICKS + rng.randrange(_NEW_SPAN)  # saved again after the switch
            ticks = (start + index * _HOUR + rng.randrange(_HOUR)) | 1  # odd: 7 digits kept
            document = _document(number, index, aggregate_id, is_order, ticks, offset)
            value = self.value(document, f"#{number}.{index}")
            if index < legacy_n:
                self.legacy_counter += 1
                commit_id = str(self.legacy_counter)
                self.send("HSET", self.legacy_key, commit_id, value)
            else:
                commit_id = dotnet.guid(rng)
                self.send("HSET", layout.event_hash_key(self.app, commit_id), commit_id, value)
            commit_ids.append(commit_id)
        self.send("RPUSH", layout.commit_list_key(self.app, aggregate_id), *commit_ids)
        if self.pending >= self.chunk:
            self.flush()
        return n

    def value(self, document: dict[str, Any], tag: str) -> bytes:
        """The stored value of ``document``; about ``compressed_share`` of them get a long
        Comment first: over 1000 bytes, so stored compressed; 1-6 KB of JSON, so some are
        TOASTed in PostgreSQL."""
        if self.rng.random() < self.compressed_share:
            repeats = self.rng.randint(*self.large_repeats)
            document["Comment"] = " ".join([_FILLER] * repeats) + f" {tag}"
        return codec.encode_value(dotnet.to_json(document))


def _document(
    number: int, index: int, aggregate_id: str, is_order: bool, ticks: int, offset: int
) -> dict[str, Any]:
    """Event ``index`` of aggregate ``number`` (an Order or an ItemScore), without randomness."""
    document: dict[str, Any] = {
        "$type": "",
        "Id": aggregate_id,
        "TimeStamp": dotnet.timestamp_text(ticks, offset),
        "Version": index + 1,
        "AggregateType": "Order" if is_order else "ItemScore",
    }
    if not is_order:
        document["$type"] = _ITEM_CREATED if index == 0 else _ITEM_UPDATED
        document |= {"Score": (number + index) % 11, "ScoredBy": NAMES[(number + index) % 12]}
    elif index == 0:
        document["$type"] = _ORDER_PLACED
        document |= {"CustomerId": number, "CustomerName": NAMES[number % 12]}
    else:
        document["$type"] = _ORDER_LINE_ADDED
        sku, description = PRODUCTS[index % len(PRODUCTS)]
        document["Lines"] = {"$type": _LINE_LIST, "$values": [
            {"$type": _LINE_MODEL, "Sku": sku, "Description": description,
             "Quantity": index, "UnitPrice": 9.5}]}  # fmt: skip
    return document

"""``--from redis``: the selected events of an app read from its commit lists, in aggregate
order (by aggregate id, then version) or time order (:mod:`esctl.replay.time_order`)."""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any

from esctl import layout, redisio
from esctl.problems import DEFAULT_LISTED
from esctl.projections import Event
from esctl.query import QueryFilters, QueryResult, QueryStats, RedisQuery, TransformedQuery
from esctl.replay.time_order import SORT_RUN_BYTES, TimeSort
from esctl.replay.window import Window
from esctl.transforms import Rules, TransformFailure
from esctl.units import counted

SCAN_MOST = 32_000
"""SCAN's COUNT may grow to this when the server is at a distance: the ids are all kept anyway
(to be sorted), so larger pages cost no memory, and save round trips."""


@dataclass
class RedisSource(Window):
    """The selected events of ``app`` in Redis, in ``order`` (docs/design/replay.md, "Order"),
    strictly after ``after`` when given, at most ``limit``. Reads through
    :class:`esctl.query.RedisQuery` (one page of commit lists in memory, read a page ahead)."""

    client: redisio.RedisClient
    app: str
    filters: QueryFilters
    _: KW_ONLY
    sort_dir: str | None = None
    sort_run_bytes: int = SORT_RUN_BYTES
    unpack_ahead: bool = False
    """Gunzip in the read-ahead process (:class:`esctl.query.RedisQuery`): for a consumer
    with much to do per event (publishing), measured 1.2-1.3x for ``--to queue``; a light one
    (a projection that counts) is faster with gunzip on its side."""
    transforms: Rules | None = None
    """--transforms: each aggregate's whole stream is read and put through the rules, then the
    selectors ask the transformed events (as ``events query --transforms`` does)."""
    stats: QueryStats = field(init=False, default_factory=QueryStats)
    duplicate_versions: list[str] = field(init=False, default_factory=list)
    """The first aggregates whose versions repeat (``DEFAULT_LISTED``; all are counted)."""
    duplicate_version_count: int = field(init=False, default=0)
    transform_failures: list[tuple[str, TransformFailure]] = field(init=False, default_factory=list)
    """Aggregates a rule could not transform: none of their events is replayed."""
    unloadable: list[str] = field(init=False, default_factory=list)
    """--transforms: aggregates whose Redis streams are not loadable as they are (versions not
    1, 2, 3, …): not replayed, as migrate quarantines them before any rule applies."""
    left_out: int = field(init=False, default=0)
    """--transforms: source events the rules left out."""
    _sort: TimeSort | None = field(init=False, default=None)

    @property
    def runs(self) -> int:
        """Sorted runs the last ``--order time`` read spilled to disk."""
        return self._sort.runs if self._sort is not None else 0

    def problems(self) -> list[tuple[str, str, str]]:
        found = []
        if self.stats.unreadable:
            found.append(
                (
                    "unreadable",
                    layout.commit_list_pattern(self.app),
                    f"{counted(self.stats.unreadable, 'event')} could not be read (no payload, "
                    "undecodable, or no envelope fields) and "
                    f"{'was' if self.stats.unreadable == 1 else 'were'} not replayed; "
                    "'esctl inspect integrity' lists them",
                )
            )
        for aggregate_id, failure in self.transform_failures:
            found.append(
                (
                    failure.kind,
                    layout.commit_list_key(self.app, aggregate_id),
                    f"{failure.detail} (commit {failure.commit_id}); none of this aggregate's "
                    "events were replayed",
                )
            )
        stream_problems = (
            (
                "not_loadable",
                self.unloadable,
                "versions are not 1, 2, 3, … (once unreadable events are skipped): not "
                "transformed nor replayed; 'esctl inspect integrity' lists such streams",
            ),
            (
                "duplicate_version",
                self.duplicate_versions,
                "versions repeat in this commit list (two aggregate types sharing an id, or "
                "a duplicate save): replayed in (version, commit id) order",
            ),
        )
        for kind, aggregate_ids, detail in stream_problems:
            found += [
                (kind, layout.commit_list_key(self.app, aggregate_id), detail)
                for aggregate_id in aggregate_ids
            ]
        return found

    def unlisted(self) -> dict[str, int]:
        """Problems counted but not in :meth:`problems` (by kind)."""
        return {"duplicate_version": self.duplicate_version_count - len(self.duplicate_versions)}

    def aggregate_ids(self) -> list[str]:
        """The aggregates to read, sorted: the --aggregate ids, or every commit list; only the
        shard's."""
        owns = self.shard.owns
        if self.filters.aggregates:
            return sorted({a for a in self.filters.aggregates if owns(a)})
        ids: set[str] = set()
        for _, keys in redisio.scan_pages(
            self.client, layout.commit_list_pattern(self.app), type_="list", grow_to=SCAN_MOST
        ):
            for key in keys:
                aggregate_id = layout.aggregate_id_from_commit_list_key(self.app, key)
                if owns(aggregate_id):
                    ids.add(aggregate_id)
        return sorted(ids)

    def _groups(self, ids: Sequence[str]) -> Iterator[list[Event]]:
        """Each aggregate's selected events in version order (positions of aggregate order)."""
        filters = replace(self.filters, aggregates=tuple(ids), limit=None)
        query: RedisQuery | TransformedQuery
        if self.transforms is not None:
            query = TransformedQuery(self.client, self.app, filters, self.transforms)
            self.transform_failures = query.failures
            self.unloadable = query.unloadable
        else:
            query = RedisQuery(self.client, self.app, filters, unpack_ahead=self.unpack_ahead)
        self.stats = query.stats
        try:
            yield from self._grouped(query)
        finally:
            if isinstance(query, TransformedQuery):
                self.left_out = query.left_out

    def _grouped(self, query: RedisQuery | TransformedQuery) -> Iterator[list[Event]]:
        group: list[QueryResult] = []
        for result in query:
            if group and result.aggregate_id != group[0].aggregate_id:
                yield self._ordered(group)
                group = []
            group.append(result)
        if group:
            yield self._ordered(group)

    def _ordered(self, group: list[QueryResult]) -> list[Event]:
        aggregate_id = group[0].aggregate_id
        events = [
            Event(
                r.aggregate_id,
                r.aggregate_type,
                r.version,
                r.event_type,
                r.timestamp,
                r.commit_id,
                (aggregate_id, r.version, r.commit_id or ""),
                r.payload,
                r._data,
            )
            for r in group
        ]
        events.sort(key=_position_key)
        for before, after in itertools.pairwise(events):
            if before.version == after.version:
                self.duplicate_version_count += 1
                if len(self.duplicate_versions) < DEFAULT_LISTED:
                    self.duplicate_versions.append(aggregate_id)
                break
        return events

    def __iter__(self) -> Iterator[Event]:
        """Each iteration reads the store again (and counts its problems anew)."""
        self.duplicate_versions = []
        self.duplicate_version_count = 0
        if self.limit == 0:
            return
        ids = self.aggregate_ids()
        if self.order == "time":
            self._sort = TimeSort(self.sort_run_bytes, self.sort_dir)
            yield from self._sort.sorted(self._groups(ids), after=self.after, limit=self.limit)
            return
        after = self.after
        if after is not None:
            ids = ids[bisect.bisect_left(ids, after[0]) :]
        count = 0
        limit = self.limit
        for group in self._groups(ids):
            for event in group:
                if after is not None and event.position <= after:
                    continue
                yield event
                count += 1
                if limit is not None and count >= limit:
                    return

    def count_by_type(self) -> Counter[str]:
        """Events per type this source would yield (reads the selection once)."""
        counts: Counter[str] = Counter()
        source = self
        if self.order == "time" and self.after is None and self.limit is None:
            # The same events in either order: skip the sort.
            source = RedisSource(
                self.client,
                self.app,
                self.filters,
                order="aggregate",
                shard=self.shard,
                transforms=self.transforms,
            )
        for event in source:
            counts[event.event_type] += 1
        self.stats = source.stats
        self.duplicate_versions = source.duplicate_versions
        self.duplicate_version_count = source.duplicate_version_count
        self.transform_failures = source.transform_failures
        self.unloadable = source.unloadable
        self.left_out = source.left_out
        return counts


def _position_key(event: Event) -> tuple[Any, ...]:
    return event.position

"""``events query --transforms FILE``: the preview of what a rules file makes of the events in
Redis. :class:`TransformedQuery` reads every aggregate's readable events (only ``--aggregate``
narrows the read), runs each aggregate's stream through the rules (:mod:`esctl.transforms`),
then asks the filters of the transformed events: ``--type`` names the new types, left-out
events are absent, versions are renumbered. The query without ``--transforms``
(:class:`~esctl.query.redis_query.RedisQuery`) is untouched by this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from esctl import redisio, transforms
from esctl.query.filters import QueryFilters, QueryResult, QueryStats
from esctl.query.redis_query import RedisQuery, _Matcher


class TransformedQuery:
    """Iterate the transformed events of ``app`` that match ``filters``, aggregate by
    aggregate (each in its new version order). ``stats`` counts what was read and matched;
    ``left_out`` the source events the rules left out; ``failures`` the aggregates a rule
    could not transform (quarantined whole: none of their events is shown); ``unloadable`` the
    aggregates whose stream is not loadable to begin with (not shown either)."""

    def __init__(
        self,
        client: redisio.RedisClient,
        app: str,
        filters: QueryFilters,
        rules: transforms.Rules,
        *,
        on_progress: Callable[[QueryStats], None] | None = None,
    ) -> None:
        self.filters = filters
        self.rules = rules
        self.stats = QueryStats()
        self.left_out = 0
        self.failures: list[tuple[str, transforms.TransformFailure]] = []
        self.unloadable: list[str] = []
        """Aggregates not shown because their Redis streams are not loadable as they are
        (versions not 1, 2, 3, … once unreadable events are skipped): migrate quarantines
        those before any rule applies, and renumbering must not hide the defect."""
        self._on_progress = on_progress
        self._source = RedisQuery(
            client,
            app,
            QueryFilters(aggregates=filters.aggregates),
            on_progress=self._progress if on_progress is not None else None,
        )

    def _sync(self) -> None:
        read = self._source.stats
        self.stats.aggregates, self.stats.events = read.aggregates, read.events
        self.stats.unreadable = read.unreadable

    def _progress(self, _: QueryStats) -> None:
        self._sync()
        assert self._on_progress is not None
        self._on_progress(self.stats)

    def __iter__(self) -> Iterator[QueryResult]:
        limit = self.filters.limit
        if limit == 0:
            return
        filters = self.filters
        match = None
        if (
            filters.types
            or filters.aggregate_type
            or filters.where
            or filters.since
            or filters.until
        ):
            match = _Matcher(filters, QueryStats()).match
        source = iter(self._source)
        try:
            for result in self._transformed(source):
                if match is not None:
                    found = match(result.aggregate_id, result.commit_id or "", result.payload)
                    if found is None:
                        continue
                    result = found
                self.stats.matched += 1
                yield result
                if limit is not None and self.stats.matched >= limit:
                    return
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            self._sync()

    def _transformed(self, source: Iterator[QueryResult]) -> Iterator[QueryResult]:
        """Every transformed event, one aggregate's stream at a time (the source yields an
        aggregate's events together)."""
        stream: list[QueryResult] = []
        for result in source:
            if stream and result.aggregate_id != stream[0].aggregate_id:
                yield from self._stream(stream)
                stream = []
            stream.append(result)
        if stream:
            yield from self._stream(stream)

    def _stream(self, stream: list[QueryResult]) -> Iterator[QueryResult]:
        aggregate_id = stream[0].aggregate_id
        ordered = sorted(stream, key=lambda r: r.version)  # as the library loads them
        if [r.version for r in ordered] != list(range(1, len(ordered) + 1)):
            self.unloadable.append(aggregate_id)
            return
        events = [
            transforms.SourceEvent(r.commit_id or "", r.version, r.text, r.data) for r in ordered
        ]
        outcome = transforms.transform_stream(self.rules.rules, aggregate_id, events)
        if outcome.failure is not None:
            self.failures.append((aggregate_id, outcome.failure))
            return
        self.left_out += outcome.left_out
        for event in outcome.events:
            yield QueryResult(
                aggregate_id,
                event.version,
                event.event_type,
                event.aggregate_type,
                event.timestamp,
                event.commit_id,
                event.text.encode("utf-8"),
            )

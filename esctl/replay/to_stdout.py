"""``--to stdout``: each selected event as one JSON line (the ``events query`` shape)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO

import orjson

from esctl import redisio
from esctl.errors import Interrupted
from esctl.projections import Event
from esctl.replay.options import ReplayOptions
from esctl.replay.pacing import Pacer
from esctl.replay.sources import open_source
from esctl.replay.summary import ReplayProgress, ReplaySummary


def event_json_line(event: Event) -> bytes:
    """The ``events query`` JSON object of an event (no newline), with ``data`` spliced in as
    the payload text itself."""
    head = orjson.dumps(
        {
            "aggregate_id": event.aggregate_id,
            "version": event.version,
            "event_type": event.event_type,
            "aggregate_type": event.aggregate_type,
            "timestamp": event.timestamp,
            "commit_id": event.commit_id,
        }
    )
    return head[:-1] + b',"data":' + event.payload + b"}"


def replay_to_stdout(
    options: ReplayOptions,
    out: IO[bytes],
    *,
    redis_client: redisio.RedisClient | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Write each selected event as one JSON line to ``out`` (dry run: only count them)."""
    started = time.monotonic()
    summary = ReplaySummary.start(options)
    filters = options.selection.filters(options.now or datetime.now(UTC))
    source = open_source(options, filters, redis_client, limit=options.selection.limit)
    if options.dry_run:
        summary.counted(source.count_by_type())
        return summary.finish(started, source)
    pacer = Pacer(options.rate, sleep)
    progress = ReplayProgress()
    by_type: Counter[str] = Counter()
    step = pacer.batch(1000)
    pending = 0
    try:
        for event in source:
            if pending == 0:
                pacer.wait(step)
            out.write(event_json_line(event) + b"\n")
            by_type[event.event_type] += 1
            summary.events += 1
            pending += 1
            if pending >= step:
                pending = 0
                if on_progress is not None:
                    progress.events = summary.events
                    on_progress(progress)
        out.flush()
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(
            "the events written before it stopped are whole lines, none cut short",
            hint="write the rest (e.g. with --since or --aggregate, from the event after the "
            "last line): the same command writes every event of the selection again, from its "
            "start",
        ) from exc
    summary.by_type = dict(by_type)
    return summary.finish(started, source)

""":func:`replay`, the entry point: checks the options and hands the run to its target."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import IO, Any

from esctl import redisio
from esctl.errors import UsageError
from esctl.projections import ProjectionAdapter, load_projection
from esctl.replay.options import ReplayOptions
from esctl.replay.summary import ReplayProgress, ReplaySummary
from esctl.replay.to_projection import replay_to_projection
from esctl.replay.to_queue import Confirm, replay_to_queue
from esctl.replay.to_stdout import replay_to_stdout


def replay(
    options: ReplayOptions,
    *,
    redis_client: redisio.RedisClient | None = None,
    confirm: Confirm | None = None,
    out: IO[bytes] | None = None,
    projection: ProjectionAdapter | Any | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Replay the selected events to the target; see :func:`replay_to_queue`,
    :func:`replay_to_projection`, :func:`replay_to_stdout` for what each target promises.

    ``redis_client`` is needed for ``--from redis`` and ``--to queue``; ``out`` (a binary
    stream) for ``--to stdout``; ``projection`` overrides ``options.projection`` with an
    object or function. ``confirm`` is asked before publishing more than
    ``options.confirm_over`` events (None: do not ask). Raises UsageError, LockHeld (nothing
    was done), Refused (not confirmed: nothing was done), ConnectionFailed / ServerError."""
    if projection is not None and options.projection is None:
        name = getattr(projection, "name", None) or getattr(projection, "__name__", None)
        options = replace(options, projection=name or type(projection).__name__)
    options.check()
    if options.target == "queue":
        if redis_client is None:
            raise UsageError("--to queue needs a Redis connection")
        return replay_to_queue(
            options, redis_client, confirm=confirm, on_progress=on_progress, sleep=sleep
        )
    if options.target == "projection":
        if isinstance(projection, ProjectionAdapter):
            adapter = projection
        elif projection is not None:
            adapter = ProjectionAdapter(projection, options.projection or "")
        else:
            adapter = load_projection(options.projection or "")
        return replay_to_projection(
            options, adapter, redis_client=redis_client, on_progress=on_progress, sleep=sleep
        )
    if out is None:
        raise UsageError("--to stdout needs an output stream")
    return replay_to_stdout(
        options, out, redis_client=redis_client, on_progress=on_progress, sleep=sleep
    )

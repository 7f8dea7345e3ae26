"""``esctl replay``: push stored events through read models again: republish them to the
subscribers' reliable queues, feed them to an in-process Python projection, or print them.

:func:`replay` is the entry point; the selection and options are in :mod:`.options`, the
sources in :mod:`.source_redis` and :mod:`.source_pg`, the targets in :mod:`.to_queue`,
:mod:`.to_projection` and :mod:`.to_stdout`. How it works and why (orders, positions,
checkpoints, shards, the publisher's transaction): docs/design/replay.md.

The package never prints and never exits; the CLI renders what it returns.
"""

from esctl.replay.checkpoints import checkpoint_lock_name
from esctl.replay.options import ORDERS, SOURCES, TARGETS, ReplayOptions, Selection
from esctl.replay.pacing import Pacer
from esctl.replay.positions import decode_position, encode_position
from esctl.replay.publisher import PUBLISH_BATCH, PUBLISH_SCRIPT, Publisher
from esctl.replay.run import replay
from esctl.replay.source_pg import PgSource, pg_replay_sql, shard_aggregate_keys
from esctl.replay.source_redis import RedisSource
from esctl.replay.sources import Source, open_source
from esctl.replay.summary import MAX_LISTED_PROBLEMS, ReplayProgress, ReplaySummary
from esctl.replay.time_order import SORT_RUN_BYTES
from esctl.replay.to_projection import ProjectionFailed, replay_to_projection
from esctl.replay.to_queue import (
    Confirm,
    PublishPlan,
    discover_types,
    plan_publish,
    replay_lock,
    replay_to_queue,
    resolve_routes,
)
from esctl.replay.to_stdout import event_json_line, replay_to_stdout

__all__ = [
    "MAX_LISTED_PROBLEMS",
    "ORDERS",
    "PUBLISH_BATCH",
    "PUBLISH_SCRIPT",
    "SORT_RUN_BYTES",
    "SOURCES",
    "TARGETS",
    "Confirm",
    "Pacer",
    "PgSource",
    "ProjectionFailed",
    "PublishPlan",
    "Publisher",
    "RedisSource",
    "ReplayOptions",
    "ReplayProgress",
    "ReplaySummary",
    "Selection",
    "Source",
    "checkpoint_lock_name",
    "decode_position",
    "discover_types",
    "encode_position",
    "event_json_line",
    "open_source",
    "pg_replay_sql",
    "plan_publish",
    "replay",
    "replay_lock",
    "replay_to_projection",
    "replay_to_queue",
    "replay_to_stdout",
    "resolve_routes",
    "shard_aggregate_keys",
]

"""``esctl replay``: push stored events through read models again (being split into modules:
for now everything is in :mod:`esctl.replay.to_projection`)."""

from esctl.replay.to_projection import (
    Confirm,
    Pacer,
    PgSource,
    Publisher,
    PublishPlan,
    RedisSource,
    ReplayOptions,
    ReplayProgress,
    ReplaySummary,
    Selection,
    decode_position,
    encode_position,
    replay,
    replay_lock,
)

__all__ = [
    "Confirm",
    "Pacer",
    "PgSource",
    "PublishPlan",
    "Publisher",
    "RedisSource",
    "ReplayOptions",
    "ReplayProgress",
    "ReplaySummary",
    "Selection",
    "decode_position",
    "encode_position",
    "replay",
    "replay_lock",
]

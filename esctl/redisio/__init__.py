"""The one layer through which esctl talks to Redis (single instance or Redis Cluster).

Keys are found with SCAN per primary, work goes in pipelines by node, scripts touch one slot;
reads wait out a failover, writes fail at once. Tunables are read where they are defined
(``retry.READ_RETRY_SECONDS``, ``pipelines.BY_NODE_PIPELINES``): set them there, not here.
Design: docs/design/redisio.md.
"""

from esctl.redisio.client import (
    OOM_CAUSE,
    OOM_HINT,
    PIPELINE_CHUNK,
    READONLY_HINT,
    REDIS_ERRORS,
    RedisClient,
    RedisTarget,
    connect,
    describe,
    describe_url,
    error_hint,
    is_cluster_url,
    is_denied,
    is_lost,
    is_oom,
    is_readonly_replica,
    is_utf8,
    key_bytes,
    key_str,
    permission_denied,
    printable,
    refuse_a_lone_cluster_node,
    round_trip,
    wrap_errors,
)
from esctl.redisio.commands import (
    LatencyPacer,
    chunked,
    eval_pipelined,
    list_lengths,
    used_memory,
    used_memory_or_none,
)
from esctl.redisio.hash_scan import hash_pages
from esctl.redisio.pipelines import (
    RespChannel,
    is_read_only,
    pipelined,
    resp_channel,
    windowed,
)
from esctl.redisio.resp import bulk_values, pack_commands, resp_bulk, resp_command, stream_list
from esctl.redisio.retry import read_with_retry, refresh_slots
from esctl.redisio.scan import (
    KeySample,
    ScanPosition,
    glob_matcher,
    pattern_slot,
    sample_keys,
    scan_epoch,
    scan_pages,
)

__all__ = [
    "OOM_CAUSE",
    "OOM_HINT",
    "PIPELINE_CHUNK",
    "READONLY_HINT",
    "REDIS_ERRORS",
    "KeySample",
    "LatencyPacer",
    "RedisClient",
    "RedisTarget",
    "RespChannel",
    "ScanPosition",
    "bulk_values",
    "chunked",
    "connect",
    "describe",
    "describe_url",
    "error_hint",
    "eval_pipelined",
    "glob_matcher",
    "hash_pages",
    "is_cluster_url",
    "is_denied",
    "is_lost",
    "is_oom",
    "is_read_only",
    "is_readonly_replica",
    "is_utf8",
    "key_bytes",
    "key_str",
    "list_lengths",
    "pack_commands",
    "pattern_slot",
    "permission_denied",
    "pipelined",
    "printable",
    "read_with_retry",
    "refresh_slots",
    "refuse_a_lone_cluster_node",
    "resp_bulk",
    "resp_channel",
    "resp_command",
    "round_trip",
    "sample_keys",
    "scan_epoch",
    "scan_pages",
    "stream_list",
    "used_memory",
    "used_memory_or_none",
    "windowed",
    "wrap_errors",
]

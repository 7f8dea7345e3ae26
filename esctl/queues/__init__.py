"""Operations on the library's reliable queues (``docs/layout.md`` §4): list, peek, requeue,
drain to a backup file, restore from it.

Every change is one atomic server-side script over one ``{ENV:TYPE}`` slot; selections are
snapshots; mutating commands hold a per-queue lock and ask ``confirm`` first. Nothing here
prints, exits or opens PostgreSQL. One module per operation; callers use this package's names
(``queues.requeue(...)``). Design: docs/design/queues.md.
"""

from esctl.queues.backup import BACKUP_FORMAT, BACKUP_FORMAT_VERSION
from esctl.queues.confirm import Confirm, Plan
from esctl.queues.drain import DrainOptions, DrainSummary, drain
from esctl.queues.listing import (
    OLDEST_SAMPLE,
    QUEUE_METRIC_HELP,
    FoundQueues,
    QueueListing,
    QueueStatus,
    envs_with_queues,
    find_queues,
    list_queues,
    queue_metrics,
    read_queues,
    render_prometheus,
)
from esctl.queues.lock import queue_lock
from esctl.queues.messages import MessageInfo, RetryInfo, describe_message
from esctl.queues.peek import PeekResult, peek
from esctl.queues.progress import OnPhase, OnProgress, QueuePhase, QueueProgress
from esctl.queues.refs import QUEUE_LISTS, QueueRef, check_list_name
from esctl.queues.requeue import RequeueOptions, RequeueSummary, requeue
from esctl.queues.restore import (
    RESTORE_PROGRESS_TTL_MS,
    RestoreOptions,
    RestoreSummary,
    RestoreTarget,
    restore,
)
from esctl.queues.run import Hooks
from esctl.queues.scripts import (
    MOVE_BATCH,
    MOVE_BATCH_BYTES,
    MOVE_SCRIPT,
    REMOVE_SCRIPT,
    RESTORE_SCRIPT,
)
from esctl.queues.selection import Selection
from esctl.queues.watch import QueueRates, QueueWatch, WatchReading

# The constants are copies: to change a batch size (in a test), patch esctl.queues.scripts.

__all__ = [
    "BACKUP_FORMAT",
    "BACKUP_FORMAT_VERSION",
    "MOVE_BATCH",
    "MOVE_BATCH_BYTES",
    "MOVE_SCRIPT",
    "OLDEST_SAMPLE",
    "QUEUE_LISTS",
    "QUEUE_METRIC_HELP",
    "REMOVE_SCRIPT",
    "RESTORE_PROGRESS_TTL_MS",
    "RESTORE_SCRIPT",
    "Confirm",
    "DrainOptions",
    "DrainSummary",
    "FoundQueues",
    "Hooks",
    "MessageInfo",
    "OnPhase",
    "OnProgress",
    "PeekResult",
    "Plan",
    "QueueListing",
    "QueuePhase",
    "QueueProgress",
    "QueueRates",
    "QueueRef",
    "QueueStatus",
    "QueueWatch",
    "RequeueOptions",
    "RequeueSummary",
    "RestoreOptions",
    "RestoreSummary",
    "RestoreTarget",
    "RetryInfo",
    "Selection",
    "WatchReading",
    "check_list_name",
    "describe_message",
    "drain",
    "envs_with_queues",
    "find_queues",
    "list_queues",
    "peek",
    "queue_lock",
    "queue_metrics",
    "read_queues",
    "render_prometheus",
    "requeue",
    "restore",
]

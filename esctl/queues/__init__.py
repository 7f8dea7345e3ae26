"""The subscribers' reliable queues (being split into modules; see the next commit)."""

from esctl.queues.restore import *  # noqa: F403
from esctl.queues.restore import _interrupts_deferred  # noqa: F401

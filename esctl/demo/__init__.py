"""The demo event store and the throwaway servers ``esctl demo`` runs it in.

:func:`write_demo_store` (:mod:`~esctl.demo.store`) writes a small but complete
Learning.EventStore data set into Redis exactly as a live service writes it, with one of each
defect operators meet, and returns a :class:`DemoSummary` of exactly what it wrote. It is
planned in memory first (:mod:`~esctl.demo.plan`, :mod:`~esctl.demo.payloads`,
:mod:`~esctl.demo.queues`) from the made-up service of :mod:`~esctl.demo.domain`.
:func:`demo_environment` (:mod:`~esctl.demo.environment`) starts throwaway Redis and
PostgreSQL servers holding it (``esctl demo``; its tour is in ``esctl/cli/demo_tour.py``).
"""

from esctl.demo.domain import (
    AGGREGATE_TYPES,
    ANALYTICS,
    BILLING,
    DEFAULT_NOW,
    DEMO_APP,
    DEMO_ENV,
    EVENT_TYPES,
    HISTORY_END,
    HISTORY_START,
    LEGACY_CUTOFF,
    NOTIFICATION,
    REPORTING,
    SEARCH,
    SUBSCRIPTIONS,
)
from esctl.demo.environment import DemoRun, demo_environment
from esctl.demo.queues import STUCK_AFTER
from esctl.demo.store import DEFAULT_AGGREGATES, DEFAULT_SEED, MIN_AGGREGATES, write_demo_store
from esctl.demo.summary import DEFECT_KINDS, DemoSummary, PlantedDefect, QueueCounts

__all__ = [
    "AGGREGATE_TYPES",
    "ANALYTICS",
    "BILLING",
    "DEFAULT_AGGREGATES",
    "DEFAULT_NOW",
    "DEFAULT_SEED",
    "DEFECT_KINDS",
    "DEMO_APP",
    "DEMO_ENV",
    "EVENT_TYPES",
    "HISTORY_END",
    "HISTORY_START",
    "LEGACY_CUTOFF",
    "MIN_AGGREGATES",
    "NOTIFICATION",
    "REPORTING",
    "SEARCH",
    "STUCK_AFTER",
    "SUBSCRIPTIONS",
    "DemoRun",
    "DemoSummary",
    "PlantedDefect",
    "QueueCounts",
    "demo_environment",
    "write_demo_store",
]

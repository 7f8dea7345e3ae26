"""Default values shared by the command line and the core modules, defined once.

The command line shows these in ``--help`` and uses them as option defaults, so they live in
a module with no dependencies beyond the standard library: importing it must not pull in
redis-py, psycopg or the core modules (shell completion runs esctl on every Tab). The core
modules import their defaults from here under their own names (``migrate.DEFAULT_BATCH_SIZE``
is ``MIGRATE_BATCH_SIZE``).
"""

from __future__ import annotations

import os

COMPRESSION_THRESHOLD = 1000
"""The library compresses a payload whose UTF-8 size exceeds this many bytes
(``codec.DEFAULT_COMPRESSION_THRESHOLD``, ``compress.DEFAULT_THRESHOLD``)."""

MIGRATE_BATCH_SIZE = 10_000
"""``migrate.DEFAULT_BATCH_SIZE``."""

PLAN_SAMPLE = 2000
"""``plan.DEFAULT_SAMPLE``."""
PLAN_TRIAL_EVENTS = 20_000
"""``plan.DEFAULT_TRIAL_EVENTS``."""

REPLAY_BATCH_SIZE = 1000
"""Events per projection transaction (and per checkpoint): ``replay.DEFAULT_BATCH_SIZE``."""
REPLAY_CONFIRM_OVER = 1000
"""Publishing more events than this asks first (unless --yes): ``replay.DEFAULT_CONFIRM_OVER``."""

DOCTOR_SAMPLE = 500
"""Keys sampled per key family: ``doctor.DEFAULT_SAMPLE``."""

DEMO_SEED = 7
"""Seed of the generated demo data: ``demo.DEFAULT_SEED``."""


def verify_workers_default() -> int:
    """Comparing is Python work (decoding, JSON): a second process puts a second core to it."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1

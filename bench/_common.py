"""What the benchmarks share: a scratch PostgreSQL database and the standard bulk store.
(The benchmarks run as scripts, ``python bench/bench_x.py``, so this folder is on sys.path; the
bulk store's writer is the tests' ``tests/bulk_store.py``, so that folder is put there too.)"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bulk_store import write_bulk_store

__all__ = ["database", "write_bulk_store", "write_store"]


@contextmanager
def database(admin_dsn: str) -> Iterator[str]:
    """A new database ``esctl_bench_<hex>`` created through ``admin_dsn``, dropped afterwards."""
    name = f"esctl_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_dsn)
    dsn = urlunsplit(parts._replace(path="/" + name))
    try:
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_store(client: redis.Redis, app: str, events: int) -> int:
    """FLUSHDB, then the bulk store of about ``events`` events (~6.5 per aggregate, 30%
    gzip+base64 of 1-6 KB, 10% legacy layout: PERF-NOTES' store)."""
    client.flushdb()
    return write_bulk_store(
        client, app=app, aggregates=max(1, events * 2 // 13), events_per_aggregate=(1, 12)
    )

"""The demo environment ``esctl demo`` runs: throwaway Redis and PostgreSQL servers holding the
demo store, stopped again afterwards unless kept."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from esctl import redisio
from esctl.defaults import DEMO_SEED as DEFAULT_SEED
from esctl.demo.domain import DEMO_APP, DEMO_ENV
from esctl.demo.store import write_demo_store
from esctl.demo.summary import DemoSummary

if TYPE_CHECKING:
    from esctl.servers import LocalPostgres, LocalRedis


@dataclass
class DemoRun:
    """A demo store in throwaway servers. ``kept``: the servers outlive this process."""

    summary: DemoSummary
    redis: LocalRedis
    postgres: LocalPostgres
    kept: bool

    def exports(self) -> dict[str, str]:
        """The environment variables that point esctl at the demo."""
        return {
            "ESCTL_REDIS_URL": self.redis.url,
            "ESCTL_PG_DSN": self.postgres.dsn,
            "ESCTL_APP": self.summary.app,
            "ESCTL_ENV": self.summary.env,
        }

    def export_line(self) -> str:
        return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.exports().items())

    def tools(self) -> dict[str, str]:
        """How the tour runs ``psql`` and ``redis-cli``: from PATH, else the ones bundled beside
        the servers (a machine with only the ``local`` extra has no others)."""
        from esctl import servers

        return {
            "psql": servers.client_command("psql", self.postgres.bin_dir),
            "redis_cli": servers.client_command("redis-cli", self.redis.bin_dir),
        }

    def stop_commands(self) -> list[str]:
        """Shell commands that stop kept servers (PostgreSQL: SIGINT, its fast shutdown) and
        remove their data folders."""
        return [
            f"kill {self.redis.pid}; kill -INT {self.postgres.pid}",
            f"rm -rf {shlex.quote(str(self.redis.workdir))} "
            f"{shlex.quote(str(self.postgres.workdir))}",
        ]


@contextmanager
def demo_environment(
    *,
    keep: bool = False,
    seed: int = DEFAULT_SEED,
    now: datetime | None = None,
    workdir: Path | None = None,
) -> Iterator[DemoRun]:
    """Start a throwaway Redis and PostgreSQL, write the demo store (app DEMO_APP, env
    DEMO_ENV) into that Redis, and yield the run.

    The servers are stopped when the block ends, on success or error (Ctrl-C included), unless
    ``keep`` is set and the block succeeded: then they are detached and keep running after this
    process exits, to be stopped by pid (:meth:`DemoRun.stop_commands`). ``now`` defaults to the
    real clock, so the queued messages look fresh or stuck as they would in production.
    ``workdir``: a parent folder for the servers' data (default: new temporary folders).
    """
    from esctl import servers  # starts processes: imported only when a demo is asked for

    redis_server: LocalRedis | None = None
    postgres_server: LocalPostgres | None = None
    succeeded = False
    try:
        redis_server = servers.start_redis(
            workdir=workdir / "redis" if workdir else None,
            # A setting esctl doctor flags (events can be evicted), to show a finding and its
            # fix in the tour; without maxmemory nothing is ever evicted here.
            extra_args=["--maxmemory-policy", "allkeys-lru"],
            detach=keep,
        )
        postgres_server = servers.start_postgres(
            workdir=workdir / "postgres" if workdir else None, fast=True, detach=keep
        )
        client = redisio.connect(redis_server.url)
        try:
            summary = write_demo_store(
                client, app=DEMO_APP, env=DEMO_ENV, seed=seed, now=now or datetime.now(UTC)
            )
        finally:
            client.close()
        yield DemoRun(summary, redis_server, postgres_server, kept=keep)
        succeeded = True
    finally:
        if not (keep and succeeded):
            for server in (postgres_server, redis_server):
                if server is not None:
                    with suppress(Exception):
                        server.stop()

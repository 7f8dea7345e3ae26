"""``esctl migrate``: move event storage from Redis into PostgreSQL, one module a command."""

from __future__ import annotations

import typer

from esctl.cli.migrate import plan, prune, redis_to_pg, restore_pruned, status, verify

app = typer.Typer(no_args_is_help=True, help="Move event storage from Redis into PostgreSQL.")

app.command("redis-to-pg", short_help="Copy events into PostgreSQL: resumable, idempotent.")(
    redis_to_pg.redis_to_pg
)
app.command("verify", short_help="Compare Redis with PostgreSQL aggregate by aggregate.")(
    verify.verify_command
)
app.command("status", short_help="Where each shard's latest migration run stands.")(
    status.status_command
)
app.command("plan", short_help="Estimate a migration: events, bytes, run time.")(plan.plan_command)
app.command("prune", short_help="Delete from Redis what PostgreSQL holds identically.")(
    prune.prune_command
)
app.command("restore-pruned", short_help="Put a prune backup's events back into Redis.")(
    restore_pruned.restore_pruned_command
)

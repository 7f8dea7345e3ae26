"""``esctl migrate``: move event storage from Redis into PostgreSQL, one module a command."""

from __future__ import annotations

import typer

from esctl.cli.migrate import plan, prune, redis_to_pg, status, verify

app = typer.Typer(no_args_is_help=True, help="Move event storage from Redis into PostgreSQL.")

app.command("redis-to-pg")(redis_to_pg.redis_to_pg)
app.command("verify")(verify.verify_command)
app.command("status")(status.status_command)
app.command("plan")(plan.plan_command)
app.command("prune")(prune.prune_command)

"""``esctl config``: show the resolved settings and where each came from."""

from __future__ import annotations

import typer

from esctl.cli import output
from esctl.cli.errors import reporting
from esctl.cli.options import (
    AppOpt,
    ConfigOpt,
    DebugOpt,
    EnvOpt,
    JsonOpt,
    PgDsnOpt,
    PgSchemaOpt,
    ProfileOpt,
    RedisUrlOpt,
    settings,
)
from esctl.config import SETTINGS, redact

app = typer.Typer(no_args_is_help=True, help="Show esctl's configuration.")


@app.command("show")
def show(
    redis_url: RedisUrlOpt = None,
    pg_dsn: PgDsnOpt = None,
    pg_schema: PgSchemaOpt = None,
    app_name: AppOpt = None,
    env: EnvOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print every resolved setting and where it came from (passwords shown as ***).

    \b
    Example: esctl config show --profile staging --json
    """
    with reporting(json_mode=json_, debug=debug):
        resolved = settings(
            redis_url=redis_url,
            pg_dsn=pg_dsn,
            pg_schema=pg_schema,
            app=app_name,
            env=env,
            profile=profile,
            config=config,
        )
        rows = []
        for spec in SETTINGS:
            item = resolved.values[spec.name]
            value = item.value
            if value is not None and spec.secret_bearing:
                value = redact(value)
            rows.append((spec.name, value, item.source, spec.env_var))
        if json_:
            output.emit_json(
                {
                    "profile": resolved.profile,
                    "config_file": str(resolved.config_path) if resolved.config_path else None,
                    "settings": {
                        name: {"value": value, "source": source, "env_var": env_var}
                        for name, value, source, env_var in rows
                    },
                }
            )
            return
        output.emit_table(
            ["setting", "value", "source", "environment variable"],
            rows,
            title=f"profile {resolved.profile}; config file "
            f"{resolved.config_path or '(none found)'}",
        )

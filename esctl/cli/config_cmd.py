"""``esctl config``: show the resolved settings and where each came from."""

from __future__ import annotations

import typer

from esctl.cli.context import Context, Scope, with_context
from esctl.config import SETTINGS, redact

app = typer.Typer(no_args_is_help=True, help="Show esctl's configuration.")


@app.command("show", short_help="Every setting and where it came from.")
@with_context(Scope.SETTINGS)
def show(ctx: Context) -> None:
    """Print every resolved setting and where it came from (passwords shown as ***).

    \b
    Example: esctl config show --profile staging --json
    """
    resolved = ctx.settings
    rows = []
    for spec in SETTINGS:
        item = resolved.values[spec.name]
        value = item.value
        if value is not None and spec.secret_bearing:
            value = redact(value)
        rows.append((spec.name, value, item.source, spec.env_var))
    document = {
        "profile": resolved.profile,
        "config_file": str(resolved.config_path) if resolved.config_path else None,
        "settings": {
            name: {"value": value, "source": source, "env_var": env_var}
            for name, value, source, env_var in rows
        },
    }
    ctx.out.result(
        document,
        lambda: ctx.out.table(
            ["setting", "value", "source", "environment variable"],
            rows,
            # The source names the variable when one set the value.
            optional=["environment variable"],
            # A DSN or an app name too long even then: a record per setting, values whole.
            records=True,
            title=f"profile {resolved.profile}; config file "
            f"{resolved.config_path or '(none found)'}",
        ),
    )

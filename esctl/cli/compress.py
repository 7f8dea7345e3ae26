"""``esctl compress``: gzip+base64 in place the payloads the library left plain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from esctl import defaults
from esctl.cli import output
from esctl.cli.errors import EXIT_FAILED, EXIT_PROBLEMS, reporting
from esctl.cli.options import (
    AppOpt,
    ClusterOpt,
    ConfigOpt,
    DebugOpt,
    DryRunOpt,
    JsonOpt,
    ProfileOpt,
    RedisUrlOpt,
    YesOpt,
    settings,
)
from esctl.errors import Refused

if TYPE_CHECKING:
    from esctl import compress as core


def compress(
    threshold: Annotated[
        int,
        typer.Option(
            "--threshold",
            min=0,
            metavar="BYTES",
            help="Compress plain payloads whose UTF-8 size exceeds this (the library's setting).",
        ),
    ] = defaults.COMPRESSION_THRESHOLD,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    progress: Annotated[
        bool,
        typer.Option("--progress/--no-progress", help="Progress bar on a terminal (stderr)."),
    ] = True,
    redis_url: RedisUrlOpt = None,
    cluster: ClusterOpt = False,
    app_name: AppOpt = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compress in place every plain event and snapshot payload over the threshold.

    Writes gzip+base64 exactly as the library does, so services read the same text. Each
    value is replaced by a server-side compare-and-set only if it still holds what was read
    (a service writing meanwhile keeps its value), and only after the new value was decoded
    back to the identical text. Event hashes (partitioned and legacy) and snapshots only;
    commit lists and queues are never touched. Safe to interrupt and rerun. Reports values
    and bytes before/after and used_memory before/after. Asks first unless --yes (refuses
    without a terminal); --dry-run changes nothing. Exit 75 when another compress of the app
    runs, 3 when some values were left alone as problems.

    \b
    Example: esctl compress --app MyService --dry-run
    """
    from esctl import compress as core
    from esctl import redisio

    with reporting(json_mode=json_, debug=debug):
        resolved = settings(redis_url=redis_url, app=app_name, profile=profile, config=config)
        app = resolved.require("app")
        _confirm(yes=yes, dry_run=dry_run, json_=json_, app=app, threshold=threshold)
        client = redisio.connect(resolved.redis_url, cluster=cluster)
        bar = _Bar(dry_run) if progress and not json_ and output.stderr_is_terminal() else None
        try:
            summary = core.compress(
                client,
                core.CompressOptions(app=app, threshold=threshold, dry_run=dry_run),
                on_progress=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()
        if json_:
            output.emit_json(summary.as_dict())
        else:
            _render(summary)
        if summary.failed:
            raise typer.Exit(EXIT_FAILED)
        if summary.problems_total:
            raise typer.Exit(EXIT_PROBLEMS)


def _confirm(*, yes: bool, dry_run: bool, json_: bool, app: str, threshold: int) -> None:
    """--yes, or a yes typed on a terminal; never waits for an answer without one."""
    if yes or dry_run:
        return
    if json_ or not output.stdin_is_terminal():
        raise Refused(
            "compress rewrites payloads in Redis and asks first, but there is no terminal to "
            "ask on; nothing was changed",
            hint="pass --yes to run it unattended, or --dry-run to see what it would do",
        )
    question = (
        f"Compress (gzip+base64, in place) every plain event and snapshot payload of {app} "
        f"over {threshold:,} bytes?"
    )
    if not typer.confirm(question, default=False, err=True):
        raise Refused("not confirmed; nothing was changed", hint="add --yes to skip the question")


class _Bar:
    def __init__(self, dry_run: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            unit=" hashes", dynamic_ncols=True, desc="examining" if dry_run else "compressing"
        )
        self.verb = "would_compress" if dry_run else "compressed"

    def update(self, p: core.CompressProgress) -> None:
        self.bar.n = p.hashes
        self.bar.set_postfix(
            {"values": f"{p.values_examined:,}", self.verb: f"{p.compressed:,}"}, refresh=False
        )
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{n:,} B"  # pragma: no cover


def _render(summary: core.CompressSummary) -> None:
    total = summary.total
    verb = "to compress" if summary.dry_run else "compressed"
    saved = total.bytes_before - total.bytes_after

    def done(counts: core.FamilyCounts) -> int:
        return counts.plain_over_threshold if summary.dry_run else counts.compressed

    rows: dict[str, Any] = {
        "payload hashes": total.hashes,
        "values examined": total.values_examined,
        f"values {verb}": ", ".join(f"{done(c):,} {name}" for name, c in summary.families.items()),
        "bytes before → after": f"{_bytes(total.bytes_before)} → {_bytes(total.bytes_after)} "
        f"(saves {_bytes(saved)})",
        "changed meanwhile (kept)": total.changed_concurrently,
        "already compressed": total.already_compressed,
        f"at most {summary.threshold:,} bytes (left plain)": total.below_threshold,
        **(
            {"used_memory": _bytes(summary.used_memory_before)}
            if summary.dry_run
            else {
                "used_memory before → after": f"{_bytes(summary.used_memory_before)} → "
                f"{_bytes(summary.used_memory_after)}"
            }
        ),
        "elapsed": f"{summary.elapsed_s:.1f} s",
    }
    output.emit_mapping(
        rows,
        title=f"compress {summary.app}"
        + (" (dry run: nothing written)" if summary.dry_run else ""),
    )
    if summary.problems:
        output.emit_table(
            ["kind", "key", "detail"],
            [(p["kind"], p["key"], p["detail"]) for p in summary.problems[:50]],
            title=f"problems ({summary.problems_total}; those values were left as they are)",
        )
    if summary.dry_run and summary.total.plain_over_threshold:
        output.info(
            f"run it: esctl compress --app {summary.app} --threshold {summary.threshold} --yes"
        )

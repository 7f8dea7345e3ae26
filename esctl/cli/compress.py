"""``esctl compress``: gzip+base64 in place the payloads the library left plain."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Annotated, Any

from esctl import defaults
from esctl.cli.appkeys import PAYLOAD_HASHES, note_if_no_keys
from esctl.cli.context import Context, Scope, with_context
from esctl.cli.errors import exit_for
from esctl.cli.groups import Changing, with_groups
from esctl.cli.options import option
from esctl.cli.output import Output
from esctl.units import counted

if TYPE_CHECKING:
    from esctl import compress as core

_ONE = {"events": "event", "snapshots": "snapshot"}
"""A payload family's name (``esctl.compress.FAMILIES``, plural) after a count of one."""


@with_context(Scope.REDIS | Scope.APP)
@with_groups
def compress(
    ctx: Context,
    threshold: Annotated[
        int,
        option(
            "--threshold",
            "BYTES",
            "Compress plain payloads whose UTF-8 size exceeds this (the library's setting).",
            show_default=True,
            min=0,
        ),
    ] = defaults.COMPRESSION_THRESHOLD,
    gzip_os: Annotated[
        str | None,
        option(
            "--gzip-os",
            "unix|windows|N",
            "OS byte of the gzip header written (unix = 3, windows = 10, or 0-255). "
            "Default: the byte most of the store's compressed values carry, else unix.",
        ),
    ] = None,
    changing: Changing = Changing(),
) -> None:
    """Compress in place every plain event and snapshot payload over the threshold.

    Writes gzip+base64 as .NET's GZipStream does (zlib deflate, mtime 0), with the gzip
    header's OS byte and extra flags of the compressed values already in the store (a service
    on Linux writes OS byte 3, on Windows 10; --gzip-os chooses), so services read the same
    text. Each
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

    out = ctx.out
    app = ctx.app
    os_byte = None if gzip_os is None else core.parse_gzip_os(gzip_os)
    if changing.asks:
        out.confirm(
            f"Compress (gzip+base64, in place) every plain event and snapshot payload of {app} "
            f"over {counted(threshold, 'byte')}?",
            action="compress rewrites payloads in Redis",
        )
    client = ctx.redis
    dry_run = changing.dry_run
    verb = "would_compress" if dry_run else "compressed"
    with out.progress(
        changing.progress,
        desc="examining" if dry_run else "compressing",
        unit=" hashes",
        at_first_update=True,
    ) as bar:
        summary = core.compress(
            client,
            core.CompressOptions(app=app, threshold=threshold, dry_run=dry_run, gzip_os=os_byte),
            on_progress=bar.hook(
                lambda p: bar.update(
                    p.hashes,
                    postfix={"values": f"{p.values_examined:,}", verb: f"{p.compressed:,}"},
                )
            ),
        )
    out.result(summary.as_dict(), lambda: _render(out, summary))
    if summary.stopped is not None:
        _render_stopped(out, summary)
    else:
        note_if_no_keys(ctx, seen=summary.total.hashes > 0, looked_at=PAYLOAD_HASHES)
    exit_for(failed=summary.failed, problems=summary.problems_total)


def _render_stopped(out: Output, summary: core.CompressSummary) -> None:
    """The error of a run a failed compare-and-set stopped: what failed, what was written."""
    stopped = summary.stopped
    assert stopped is not None
    error = stopped.error.rstrip(".")
    out.error(
        f"compress stopped: the compare-and-set on {stopped.key} failed: {error}; "
        + stopped.outcome(summary.total.compressed),
        "fix the cause (out of memory: compress writes, so Redis needs room below maxmemory), "
        "then rerun the same command: it skips what is compressed already",
    )


def _render(out: Output, summary: core.CompressSummary) -> None:
    total = summary.total
    verb = "to compress" if summary.dry_run else "compressed"
    size = out.format_bytes
    saved = total.bytes_before - total.bytes_after

    def done(counts: core.FamilyCounts) -> int:
        return counts.plain_over_threshold if summary.dry_run else counts.compressed

    rows: dict[str, Any] = {
        "payload hashes": total.hashes,
        "values examined": total.values_examined,
        f"values {verb}": ", ".join(
            counted(done(c), _ONE[name], name) for name, c in summary.families.items()
        ),
        "bytes before → after": f"{size(total.bytes_before)} → {size(total.bytes_after)} "
        # Small values can come out larger (base64 of gzip): 'saves -840 B' said the opposite.
        + (f"(saves {size(saved)})" if saved >= 0 else f"(grows by {size(-saved)})"),
        "changed meanwhile (kept)": total.changed_concurrently,
        "already compressed": total.already_compressed,
        f"at most {counted(summary.threshold, 'byte')} (left plain)": total.below_threshold,
        **(
            {"used_memory": size(summary.used_memory_before)}
            if summary.dry_run
            else {
                "used_memory before → after": f"{size(summary.used_memory_before)} → "
                f"{size(summary.used_memory_after)}"
            }
        ),
        "gzip header": _header_text(summary.gzip_header),
        "elapsed": out.format_duration(summary.elapsed_s),
    }
    out.mapping(
        rows,
        title=f"compress {summary.app}"
        + (" (dry run: nothing written)" if summary.dry_run else ""),
    )
    out.problems(
        summary.problems,
        title=f"problems ({summary.problems_total}; those values were left as they are)",
    )
    if summary.gzip_header.disagree:
        found = ", ".join(
            f"{n:,} with OS byte {h.os} ({h.os_name})"
            for h, n in sorted(summary.gzip_header.seen.items())
        )
        out.warn(
            f"the store's compressed values carry different gzip headers ({found}); "
            "services read them all alike. --gzip-os chooses the one written."
        )
    if summary.dry_run and summary.total.plain_over_threshold:
        out.info_command(
            "run it:",
            f"esctl compress --app {shlex.quote(summary.app)} --threshold "
            f"{summary.threshold} --yes",
        )


def _header_text(choice: core.HeaderChoice) -> str:
    header = choice.header
    where = {
        "store": f"as {choice.seen[header]:,} of {choice.seen.total():,} sampled compressed values",
        "option": "--gzip-os",
        "default": "no compressed value in the store to copy it from",
    }[choice.source]
    return f"OS byte {header.os} ({header.os_name}), extra flags {header.xfl} ({where})"

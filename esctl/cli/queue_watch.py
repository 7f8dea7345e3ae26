"""``esctl queue list --watch``: the queue table redrawn in place on the terminal, with the net
change of each list's length per second (``esctl.queues.watch`` says what that can mean).

The view is laid out for the terminal it is on, as ``redis-cli --stat`` is: one line per
queue, grouped under its subscriber (subscriber names are long: a column of them would leave
no room at 80 columns), numbers right-aligned. When the terminal is too narrow, the dead
letters' rate, then the oldest age, then the published rate are left out (a line says so),
then event type names are cut with "…"; when it is too short, the rows that do not fit are
counted on the last line. An ``--env``, ``--subscriber`` or ``--type`` that matches no queue is
said in a note under the table, in ``queue list``'s words, until a scan finds one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.text import Text

from esctl.cli.live import interval_text, live_console, watch_until_interrupted
from esctl.cli.tables import left_out_note
from esctl.cli.wrapping import break_line
from esctl.units import counted, format_duration

if TYPE_CHECKING:
    from esctl import queues as core

GAP = 2
"""Spaces between two columns."""
INDENT = "  "
"""Before an event type, under its subscriber."""
MIN_TYPE_WIDTH = 12
"""Event type names are cut with "…" rather than below this."""


def format_rate(rate: float | None) -> str:
    """A net change per second, signed: ``+12.5``, ``-3``, ``0``; ``-`` before two readings."""
    if rate is None:
        return "-"
    if abs(rate) < 0.05:
        return "0"
    text = f"{rate:+,.1f}"
    return text[:-2] if text.endswith(".0") else text


Cell = Callable[["core.QueueStatus", "core.QueueRates"], str]

# (name in the "left out" line, header, cell); in the order shown.
COLUMNS: tuple[tuple[str, str, Cell], ...] = (
    ("published", "published", lambda q, r: f"{q.published:,}"),
    ("published Δ/s", "Δ/s", lambda q, r: format_rate(r.published)),
    ("processing", "processing", lambda q, r: f"{q.processing:,}"),
    ("oldest", "oldest", lambda q, r: format_duration(q.oldest_processing_age_s)),
    ("dead", "dead", lambda q, r: f"{q.dead:,}"),
    ("dead Δ/s", "Δ/s", lambda q, r: format_rate(r.dead)),
)
LEAVE_OUT = ("dead Δ/s", "oldest", "published Δ/s")
"""Left out in this order, as few as will do, when the terminal is too narrow."""
LEGEND = (
    "Δ/s: change of the list's length per second (pushed minus taken); "
    "oldest: age of the oldest processing message"
)


def watch_lines(
    reading: core.WatchReading,
    *,
    every: str,
    width: int,
    height: int,
    notes: Sequence[str] = (),
) -> list[Text]:
    """The picture of one reading for a terminal of ``width`` x ``height``: a header (time,
    interval), the legend, then the queues by subscriber, and under them ``notes`` (the names
    given that match no queue: :func:`esctl.cli.appkeys.no_queue_texts`); lines never wider
    than ``width``."""
    listing = reading.listing
    at = datetime.fromisoformat(listing.generated_at).strftime("%H:%M:%S UTC")
    head = [
        Text(
            f"queues of env {listing.env} ({len(listing.queues)}) at {at}, every "
            f"{every} (Ctrl-C stops)",
            style="bold",
        ),
        *(Text(line, style="dim") for line in break_line(LEGEND, width)),
    ]
    pairs = sorted(
        zip(listing.queues, reading.rates, strict=True),
        key=lambda p: (p[0].subscriber, p[0].event_type),
    )
    columns, type_width = _plan(pairs, width)
    cells = {name: [cell(q, r) for q, r in pairs] for name, _, cell in columns}
    widths = [max([len(header), *map(len, cells[name])]) for name, header, _ in columns]

    def row(first: str, values: list[str]) -> str:
        parts = [first.ljust(type_width)]
        parts += [v.rjust(w) for v, w in zip(values, widths, strict=True)]
        return (" " * GAP).join(parts)

    body = [Text(row("", [header for _, header, _ in columns]), style="bold")]
    subscriber = None
    for index, (q, _) in enumerate(pairs):
        if q.subscriber != subscriber:
            subscriber = q.subscriber
            body.append(Text(q.subscriber, style="cyan"))
        name = INDENT + q.event_type
        if len(name) > type_width:
            name = name[: type_width - 1] + "…"
        body.append(Text(row(name, [cells[n][index] for n, _, _ in columns])))
    tail = [
        Text(line, style="yellow") for note in notes for line in break_line(f"note: {note}", width)
    ]
    if listing.problems:
        problems = (
            f"{counted(len(listing.problems), 'problem', separators=False)} with queue keys: "
            "esctl queue list shows them"
        )
        tail += [Text(line, style="yellow") for line in break_line(problems, width)]
    left_out = [name for name, _, _ in COLUMNS if name not in {c[0] for c in columns}]
    if left_out:
        tail += [Text(line) for line in break_line(left_out_note(left_out), width)]
    room = height - 1 - len(head) - len(tail)  # Live keeps the cursor's row below
    if len(body) > room:
        hidden = len(body) - (room - 1)
        more = (
            f"… {counted(hidden, 'more row', separators=False)}: a taller terminal, or --type "
            "/ --subscriber"
        )
        body = [*body[: room - 1], Text(more, style="yellow")]
    lines = head + body + tail
    for line in lines:
        line.truncate(width, overflow="ellipsis")
        line.no_wrap = True
    return lines


def _plan(
    pairs: list[tuple[core.QueueStatus, core.QueueRates]], width: int
) -> tuple[list[tuple[str, str, Cell]], int]:
    """The columns shown and the event type column's width, for ``width`` cells."""
    natural_type = max((len(INDENT + q.event_type) for q, _ in pairs), default=len(INDENT))
    columns = list(COLUMNS)

    def numbers_width(shown: list[tuple[str, str, Cell]]) -> int:
        return sum(
            GAP + max(len(header), *(len(cell(q, r)) for q, r in pairs)) if pairs else len(header)
            for _, header, cell in shown
        )

    for name in LEAVE_OUT:
        if natural_type + numbers_width(columns) <= width:
            break
        columns = [c for c in columns if c[0] != name]
    type_width = max(min(natural_type, width - numbers_width(columns)), MIN_TYPE_WIDTH)
    return columns, type_width


def watch_queues(
    watcher: core.QueueWatch,
    interval: float,
    *,
    unmatched: Callable[[core.QueueListing], list[str]] = lambda listing: [],
) -> None:
    """Read and redraw until Ctrl-C (exit 130); a lost server ends it with its error.
    ``unmatched``: what to say of the names given that match no queue of a listing (the notes
    under the table); asked only for a reading that scanned the keys, its answer kept until the
    next scan: the queues shown change only then, and the look-up costs a SCAN or two."""
    notes: list[str] = []

    def draw(console: Console) -> RenderableType:
        nonlocal notes
        reading = watcher.read()
        if reading.scanned:
            notes = unmatched(reading.listing)
        lines = watch_lines(
            reading,
            every=interval_text(interval),
            width=console.width,
            height=console.height,
            notes=notes,
        )
        return Group(*lines)

    watch_until_interrupted(draw, interval, console=live_console())

"""How far a requeue, drain or restore has got, for a progress bar: a :class:`QueueProgress`
handed to the caller's ``on_progress`` once the command holds its queue lock and has its
answer to the question (so a run that exits 75, is refused, is a dry run or selects nothing
reports nothing), then after each batch whose answer Redis gave has been counted: never per
message, and never between an answer and its count (Ctrl-C is held there, see
``esctl/interrupts.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class QueueProgress:
    """The counts so far; the same object is handed over each time, updated."""

    moved: int = 0
    """Messages requeued, drained (removed) or restored so far."""
    gone: int = 0
    """Selected messages found taken meanwhile (requeue, drain): not moved, never will be."""
    total: int = 0
    """Messages selected (restore: those of the file still to restore into their lists)."""


OnProgress = Callable[[QueueProgress], None]


def reporter(
    on_progress: OnProgress | None, total: int, counts: Callable[[], tuple[int, int]]
) -> Callable[[], None]:
    """What a command calls to report: ``counts()`` (moved, gone: read from its summary, a
    batch's answer counted) handed to ``on_progress`` with ``total``; without ``on_progress``,
    nothing."""
    if on_progress is None:
        return _nothing
    progress = QueueProgress(total=total)

    def report() -> None:
        progress.moved, progress.gone = counts()
        on_progress(progress)

    return report


def _nothing() -> None:
    """The report of a run no one follows."""

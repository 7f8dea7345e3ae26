"""How far a requeue, drain or restore has got, for a progress bar: a :class:`QueueProgress`
handed to the caller's ``on_progress`` once the command holds its queue lock and has its
answer to the question (so a run that exits 75, is refused, is a dry run or selects nothing
reports nothing), then after each batch whose answer Redis gave has been counted: never per
message, and never between an answer and its count (Ctrl-C is held there, see
``esctl/interrupts.py``).

Before the moves, the steps that take a while on a long list and change no queue (a requeue
or drain reading the list and selecting from it, a drain writing its backup file, a restore
reading its file and settling its records' outcomes) are reported to ``on_phase`` as a
:class:`QueuePhase`, also only while the command holds its lock: at their start, every
:data:`PHASE_STEP` messages and at their end."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

PHASE_STEP = 10_000
"""A phase is reported at its start, every this many messages, and at its end."""


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


@dataclass(slots=True)
class QueuePhase:
    """A step before the moves (the same object is handed over each time, updated)."""

    name: str
    """What it does, as a bar shows it: ``reading list`` (a requeue or drain reading the list
    it selects from, one ``LRANGE`` streamed to a temporary file; ``reading list again`` for
    the second snapshot of ``--grace``) and ``selecting`` (choosing from it), ``backing up``
    (a drain writing its backup file), ``reading backup`` and ``preparing`` (a restore reading
    its file, then settling the records' outcomes and counting them per list)."""
    total: int | None = None
    """Messages (the list's, the backup file's records) it goes through, when known (not
    while a list is read: its length is known once it is)."""
    done: int = 0
    """Of those, done so far."""


OnPhase = Callable[[QueuePhase], None]


class PhaseReporter:
    """What a command calls to report one phase: :meth:`add` per message (reported every
    :data:`PHASE_STEP`), :meth:`finish` at its end; the start is reported when it is made.
    Without ``on_phase``, nothing."""

    def __init__(self, on_phase: OnPhase | None, name: str, total: int | None) -> None:
        self.on_phase = on_phase
        self.phase = QueuePhase(name, total)
        self._next = PHASE_STEP
        self._said: tuple[int, int | None] | None = None  # the last report: done, total
        self._report()

    def _report(self) -> None:
        if self.on_phase is not None:
            self._said = (self.phase.done, self.phase.total)
            self.on_phase(self.phase)

    def add(self, n: int = 1) -> None:
        phase = self.phase
        phase.done += n
        if phase.done >= self._next and self.on_phase is not None:
            self._next = phase.done + PHASE_STEP
            self._report()

    def at(self, done: int) -> None:
        """``done`` messages done so far (reported every :data:`PHASE_STEP`)."""
        self.phase.done = done
        if done >= self._next and self.on_phase is not None:
            self._next = done + PHASE_STEP
            self._report()

    def set_total(self, total: int) -> None:
        """The phase's ``total``, learnt once it has started (reported at once)."""
        self.phase.total = total
        self._report()

    def finish(self, done: int | None = None) -> None:
        """The end of the phase (``done``: how many were done in all, when not counted):
        reported unless the last report said it already."""
        if done is not None:
            self.phase.done = done
        if self._said != (self.phase.done, self.phase.total):
            self._report()


def counting(items: Iterable[T], phase: PhaseReporter) -> Iterator[T]:
    """``items``, each :meth:`~PhaseReporter.add`-ed to ``phase`` once it is taken, and the
    phase finished after the last."""
    for item in items:
        yield item
        phase.add()
    phase.finish()

"""The progress bar on stderr (tqdm, imported on the first bar drawn): counts as whole
numbers, rates scaled, and a :class:`Progress` that does nothing when no bar is drawn."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


_WITH_TOTAL = "{l_bar}{bar}| {count}/{total_count} [{elapsed}<{remaining}, {per_s}{postfix}]"
_WITHOUT_TOTAL = "{lead}{counted} [{elapsed}, {per_s}{postfix}]"


def one(unit: str) -> str:
    """A bar's ``unit``, a plural (`` commits``, `` hashes``), as it follows a count of one."""
    if unit.endswith(("ches", "shes", "sses", "xes")):
        return unit[:-2]
    return unit[:-1] if unit.endswith("s") else unit


@functools.cache
def counting_bar() -> type[Any]:
    """tqdm's bar with its counts written as the integers they are, with thousands separators
    (``4 events``, ``12,345/67,890 commits``), the unit after a count of one singular (``1
    event``, where tqdm writes ``1 events``), and its rate scaled (``16.7k events/s``),
    per second however slow (``0.30 commits/s``, where tqdm writes ``3.33s/ commits``).
    tqdm's ``unit_scale`` writes a count as a float below 1,000 (``4.00 events``,
    ``42.0 events``); without it the rate has two decimals (``14240.09 keys/s``). tqdm (a
    slow import) is imported on the first bar."""
    from tqdm import tqdm

    class CountingBar(tqdm):
        @staticmethod
        def format_meter(n: float, total: float | None, elapsed: float, **kwargs: Any) -> str:
            if total and n >= total + 0.5:  # past its total: tqdm then shows no total
                total = None
            prefix = kwargs.get("prefix") or ""
            unit = kwargs.get("unit") or "it"
            rate = kwargs.get("rate")
            if rate is None and elapsed:
                rate = n / elapsed
            count = f"{n:,.0f}"
            kwargs.update(
                per_s=f"{tqdm.format_sizeof(rate) if rate else '?'}{unit}/s",
                unit_scale=True,
                bar_format=_WITH_TOTAL if total else _WITHOUT_TOTAL,
                count=count,
                counted=f"{count}{one(unit) if count == '1' else unit}",  # 1 commit, 2 commits
                total_count=f"{total:,.0f}" if total else "?",
                lead=f"{prefix}: " if prefix else "",
            )
            return str(tqdm.format_meter(n, total, elapsed, **kwargs))

    return CountingBar


class Progress:
    """A progress bar on stderr (tqdm), or, when none is drawn, one whose methods do nothing.
    Made by :meth:`~esctl.cli.output.Output.progress`; safe to update from a thread beside
    the work (a count that finds the total). A context manager: leaving it draws the last
    picture and closes.

    ``make``: a bar drawn only at the first :meth:`update` (a total set before is kept for
    it): a command that takes a lock reports no progress before it holds it, so a run that
    exits 75 draws no bar before its error. It is called with no argument, or with the
    description to draw the bar under first (:meth:`restart`)."""

    def __init__(self, bar: Any = None, *, make: Callable[..., Any] | None = None) -> None:
        self._bar = bar
        self._make = make
        self._total: int | None = None
        self._lock = threading.Lock()
        self._desc = getattr(bar, "desc", None)

    @property
    def shown(self) -> bool:
        """Whether a bar is (or, at the first update, will be) drawn."""
        return self._bar is not None or self._make is not None

    def hook(self, update: Callable[P, None]) -> Callable[P, None] | None:
        """``update`` when the bar is drawn, else None (a core function then reports no
        progress at all)."""
        return update if self.shown else None

    def _draw(self, desc: str | None = None) -> None:
        """Draw the bar waiting for its first update, under ``desc`` when given (called with
        ``_lock`` held)."""
        if self._bar is None and self._make is not None:
            self._bar = self._make() if desc is None else self._make(desc)
            self._make = None
            self._desc = getattr(self._bar, "desc", None)
            if self._total is not None:
                self._bar.total = self._total

    def update(
        self,
        n: int,
        *,
        total: int | None = None,
        desc: str | None = None,
        postfix: Mapping[str, str] | None = None,
    ) -> None:
        """Show ``n`` done (of ``total``, when known), under ``desc``, with ``postfix`` counts."""
        if not self.shown:
            return
        with self._lock:
            self._draw()
            if self._bar is None:  # closed before its first update
                return
            if desc is not None and desc != self._desc:
                self._desc = desc
                self._bar.set_description_str(desc, refresh=False)
            if total is not None and self._bar.total != total:
                self._bar.total = total
            if postfix is not None:
                self._bar.set_postfix(dict(postfix), refresh=False)
            self._bar.n = n
            self._bar.refresh()

    def restart(self, desc: str, *, total: int | None = None) -> None:
        """Start the bar over for the next phase of a run: under ``desc``, a count of 0 (of
        ``total``, when known), its clock and rate from now, no postfix. Draws a bar waiting
        for its first update."""
        if not self.shown:
            return
        with self._lock:
            self._draw(desc)
            if self._bar is None:  # closed before
                return
            self._desc = desc
            self._bar.set_description_str(desc, refresh=False)
            self._bar.set_postfix_str("", refresh=False)
            self._bar.reset(total=total)

    def set_total(self, total: int) -> None:
        with self._lock:
            if self._bar is None:
                self._total = total  # for the bar drawn at the first update
                return
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        with self._lock:
            self._make = None  # never updated: never drawn
            if self._bar is not None:
                self._bar.close()

    def erase(self) -> None:
        """Close, wiping the bar from its row instead of leaving its last picture (a phase
        before the work the bar is for, when that work did not come)."""
        with self._lock:
            self._make = None
            if self._bar is not None:
                self._bar.leave = False
                self._bar.close()

    def set_aside(self, write: Callable[P, T]) -> Callable[P, T]:
        """``write`` (something that writes to the terminal: a question, a table) made to run
        with the bar wiped from its row, and the bar drawn again below what it wrote: else
        it would start on the bar's row, after the bar's picture."""
        if not self.shown:
            return write

        def aside(*args: P.args, **kwargs: P.kwargs) -> T:
            with self._lock:
                if self._bar is None:  # not drawn yet: nothing to wipe
                    return write(*args, **kwargs)
                self._bar.clear()
                try:
                    return write(*args, **kwargs)
                finally:
                    self._bar.refresh()

        return aside

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

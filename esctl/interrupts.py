"""Ctrl-C and SIGTERM held across a round trip whose outcome a run counts: a batch sent to a
server and its answer (a COMMIT, a MULTI/EXEC), so that an interrupted run can say exactly what
it did. A first signal waits until the block ends; a second one while the block waits on the
server stops the wait at once (the server may be hung), and the block's outcome is then not
known: the caller says so (:attr:`Hold.broke`).

:class:`HeldInterrupts` is the other way, for a run with several batches in flight (the queue
commands): Ctrl-C is noted, not raised, while a batch is with Redis, and the caller stops once
it has read and counted the answers still due; a second one while it waits on Redis stops the
wait at once, as with :class:`Hold` (:attr:`HeldInterrupts.broke`)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

from esctl import redisio
from esctl.errors import Interrupted

T = TypeVar("T")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class Hold:
    """One hold of Ctrl-C and SIGTERM (:func:`interrupts_held`)."""

    def __init__(self) -> None:
        self.came: list[tuple[int, FrameType | None]] = []
        """The signals that came during the block, with the frame each interrupted."""
        self.broke = False
        """A second signal stopped the block while it waited on the server."""
        self._waiting = False
        self._delivering = False
        self._previous: dict[int, _Handler] = {}

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """The part of the block that waits on the server: a second signal stops it (a first
        one came already, or comes now and is the second)."""
        self._waiting = True
        try:
            if len(self.came) > 1:
                self._break()
            yield
        finally:
            self._waiting = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._delivering:  # the held signal's handler asks Ctrl-C's (SIGTERM's does)
            raise KeyboardInterrupt
        self.came.append((signum, frame))
        if len(self.came) > 1 and self._waiting and not self.broke:
            self._break()

    def _break(self) -> None:
        self.broke = True
        self._deliver()  # (raises, as a rule)
        self.broke = False  # a handler of the caller's own that lets the run go on

    def _deliver(self) -> None:
        """The first signal that came, to the handler it had before the hold (esctl's SIGTERM
        handler notes that SIGTERM stopped the run, and raises KeyboardInterrupt)."""
        signum, frame = self.came[0]
        handler = self._previous.get(signum)
        self._delivering = True
        try:
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
        finally:
            self._delivering = False


_current: Hold | None = None


@contextmanager
def interrupts_held() -> Iterator[Hold]:
    """Hold Ctrl-C (SIGINT) and SIGTERM while the block runs, then deliver the first that came
    to the handler it had (as a rule it raises KeyboardInterrupt), unless the block raised. A signal
    ignored (SIG_IGN) stays ignored. Inside :meth:`Hold.waiting`, a second signal stops the
    block at once. Nested holds are the outermost one. Outside the main thread (where Python
    delivers no signals) it holds nothing."""
    global _current
    if _current is not None or threading.current_thread() is not threading.main_thread():
        yield _current or Hold()
        return
    hold = Hold()
    for signum in _SIGNALS:
        handler = signal.getsignal(signum)
        if handler is None or handler == signal.SIG_IGN:
            continue
        hold._previous[signum] = handler
        signal.signal(signum, hold._on_signal)
    _current = hold
    try:
        yield hold
    finally:
        _current = None
        for held, previous in hold._previous.items():
            signal.signal(held, previous)
    if hold.came:
        hold._deliver()


def account(exc: BaseException) -> Interrupted | None:
    """The :class:`~esctl.errors.Interrupted` that ``exc`` (a later Ctrl-C, or the same one)
    cut short on its way out, while a lock was given back: what it says of the run stays
    true. None when there is none."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, Interrupted):
            return seen
        seen = seen.__context__
    return None


class HeldInterrupts:
    """Ctrl-C noted, not raised, inside :meth:`holding` blocks; :attr:`caught` says whether
    one came (in a block or not: a Ctrl-C outside them raises KeyboardInterrupt as usual).
    A second one while a block waits on the server (:meth:`waiting`) stops the wait at once:
    KeyboardInterrupt, and :attr:`broke` set (the server may be hung; what was sent and not
    answered is then in doubt, and the caller says so). Only in the main thread (elsewhere
    Python delivers no signals anyway). SIGTERM comes as a Ctrl-C (esctl's SIGTERM handler
    calls this one)."""

    def __init__(self) -> None:
        self.caught = False
        self.broke = False
        """A second signal stopped a wait on the server (:meth:`waiting`), or the start of one."""
        self.in_doubt = 0
        """The caller's count of what it had sent and not read the answer of when the wait
        broke (set by the caller; its unit: messages)."""
        self._again = False  # a signal came after the first, while held
        self._waiting = False

    def _hold(self, signum: int, frame: object) -> None:
        if not self.caught:
            self.caught = True
            return
        self._again = True
        if self._waiting:
            self._break()

    def _break(self) -> None:
        self.broke = True
        raise KeyboardInterrupt

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Ctrl-C held until the block ends; then the handler there was is back (nothing is
        raised: the caller looks at :attr:`caught` when it has counted what the block did).
        A second one raises only inside :meth:`waiting`."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._hold)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """The part of a :meth:`holding` block that waits on the server: a second signal (one
        that came already while held, or one that comes now) stops it at once with
        KeyboardInterrupt (:attr:`broke`). Outside it a second signal is noted only, so that
        counting what the server answered is never cut short."""
        was = self._waiting
        self._waiting = True
        try:
            if self._again:
                self._break()
            yield
        finally:
            self._waiting = was

    def check(self) -> None:
        """KeyboardInterrupt when a Ctrl-C was held: the caller's counts are up to date."""
        if self.caught:
            raise KeyboardInterrupt

    def around(self, call: Callable[[], T]) -> Callable[[], T]:
        """``call`` (one script call) run with Ctrl-C held, for
        :func:`esctl.redisio.after_loading`: a Ctrl-C held during a try that Redis answered
        LOADING (on a cluster also CLUSTERDOWN: the call did not run) stops there, not after
        the wait for the data set."""

        def held() -> T:
            with self.holding():
                try:
                    return call()
                except redisio.REDIS_ERRORS as exc:
                    if self.caught and redisio.may_be_loading(exc):
                        raise KeyboardInterrupt from exc
                    raise

        return held

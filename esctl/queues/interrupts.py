"""Ctrl-C (and SIGTERM, which the CLI turns into one) held while a queue command's batch is with
Redis, so that an interrupted requeue, drain or restore knows exactly which batches ran: the
signal is noted, the batches sent are answered and counted, and only then does the command
stop (:class:`esctl.errors.Interrupted`, saying what it moved)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from esctl import redisio

T = TypeVar("T")


class HeldInterrupts:
    """Ctrl-C noted, not raised, inside :meth:`holding` blocks; :attr:`caught` says whether
    one came (in a block or not: a Ctrl-C outside them raises KeyboardInterrupt as usual).
    Only in the main thread (elsewhere Python delivers no signals anyway)."""

    def __init__(self) -> None:
        self.caught = False

    def _hold(self, signum: int, frame: object) -> None:
        self.caught = True

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Ctrl-C held until the block ends; then the handler there was is back (nothing is
        raised: the caller looks at :attr:`caught` when it has counted what the block did)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._hold)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)

    def check(self) -> None:
        """KeyboardInterrupt when a Ctrl-C was held: the caller's counts are up to date."""
        if self.caught:
            raise KeyboardInterrupt

    def around(self, call: Callable[[], T]) -> Callable[[], T]:
        """``call`` (one script call) run with Ctrl-C held, for
        :func:`esctl.redisio.after_loading`: a Ctrl-C held during a try that Redis answered
        LOADING (the call did not run) stops there, not after the wait for the data set."""

        def held() -> T:
            with self.holding():
                try:
                    return call()
                except redisio.REDIS_ERRORS as exc:
                    if self.caught and redisio.is_loading(exc):
                        raise KeyboardInterrupt from exc
                    raise

        return held

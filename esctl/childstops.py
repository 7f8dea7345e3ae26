"""Stop signals and a command's worker processes (:func:`esctl.inflight.worker_processes`):
each worker takes every stop the command takes, once, at once.

A stop (Ctrl-C's SIGINT, SIGTERM, SIGHUP: each one ends the work in hand, a second one sooner)
reaches a command of several processes in one of two ways. It may reach the command's own
process alone: Kubernetes stops a pod with a SIGTERM to its PID 1, and ``kill PID`` signals one
process. Or it reaches every process of the command at once: a terminal's Ctrl-C and hangup go
to its process group, systemd's stop to every process of the unit. Workers that took only the
stops sent to them went on with their whole part in the first case; workers that were also
passed the command's stops would take the second case's stops twice (a first and a second
Ctrl-C: the second cuts waits on the servers short).

So the command passes on each stop it takes to its workers (:class:`PassingOn`, as
:data:`PASSED_ON`) the moment it comes, whatever handler the command has in place (Python's
signal wakeup fd, read by a thread of its own); a terminal hangup's second SIGHUP is the same
stop told again and is not passed on. A worker blocks the stops in all its threads and takes
them on one thread of its own (:func:`take_stops`), counting those sent to it and those passed
on apart: its stops are the larger count. A stop that reached it both ways is one, one that
reached it either way is one, and a second stop is a second one in both counts. Each of its
stops is delivered to its main thread as a Ctrl-C (:data:`STOP_NOW`, whose handler calls the
SIGINT handler there is then: a batch that holds Ctrl-C across a round trip holds it too).
Design notes: docs/design/migrate.md, "Several processes".
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Collection, Iterator
from types import FrameType

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a command (esctl's handlers make SIGTERM and SIGHUP a Ctrl-C)."""
PASSED_ON = signal.SIGUSR2
"""A stop the command passed on to a worker."""
STOP_NOW = signal.SIGUSR1
"""In a worker: from the thread that counts its stops to its main thread, one stop."""

_END = 0
"""A byte no signal number is: ends the thread that passes stops on."""


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """The stops and :data:`PASSED_ON` blocked in this thread for the block, then as they
    were (one that came meanwhile is taken then). A process forked or spawned in the block
    starts with them blocked: a worker takes them with :func:`take_stops`; a helper process
    (a multiprocessing manager serving the workers) never takes them, and serves until it is
    shut down."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, (*STOPS, PASSED_ON))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class PassingOn:
    """In the command's process while it has workers: each stop it takes is passed on to each
    worker :meth:`add` named, at once. Only where Python takes signals (the main thread);
    elsewhere it passes nothing on. :meth:`start` once the workers are forked (a thread that
    exists at a fork is a hazard to the child); stops that came before are passed on then.
    :meth:`close` when the workers are gone."""

    def __init__(self) -> None:
        self._workers: list[tuple[int, int | None]] = []  # (pid, pidfd)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._previous = -1
        self._read = self._write = -1
        if threading.current_thread() is not threading.main_thread():
            return
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        global _current
        _current = self

    @property
    def active(self) -> bool:
        return self._write >= 0

    def add(self, pid: int) -> None:
        """A worker to pass stops on to: by a pidfd where there are pidfds (the pid may be
        another process's once the worker is reaped), else by its pid."""
        pidfd = None
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
        with self._lock:
            self._workers.append((pid, pidfd))

    def start(self) -> None:
        if not self.active or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._pass_on, name="esctl-stops", daemon=True)
        self._thread.start()

    def _pass_on(self) -> None:
        hung_up = False
        while True:
            try:
                came = os.read(self._read, 512)
            except OSError:
                return
            told = came.replace(bytes([_END]), b"")
            if self._previous >= 0 and told:  # a wakeup fd set before: it is told as before
                with contextlib.suppress(OSError):
                    os.write(self._previous, told)
            for signum in came:
                if signum == _END:
                    return
                if signum not in STOPS or (signum == signal.SIGHUP and hung_up):
                    continue  # (a hangup's second SIGHUP: the same stop, esctl's handler says)
                hung_up = hung_up or signum == signal.SIGHUP
                self._send()

    def _send(self) -> None:
        with self._lock:
            workers = list(self._workers)
        for pid, pidfd in workers:
            with contextlib.suppress(OSError):  # (a worker gone: nothing to stop)
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, PASSED_ON)
                else:
                    os.kill(pid, PASSED_ON)

    def close(self) -> None:
        """Stop passing stops on (the wakeup fd there was before is back)."""
        global _current
        if not self.active:
            return
        if _current is self:
            _current = None
        try:
            signal.set_wakeup_fd(self._previous, warn_on_full_buffer=False)
        except ValueError:  # not in the main thread: Python would write to a closed fd
            return
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._write, bytes([_END]))
            self._thread.join(timeout=5)
        with self._lock:
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in [self._read, self._write, *(pidfd for _, pidfd in self._workers)]:
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read = self._write = -1
        self._workers = []


_current: PassingOn | None = None
"""This process's :class:`PassingOn`, if any."""


def _forget_in_child() -> None:
    """In any process forked while stops are passed on (a worker, a read-ahead process): the
    command's pipe and pidfds are not its own, and its signals must not be told there (they
    would be passed on as the command's)."""
    global _current
    inherited, _current = _current, None
    if inherited is None:
        return
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    inherited._thread = None
    inherited._close_fds()  # (no thread of it is here, nor holds its lock)


os.register_at_fork(after_in_child=_forget_in_child)


def ignored_stops() -> set[int]:
    """The stops this process ignores (SIGHUP under ``nohup``, Ctrl-C of a command started in
    the background), as a worker inherits them: for :func:`take_stops`, asked before the worker
    sets a SIGINT handler of its own."""
    return {s for s in STOPS if signal.getsignal(s) == signal.SIG_IGN}


def take_stops(ignored: Collection[int]) -> None:
    """In a worker's main thread as it starts (forked or spawned in :func:`blocked`, so that no
    stop could reach it before this), its SIGINT handler set: its stops, counted once as the
    module says, are from now on each delivered as a Ctrl-C to its main thread. The
    ``ignored`` ones (:func:`ignored_stops`: those its command ignores) it ignores too."""
    own = set(STOPS) - set(ignored)
    signal.pthread_sigmask(signal.SIG_BLOCK, (*STOPS, PASSED_ON))
    signal.signal(STOP_NOW, _stop_now)
    main = threading.get_ident()
    threading.Thread(target=_count_stops, args=(own, main), name="esctl-stops", daemon=True).start()


def _count_stops(own: set[int], main: int) -> None:
    """The stops sent to this worker and those its command passed on, each counted; a new
    largest count is a stop, told to the main thread."""
    waited = {*own, PASSED_ON}
    sent = passed = stops = 0
    hung_up = False
    while True:
        signum = signal.sigwait(waited)
        if signum == PASSED_ON:
            passed += 1
        elif signum == signal.SIGHUP and hung_up:
            continue  # the same hangup told again
        else:
            hung_up = hung_up or signum == signal.SIGHUP
            sent += 1
        if max(sent, passed) > stops:
            stops += 1
            signal.pthread_kill(main, STOP_NOW)


_taken = 0
"""In a worker: the stops delivered so far."""


def taken() -> int:
    """In a worker: how many stops it has taken (a second one cut waits short)."""
    return _taken


def _stop_now(signum: int, frame: FrameType | None) -> None:
    """One stop of this worker, as a Ctrl-C: to the SIGINT handler there is now."""
    global _taken
    _taken += 1
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt

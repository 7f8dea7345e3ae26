"""Work in flight: keep enough reads (pages of a store, batches of a queue move) under way that a
server at a distance is never waited on one round trip at a time.

How many is the bandwidth-delay product, measured as the work goes (:class:`Pace`): while the
consumer spends ``c`` seconds on an item, items that each take ``w`` seconds to come back
(round trips included) keep it busy only if about ``1 + w / c`` of them are under way. On
loopback ``w`` is small and one item ahead is enough; at a millisecond per round trip the depth
grows by itself, up to a cap that bounds memory. Design notes: docs/design/distance.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.managers import SyncManager
from typing import Any, TypeVar

from esctl import childstops

T = TypeVar("T")
R = TypeVar("R")

MOST = 6
"""Items in flight at most (memory: that many pages or batches held at once)."""


def depth_for(latency_s: float, per_item_s: float, *, least: int = 1, most: int = MOST) -> int:
    """Items to keep in flight so the consumer never waits: the one it works on plus as many as
    it finishes during one item's latency (``latency_s / per_item_s``, rounded up), between
    ``least`` and ``most``. An idle consumer (``per_item_s`` 0) gets ``most`` when there is any
    latency to hide."""
    if latency_s <= 0:
        return max(1, least)
    if per_item_s <= 0:
        return most
    return max(least, min(most, 1 + math.ceil(latency_s / per_item_s)))


class Pace:
    """Moving averages of an item's latency (from asking to having it) and of the consumer's
    time per item, and the depth they call for (:func:`depth_for`). Starts at ``start``."""

    def __init__(
        self,
        *,
        start: int = 2,
        least: int = 1,
        most: int = MOST,
        weight: float = 0.3,
        latency_s: float | None = None,
    ) -> None:
        self.least, self.most, self.weight = least, most, weight
        self.latency_s = latency_s
        self.per_item_s: float | None = None
        self.depth = max(least, min(most, start))
        self.deepest = self.depth

    def observe(self, latency_s: float, per_item_s: float) -> int:
        """Fold in one item's measurements; returns the depth to keep from now on."""
        w = self.weight
        self.latency_s = (
            latency_s if self.latency_s is None else ((1 - w) * self.latency_s + w * latency_s)
        )
        self.per_item_s = (
            per_item_s if self.per_item_s is None else ((1 - w) * self.per_item_s + w * per_item_s)
        )
        self.depth = depth_for(self.latency_s, self.per_item_s, least=self.least, most=self.most)
        self.deepest = max(self.deepest, self.depth)
        return self.depth


class BatchGrowth:
    """The size of the next batch of a loop that waits on ``waited_s`` of round trips per
    batch (a transaction's statements, a pipeline's reply): the size at which that wait is
    ``share`` of a batch's time, measured on the batch before, between ``base`` and ``most``
    times ``base``. Without a wait (``waited_s`` 0: loopback, or a size the user chose) it
    stays at ``base``. Call :meth:`start` when a batch starts and :meth:`done` when it ends."""

    def __init__(
        self, base: int, waited_s: float = 0.0, *, share: float = 0.1, most: int = 20
    ) -> None:
        self.base, self.waited_s, self.share, self.most = base, waited_s, share, most
        self.size = base
        self._started = time.perf_counter()

    def start(self) -> None:
        self._started = time.perf_counter()

    def done(self, items: int) -> None:
        """A batch of ``items`` ended (a short last one changes nothing); the next starts."""
        now = time.perf_counter()
        if self.waited_s > 0 and items >= self.size:
            per_item = max(now - self._started - self.waited_s, 1e-9) / items
            wanted = math.ceil(self.waited_s / (self.share * per_item))
            self.size = max(self.base, min(wanted, self.most * self.base))
        self._started = now


JOIN_S = 5.0
"""How long closing :func:`prefetched` waits for its thread to end."""

_END = object()


def prefetched(items: Iterable[T], size: int = MOST) -> Generator[T, None, None]:
    """The items of ``items``, produced by a thread of their own up to ``size`` ahead of the
    caller (a SCAN's next page asked for while the current one is being read). Errors are
    raised here, in order; closing this generator stops the thread (waiting up to
    :data:`JOIN_S` for the item it is producing)."""
    ready: queue.Queue[object] = queue.Queue(maxsize=max(1, size))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                ready.put(item, timeout=0.05)
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item,)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
            return
        put(_END)

    thread = threading.Thread(target=produce, name="esctl-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = ready.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            assert isinstance(got, tuple)
            yield got[0]
    finally:
        stop.set()
        # it ends once the item it is producing is ready (one SCAN call, as a rule); a daemon
        # thread, so a long one (a whole sample's scan) does not hold up a Ctrl-C here
        thread.join(timeout=JOIN_S)


def ordered_map(
    work: Callable[[T], R],
    items: Iterable[T],
    *,
    pace: Pace | None = None,
) -> Generator[R, None, None]:
    """``work(item)`` for each item, run on worker threads with :attr:`Pace.depth` items under
    way, the results yielded in the items' order. The depth follows each item's latency (its
    ``work`` call, round trips included) against the caller's time per result. ``work`` runs
    on threads: it must use per-thread connections (:mod:`esctl.redisio`'s raw connections
    are). An error in ``work`` is raised here when its result is due; closing this generator
    cancels what is not started and waits for what is."""
    pace = pace or Pace()
    source = iter(items)
    pending: deque[Future[tuple[R, float]]] = deque()

    def timed(item: T) -> tuple[R, float]:
        started = time.perf_counter()
        return work(item), time.perf_counter() - started

    with ThreadPoolExecutor(pace.most, thread_name_prefix="esctl-inflight") as pool:
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < pace.depth:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(pool.submit(timed, item))
                if not pending:
                    return
                result, latency = pending.popleft().result()
                handed = time.perf_counter()
                yield result
                pace.observe(latency, time.perf_counter() - handed)
        finally:
            for future in pending:
                future.cancel()
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a prefetched() source: stop its thread


def worker_processes(
    workers: int,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes for one command's parts: forked where fork exists (it
    starts in milliseconds; spawn re-imports everything, ~0.5 s a worker), so ``initargs`` are
    inherited, not pickled (a :class:`multiprocessing.Queue` may be one). Nothing should be open
    yet that the workers would share: each opens its own connections. A worker is killed when the
    process that started it dies (:func:`_die_with_parent`), then runs ``initializer``. Each
    stop this process takes (Ctrl-C, SIGTERM, SIGHUP), also one sent to it alone, is passed on
    to the workers at once, and each takes it once (:mod:`esctl.childstops`)."""
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    return _WorkerPool(
        workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


class _WorkerPool(ProcessPoolExecutor):
    """A process pool that passes this process's stops on to its workers
    (:class:`~esctl.childstops.PassingOn`), whose workers know when they run a part
    (:func:`_running`): a stop stops a part as a KeyboardInterrupt (it says what it did, as in
    one process), and a worker waiting for work notes it quietly (Python's multiprocessing
    printed its traceback on the terminal, and under ``--json``, beside esctl's one-line
    message)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._passing_on = childstops.PassingOn()
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self._passing_on.close()
            raise

    def _spawn_process(self) -> None:
        # Blocked while forking: a worker takes stops only once it counts them.
        with childstops.blocked():
            known = set(self._processes)
            super()._spawn_process()  # type: ignore[misc]
        for pid in set(self._processes) - known:
            self._passing_on.add(pid)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future = super().submit(_running, fn, *args, **kwargs)
        self._passing_on.start()  # after the forks (the first submit forks the workers)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As ProcessPoolExecutor's; with ``wait``, a stop meanwhile (passed on: the parts end
        sooner) does not cut the wait for the workers short, and is raised after it: the
        command ends with no worker left, and what it was saying (an interruption's counts)
        is the stop's context."""
        stopped: KeyboardInterrupt | None = None
        try:
            while True:
                try:
                    super().shutdown(wait, cancel_futures=cancel_futures)
                    break
                except KeyboardInterrupt as exc:
                    if not wait:
                        raise
                    stopped = stopped or exc
        finally:
            self._passing_on.close()
        if stopped is not None:
            raise stopped


def wait_through_stops(futures: Iterable[Future[Any]]) -> None:
    """Wait until every one of a pool's ``futures`` is done, whatever stops come meanwhile:
    each was passed on to the workers (their parts end sooner for it), and what the parts did
    is in their results. Polled, so that a stop never lands inside the wait's locks (Python
    then raised 'release unlocked lock' from it)."""
    pending = list(futures)
    while True:
        try:
            wait_for_parts(pending)
            return
        except KeyboardInterrupt:
            continue


def wait_for_parts(futures: Iterable[Future[Any]]) -> None:
    """Wait until every one of a pool's ``futures`` is done; a stop raises KeyboardInterrupt
    (the workers were passed it: :func:`wait_through_stops` then waits for what they did).
    Polled, as :func:`wait_through_stops` is."""
    pending = list(futures)
    while not all(f.done() for f in pending):
        time.sleep(WAIT_POLL_S)


WAIT_POLL_S = 0.02
"""How often a wait for a pool's parts looks whether they are done."""

_in_part = False
"""In a worker: whether it runs a part now."""
_stop_taken = False
"""In a worker: a stop came while it waited for work; the part it gets next stops at once."""


def _running(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    global _in_part, _stop_taken
    _in_part = True  # (first: a stop from now on raises in the part)
    try:
        if _stop_taken:
            _stop_taken = False
            raise KeyboardInterrupt
        return fn(*args, **kwargs)
    finally:
        _in_part = False


def _on_ctrl_c(signum: int, frame: object) -> None:
    """A worker's stop: a part stops as a KeyboardInterrupt; a worker waiting for work notes
    it (its next part stops before it begins) and goes on waiting, to be ended by the pool
    (a worker that ended here broke the pool, which then failed every part, also those
    stopping, and killed the other workers)."""
    global _stop_taken
    if _in_part:
        raise KeyboardInterrupt
    _stop_taken = True


def _start_worker(
    parent: int, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> None:
    _die_with_parent(parent)
    ignored = childstops.ignored_stops()
    signal.signal(signal.SIGINT, _on_ctrl_c)
    childstops.take_stops(ignored)
    if initializer is not None:
        initializer(*initargs)


def worker_manager() -> SyncManager:
    """A started multiprocessing manager (its queues reach a pool's workers as arguments)
    that takes no stop signal: it serves the workers until it is shut down, however the
    command is stopped, and dies with this process (a ``kill -9`` of the command left it
    running)."""
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    manager = SyncManager(ctx=context)
    with childstops.blocked():
        manager.start(_die_with_parent, (os.getpid(),))
    return manager


def _die_with_parent(parent: int) -> None:
    """In a worker: be killed (SIGKILL, as a kill -9 of the whole run would) when the process
    that started the workers dies. Without it a ``kill -9`` of ``esctl migrate --workers K``
    left its workers migrating on, then waiting forever for work. Linux only
    (``PR_SET_PDEATHSIG``); elsewhere a worker finishes its part first."""
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    pr_set_pdeathsig = 1
    prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)

"""Read ahead in a second process: a producer (reading Redis) runs in a forked child and hands
its items to this process through a pipe, so reading and the caller's work (decoding, matching,
writing) overlap on two CPUs instead of taking turns on one. At most about two items exist at
a time; the child never outlives its use; its errors are raised here.
Design: docs/design/query.md, "Reading ahead".
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable, Generator, Iterable
from typing import BinaryIO, TypeVar

from esctl.errors import EsctlError

T = TypeVar("T")

_HEADER = struct.Struct("<Q")
_ITEM, _ERROR, _END = b"i", b"e", b"."


class ReaderFailed(EsctlError):
    """The read-ahead process ended without finishing (killed, or an error that could not be
    sent back)."""


def available() -> bool:
    """Can this machine read ahead usefully: fork exists and there is a second CPU."""
    return hasattr(os, "fork") and (os.cpu_count() or 1) >= 2


def read_ahead(produce: Callable[[], Iterable[T]]) -> Generator[T, None, None]:
    """The items of ``produce()``, computed in a forked child process one item ahead of the
    caller. Items must be picklable. ``produce`` runs in the child with a copy of this
    process's memory: it must not use a connection this process keeps using (redis-py pools
    and :mod:`esctl.redisio`'s raw sockets reconnect after a fork by themselves). ``close()``
    the generator to stop early: that ends the child."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; its effects are tested from outside
        os.close(read_fd)
        _child(produce, write_fd)
    os.close(write_fd)
    finished = False
    try:
        with os.fdopen(read_fd, "rb", buffering=1 << 16) as pipe:
            while True:
                kind, payload = _read_frame(pipe, pid)
                if kind == _ITEM:
                    yield pickle.loads(payload)
                elif kind == _ERROR:
                    error = pickle.loads(payload)
                    finished = True
                    raise error
                else:
                    finished = True
                    return
    finally:
        if not finished:
            _kill(pid)
        _reap(pid)


def _child(produce: Callable[[], Iterable[T]], write_fd: int) -> None:  # pragma: no cover
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = 0
    try:
        with os.fdopen(write_fd, "wb", buffering=0) as pipe:
            try:
                for item in produce():
                    _write_frame(pipe, _ITEM, pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
            except BrokenPipeError:
                raise
            except BaseException as exc:  # every failure is handed to the parent
                _write_frame(pipe, _ERROR, _pickled_error(exc))
            else:
                _write_frame(pipe, _END, b"")
    except BrokenPipeError:
        pass  # the consumer stopped reading: nothing more to do
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _pickled_error(exc: BaseException) -> bytes:
    try:
        data = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)
        return data
    except Exception:  # some exceptions cannot cross a process boundary
        return pickle.dumps(
            ReaderFailed(f"the read-ahead process failed: {type(exc).__name__}: {exc}")
        )


def _write_frame(pipe: BinaryIO, kind: bytes, payload: bytes) -> None:
    """One frame: kind byte, payload length, payload. ``pipe`` is unbuffered; a write to a
    pipe may take only part of a large buffer (and the header fits in PIPE_BUF: atomic)."""
    pipe.write(kind + _HEADER.pack(len(payload)))
    view = memoryview(payload)
    while view:
        written = pipe.write(view)
        view = view[written:]


def _read_frame(pipe: BinaryIO, pid: int) -> tuple[bytes, bytes]:
    """The next frame's kind and payload (a buffered read returns short only at EOF)."""
    head = pipe.read(1 + _HEADER.size)
    if len(head) < 1 + _HEADER.size:
        raise ReaderFailed(
            f"the read-ahead process (pid {pid}) ended without finishing its work "
            "(killed, or out of memory?)",
            hint="run the command again; --debug shows more",
        )
    (size,) = _HEADER.unpack_from(head, 1)
    payload = pipe.read(size)
    if len(payload) < size:
        raise ReaderFailed(f"the read-ahead process (pid {pid}) ended in the middle of an item")
    return head[:1], payload


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)

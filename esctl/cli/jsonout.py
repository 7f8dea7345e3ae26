"""Results as JSON on stdout: the one encoding (:func:`to_json`), one document
(:func:`emit_json`), and a stream of results (:class:`JsonStream`) that ends as valid JSON
whatever happens."""

from __future__ import annotations

import io
import os
import select
import signal
import sys
import threading
from dataclasses import asdict, is_dataclass
from typing import Any

import orjson

from esctl.cli import consoles


def _default(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def to_json(document: Any, *, pretty: bool = False) -> str:
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if pretty else 0)
    return orjson.dumps(document, default=_default, option=option).decode("utf-8")


def emit_json(document: Any, *, pretty: bool = True) -> None:
    """Exactly one JSON document on stdout."""
    with consoles.writing_stdout():
        sys.stdout.write(to_json(document, pretty=pretty) + "\n")
        sys.stdout.flush()


class JsonStream:
    """Results written to stdout as they come, as JSON lines or as the elements of one JSON
    array, that end as valid JSON whatever happens: ``fail`` ends the stream with the error
    document (after the results: as the last line, or as the array's last element; before any
    result: alone, as every ``--json`` command's error). The array is opened at the first
    result.

    Writes go through this object's own buffer straight to the file descriptor, so it knows
    what stdout holds when an error comes: whole results, never half a line (a buffered file
    object interrupted by Ctrl-C can leave one) nor a second copy (see ``flush``)."""

    FLUSH_AT = io.DEFAULT_BUFFER_SIZE  # as often as sys.stdout.buffer would write

    def __init__(self, *, array: bool = False, fd: int | None = None) -> None:
        self.array = array
        self.fd = sys.stdout.fileno() if fd is None else fd
        self.results = 0
        self.closed = False
        self.failed = False
        self._pending = bytearray()

    def write_result(self, value: bytes) -> None:
        """One result, already compact JSON (no newline)."""
        if self.array:
            self._pending += b"[\n" if self.results == 0 else b",\n"
            self._pending += value
        else:
            self._pending += value + b"\n"
        self.results += 1
        if len(self._pending) >= self.FLUSH_AT:
            self.flush()

    def write(self, data: bytes) -> int:
        """File-like: JSON lines written by a core function (``out.write(line + b"\\n")``)."""
        self._pending += data
        if len(self._pending) >= self.FLUSH_AT:
            self.flush()
        return len(data)

    def flush(self) -> None:
        """Write what is buffered, exactly once even under Ctrl-C. A KeyboardInterrupt
        raised after os.write returned and before its count was kept would send the same
        bytes again (measured: a reader that stops the command at its first results saw them
        twice), so Ctrl-C only interrupts the wait for room in the pipe (nothing written
        yet); during a write it is held and raised once the count is kept. Such a write never
        blocks with nothing written (select said there is room), so one blocked on a full
        pipe returns at Ctrl-C with what it wrote."""
        sys.stdout.flush()  # nothing else should have written, but never reorder what did
        if not self._pending:
            return
        start = 0
        waiting = False
        held = False

        def on_sigint(signum: int, frame: Any) -> None:
            nonlocal held
            if waiting:
                raise KeyboardInterrupt
            held = True

        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
        try:
            while start < len(self._pending) and not held:
                waiting = True
                select.select([], [self.fd], [])
                waiting = False
                with consoles.writing_stdout():
                    start += os.write(self.fd, self._pending[start:])
        finally:
            del self._pending[:start]
            if in_main:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if held:
            if previous == signal.SIG_IGN:
                # Ctrl-C ignored (started in the background): a SIGTERM or SIGHUP, which
                # esctl's handler passes on as Ctrl-C, still stops it, as in the wait above;
                # raised to SIG_IGN it was lost, and the stream went on to its end (exit 0)
                raise KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)  # now, to the handler there was

    def close(self) -> None:
        """The end of a complete stream (an empty array is ``[]``)."""
        if self.closed:
            return
        if self.array:
            self._pending += b"\n]\n" if self.results else b"[]\n"
        self.closed = True
        self.flush()

    def fail(self, document: Any) -> None:
        """End the stream with ``document`` (the error): what was buffered goes first."""
        if self.failed or (self.closed and self.array):  # a complete array: stderr only
            return
        line = to_json(document).encode("utf-8")
        if self.array and self.results:
            self._pending += b",\n" + line + b"\n]\n"
        else:
            if self._pending and not self._pending.endswith(b"\n"):
                self._pending += b"\n"
            self._pending += line + b"\n"
        self.failed = self.closed = True
        self.flush()

"""esctl's backup files (``queue drain --to-file``, ``migrate prune --backup-file``): a new
file of zstd frames of JSON lines, each frame on disk before the caller deletes what it holds."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import Callable, Generator, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import zstandard

from esctl.errors import EsctlError, NotFound, Refused, UsageError

ZSTD_LEVEL = 3
_LINES_PER_WRITE = 1000
READ_BYTES = 1 << 20
"""Bytes of a backup file read at a time: :func:`read_lines` streams it, frame by frame."""
FEED_BYTES = 4 << 10
"""Compressed bytes decompressed at a time, so that what one step turns out stays small: JSON
lines compress 10-30x (more for messages much alike), so a step gives 40-120 KB of lines. A
step of a whole 1 MiB read gave 30 MB at once: a reader's peak, and its heap fragmented around
such blocks until its peak grew with the file (glibc then serves them from the heap)."""


FIELD_ERRORS = (KeyError, TypeError, ValueError)
"""What reading a parsed line's fields raises when one is missing or not of its kind."""


def lacking(source: Path, where: str, fields: str, *, written_by: str) -> UsageError:
    """The error of line or record ``where`` of ``source`` when it lacks one of ``fields`` (or
    holds one of another kind): not as ``written_by`` writes its files."""
    return UsageError(
        f"{source}: {where} lacks {fields}, or holds one that is not of its kind",
        hint=f"pass a file written by `{written_by}`",
    )


class BackupWriter:
    """Creates ``path`` (never an existing file: Refused; mode 0600 whatever the umask) and
    appends frames to it. Each :meth:`write_frame` is one complete zstd frame of JSON lines,
    fsynced when it returns; the folder is fsynced on creation and on :meth:`close`, so the
    file's name survives a crash too.

    ``option`` names the file in messages (``--to-file``) and ``nothing_done`` says what the
    caller has not done yet when the file cannot be made (``nothing was drained``). A failed
    write raises OSError: only the caller knows what it had done by then."""

    def __init__(self, path: str | Path, *, option: str, nothing_done: str) -> None:
        self.path = path
        self.folder = Path(path).resolve().parent
        try:
            self.fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        except FileExistsError:
            raise Refused(
                f"the backup file {path} already exists; esctl never overwrites a backup",
                hint=f"choose a new {option} name ({nothing_done})",
            ) from None
        except OSError as exc:
            raise EsctlError(
                f"cannot create the backup file {path}: {exc.strerror}; {nothing_done}",
                hint="check that the folder exists and is writable",
            ) from None
        try:
            os.fchmod(self.fd, 0o600)
            _fsync_folder(self.folder)
        except OSError as exc:
            os.close(self.fd)
            with contextlib.suppress(OSError):
                os.unlink(path)  # new and empty: ours to remove, so a rerun is not refused
            raise EsctlError(
                f"cannot create the backup file {path}: {exc.strerror}; {nothing_done}",
                hint="check that the folder is writable and its disk healthy",
            ) from None
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    def write_frame(self, lines: Iterable[Mapping[str, Any]]) -> None:
        """Append ``lines`` as one frame and fsync it (nothing for no lines). A long ``lines``
        is read and compressed as it is written (a streamed frame, without the content size in
        its header), so a frame of any size needs little memory."""
        lines = iter(lines)
        chunk = list(itertools.islice(lines, _LINES_PER_WRITE))
        if not chunk:
            return
        data = _json_lines(chunk)
        chunk = list(itertools.islice(lines, _LINES_PER_WRITE))
        if not chunk:
            self._write(self._compressor.compress(data))
        else:
            compressor = self._compressor.compressobj()
            self._write(compressor.compress(data))
            while chunk:
                self._write(compressor.compress(_json_lines(chunk)))
                chunk = list(itertools.islice(lines, _LINES_PER_WRITE))
            self._write(compressor.flush())
        os.fsync(self.fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def close(self) -> None:
        try:
            os.close(self.fd)
        finally:
            _fsync_folder(self.folder)


def _json_lines(lines: list[Mapping[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_backup(source: Path) -> BinaryIO:
    """``source`` opened for reading (NotFound when it cannot be)."""
    try:
        return source.open("rb")
    except OSError as exc:
        hint = None
        if exc.errno == errno.ENOENT:
            hint = f"check the path (a relative one is read from {Path.cwd()})"
        elif exc.errno == errno.EACCES:
            hint = (
                "esctl creates backup files 0600: run it as the user that wrote this one, or "
                "let this user read it"
            )
        raise NotFound(f"cannot read the backup file {source}: {exc.strerror}", hint=hint) from None


def read_lines(
    source: Path, *, kind: str, written_by: str, handle: BinaryIO | None = None
) -> Generator[bytes | int | None, None, None]:
    """The lines of a backup file (bytes, blank ones left out) as they are decompressed;
    after each complete frame, the number of complete frames so far; None when the last frame
    is cut short (then nothing more: a reader keeps a frame's lines only once its number
    comes). Reads :data:`READ_BYTES` at a time, so memory does not grow with the file or a
    frame. NotFound when the file cannot be read; UsageError when its first frame is not zstd
    (``kind``: what the file should be, ``an esctl queue backup``; ``written_by``: the
    command that writes such files, for the hint). ``handle``: the file ``source`` opened
    already (:func:`open_backup`), read from its start and left open, so that a reader that
    goes through it twice reads the same file both times, whatever happens to its name."""
    for item in read_chunks(source, kind=kind, written_by=written_by, handle=handle):
        if isinstance(item, list):
            yield from item
        else:
            yield item


def read_chunks(
    source: Path, *, kind: str, written_by: str, handle: BinaryIO | None = None
) -> Generator[list[bytes] | int | None, None, None]:
    """:func:`read_lines`, the lines of each read together in a list (never an empty one):
    for a reader that goes through millions of lines, one step per line less."""
    if handle is not None:
        handle.seek(0)
    with open_backup(source) if handle is None else contextlib.nullcontext(handle) as stream:

        def more() -> bytes:
            try:
                return stream.read(READ_BYTES)
            except OSError as exc:
                raise NotFound(f"cannot read the backup file {source}: {exc.strerror}") from None

        yield from _chunks(more, source, kind, written_by)


def _chunks(
    more: Callable[[], bytes], source: Path, kind: str, written_by: str
) -> Generator[list[bytes] | int | None, None, None]:
    """:func:`read_chunks` of the file ``more()`` reads the next bytes of."""
    frames = 0
    data, at = more(), 0
    while at < len(data):  # a frame starts at data[at]
        obj = zstandard.ZstdDecompressor().decompressobj()
        pending = b""
        while True:
            piece = data[at : at + FEED_BYTES]
            at += len(piece)
            try:
                out = obj.decompress(piece)
            except zstandard.ZstdError as exc:
                if frames == 0:
                    raise UsageError(
                        f"{source} is not {kind} (zstd: {exc})",
                        hint=f"pass a file written by `{written_by}`",
                    ) from None
                yield None
                return
            if out:
                lines, pending = _split(pending, out)
                if lines:
                    yield lines
            if obj.eof:
                at -= len(obj.unused_data)  # the next frame's start
                if at == len(data):
                    data, at = more(), 0
                break
            if at == len(data):
                data, at = more(), 0
                if not data:
                    yield None
                    return
        if pending and not pending.isspace():
            yield [pending]
        frames += 1
        yield frames


def _split(pending: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """The whole lines of ``pending + data`` that are not blank, and what follows the last
    one (``data`` is not copied whole to join them)."""
    lines = data.split(b"\n")
    if pending:
        lines[0] = pending + lines[0]
    rest = lines.pop()
    return [line for line in lines if line and not line.isspace()], rest

"""esctl's backup files (``queue drain --to-file``, ``migrate prune --backup-file``): a new
file of zstd frames of JSON lines, each frame on disk before the caller deletes what it holds."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import zstandard

from esctl.errors import EsctlError, NotFound, Refused, UsageError

ZSTD_LEVEL = 3
_LINES_PER_WRITE = 1000
READ_BYTES = 1 << 20
"""Bytes of a backup file read at a time: :func:`read_lines` streams it, frame by frame."""


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


def read_lines(
    source: Path, *, kind: str, written_by: str
) -> Generator[bytes | int | None, None, None]:
    """The lines of a backup file (bytes, blank ones left out) as they are decompressed;
    after each complete frame, the number of complete frames so far; None when the last frame
    is cut short (then nothing more: a reader keeps a frame's lines only once its number
    comes). Reads :data:`READ_BYTES` at a time, so memory does not grow with the file or a
    frame. NotFound when the file cannot be read; UsageError when its first frame is not zstd
    (``kind``: what the file should be, ``an esctl queue backup``; ``written_by``: the
    command that writes such files, for the hint)."""
    try:
        handle = source.open("rb")
    except OSError as exc:
        raise NotFound(f"cannot read the backup file {source}: {exc.strerror}") from None
    with handle:

        def more() -> bytes:
            try:
                return handle.read(READ_BYTES)
            except OSError as exc:
                raise NotFound(f"cannot read the backup file {source}: {exc.strerror}") from None

        frames = 0
        data = more()
        while data:
            obj = zstandard.ZstdDecompressor().decompressobj()
            pending = b""
            while True:
                try:
                    out = obj.decompress(data)
                except zstandard.ZstdError as exc:
                    if frames == 0:
                        raise UsageError(
                            f"{source} is not {kind} (zstd: {exc})",
                            hint=f"pass a file written by `{written_by}`",
                        ) from None
                    yield None
                    return
                if out:
                    *lines, pending = (pending + out).split(b"\n")
                    yield from (line for line in lines if line.strip())
                if obj.eof:
                    data = obj.unused_data or more()
                    break
                data = more()
                if not data:
                    yield None
                    return
            if pending.strip():
                yield pending
            frames += 1
            yield frames

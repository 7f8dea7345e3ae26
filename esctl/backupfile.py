"""esctl's backup files (``queue drain --to-file``, ``migrate prune --backup-file``): a new
file of zstd frames of JSON lines, each frame on disk before the caller deletes what it holds."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import zstandard

from esctl.errors import EsctlError, Refused

ZSTD_LEVEL = 3


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

    def write_frame(self, lines: Sequence[Mapping[str, Any]]) -> None:
        """Append ``lines`` as one frame and fsync it (nothing for no lines)."""
        if not lines:
            return
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        view = memoryview(self._compressor.compress(data))
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        os.fsync(self.fd)

    def close(self) -> None:
        try:
            os.close(self.fd)
        finally:
            _fsync_folder(self.folder)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

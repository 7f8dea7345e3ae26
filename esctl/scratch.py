"""Scratch files on the local disk (a queue list's snapshot, the integrity check's commit
index, a replay's sorted runs): the error that says the disk under them is full, and what to
do, rather than a Redis or internal error."""

from __future__ import annotations

import tempfile

from esctl.errors import EsctlError


def scratch_error(
    what: str,
    exc: BaseException,
    *,
    folder: str | None = None,
    done: str = "nothing was changed",
    room: str = "more room",
) -> EsctlError:
    """``what`` could not be written to a temporary file in ``folder`` (TMPDIR's by default):
    why, ``done`` (what that means for the run), and a hint to free space there (or to point
    TMPDIR at a folder with ``room``)."""
    where = folder or tempfile.gettempdir()
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    elsewhere = "" if folder else f", or point TMPDIR at a folder with {room}"
    return EsctlError(
        f"cannot write {what} to a temporary file in {where}: {reason}; {done}",
        hint=f"free space in {where}{elsewhere}, then rerun",
    )

"""The compiled hot paths (esctl/_fastrows_src/), where the install could build them: a
migration's rows, verify's comparison and the transforms' checked events of a clean stream, in
C. (The reads' lookup keys and packed HGETs are taken by esctl.layout and esctl.redisio.resp.)

Each either gives the answer the Python path would give or says it is not sure (None, False),
and the caller then runs the Python path, which decides: so the compiled code never changes what
esctl accepts, reports or writes, only how much CPU the common streams cost (tests/
test_fastrows.py holds the two together). Without a C compiler at install (setup.py builds the
extension as optional), :data:`COMPILED` is False and the Python path does everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from esctl.codec import event_type_from_type_name, gunzip_base64
from esctl.streams import CleanPayload

if TYPE_CHECKING:
    from types import ModuleType

    from esctl.pgevents import PgStream

_compiled: ModuleType | None
try:
    from esctl import _fastrows as _compiled
except ImportError:  # built without a C compiler: the Python path does it all
    _compiled = None

COMPILED = _compiled is not None
"""Whether the compiled hot paths were built (and are used)."""

_EVENT_TYPES: dict[bytes, bytes] = {}
"""A ``$type``'s UTF-8 bytes -> its event type's (``codec.event_type_from_type_name``)."""
_TYPE_NAMES: dict[bytes, str] = {}
"""A ``$type``'s UTF-8 bytes -> the str (one object per name)."""
_ROW_TYPES: dict[str, bytes] = {}
"""A ``$type`` str -> its event type's UTF-8 bytes."""
_MOST_TYPES = 4096
"""Event types are a program's classes; the cache starts again past this many (a safeguard)."""


def _event_type_bytes(type_name: str) -> bytes:
    return event_type_from_type_name(type_name).encode("utf-8")


def _types() -> dict[bytes, bytes]:
    if len(_EVENT_TYPES) > _MOST_TYPES:
        _EVENT_TYPES.clear()
    return _EVENT_TYPES


def _row_types() -> dict[str, bytes]:
    if len(_ROW_TYPES) > _MOST_TYPES:
        _ROW_TYPES.clear()
    return _ROW_TYPES


def _names() -> dict[bytes, str]:
    if len(_TYPE_NAMES) > _MOST_TYPES:
        _TYPE_NAMES.clear()
    return _TYPE_NAMES


def clean_rows(
    aggregate_id: str, values: Sequence[bytes | None], first_version: int, known_type: str | None
) -> tuple[str, list[bytes]] | None:
    """``esctl.migrate.rows.clean_rows(esctl.streams.clean_payloads(...))`` for a stream the
    compiled path is sure of; None for any other (or when it is not built)."""
    if _compiled is None:
        return None
    return _compiled.clean_rows(
        aggregate_id, values, first_version, known_type, gunzip_base64, _event_type_bytes, _types()
    )


def clean_payloads(
    aggregate_id: str, values: Sequence[bytes | None], first_version: int, known_type: str | None
) -> tuple[str, list[CleanPayload]] | None:
    """``esctl.streams.clean_payloads(...)`` for a stream the compiled path is sure of, each
    event's ``data`` None (not parsed: :func:`esctl.streams.parsed` parses it where a rule
    needs it); None for any other stream (or when it is not built)."""
    if _compiled is None:
        return None
    return _compiled.clean_payloads(
        aggregate_id, values, first_version, known_type, gunzip_base64, CleanPayload, _names()
    )


def identical(aggregate_id: str, values: Sequence[bytes | None], theirs: PgStream) -> bool:
    """True when the compiled path is sure that a clean stream (versions from 1, in order) is
    exactly its PostgreSQL events as verify reads them: aggregate type, versions, time stamps,
    event types, and each payload what jsonb prints of it. False: not sure."""
    if _compiled is None:
        return False
    return _compiled.identical(
        aggregate_id,
        values,
        theirs.aggregate_type,
        theirs.versions,
        theirs.time_stamps,
        theirs.event_types,
        theirs.event_data,
        gunzip_base64,
        _event_type_bytes,
        _types(),
    )


def binary_rows(
    moments: Sequence[datetime],
    versions: Sequence[int],
    type_names: Sequence[str],
    payloads: Sequence[bytes],
) -> list[bytes] | None:
    """``[esctl.migrate.rows.binary_row(m, v, t, p) for ...]`` over the four sequences (events
    already checked: the transforms'), in one C call; None when the compiled path is not sure
    of one (a version beyond an integer column, a naive time, ...: the Python code then builds
    the rows, and raises what it raises) or is not built."""
    if _compiled is None:
        return None
    return _compiled.binary_rows(
        moments, versions, type_names, payloads, _event_type_bytes, _row_types()
    )

"""The units of work between the reader and the writers: a :class:`Batch` of whole aggregates
(each clean one as :class:`AggregateRows`, COPY lines ready; each with a problem as
:class:`Quarantined`), what writing it did (:class:`BatchResult`), and the COPY text of a
stream's events (:func:`clean_rows`, the hot path; :func:`stream_rows`, the general one)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from esctl.codec import event_type_from_type_name
from esctl.streams import Stream, StreamProblem, clean_payloads, postgres_problem


@dataclass
class Quarantined:
    aggregate_id: str
    key: str
    events: int
    problems: list[StreamProblem]


@dataclass
class AggregateRows:
    """The new events of one clean aggregate, ready for COPY."""

    aggregate_type: str
    rows: list[str] | list[bytes]
    """``time_stamp \t version \t event_type \t event_data \n`` lines in version order, as
    text or (the reader's) UTF-8 bytes."""
    commits: int
    """Commit-list entries migrated once these rows are in (for esctl.migrated_stream)."""
    last_commit_id: str
    source_type: str | None = None
    """With --transforms: the aggregate type in Redis (``aggregate_type`` is the transformed
    one), for esctl.migrated_stream."""
    numbering: tuple[int, int] | None = None
    """With --transforms: (last source version, last version written), for the next run."""


@dataclass
class Batch:
    """Work for one transaction: whole aggregates only, plus the SCAN position reached."""

    seq: int
    position: str
    aggregates: int = 0
    events: int = 0
    clean: dict[str, AggregateRows] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass
class BatchResult:
    seq: int
    aggregates: int
    inserted: int
    already_present: int
    quarantined: list[Quarantined]


def copy_escape(text: str) -> str:
    """Escape a value for COPY's text format. (str.translate with a mapping is ~20x slower on
    payload-sized strings than these C-level scans.)"""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def copy_escape_bytes(data: bytes) -> bytes:
    """:func:`copy_escape` of UTF-8 bytes (no byte of a multi-byte character is ASCII)."""
    if b"\\" in data:
        data = data.replace(b"\\", b"\\\\")
    if b"\t" in data:
        data = data.replace(b"\t", b"\\t")
    if b"\n" in data:
        data = data.replace(b"\n", b"\\n")
    if b"\r" in data:
        data = data.replace(b"\r", b"\\r")
    return data


def copy_timestamp(text: str) -> bytes:
    """A ``TimeStamp`` that matched :data:`esctl.codec.TIMESTAMP_RE`, as COPY text for
    timestamptz: the text itself, with a seventh fractional digit dropped (PostgreSQL would
    round it; :func:`esctl.codec.parse_timestamp` truncates it, as the library's SQL provider
    does). ``datetime.isoformat`` gave the same instant at ~3 µs an event."""
    # Seven digits (the pattern allows no more) put the offset's first character at 27.
    if len(text) > 27 and text[27] in "Z+-" and text[19] == ".":
        text = text[:26] + text[27:]
    return text.encode("ascii")


@functools.lru_cache(maxsize=4096)
def copy_event_type(type_name: str) -> bytes:
    """The COPY text of the event type named by an assembly-qualified ``$type``."""
    return copy_escape(event_type_from_type_name(type_name)).encode("utf-8", "surrogatepass")


def stream_rows(stream: Stream) -> list[bytes] | StreamProblem:
    """The COPY lines of a checked stream's events, in version order, or the problem that
    keeps PostgreSQL from storing them. The same bytes as :func:`clean_rows` gives."""
    problem = postgres_problem(stream)
    if problem is not None:
        return problem
    rows: list[bytes] = []
    for e in stream.by_version():
        ev = e.event
        assert ev is not None and ev.timestamp_text is not None and ev.type_name is not None
        assert ev.version is not None
        rows.append(
            b"%s\t%d\t%s\t%s\n"
            % (
                copy_timestamp(ev.timestamp_text),
                ev.version,
                copy_event_type(ev.type_name),
                copy_escape_bytes(ev.text.encode("utf-8")),
            )
        )
    return rows


def clean_rows(
    aggregate_id: str,
    values: Sequence[bytes | None],
    *,
    first_version: int = 1,
    known_type: str | None = None,
) -> tuple[str, list[bytes]] | None:
    """The hot path of a migration: the aggregate type and COPY lines of a stream with nothing
    wrong at all (see :func:`esctl.streams.clean_payloads`), or None for the general path.
    Each line is built from the payload's bytes as stored (or as decompressed): no text."""
    clean = clean_payloads(aggregate_id, values, first_version=first_version, known_type=known_type)
    if clean is None:
        return None
    aggregate_type, events = clean
    return aggregate_type, [
        b"".join(
            (
                copy_timestamp(e.timestamp),
                b"\t%d\t" % e.version,
                copy_event_type(e.type_name),
                b"\t",
                copy_escape_bytes(e.payload),
                b"\n",
            )
        )
        for e in events
    ]

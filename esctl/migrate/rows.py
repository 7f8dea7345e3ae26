"""The units of work between the reader and the writers: a :class:`Batch` of whole aggregates
(each clean one as :class:`AggregateRows`, COPY lines ready; each with a problem as
:class:`Quarantined`), what writing it did (:class:`BatchResult`), and the COPY text of a
stream's events (:func:`clean_rows`, the hot path; :func:`stream_rows`, the general one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from esctl.streams import Stream, StreamProblem, clean_events, postgres_problem


@dataclass
class Quarantined:
    aggregate_id: str
    key: str
    events: int
    problems: list[StreamProblem]
    commits: int | None = None
    """The commit list's length as read (None: not read). A follower passes the aggregate over
    while its list keeps this length."""


@dataclass
class AggregateRows:
    """The new events of one clean aggregate, ready for COPY."""

    aggregate_type: str
    rows: list[str]
    """``time_stamp \t version \t event_type \t event_data`` lines in version order."""
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


def stream_rows(stream: Stream) -> list[str] | StreamProblem:
    """The COPY lines of a checked stream's events, in version order, or the problem that
    keeps PostgreSQL from storing them."""
    problem = postgres_problem(stream)
    if problem is not None:
        return problem
    rows: list[str] = []
    for e in stream.by_version():
        ev = e.event
        assert ev is not None and ev.timestamp is not None
        rows.append(
            f"{ev.timestamp.isoformat()}\t{ev.version}\t{copy_escape(ev.event_type or '')}\t"
            f"{copy_escape(ev.text)}\n"
        )
    return rows


def clean_rows(
    aggregate_id: str,
    values: Sequence[bytes | None],
    *,
    first_version: int = 1,
    known_type: str | None = None,
) -> tuple[str, list[str]] | None:
    """The hot path of a migration: the aggregate type and COPY lines of a stream with nothing
    wrong at all (see :func:`esctl.streams.clean_events`), or None for the general path."""
    clean = clean_events(aggregate_id, values, first_version=first_version, known_type=known_type)
    if clean is None:
        return None
    aggregate_type, events = clean
    return aggregate_type, [
        f"{e.moment.isoformat()}\t{e.version}\t{copy_escape(e.event_type)}\t{copy_escape(e.text)}\n"
        for e in events
    ]

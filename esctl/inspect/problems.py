"""What ``inspect`` reports about a stream's problems: which are mere consequences of an
undecodable payload (left out), and which Redis key each problem is about."""

from __future__ import annotations

from esctl.streams import DECODING_KINDS, FATAL_EVENT_KINDS, Stream, StreamProblem

PAYLOAD_KINDS = FATAL_EVENT_KINDS - {"missing_payload"}
"""Problems of one stored value: reported on the hash holding it (others on the commit list)."""


def stream_problems(stream: Stream) -> list[StreamProblem]:
    """A validated stream's problems and warnings, without the consequences of a payload that
    could not be decoded (an invalid gzip value is not also reported as invalid JSON)."""
    undecodable: set[str] = set()
    out: list[StreamProblem] = []
    for problem in [*stream.problems, *stream.warnings]:
        if problem.commit_id is not None and problem.commit_id in undecodable:
            continue
        if problem.kind in DECODING_KINDS and problem.commit_id is not None:
            undecodable.add(problem.commit_id)
        out.append(problem)
    return out


def problem_key(stream: Stream, problem: StreamProblem) -> str:
    """The Redis key a problem is about: the event hash for a value that cannot be read or
    parsed, the commit list for everything else (missing payloads, versions, types)."""
    if problem.kind in PAYLOAD_KINDS and problem.commit_id is not None:
        for e in stream.events:
            if e.commit_id == problem.commit_id and e.hash_key is not None:
                return e.hash_key
    return stream.key

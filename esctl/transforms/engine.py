"""The engine: one aggregate's events through the rules, in the order written, then renumbered
so that the stream stays loadable. Pure (no I/O); the design and the renumbering contract:
docs/design/transforms.md."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson

from esctl.streams import CleanPayload, StreamProblem, parsed
from esctl.transforms import typenames
from esctl.transforms.events import Failed, InFlight, envelope, event_type
from esctl.transforms.rules import Rule
from esctl.transforms.steps import LeaveOut, Renames, Step, compiled_steps


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """An event read from Redis: its commit id, its version and its payload text."""

    commit_id: str
    version: int
    text: str
    data: dict[str, Any] | None = None
    """The parsed ``text``, when the caller has it already (it is only read, never changed)."""


@dataclass(frozen=True, slots=True)
class TransformedEvent:
    """An event as the rules make it. A split gives several with the same ``commit_id`` and
    ``source_version``; ``version`` is the renumbered one (the payload's ``Version`` too)."""

    commit_id: str
    source_version: int
    version: int
    event_type: str
    aggregate_type: str
    timestamp: str
    text: str


@dataclass(frozen=True, slots=True)
class Numbering:
    """Where an aggregate's renumbering stands: the last source (Redis) version transformed and
    the last version given out. A fresh aggregate starts at ``Numbering()`` (0, 0)."""

    last_source_version: int = 0
    last_version: int = 0


@dataclass(frozen=True, slots=True)
class TransformFailure:
    """A rule that could not apply: the aggregate is quarantined whole (kind
    ``transform_failed``)."""

    rule: str
    error: str
    commit_id: str | None
    stored: str | None

    kind = "transform_failed"

    @property
    def detail(self) -> str:
        return f"{self.rule}: {self.error}"

    def as_problem(self) -> StreamProblem:
        stored = self.stored.encode("utf-8") if self.stored is not None else None
        return StreamProblem(self.kind, self.detail, self.commit_id, stored)


@dataclass
class StreamOutcome:
    """What the rules make of one aggregate's events. With a ``failure`` there are no events
    and ``numbering`` is the one given in (nothing half-transformed). ``mapping`` gives each
    source version the versions it became (empty: left out)."""

    aggregate_id: str
    events: list[TransformedEvent]
    numbering: Numbering
    mapping: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    failure: TransformFailure | None = None

    @property
    def left_out(self) -> int:
        return sum(1 for _, versions in self.mapping if not versions)


@dataclass
class RuleEffect:
    """What one rule did to the events that reached it (``migrate plan --transforms``), summed
    over the streams given to :func:`transform_stream` with ``effects``."""

    rule: str
    kind: str
    events_left_out: int = 0
    bytes_left_out: int = 0
    """UTF-8 bytes of the payload JSON of the events this rule left out."""
    events_changed: int = 0
    """Events whose text this rule changed (renamed, upcast, rewritten by a callable)."""
    events_added: int = 0
    """Events more than came in (a callable's splits)."""
    aggregates_failed: int = 0

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> list[RuleEffect]:
        return [cls(rule.label, rule.kind) for rule in rules]


def _account(effect: RuleEffect, before: list[tuple[str, int, str]], after: list[InFlight]) -> None:
    """Add to ``effect`` what a rule made of ``before`` ((commit id, source version, text) of
    each event that reached it): per source event, fewer events are left out, more are added,
    and texts not among those that came in are changed."""
    came: dict[tuple[str, int], list[str]] = {}
    for commit_id, version, text in before:
        came.setdefault((commit_id, version), []).append(text)
    went: dict[tuple[str, int], list[str]] = {}
    for event in after:
        went.setdefault((event.commit_id, event.source_version), []).append(event.text)
    for key, texts in came.items():
        out = went.get(key, [])
        if len(out) < len(texts):
            effect.events_left_out += len(texts) - len(out)
            if not out:
                effect.bytes_left_out += sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        else:
            effect.events_added += len(out) - len(texts)
        unchanged = list(texts)
        changed = 0
        for text in out[: len(texts)]:
            if text in unchanged:
                unchanged.remove(text)
            else:
                changed += 1
        effect.events_changed += changed


def transform_stream(
    rules: Sequence[Rule],
    aggregate_id: str,
    events: Sequence[SourceEvent],
    numbering: Numbering = Numbering(),  # frozen: safe to share
    effects: list[RuleEffect] | None = None,
) -> StreamOutcome:
    """Apply ``rules`` in order to one aggregate's ``events`` and renumber the result.

    The renumbering contract (an incremental run continues it): ``events`` are the aggregate's
    events after ``numbering.last_source_version``, in version order. The events the rules
    make get versions ``numbering.last_version + 1``, ``+ 2``, … in order, written to the
    ``version`` and to the payload's top-level ``Version``; the returned ``numbering`` is where
    the next increment starts: the last source version seen and the last version given out
    (unchanged when every event was left out). Keep it per aggregate between runs; the
    ``mapping`` says which source version became which versions. Transforming events in two
    increments gives the same events as transforming them at once, as long as the rules look
    at one event at a time (all of esctl's do; a callable must too).

    A rule that cannot apply makes ``failure`` say which, why, and on which stored payload;
    then no event is returned and the numbering stays where it was.

    ``effects`` (one :class:`RuleEffect` per rule, :meth:`RuleEffect.of`): what each rule
    did is added to it (a failed stream adds only its ``aggregates_failed``)."""
    working: list[InFlight] = []
    for source in events:
        try:
            working.append(_working(source))
        except Failed as exc:
            return _failed(aggregate_id, numbering, "reading the payload", exc.error, source)
    result = _run(rules, aggregate_id, working, numbering, effects)
    if isinstance(result, TransformFailure):
        return StreamOutcome(aggregate_id, [], numbering, [], result)
    produced: dict[int, list[int]] = {e.version: [] for e in events}
    out: list[TransformedEvent] = []
    for event in result:
        produced.setdefault(event.source_version, []).append(event.version)
        out.append(
            TransformedEvent(
                event.commit_id,
                event.source_version,
                event.version,
                event_type(event.type_name),
                event.aggregate_type,
                event.timestamp,
                event.text,
            )
        )
    return StreamOutcome(
        aggregate_id,
        out,
        _numbering_after(events, result, numbering),
        [(source, tuple(versions)) for source, versions in produced.items()],
    )


@dataclass(slots=True)
class CheckedOutcome:
    """What the rules make of one aggregate's checked events (:func:`transform_checked`):
    the events renumbered (``version``, ``text``), where the numbering stands, how many source
    events were left out; or the failure (then no events, the numbering given in)."""

    events: list[InFlight]
    numbering: Numbering
    left_out: int = 0
    failure: TransformFailure | None = None
    plain: Plain | None = None
    """The events instead of ``events`` when the rules only left out and renamed
    (:func:`_plain_run`), as columns, their ``AggregateType`` the one they came with."""

    @property
    def count(self) -> int:
        """The events the rules made."""
        return len(self.plain[1]) if self.plain is not None else len(self.events)


Plain = tuple[Sequence[datetime], Sequence[int], Sequence[str], Sequence[bytes]]
"""The events :func:`_plain_run` makes, as columns (one entry per event, in order): their
timestamps, versions, ``$type``s and payloads' UTF-8 bytes (the arguments of
``map(esctl.migrate.rows.binary_row, *plain)``)."""


def transform_checked(
    rules: Sequence[Rule],
    aggregate_id: str,
    commit_ids: Sequence[str],
    events: Sequence[CleanPayload],
    numbering: Numbering = Numbering(),  # frozen: safe to share
    aggregate_type: str | None = None,
) -> CheckedOutcome:
    """:func:`transform_stream` for the hot path of ``migrate --transforms``: ``events`` are
    what :func:`esctl.streams.clean_payloads` gave (checked: each payload a JSON object with its
    envelope typed), one per commit id, and they are *given away*: the rules may change their
    parsed payloads in place (no payload is parsed twice). The events come back as the
    :class:`InFlight` they became (no :class:`TransformedEvent` or mapping is built), with the
    same texts, versions and numbering :func:`transform_stream` gives; an event whose ``text``
    is still its stored one (:attr:`InFlight.unchanged`) gives its stored bytes as
    :meth:`InFlight.utf8`. The payloads stay bytes unless a rule needs them as text.
    ``aggregate_type``: the stream's (else read from the first parsed payload); events from the
    compiled path come unparsed (``data`` None) and are parsed here only for rules that need
    the parsed payloads."""
    if events:
        steps = _plain_steps(rules)
        if steps is not None:
            plain = _plain_run(steps, events, numbering, aggregate_type)
            if plain is not None:
                return plain
    working = [
        InFlight(commit_id, e.version, None, None, e.type_name, (data := parsed(e))["AggregateType"],
                 e.timestamp, e.version, data, e.moment, 0, e.payload, e.payload)
        for commit_id, e in zip(commit_ids, events, strict=True)
    ]  # fmt: skip
    result = _run(rules, aggregate_id, working, numbering, None)
    if isinstance(result, TransformFailure):
        return CheckedOutcome([], numbering, 0, result)
    kept = len(set(map(_SOURCE_VERSION, result)))
    return CheckedOutcome(result, _numbering_after(events, result, numbering), len(events) - kept)


def _plain_steps(rules: Sequence[Rule]) -> list[Step] | None:
    """The compiled steps of ``rules`` when each leaves out or renames on payload bytes (the
    fast path, :func:`_plain_run`), else None."""
    steps = compiled_steps(rules, grouped=True)
    hit = _PLAIN.get(id(steps))
    if hit is None or hit[0] is not steps:
        if len(_PLAIN) > 64:
            _PLAIN.clear()
        plain = all(type(s) is LeaveOut or (type(s) is Renames and s.bytes_ok) for s in steps)
        hit = _PLAIN[id(steps)] = steps, plain
    return steps if hit[1] else None


_PLAIN: dict[int, tuple[list[Step], bool]] = {}


def _plain_run(
    steps: list[Step],
    events: Sequence[CleanPayload],
    numbering: Numbering,
    aggregate_type: str | None = None,
) -> CheckedOutcome | None:
    """:func:`transform_checked` for rules that only leave out and rename: no
    :class:`InFlight` per event, each payload's bytes and ``$type`` through the steps, then
    renumbered. The same events, numbering and left-out count as the general path (a
    property test holds them together), or None when an event needs that path (an escape in
    a ``$type`` value, the own ``$type`` not first with a ``rename_type``, a renumbering that
    fails)."""
    # One transposition in C (each CleanPayload has the same six fields):
    versions, type_names, _, moments, payloads, _ = zip(*events, strict=False)
    names = list(type_names)
    raws = list(payloads)
    count = len(raws)
    kept: Sequence[int] = range(count)
    if aggregate_type is None:  # one per clean stream; no rule here changes it
        aggregate_type = parsed(events[0])["AggregateType"]
    for step in steps:
        if type(step) is LeaveOut:
            kept = step.kept(aggregate_type, names, kept)
        elif not cast(Renames, step).rename_plain(names, raws, kept):
            return None
    last = numbering.last_version
    last_source = max(numbering.last_source_version, *versions)
    if len(kept) == count and versions == tuple(range(last + 1, last + 1 + count)):
        # Every event kept at its version (a fresh aggregate, nothing left out before): the
        # payloads' Versions stand.
        plain = (moments, versions, names, raws)
        return CheckedOutcome([], Numbering(last_source, last + count), 0, None, plain)
    renumbered = range(last + 1, last + 1 + len(kept))
    out: list[bytes] = []
    for i, version in zip(kept, renumbered, strict=True):
        raw = raws[i]
        if versions[i] != version:  # (the payload's Version is the source version: no rule
            try:  # here changes it)
                raw = typenames.set_top_level_number(raw.decode(), "Version", version).encode()
            except ValueError:
                return None
        out.append(raw)
    plain = ([moments[i] for i in kept], renumbered, [names[i] for i in kept], out)
    return CheckedOutcome(
        [], Numbering(last_source, last + len(kept)), count - len(kept), None, plain
    )


_VERSION = operator.attrgetter("version")
_SOURCE_VERSION = operator.attrgetter("source_version")


def _numbering_after(
    events: Sequence[SourceEvent] | Sequence[CleanPayload],
    result: list[InFlight],
    numbering: Numbering,
) -> Numbering:
    last_source = max(map(_VERSION, events), default=numbering.last_source_version)
    last = result[-1].version if result else numbering.last_version
    return Numbering(max(last_source, numbering.last_source_version), last)


def _run(
    rules: Sequence[Rule],
    aggregate_id: str,
    working: list[InFlight],
    numbering: Numbering,
    effects: list[RuleEffect] | None,
) -> list[InFlight] | TransformFailure:
    """The rules over ``working``, then the renumbering; or the failure."""
    counted: list[RuleEffect] = []
    for step in compiled_steps(rules, grouped=effects is None):
        before = [(e.commit_id, e.source_version, e.text) for e in working] if effects else []
        try:
            working = step.apply(aggregate_id, working)
        except Failed as exc:
            if effects is not None:
                effects[step.index].aggregates_failed += 1
            stored = exc.event.stored if exc.event is not None else None
            commit_id = exc.event.commit_id if exc.event is not None else None
            return TransformFailure(step.label, exc.error, commit_id, stored)
        if effects is not None:
            counted.append(RuleEffect(step.label, step.kind))
            _account(counted[-1], before, working)
    version = numbering.last_version
    for event in working:
        version += 1
        event.version = version
        if type(event.payload_version) is not int or event.payload_version != version:
            try:
                event.text = typenames.set_top_level_number(event.text, "Version", version)
            except ValueError as exc:
                return TransformFailure("renumbering", str(exc), event.commit_id, event.stored)
            event.data = None
    if effects is not None:
        for total, effect in zip(effects, counted, strict=True):
            total.events_left_out += effect.events_left_out
            total.bytes_left_out += effect.bytes_left_out
            total.events_changed += effect.events_changed
            total.events_added += effect.events_added
    return working


def _failed(
    aggregate_id: str,
    numbering: Numbering,
    rule: str,
    error: str,
    event: InFlight | SourceEvent | None,
) -> StreamOutcome:
    stored = None
    if isinstance(event, InFlight):
        stored = event.stored
    elif event is not None:
        stored = event.text
    failure = TransformFailure(rule, error, event.commit_id if event else None, stored)
    return StreamOutcome(aggregate_id, [], numbering, [], failure)


def _working(event: SourceEvent) -> InFlight:
    data = event.data
    if data is None:
        try:
            data = orjson.loads(event.text)
        except orjson.JSONDecodeError as exc:
            raise Failed(f"the payload is not JSON: {exc}") from None
    fields = envelope(data)
    return InFlight(
        event.commit_id, event.version, event.text, event.text, *fields, data.get("Version")
    )

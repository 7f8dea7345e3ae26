"""The engine: one aggregate's events through the rules, in the order written, then renumbered
so that the stream stays loadable. Pure (no I/O); the design and the renumbering contract:
docs/design/transforms.md."""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from esctl import codec
from esctl.streams import StreamProblem
from esctl.transforms import typenames
from esctl.transforms.rules import Rule
from esctl.where import reach


@dataclass
class Event:
    """One decoded event, as a ``[[python]]`` callable gets it (and may return it, changed).

    ``data`` is the payload as a mapping in its stored key order and ``text`` its exact JSON
    text. ``version`` is the event's version as stored in Redis (before any renumbering), the
    other fields are what the payload says. What the engine takes from a returned event is its
    ``data`` alone (``$type``, ``AggregateType``, ``TimeStamp`` and the rest: ``Version`` is
    renumbered, ``Id`` must stay the aggregate's); when ``data`` is unchanged the exact
    ``text`` is kept."""

    event_type: str
    aggregate_id: str
    aggregate_type: str
    version: int
    timestamp: str
    data: dict[str, Any]
    text: str


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


def _account(effect: RuleEffect, before: list[tuple[str, int, str]], after: list[_Working]) -> None:
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


class _Failed(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error
        self.event: _Working | None = None
        """The event the rule was working on, when it was one event."""


@dataclass(slots=True)
class _Working:
    """An event on its way through the rules."""

    commit_id: str
    source_version: int
    stored: str
    text: str
    type_name: str
    aggregate_type: str
    timestamp: str
    payload_version: Any
    """The payload's top-level ``Version`` as the text now holds it."""


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
    working: list[_Working] = []
    for source in events:
        try:
            working.append(_working(source))
        except _Failed as exc:
            return _failed(aggregate_id, numbering, "reading the payload", exc.error, source)
    counted: list[RuleEffect] = []
    for index, rule in enumerate(rules):
        before = [(e.commit_id, e.source_version, e.text) for e in working] if effects else []
        try:
            working = _apply(rule, aggregate_id, working)
        except _Failed as exc:
            if effects is not None:
                effects[index].aggregates_failed += 1
            return _failed(aggregate_id, numbering, rule.label, exc.error, exc.event)
        if effects is not None:
            counted.append(RuleEffect(rule.label, rule.kind))
            _account(counted[-1], before, working)
    outcome = _renumber(aggregate_id, working, events, numbering)
    if effects is not None and outcome.failure is None:
        for total, effect in zip(effects, counted, strict=True):
            total.events_left_out += effect.events_left_out
            total.bytes_left_out += effect.bytes_left_out
            total.events_changed += effect.events_changed
            total.events_added += effect.events_added
    return outcome


def _failed(
    aggregate_id: str,
    numbering: Numbering,
    rule: str,
    error: str,
    event: _Working | SourceEvent | None,
) -> StreamOutcome:
    stored = None
    if isinstance(event, _Working):
        stored = event.stored
    elif event is not None:
        stored = event.text
    failure = TransformFailure(rule, error, event.commit_id if event else None, stored)
    return StreamOutcome(aggregate_id, [], numbering, [], failure)


def _working(event: SourceEvent) -> _Working:
    data = event.data
    if data is None:
        try:
            data = orjson.loads(event.text)
        except orjson.JSONDecodeError as exc:
            raise _Failed(f"the payload is not JSON: {exc}") from None
    fields = _envelope(data)
    return _Working(
        event.commit_id, event.version, event.text, event.text, *fields, data.get("Version")
    )


def _envelope(data: Any) -> tuple[str, str, str]:
    """The payload's ``$type``, ``AggregateType`` and ``TimeStamp``; each must be a string."""
    if type(data) is not dict:
        raise _Failed("the payload is not a JSON object")
    values: list[str] = []
    for key in ("$type", "AggregateType", "TimeStamp"):
        value = data.get(key)
        if type(value) is not str:
            raise _Failed(f"the payload's {key!r} is {value!r}, not a string")
        values.append(value)
    return values[0], values[1], values[2]


def _event_type(type_name: str) -> str:
    return codec.event_type_from_type_name(type_name)


def _apply(rule: Rule, aggregate_id: str, events: list[_Working]) -> list[_Working]:
    kind = rule.kind
    if kind == "leave_out":
        return _leave_out(rule, events)
    out: list[_Working] = []
    for event in events:
        try:
            if kind == "python":
                out.extend(_call(rule, aggregate_id, event))
                continue
            if kind == "upcast":
                assert rule.event_type is not None
                if fnmatch.fnmatchcase(_event_type(event.type_name), rule.event_type):
                    _upcast(rule, event)
            else:
                _rename(rule, event)
        except _Failed as exc:
            exc.event = event
            raise
        out.append(event)
    return out


def _leave_out(rule: Rule, events: list[_Working]) -> list[_Working]:
    """``aggregate_type`` alone: the whole aggregate when its type matches; ``event_type``
    alone: the events whose type matches; both: the events of that type in aggregates of that
    type."""
    if rule.aggregate_type is not None and not any(
        fnmatch.fnmatchcase(e.aggregate_type, rule.aggregate_type) for e in events
    ):
        return events
    glob = rule.event_type
    if glob is None:
        return []
    return [e for e in events if not fnmatch.fnmatchcase(_event_type(e.type_name), glob)]


def _rename(rule: Rule, event: _Working) -> None:
    text = event.text
    if rule.source not in text and "\\u" not in text and "\\/" not in text:
        return  # no $type can name it (only a JSON escape could spell it otherwise)
    key = (rule.kind, rule.source, rule.target)
    if rule.kind == "rename_type":
        text = typenames.rewrite_own_type(text, lambda value: _renamed(*key, value))
    else:
        tokens = _TOKENS.setdefault(key, {})
        if len(tokens) > _TOKENS_MAX:
            tokens.clear()

        def rewrite(token: str) -> str | None:
            new = tokens.get(token, token)
            if new is token:  # not seen yet
                new = typenames.rewrite_token(token, lambda value: _renamed(*key, value))
                new = tokens[token] = None if new == token else new
            return new

        text = typenames.rewrite_type_tokens(text, rewrite)
    if text is not event.text:
        event.text = text
        event.type_name = _renamed(*key, event.type_name)


_TOKENS: dict[tuple[str, str, str], dict[str, str | None]] = {}
"""Per rename rule: a ``$type`` value's JSON token as written -> the token the rule makes of
it (None when it stays). Type names repeat a lot: no decoding, parsing or encoding
after the first."""
_TOKENS_MAX = 4096


@functools.lru_cache(maxsize=4096)
def _renamed(kind: str, source: str, target: str, value: str) -> str:
    """A ``$type`` value as a rename rule makes it (type names repeat: cached)."""
    if kind == "rename_type":
        return typenames.rename_names(
            value, lambda _, name: target if name == source else None, outer_only=True
        )
    wanted = "type" if kind == "rename_namespace" else "assembly"
    prefix = source + "."

    def rename(name_kind: str, name: str) -> str | None:
        if name_kind != wanted:
            return None
        if wanted == "assembly":
            return target if name == source else None
        return target + name[len(source) :] if name.startswith(prefix) else None

    return typenames.rename_names(value, rename)


def _upcast(rule: Rule, event: _Working) -> None:
    """Rename, then remove, then default the rule's fields (docs/design/transforms.md). The
    text is written anew only when a field changed."""
    data = orjson.loads(event.text)
    changed = _rename_fields(rule, data)
    changed = _remove_fields(rule, data) or changed
    changed = _default_fields(rule, data) or changed
    if changed:
        event.text = orjson.dumps(data).decode("utf-8")
        _set_envelope(event, data)


def _rename_fields(rule: Rule, data: dict[str, Any]) -> bool:
    """A field the path does not reach fails the rule (the rule says it is there)."""
    for path, new in rule.rename:
        holders = [c for c in _containers(data, path) if path[-1] in c]
        if not holders:
            raise _Failed(f"rename: no field {'.'.join(path)!r} in the payload")
        for holder in holders:
            if new in holder:
                raise _Failed(f"rename: {'.'.join(path)!r} to {new!r}: {new!r} is already there")
            items = [(new if k == path[-1] else k, v) for k, v in holder.items()]
            holder.clear()
            holder.update(items)
    return bool(rule.rename)


def _remove_fields(rule: Rule, data: dict[str, Any]) -> bool:
    """A field that is not there is already removed: no failure."""
    changed = False
    for path in rule.remove:
        for holder in _containers(data, path):
            if path[-1] in holder:
                del holder[path[-1]]
                changed = True
    return changed


def _default_fields(rule: Rule, data: dict[str, Any]) -> bool:
    """The value goes (last) into every object the path's parent reaches that lacks the field;
    a parent that is not there fails the rule."""
    changed = False
    for path, value in rule.default:
        containers = _containers(data, path)
        if not containers:
            raise _Failed(f"default: nothing holds {'.'.join(path)!r} in the payload")
        for holder in containers:
            if path[-1] not in holder:
                holder[path[-1]] = value
                changed = True
    return changed


def _containers(data: dict[str, Any], path: tuple[str, ...]) -> list[dict[str, Any]]:
    """The objects whose member ``path[-1]`` the path names, as ``--where`` walks it."""
    if len(path) == 1:
        return [data]
    found: dict[int, dict[str, Any]] = {}
    for item in reach(data, path[:-1]):
        for candidate in item if type(item) is list else [item]:
            if type(candidate) is dict:
                found.setdefault(id(candidate), candidate)
    return list(found.values())


def _set_envelope(event: _Working, data: Any) -> None:
    event.type_name, event.aggregate_type, event.timestamp = _envelope(data)
    event.payload_version = data.get("Version")


def _call(rule: Rule, aggregate_id: str, event: _Working) -> list[_Working]:
    assert rule.function is not None
    data = orjson.loads(event.text)
    given = Event(
        _event_type(event.type_name),
        aggregate_id,
        event.aggregate_type,
        event.source_version,
        event.timestamp,
        data,
        event.text,
    )
    try:
        returned = rule.function(given)
    except Exception as exc:  # reported, not raised
        raise _Failed(f"{rule.source} raised {type(exc).__name__}: {exc}") from None
    if returned is None:
        return []
    items = list(returned) if isinstance(returned, list | tuple) else [returned]
    out: list[_Working] = []
    for item in items:
        out.append(_returned(rule, aggregate_id, event, item))
    return out


def _returned(rule: Rule, aggregate_id: str, event: _Working, item: Any) -> _Working:
    """A working event from what a callable returned (an Event or a payload mapping)."""
    payload = item.data if isinstance(item, Event) else item
    if not isinstance(payload, Mapping):
        raise _Failed(
            f"{rule.source} returned {type(item).__name__}; return None, an Event, a payload "
            "mapping, or a list of them"
        )
    try:
        text = orjson.dumps(payload).decode("utf-8")
    except TypeError as exc:
        raise _Failed(f"{rule.source} returned a payload that is not JSON: {exc}") from None
    if text == orjson.dumps(orjson.loads(event.text)).decode("utf-8"):
        text = event.text  # unchanged: the exact stored text
    if payload.get("Id") != aggregate_id:
        raise _Failed(
            f"{rule.source} returned an event of aggregate {payload.get('Id')!r}, not "
            f"{aggregate_id!r} (an event cannot move to another aggregate)"
        )
    type_name, aggregate_type, timestamp = _envelope(dict(payload))
    if not codec.TIMESTAMP_RE.match(timestamp):
        raise _Failed(f"{rule.source} returned the TimeStamp {timestamp!r}, not a DateTimeOffset")
    return _Working(
        event.commit_id, event.source_version, event.stored, text, type_name, aggregate_type,
        timestamp, payload.get("Version"),
    )  # fmt: skip


def _renumber(
    aggregate_id: str,
    working: list[_Working],
    events: Sequence[SourceEvent],
    numbering: Numbering,
) -> StreamOutcome:
    version = numbering.last_version
    out: list[TransformedEvent] = []
    produced: dict[int, list[int]] = {e.version: [] for e in events}
    for event in working:
        version += 1
        text = event.text
        try:
            if type(event.payload_version) is not int or event.payload_version != version:
                text = typenames.set_top_level_number(text, "Version", version)
        except ValueError as exc:
            failure = TransformFailure("renumbering", str(exc), event.commit_id, event.stored)
            return StreamOutcome(aggregate_id, [], numbering, [], failure)
        produced.setdefault(event.source_version, []).append(version)
        out.append(
            TransformedEvent(
                event.commit_id,
                event.source_version,
                version,
                _event_type(event.type_name),
                event.aggregate_type,
                event.timestamp,
                text,
            )
        )
    last_source = max((e.version for e in events), default=numbering.last_source_version)
    return StreamOutcome(
        aggregate_id,
        out,
        Numbering(max(last_source, numbering.last_source_version), version),
        [(source, tuple(versions)) for source, versions in produced.items()],
    )

"""An event as the rules see it: :class:`Event` (what a ``[[python]]`` callable gets) and
:class:`InFlight` (an event on its way through the rules), with the envelope they share."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from esctl import codec


class _Text:
    """:attr:`Event.text`, which may be given as the payload's UTF-8 bytes: they are decoded
    the first time it is read. Most callables never read it, and turning a payload of 1-6 KB
    into a str took 17% of the engine's time with an identity callable (the bench store's
    payloads are not ASCII). A data descriptor, so a dataclass field: ``Event(..., text)``,
    equality, ``repr`` and :func:`dataclasses.replace` see the str."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._key = f"_{name}"

    def __get__(self, obj: Any, owner: Any = None) -> str:
        if obj is None:
            raise AttributeError(self._key[1:])  # (no default: the field is required)
        text = obj.__dict__[self._key]
        if type(text) is not str:
            text = obj.__dict__[self._key] = text.decode("utf-8")
        return text

    def __set__(self, obj: Any, text: str | bytes) -> None:
        obj.__dict__[self._key] = text


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
    text: _Text = _Text()


class Failed(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error
        self.event: InFlight | None = None
        """The event the rule was working on, when it was one event."""


@dataclass(slots=True)
class InFlight:
    """An event on its way through the rules, and out of them (:func:`.engine.transform_checked`):
    ``version`` is the renumbered version once the rules are through.

    Its payload is held as text (``text``, a str) or as its UTF-8 bytes (``raw``), whichever
    the engine has: migrate gives bytes and the renames rewrite bytes, so a payload is turned
    into a str only when a rule needs one (a callable, an escape in a ``$type`` value).
    ``stored`` and ``payload`` are the payload as read, likewise; an event whose text is still
    the stored one has ``raw is payload`` (or ``text is stored``)."""

    commit_id: str
    source_version: int
    _stored: str | None
    _text: str | None
    type_name: str
    aggregate_type: str
    timestamp: str
    payload_version: Any
    """The payload's top-level ``Version`` as the text now holds it."""
    data: dict[str, Any] | None = None
    """The parsed text when at hand and the engine's to change (the caller gave it away),
    else None."""
    moment: datetime | None = None
    """The parsed ``timestamp`` when at hand."""
    version: int = 0
    payload: bytes | None = None
    """The UTF-8 bytes of ``stored`` when at hand."""
    raw: bytes | None = None
    """The UTF-8 bytes of ``text`` when at hand."""

    @property
    def stored(self) -> str:
        """The payload's text as read."""
        stored = self._stored
        if stored is None:
            assert self.payload is not None
            stored = self._stored = (
                self._text
                if self._text is not None and self.raw is self.payload
                else self.payload.decode("utf-8")
            )
        return stored

    @property
    def text(self) -> str:
        """The payload's text as the rules have made it so far."""
        text = self._text
        if text is None:
            raw = self.raw
            assert raw is not None
            text = self._text = self.stored if raw is self.payload else raw.decode("utf-8")
        return text

    @text.setter
    def text(self, text: str) -> None:
        self._text = text
        self.raw = None

    def set_raw(self, raw: bytes) -> None:
        """The payload's text, as UTF-8 bytes, is now ``raw``."""
        self.raw = raw
        self._text = None

    def utf8(self) -> bytes:
        """``text`` as UTF-8 bytes: the stored ones while no rule changed it."""
        raw = self.raw
        if raw is None:
            text = self._text
            assert text is not None
            raw = self.raw = (
                self.payload
                if text is self._stored and self.payload is not None
                else text.encode("utf-8")
            )
        return raw

    @property
    def unchanged(self) -> bool:
        """Whether the text is still the stored one (the same object)."""
        raw = self.raw
        if raw is not None and raw is self.payload:
            return True
        return self._text is not None and self._text is self._stored


def envelope(data: Any) -> tuple[str, str, str]:
    """The payload's ``$type``, ``AggregateType`` and ``TimeStamp``; each must be a string."""
    if type(data) is not dict:
        raise Failed("the payload is not a JSON object")
    values: list[str] = []
    for key in ("$type", "AggregateType", "TimeStamp"):
        value = data.get(key)
        if type(value) is not str:
            raise Failed(f"the payload's {key!r} is {value!r}, not a string")
        values.append(value)
    return values[0], values[1], values[2]


@functools.lru_cache(maxsize=4096)
def event_type(type_name: str) -> str:
    return codec.event_type_from_type_name(type_name)

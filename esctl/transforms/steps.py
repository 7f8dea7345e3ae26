"""The rules, compiled: one step per rule, consecutive renames as one step (their caches
carry over from aggregate to aggregate)."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from esctl import codec
from esctl.transforms import typenames
from esctl.transforms.events import Event, Failed, InFlight, envelope, event_type
from esctl.transforms.rules import Rule
from esctl.where import reach

_MEMBER_BYTES_RE = re.compile(rb'("\$type"\s*:\s*)("[^"]*")')
"""A ``"$type"`` key, its colon and its string value's token up to the next quote (a token
holding a backslash is left to the text path)."""


_CACHE_MAX = 4096
"""Entries a step keeps per cache (event type -> match, $type token -> result)."""


_REGION_MAX = 512
"""Regions of members (:meth:`Renames._rewrite_nested`) up to this many bytes are remembered."""

OwnStart = tuple[bytes, int, bytes | None, str, int]
"""What :meth:`Renames._own_start` makes of a ``$type``."""


class Step:
    """One rule (or consecutive ``rename_*`` rules) ready to apply to an aggregate's events."""

    kind: str
    label: str
    index: int
    """The (first) rule's position in the rules."""

    def apply(self, aggregate_id: str, events: list[InFlight]) -> list[InFlight]:
        raise NotImplementedError


class _GlobCache:
    """Whether a name (as ``key(name)``) matches a glob, remembered per name."""

    def __init__(self, glob: str, key: Callable[[str], str] = str) -> None:
        self.glob = glob
        self.key = key
        self.seen: dict[str, bool] = {}
        self.passed: set[str] = set()
        """The names of ``seen`` that do not match."""

    def __call__(self, name: str) -> bool:
        hit = self.seen.get(name)
        if hit is None:
            if len(self.seen) > _CACHE_MAX:
                self.seen.clear()
                self.passed.clear()
            hit = self.seen[name] = fnmatch.fnmatchcase(self.key(name), self.glob)
            if not hit:
                self.passed.add(name)
        return hit


class LeaveOut(Step):
    """``aggregate_type`` alone: the whole aggregate when its type matches; ``event_type``
    alone: the events whose type matches; both: the events of that type in aggregates of that
    type."""

    def __init__(self, rule: Rule, index: int) -> None:
        self.kind, self.label, self.index = rule.kind, rule.label, index
        self.aggregate = None if rule.aggregate_type is None else _GlobCache(rule.aggregate_type)
        self.event = None if rule.event_type is None else _GlobCache(rule.event_type, event_type)

    def apply(self, aggregate_id: str, events: list[InFlight]) -> list[InFlight]:
        aggregate = self.aggregate
        if aggregate is not None and not any(aggregate(e.aggregate_type) for e in events):
            return events
        matches = self.event
        if matches is None:
            return []
        seen = matches.seen  # (most events' answer is there: no call)
        kept = [
            e
            for e in events
            if not (hit if (hit := seen.get(e.type_name)) is not None else matches(e.type_name))
        ]
        return kept if len(kept) != len(events) else events

    def kept(self, aggregate_type: str, names: list[str], kept: Sequence[int]) -> Sequence[int]:
        """:meth:`apply` for :func:`.engine._plain_run`: which of the events ``kept`` (indexes into
        ``names``, their ``$type``s) stay, all of aggregate type ``aggregate_type``."""
        aggregate = self.aggregate
        if aggregate is not None and not aggregate(aggregate_type):
            return kept
        matches = self.event
        if matches is None:
            return []
        if matches.passed.issuperset(names):
            return kept  # every name seen before, none matching (no loop in Python)
        seen = matches.seen
        return [
            i
            for i in kept
            if not (hit if (hit := seen.get(names[i])) is not None else matches(names[i]))
        ]


class Renames(Step):
    """Consecutive ``rename_type`` / ``rename_namespace`` / ``rename_assembly`` rules in one
    pass over each payload's ``$type`` members: what the rules make of a ``$type`` token, one
    after the other, is remembered per token as written (and whether it is the payload's own),
    with the rules that changed it. The same texts and type names as applying each rule to the
    whole text in turn (:func:`_rename`): a rule changes only ``$type`` values holding its
    ``from`` (spelled plainly in the text, unless through a ``\\u`` or ``\\/`` escape)."""

    def __init__(self, rules: list[Rule], index: int) -> None:
        self.rules = rules
        self.kind, self.label, self.index = rules[0].kind, rules[0].label, index
        self.keys = [(r.kind, r.source, r.target) for r in rules]
        self.sources = list(dict.fromkeys(r.source for r in rules))
        self.own_only = any(r.kind == "rename_type" for r in rules)
        self.tokens: dict[tuple[str, bool], tuple[str | None, int]] = {}
        self.names: dict[tuple[str, int], str] = {}
        """(``$type``, the rules that changed the text) -> the event's ``$type`` after them."""
        self.bytes_ok = all(_groupable(r) for r in rules)
        """Whether payloads held as bytes are renamed as bytes (each ``from`` is spelled in
        the UTF-8 bytes as it is, unless through a ``\\u`` or ``\\/`` escape)."""
        self.byte_tokens: dict[tuple[bytes, bool], tuple[bytes | None, int]] = {}
        self.own_prefixes: dict[bytes, tuple[bytes | None, int]] = {}
        self.own_starts: dict[str, OwnStart | None] = {}
        """An event's ``$type`` -> what :meth:`_own_start` makes of it."""
        self.regions: dict[bytes, tuple[bytes | None, int]] = {}
        """A region of a payload's members (:meth:`_rewrite_nested`) -> what the rules make
        of it."""

    def apply(self, aggregate_id: str, events: list[InFlight]) -> list[InFlight]:
        first = self.sources[0]
        bytes_ok = self.bytes_ok
        rename_bytes = self._rename_bytes
        for event in events:  # (renames never fail)
            raw = event.raw
            if raw is not None and bytes_ok:
                # No pre-check: finding the members from each "$" costs less than looking for
                # a rule's "from" in a long payload.
                rename_bytes(event, raw)
                continue
            text = event.text
            if first in text or self._may_change(text, first):
                self._rename(event, text)
        return events

    def rename_plain(self, names: list[str], raws: list[bytes], kept: Sequence[int]) -> bool:
        """:meth:`apply` for :func:`.engine._plain_run`: the events ``kept`` (indexes into ``names``
        and ``raws``, their ``$type``s and payload bytes) renamed in place; False when one
        needs the text path. Most payloads start with their own ``$type`` as their name spells
        it: that start is looked up by the name (:meth:`_own_start`) and the other members
        found from each ``$`` (:meth:`_rewrite_nested`); the rest take
        :meth:`_rewrite_members`."""
        own_starts = self.own_starts
        members = self._rewrite_members
        renamed = self.names
        for i in kept:
            raw = raws[i]
            name = names[i]
            # The own $type written first as its name spells it (else the payload's members
            # decide): what the rules make of that start is looked up by the name.
            own = own_starts[name] if name in own_starts else self._own_start(name)
            if own is not None and raw.startswith(own[0]):
                at = raw.find(b"$", own[1])
                if at == -1:  # no other member
                    if own[2] is not None:
                        raws[i] = own[2] + raw[own[1] :]
                        names[i] = own[3]
                    continue
                result = self._rewrite_nested(raw, own, at) or members(raw)
            else:
                result = members(raw)
            if result is None:
                return False
            raw, changed = result
            if changed:
                raws[i] = raw
                names[i] = renamed.get((name, changed)) or self._name(name, changed)
        return True

    def _rewrite_nested(self, raw: bytes, own: OwnStart, at: int) -> tuple[bytes, int] | None:
        """:meth:`_rewrite_members` for a payload that starts with its own ``$type`` (``own``,
        :meth:`_own_start`) and holds another ``$`` at ``at``: the other members lie between
        that ``$`` and the token after the last one, a region payloads of a type often share
        (what the rules make of a short one is remembered); None when the text path decides."""
        start, end, prefix, _, changed = own
        last = raw.rfind(b"$")
        # (the checks of the last $ read up to 8 bytes from it, or up to its member's token)
        stop = raw.find(b'"', last + 8) + 1 if raw.startswith(b'$type":"', last) else last + 8
        if not stop:
            return None
        region = raw[at - 2 : stop]  # (from the byte before the quote the first $ follows)
        hit = self.regions.get(region)
        if hit is None:
            hit = self._rewrite_region(region)
            if len(region) <= _REGION_MAX:
                if len(self.regions) > _CACHE_MAX:
                    self.regions.clear()
                self.regions[region] = hit
        new, rules = hit
        if rules < 0:
            return None
        changed |= rules
        if not changed:
            return raw, 0
        return b"".join(
            (start if prefix is None else prefix, raw[end : at - 2], new or region, raw[stop:])
        ), changed

    def _rewrite_region(self, region: bytes) -> tuple[bytes | None, int]:
        """The members of a payload's ``region`` (:meth:`_rewrite_nested`; its first ``$`` at
        2), none its own, found from each ``$`` (memchr): the region as the rules make it (None:
        unchanged) and the rules that changed it; (None, -1) for the text path (a key after a
        backslash, or spaced, or a token with an escape). Every ``"$type"`` found that follows
        no backslash is a key (a quote inside a string follows one)."""
        tokens = self.byte_tokens
        pieces: list[bytes] = []
        changed = done = 0
        at = 2
        while at != -1:
            if region[at - 1] == 34 and region.startswith(b'$type"', at):  # (34: a quote)
                # (92: a backslash, before that quote: the key may lie inside a string)
                if region[at - 2] == 92 or not region.startswith(b'$type":"', at):
                    return None, -1
                close = region.find(b'"', at + 8) + 1
                if not close:
                    return None, -1
                token = region[at + 7 : close]
                new, rules = tokens.get((token, False)) or self._byte_token(token, False)
                if rules < 0:
                    return None, -1
                if new is not None:
                    changed |= rules
                    pieces.append(region[done : at + 7])
                    pieces.append(new)
                    done = close
                at = region.find(b"$", close)
            else:
                at = region.find(b"$", at + 1)
        if not changed:
            return None, 0
        pieces.append(region[done:])
        return b"".join(pieces), changed

    def _own_start(self, name: str) -> OwnStart | None:
        """For a payload whose ``$type`` is ``name``: (``{"$type":`` and its token as JSON
        writes it unescaped, its length, what the rules make of that start (None: it stays),
        the ``$type`` after them, the rules that changed it); None for a name JSON escapes.
        Remembered."""
        if len(self.own_starts) > _CACHE_MAX:
            self.own_starts.clear()
        hit = None
        if '"' not in name and "\\" not in name and all(c >= " " for c in name):
            try:
                token = b'"' + name.encode("utf-8") + b'"'
            except UnicodeEncodeError:  # (a lone surrogate)
                token = None
            if token is not None:
                prefix, changed = self.own_prefixes.get(token) or self._own_prefix(token)
                if prefix is not None:
                    name_after = self.names.get((name, changed)) or self._name(name, changed)
                else:
                    name_after = name
                start = b'{"$type":' + token
                hit = (start, len(start), prefix, name_after, changed)
        self.own_starts[name] = hit
        return hit

    def _rename_bytes(self, event: InFlight, raw: bytes) -> None:
        """:meth:`_rename` on the payload's UTF-8 bytes (no decoding, no encoding): the same
        texts, or the text path when a ``$type`` value holds an escape or a ``rename_type``
        finds the own ``$type`` not first."""
        result = self._rewrite_bytes(raw)
        if result is None:
            self._rename(event, event.text)
            return
        new, changed = result
        if not changed:
            return
        event.set_raw(new)
        event.data = None
        name = self.names.get((event.type_name, changed))
        event.type_name = name if name is not None else self._name(event.type_name, changed)

    def _rewrite_bytes(self, raw: bytes) -> tuple[bytes, int] | None:
        """:meth:`_rewrite` for UTF-8 bytes: the same members and texts, or None when a
        member's value token holds a backslash (an escape: the text path decodes it), a
        ``"$type"`` key lies right after a backslash (inside a string) or, with a
        ``rename_type``, the payload's first member is not its own ``$type``.

        Most payloads have one ``$type``, their own, written first: that one costs a
        ``startswith``, a ``find`` of its end, a ``memchr`` for any other ``$`` and a lookup
        (no scan for ``"$type"`` or ``\\u`` through a long payload)."""
        if raw.startswith(b'{"$type":"'):
            end = raw.find(b'"', 10) + 1
            if end and raw.find(b"$", end) == -1:  # no other member
                token = raw[9:end]
                hit = self.own_prefixes.get(token)
                if hit is None:
                    hit = self._own_prefix(token)
                prefix, changed = hit
                if changed < 0:
                    return None
                return (raw, 0) if prefix is None else (prefix + raw[end:], changed)
        return self._rewrite_members(raw)

    def _own_prefix(self, token: bytes) -> tuple[bytes | None, int]:
        """What the rules make of the own ``$type`` token ``token`` as the start of the
        payload: (``{"$type":`` and the new token, or None when it stays; the rules that
        changed it, -1 for a token with an escape). Remembered."""
        if len(self.own_prefixes) > _CACHE_MAX:
            self.own_prefixes.clear()
        new, changed = self._byte_token(token, self.own_only)
        hit = self.own_prefixes[token] = (
            None if new is None else b'{"$type":' + new,
            changed,
        )
        return hit

    def _rewrite_members(self, raw: bytes) -> tuple[bytes, int] | None:
        """:meth:`_rewrite_bytes` for any payload: one ``re.split`` (in C) gives the text
        between the members, each member's key and colon, and each value token, in order."""
        parts = _MEMBER_BYTES_RE.split(raw)
        count = len(parts)
        own = self.own_only
        if own and (count == 1 or parts[0].strip() != b"{"):
            return None
        tokens = self.byte_tokens
        changed = 0
        for k in range(2, count, 3):
            if parts[k - 2][-1:] == b"\\":
                return None  # an opening quote a backslash escapes: inside a string
            key = (parts[k], own)
            own = False
            hit = tokens.get(key)
            new, rules = hit if hit is not None else self._byte_token(*key)
            if rules < 0:
                return None
            if new is not None:
                changed |= rules
                parts[k] = new
        if not changed:
            return raw, 0
        return b"".join(parts), changed

    def _byte_token(self, token: bytes, own: bool) -> tuple[bytes | None, int]:
        """:meth:`_token` for a token's UTF-8 bytes (remembered); (None, -1) for a token
        with a backslash (an escape, or a quote it escapes: the text path)."""
        if len(self.byte_tokens) > _CACHE_MAX:
            self.byte_tokens.clear()
        if b"\\" in token:
            hit: tuple[bytes | None, int] = (None, -1)
        else:
            new, changed = self._hit(token.decode("utf-8"), own)
            hit = (None if new is None else new.encode("utf-8"), changed)
        self.byte_tokens[token, own] = hit
        return hit

    def _may_change(self, text: str, looked_for: str) -> bool:
        """Whether a rule's ``from`` other than ``looked_for`` (not in ``text``) is in
        ``text``, or a JSON escape could hide one."""
        sources = self.sources
        for i, source in enumerate(sources):
            if source is not looked_for and source in text:
                # The next payload most likely holds it too: look for it first.
                self.sources = [source, *sources[:i], *sources[i + 1 :]]
                return True
        return "\\" in text and ("\\u" in text or "\\/" in text)

    def _rename(self, event: InFlight, text: str) -> None:
        result = self._rewrite(text) if "\\" in text else self._rewrite_plain(text)
        if result is None:
            for rule in self.rules:  # the own $type not written first: each rule finds it
                _rename(rule, event)
            return
        text, changed = result
        if not changed:
            return
        event.text = text
        event.data = None
        name = self.names.get((event.type_name, changed))
        event.type_name = name if name is not None else self._name(event.type_name, changed)

    def _hit(self, token: str, own: bool) -> tuple[str | None, int]:
        hit = self.tokens.get((token, own))
        return hit if hit is not None else self._token(token, own)

    def _rewrite(self, text: str) -> tuple[str, int] | None:
        """``text`` with each ``$type`` member's token as the rules make it, and a bit per rule
        that changed one; None when a ``rename_type`` rule is there but the payload's own
        ``$type`` is not its first member."""
        members = typenames.type_members(text)
        own_at = -1
        if self.own_only:
            if not members or text[: members[0][0]].strip() != "{":
                return None
            own_at = members[0][1]
        parts: list[str] = []
        done = 0
        changed = 0
        for _, start, token in members:
            new, rules = self._hit(token, start == own_at)
            if new is not None:
                changed |= rules
                parts.append(text[done:start])
                parts.append(new)
                done = start + len(token)
        if not changed:
            return text, 0
        parts.append(text[done:])
        return "".join(parts), changed

    def _rewrite_plain(self, text: str) -> tuple[str, int] | None:
        """:meth:`_rewrite` for a text without a backslash: no escape anywhere, so every
        ``"$type"`` followed by a colon is a member, its value token ends at the next quote,
        and one ``str.split`` finds them all."""
        pieces = text.split('"$type"')
        own_only = self.own_only
        if own_only and (len(pieces) == 1 or pieces[0].strip() != "{"):
            return None
        tokens = self.tokens
        changed = 0
        for k in range(1, len(pieces)):
            piece = pieces[k]
            if piece[:2] == ':"':
                start = 1
            else:
                colon = typenames.COLON_RE.match(piece)
                if colon is None or piece[colon.end() : colon.end() + 1] != '"':
                    if k == 1 and own_only:
                        return None
                    continue
                start = colon.end()
            end = piece.find('"', start + 1) + 1
            if not end:
                break
            token = piece[start:end]
            key = (token, own_only and k == 1)
            hit = tokens.get(key)
            new, rules = hit if hit is not None else self._token(*key)
            if new is not None:
                changed |= rules
                pieces[k] = piece.replace(token, new, 1)  # (no quote before it)
        if not changed:
            return text, 0
        return '"$type"'.join(pieces), changed

    def _name(self, type_name: str, changed: int) -> str:
        """The event's ``$type`` after the rules of the bits in ``changed`` (remembered)."""
        name = type_name
        for i, rename in enumerate(self.keys):
            if changed >> i & 1:
                name = _renamed(*rename, name)
        if len(self.names) > _CACHE_MAX:
            self.names.clear()
        self.names[type_name, changed] = name
        return name

    def _token(self, token: str, own: bool) -> tuple[str | None, int]:
        """What the rules make of one ``$type`` token: (the new token, or None when no rule
        changed it; a bit per rule that changed it). Remembered."""
        if len(self.tokens) > _CACHE_MAX:
            self.tokens.clear()
        key = (token, own)
        changed = 0
        for i, rename in enumerate(self.keys):
            if rename[0] == "rename_type" and not own:
                continue
            new = typenames.rewrite_token(token, functools.partial(_renamed, *rename))
            if new is not token:
                changed |= 1 << i
                token = new
        hit = self.tokens[key] = (token if changed else None), changed
        return hit


class _Upcast(Step):
    def __init__(self, rule: Rule, index: int) -> None:
        self.rule = rule
        self.kind, self.label, self.index = rule.kind, rule.label, index
        assert rule.event_type is not None
        self.matches = _GlobCache(rule.event_type, event_type)

    def apply(self, aggregate_id: str, events: list[InFlight]) -> list[InFlight]:
        matches = self.matches
        for event in events:
            if matches(event.type_name):
                try:
                    _upcast(self.rule, event)
                except Failed as exc:
                    exc.event = event
                    raise
        return events


class _Python(Step):
    def __init__(self, rule: Rule, index: int) -> None:
        self.rule = rule
        self.kind, self.label, self.index = rule.kind, rule.label, index

    def apply(self, aggregate_id: str, events: list[InFlight]) -> list[InFlight]:
        out: list[InFlight] = []
        for event in events:
            try:
                out.extend(_call(self.rule, aggregate_id, event))
            except Failed as exc:
                exc.event = event
                raise
        return out


_STEPS: dict[tuple[bool, tuple[int, ...]], tuple[Sequence[Rule], list[Step]]] = {}


_LAST_STEPS: dict[bool, tuple[Sequence[Rule], list[Step]] | None] = {True: None, False: None}
"""The steps used last (the same rules object, aggregate after aggregate)."""


def compiled_steps(rules: Sequence[Rule], *, grouped: bool) -> list[Step]:
    """The compiled steps of ``rules`` (kept per rules object: their caches carry over from
    aggregate to aggregate). ``grouped``: consecutive renames share one step (not when each
    rule's effects are counted)."""
    last = _LAST_STEPS[grouped]
    if last is not None and last[0] is rules:
        return last[1]
    key = (grouped, tuple(map(id, rules)))
    hit = _STEPS.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], rules, strict=True)):
        _LAST_STEPS[grouped] = hit
        return hit[1]
    steps: list[Step] = []
    renames: list[Rule] = []
    for index, rule in enumerate(rules):
        if rule.kind.startswith("rename_"):
            if not renames or (grouped and _groupable(rule) and _groupable(renames[0])):
                renames.append(rule)
                continue
            steps.append(Renames(renames, index - len(renames)))
            renames = [rule]
            continue
        if renames:
            steps.append(Renames(renames, index - len(renames)))
            renames = []
        if rule.kind == "leave_out":
            steps.append(LeaveOut(rule, index))
        elif rule.kind == "upcast":
            steps.append(_Upcast(rule, index))
        else:
            steps.append(_Python(rule, index))
    if renames:
        steps.append(Renames(renames, len(rules) - len(renames)))
    if len(_STEPS) > 64:
        _STEPS.clear()
    _STEPS[key] = _LAST_STEPS[grouped] = (rules, steps)
    return steps


def _groupable(rule: Rule) -> bool:
    """Whether a rename's ``from`` can only stand in a ``$type`` value the way it is written
    (no quote, backslash or control character, which the JSON text would escape): the
    pre-check of :meth:`Renames._may_change` is then exact for it."""
    return rule.source.isprintable() and '"' not in rule.source and "\\" not in rule.source


def _rename(rule: Rule, event: InFlight) -> None:
    """One rename rule over one payload's text (``$type`` members only)."""
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
        event.data = None
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


def _upcast(rule: Rule, event: InFlight) -> None:
    """Rename, then remove, then default the rule's fields (docs/design/transforms.md). The
    text is written anew only when a field changed. The payload the engine holds is changed
    in place (else the text is parsed)."""
    data = event.data
    if data is None:
        data = orjson.loads(event.raw if event.raw is not None else event.text)
    changed = _rename_fields(rule, data)
    changed = _remove_fields(rule, data) or changed
    changed = _default_fields(rule, data) or changed
    if changed:
        event.set_raw(orjson.dumps(data))
        event.data = None
        timestamp = event.timestamp
        _set_envelope(event, data)
        if event.timestamp != timestamp:
            if not codec.TIMESTAMP_RE.match(event.timestamp):
                raise Failed(f"the TimeStamp became {event.timestamp!r}, not a DateTimeOffset")
            event.moment = None


def _rename_fields(rule: Rule, data: dict[str, Any]) -> bool:
    """A field the path does not reach fails the rule (the rule says it is there)."""
    for path, new in rule.rename:
        holders = [c for c in _containers(data, path) if path[-1] in c]
        if not holders:
            raise Failed(f"rename: no field {'.'.join(path)!r} in the payload")
        for holder in holders:
            if new in holder:
                raise Failed(f"rename: {'.'.join(path)!r} to {new!r}: {new!r} is already there")
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
            raise Failed(f"default: nothing holds {'.'.join(path)!r} in the payload")
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


def _set_envelope(event: InFlight, data: Any) -> None:
    event.type_name, event.aggregate_type, event.timestamp = envelope(data)
    event.payload_version = data.get("Version")


def _call(rule: Rule, aggregate_id: str, event: InFlight) -> list[InFlight]:
    """The callable on one event: its parsed payload is given away to it (parsed here unless
    the engine holds it already); what comes back is compared with the payload as it was, so
    an event returned unchanged keeps its exact stored text."""
    assert rule.function is not None
    # The payload as the engine holds it, text or bytes (made a str only if the callable reads
    # event.text)
    payload = event._text if event._text is not None else event.utf8()
    data = event.data
    if data is None:
        data = orjson.loads(payload)
    event.data = None
    before = orjson.dumps(data)
    given = Event(
        event_type(event.type_name),
        aggregate_id,
        event.aggregate_type,
        event.source_version,
        event.timestamp,
        data,
        payload,
    )
    try:
        returned = rule.function(given)
    except Exception as exc:  # reported, not raised
        raise Failed(f"{rule.source} raised {type(exc).__name__}: {exc}") from None
    if returned is None:
        return []
    if isinstance(returned, list | tuple):
        return [_returned(rule, aggregate_id, event, item, before) for item in returned]
    return [_returned(rule, aggregate_id, event, returned, before, alone=True)]


def _returned(
    rule: Rule, aggregate_id: str, event: InFlight, item: Any, before: bytes, alone: bool = False
) -> InFlight:
    """A working event from what a callable returned (an Event or a payload mapping);
    ``before``: the JSON of the payload the callable was given, as it was; ``alone``: the
    only event it returned (then an unchanged one is ``event`` itself, no copy)."""
    payload = item.data if isinstance(item, Event) else item
    if type(payload) is not dict and not isinstance(payload, Mapping):
        raise Failed(
            f"{rule.source} returned {type(item).__name__}; return None, an Event, a payload "
            "mapping, or a list of them"
        )
    try:
        returned = orjson.dumps(payload)
    except TypeError as exc:
        raise Failed(f"{rule.source} returned a payload that is not JSON: {exc}") from None
    if payload.get("Id") != aggregate_id:
        raise Failed(
            f"{rule.source} returned an event of aggregate {payload.get('Id')!r}, not "
            f"{aggregate_id!r} (an event cannot move to another aggregate)"
        )
    if returned == before and event.moment is not None:
        # Unchanged: the exact text (as the engine holds it) and the envelope the event has
        # (what the payload says; its TimeStamp parsed, so a DateTimeOffset).
        if alone:
            return event  # (its data given away: None already)
        return InFlight(
            event.commit_id, event.source_version, event._stored, event._text, event.type_name,
            event.aggregate_type, event.timestamp, event.payload_version, None, event.moment, 0,
            event.payload, event.raw,
        )  # fmt: skip
    # Unchanged: the exact text (as the engine holds it), else the JSON as it came back.
    text, raw = (event._text, event.raw) if returned == before else (None, returned)
    type_name, aggregate_type, timestamp = envelope(
        payload if type(payload) is dict else dict(payload)
    )
    if timestamp == event.timestamp and event.moment is not None:
        moment = event.moment  # parsed already: a DateTimeOffset
    elif codec.TIMESTAMP_RE.match(timestamp):
        moment = None
    else:
        raise Failed(f"{rule.source} returned the TimeStamp {timestamp!r}, not a DateTimeOffset")
    return InFlight(
        event.commit_id, event.source_version, event._stored, text, type_name, aggregate_type,
        timestamp, payload.get("Version"), None, moment, 0, event.payload, raw,
    )  # fmt: skip

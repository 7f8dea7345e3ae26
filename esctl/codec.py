"""Payload codec: stored value (bytes) -> text -> parsed event, and back. Pure, no I/O.

Follows the library's reading rule: a value starting with ``H4sI`` (base64 of the gzip magic) is
base64-decoded and gunzipped; if either step fails the value is used as it is. esctl keeps that
behaviour but flags such values as ``invalid_compressed``. zstd frames (esctl's own backup
files) are read too. Nothing here raises on bad input: problems are returned as data.
:func:`newtonsoft_metadata_first` gives JSON read back from PostgreSQL's jsonb the key order
Newtonsoft.Json needs to read its metadata (``$type`` first).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson
import pybase64
import zstandard
from zlib_ng import zlib_ng

from esctl.defaults import COMPRESSION_THRESHOLD as DEFAULT_COMPRESSION_THRESHOLD

GZIP_BASE64_PREFIX = b"H4sI"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

Compression = Literal["gzip", "zstd"]


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with one stored value or event. ``kind`` is a stable snake_case name."""

    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Decoded:
    """A stored value turned into text.

    ``compressed`` says which compression was found and undone; ``problem`` is set when the
    value looked compressed but was not valid (the text is then the value as stored, as the
    library would use it) or when the bytes are not UTF-8.
    """

    text: str
    compressed: Compression | None
    stored_size: int
    problem: Problem | None = None


@dataclass(slots=True)
class ParsedEvent:
    """An event payload: the exact JSON text plus the fields esctl needs.

    ``text`` is never re-serialised. Fields that are missing or of the wrong type are None and
    a problem says why.
    """

    text: str
    aggregate_id: str | None
    version: int | None
    aggregate_type: str | None
    event_type: str | None
    type_name: str | None
    timestamp: datetime | None
    timestamp_text: str | None
    data: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- bytes -> text -------------------------------------------------------------------------

_zstd_decompressor = zstandard.ZstdDecompressor()


_ZLIB_NG_ERROR: type[Exception] = zlib_ng.error  # type: ignore[assignment]  # (stub: an instance)
GUNZIP_ERRORS = (binascii.Error, ValueError, zlib.error, _ZLIB_NG_ERROR)


def gunzip_base64(raw: bytes) -> bytes:
    """base64 then gunzip, as the library reads an ``H4sI`` value; raises GUNZIP_ERRORS.

    pybase64 (SIMD) decodes ~5x faster than binascii; what it refuses (it accepts no input
    binascii's strict mode refuses, and decodes the rest the same) is left to binascii, so
    the values accepted are binascii's. zlib-ng inflates the same streams as zlib, with the
    same checks (header, CRC, length; data after the first member ignored), ~20% faster on
    these payloads (measured)."""
    try:
        data = pybase64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        data = base64.b64decode(raw, validate=True)
    return zlib_ng.decompress(data, wbits=31)


def decode_value(value: bytes | str) -> Decoded:
    """Turn a stored value into payload text. Never raises."""
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    size = len(raw)
    if raw.startswith(GZIP_BASE64_PREFIX):
        try:
            plain = gunzip_base64(raw)
        except GUNZIP_ERRORS as exc:
            text, _ = _utf8(raw)
            return Decoded(
                text,
                None,
                size,
                Problem("invalid_compressed", f"starts with H4sI but is not gzip+base64: {exc}"),
            )
        text, utf8_problem = _utf8(plain)
        return Decoded(text, "gzip", size, utf8_problem)
    if raw.startswith(ZSTD_MAGIC):
        obj = _zstd_decompressor.decompressobj()
        try:
            plain = obj.decompress(raw)
        except zstandard.ZstdError as exc:
            plain, problem = b"", f"bad zstd frame: {exc}"
        else:
            problem = (
                "truncated zstd frame"
                if not obj.eof
                else "data after the zstd frame"
                if obj.unused_data
                else ""
            )
        if problem:
            text, _ = _utf8(raw)
            return Decoded(text, None, size, Problem("invalid_compressed", problem))
        text, utf8_problem = _utf8(plain)
        return Decoded(text, "zstd", size, utf8_problem)
    text, utf8_problem = _utf8(raw)
    return Decoded(text, None, size, utf8_problem)


def _utf8(data: bytes) -> tuple[str, Problem | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return data.decode("utf-8", "replace"), Problem("invalid_utf8", str(exc))


# --- text -> bytes -------------------------------------------------------------------------


GZIP_OS_UNIX = 3
"""The gzip header's OS byte zlib writes on Unix (.NET's GZipStream on Linux, Mono)."""
GZIP_OS_WINDOWS = 10
"""The OS byte zlib writes on Windows (0x0a; .NET's GZipStream on Windows)."""
GZIP_OS_NAMES = {GZIP_OS_UNIX: "unix", GZIP_OS_WINDOWS: "windows"}


@dataclass(frozen=True, order=True, slots=True)
class GzipHeader:
    """The two bytes of a gzip header that differ between the library's writers: ``xfl``
    (extra flags: 0 from zlib at the default level, which .NET's GZipStream uses) and ``os``
    (the OS byte: :data:`GZIP_OS_UNIX` or :data:`GZIP_OS_WINDOWS`). The rest of the header is
    fixed: magic ``1f 8b``, method 8 (deflate), no flags, mtime 0."""

    xfl: int = 0
    os: int = GZIP_OS_UNIX

    @property
    def os_name(self) -> str:
        """``unix``, ``windows`` or the number."""
        return GZIP_OS_NAMES.get(self.os, str(self.os))

    def as_bytes(self) -> bytes:
        return _GZIP_FIXED_HEADER + bytes((self.xfl, self.os))


DEFAULT_GZIP_HEADER = GzipHeader()
_GZIP_FIXED_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"


def gzip_header_of(value: bytes) -> GzipHeader | None:
    """The :class:`GzipHeader` of a stored gzip+base64 value whose header has the shape the
    library's writers give it (no flags, mtime 0); None for any other value."""
    if not value.startswith(GZIP_BASE64_PREFIX):
        return None
    try:
        head = base64.b64decode(value[:16], validate=True)  # 16 characters: 12 bytes
    except (binascii.Error, ValueError):
        return None
    if len(head) < 10 or head[:8] != _GZIP_FIXED_HEADER:
        return None
    return GzipHeader(head[8], head[9])


def gzip_base64(text: str, header: GzipHeader = DEFAULT_GZIP_HEADER) -> bytes:
    """gzip + base64 as .NET's GZipStream + Convert.ToBase64String write it: zlib's deflate at
    the default level (6), a header with mtime 0 and ``header``'s extra flags and OS byte."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    gz = compressor.compress(text.encode("utf-8")) + compressor.flush()
    return base64.b64encode(header.as_bytes() + gz[10:])


def encode_value(
    text: str,
    *,
    threshold: int | None = DEFAULT_COMPRESSION_THRESHOLD,
    header: GzipHeader = DEFAULT_GZIP_HEADER,
) -> bytes:
    """The stored value the library would write for ``text``: gzip+base64 (with ``header``)
    when the UTF-8 size exceeds ``threshold`` (``None`` disables compression), the plain UTF-8
    bytes otherwise."""
    data = text.encode("utf-8")
    if threshold is not None and len(data) > threshold:
        return gzip_base64(text, header)
    return data


def zstd_compress(data: bytes, level: int = 3) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


# --- text -> event -------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def event_type_from_type_name(type_name: str) -> str:
    """.NET ``Type.Name`` of an assembly-qualified ``$type``.

    ``Ns.ItemScoreCreated, Asm`` -> ``ItemScoreCreated``; nested ``Ns.Outer+Inner, Asm`` ->
    ``Inner``; generic ``Ns.Wrapper`1[[Ns.X, Asm]], Asm`` -> ``Wrapper`1``.
    """
    name = type_name
    bracket = name.find("[")
    if bracket != -1:
        name = name[:bracket]
    comma = name.find(",")
    if comma != -1:
        name = name[:comma]
    name = name.strip()
    name = name[name.rfind(".") + 1 :]
    return name[name.rfind("+") + 1 :]


TIMESTAMP_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?(Z|[+-]\d{2}:\d{2})$"
)


def parse_timestamp(text: str) -> datetime:
    """Parse a .NET DateTimeOffset round-trip string (up to 7 fractional digits, explicit offset).

    The seventh digit (100 ns) is truncated, as the .NET PostgreSQL driver does when it turns
    ticks into microseconds, so esctl stores what the library's SQL provider would have stored.
    Raises ValueError on anything else.
    """
    if not TIMESTAMP_RE.match(text):
        raise ValueError(f"not a DateTimeOffset with an explicit offset: {text!r}")
    # The pattern admits only what fromisoformat reads exactly (it truncates a 7th digit).
    return datetime.fromisoformat(text)


def _checked_field(data: dict[str, Any], name: str, kind: type, problems: list[Problem]) -> Any:
    value = data.get(name)
    if value is None:
        problems.append(Problem("missing_field", f"no {name!r} in the payload"))
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        problems.append(
            Problem("wrong_type", f"{name!r} is {type(value).__name__}, not {kind.__name__}")
        )
        return None
    return value


def _unparsed(text: str, why: str) -> ParsedEvent:
    """A payload that is not a JSON object: its text, no fields, an invalid_json problem."""
    return ParsedEvent(text, *(None,) * 8, [Problem("invalid_json", why)])


def parse_event(text: str) -> ParsedEvent:
    """Extract the library's envelope fields from payload JSON. Never raises."""
    problems: list[Problem] = []
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _unparsed(text, str(exc))
    if not isinstance(data, dict):
        return _unparsed(text, f"payload is a JSON {type(data).__name__}, not an object")

    type_name = data.get("$type")
    aggregate_id = data.get("Id")
    version = data.get("Version")
    aggregate_type = data.get("AggregateType")
    timestamp_text = data.get("TimeStamp")
    # orjson returns exact builtin types, so one identity test per field is the fast path.
    if not (
        type(type_name) is str
        and type(aggregate_id) is str
        and type(version) is int
        and type(aggregate_type) is str
        and type(timestamp_text) is str
    ):
        type_name = _checked_field(data, "$type", str, problems)
        aggregate_id = _checked_field(data, "Id", str, problems)
        version = _checked_field(data, "Version", int, problems)
        aggregate_type = _checked_field(data, "AggregateType", str, problems)
        timestamp_text = _checked_field(data, "TimeStamp", str, problems)
    timestamp = None
    if timestamp_text is not None:
        try:
            timestamp = parse_timestamp(timestamp_text)
        except ValueError as exc:
            problems.append(Problem("bad_timestamp", str(exc)))
    event_type = event_type_from_type_name(type_name) if type_name is not None else None
    if version is not None and version < 1:
        problems.append(Problem("bad_version", f"Version is {version}; versions start at 1"))
    return ParsedEvent(
        text,
        aggregate_id,
        version,
        aggregate_type,
        event_type,
        type_name,
        timestamp,
        timestamp_text,
        data,
        problems,
    )


def has_nul_escape(text: str) -> bool:
    """Whether JSON text holds a ``\\u0000`` escape (a NUL in a string: PostgreSQL's jsonb
    refuses it). An escaped backslash followed by ``u0000`` is not one."""
    i = text.find("\\u0000")
    while i != -1:
        start = i
        while start > 0 and text[start - 1] == "\\":
            start -= 1
        if (i - start) % 2 == 0:  # an even run of backslashes before: this one starts an escape
            return True
        i = text.find("\\u0000", i + 1)
    return False


def decode_event(value: bytes | str) -> tuple[Decoded, ParsedEvent]:
    """Stored value -> (decoded text, parsed event). The parsed event carries the decoding
    problem too, if any."""
    decoded = decode_value(value)
    event = parse_event(decoded.text)
    if decoded.problem is not None:
        event.problems.insert(0, decoded.problem)
    return decoded, event


# --- jsonb text -> the library's key order -------------------------------------------------

NEWTONSOFT_METADATA_KEYS = ("$id", "$ref", "$type", "$value", "$values")
"""The property names Newtonsoft.Json reads as metadata, in the order its writer puts them
(``$id``, ``$type``, then ``$value`` or ``$values``; ``$ref`` stands alone). PostgreSQL's
jsonb sorts these among themselves in the same order (shorter names first)."""

_QUOTED_METADATA_KEYS = frozenset(f'"{key}"'.encode() for key in NEWTONSOFT_METADATA_KEYS)
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_SCALAR = rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null"
# a metadata key, and its value when that is a string or a scalar (group 1)
_METADATA_MEMBER_RE = re.compile(
    rb'"\$(?:id|ref|type|values?)"\s*:\s*(' + _STRING + rb"|" + _SCALAR + rb")?", re.S
)
_SIMPLE_VALUE_RE = re.compile(_STRING + rb"|" + _SCALAR, re.S)
_STRING_RE = re.compile(_STRING, re.S)
_SIMPLE_MEMBERS_RE = re.compile(
    rb"(?:\s*" + _STRING + rb"\s*:\s*(?:" + _STRING + rb"|" + _SCALAR + rb")\s*,)*\s*", re.S
)
# The quick test of _simple_members: with no backslash every quote delimits a string, so an
# even number of quotes and no bracket at all means no "{" inside a string, no nested value.
_PLAIN_MEMBERS_RE = re.compile(rb'[^"\\\[\]{}]*(?:"[^"\\\[\]{}]*"[^"\\\[\]{}]*)*')
_KEY_RE = re.compile(rb"(" + _STRING + rb")\s*:\s*", re.S)
_WS_RE = re.compile(rb"\s*")
_WHITESPACE = b" \t\r\n"
_OPEN_BRACE, _OPEN_BRACKET, _CLOSE_BRACE, _CLOSE_BRACKET = b"{[}]"
_COMMA, _QUOTE, _BACKSLASH = b',"\\'


def newtonsoft_metadata_first(payload: bytes) -> bytes:
    """JSON (UTF-8) with Newtonsoft's metadata properties (:data:`NEWTONSOFT_METADATA_KEYS`)
    moved to the front of every object that has them, nested objects and ``$values`` lists
    included; the metadata keep their order among themselves, the other members theirs, and
    no value's text changes.

    For event JSON read back from PostgreSQL: jsonb orders keys by length, so ``$type`` comes
    after ``Id`` and other short keys, and Newtonsoft.Json reads ``$type``, ``$id``,
    ``$values`` … as metadata only while they come first in an object (unless the reader sets
    ``MetadataPropertyHandling.ReadAhead``, as the library's SQL provider does and its queue
    subscribers do not). Applied to jsonb's text of a payload the library wrote, this gives
    back its key order in every object whose metadata came first.

    JSON already in that order comes back unchanged. Meant for valid JSON, as jsonb's output
    always is: anything else does not raise, and comes back unchanged or with members that
    look like an object's moved. What is nested deeper than the interpreter's recursion limit
    (where the fast path does not apply) comes back unchanged. Keys spelled with escapes
    (``"\u0024type"``) are not recognised: neither Newtonsoft's writer nor PostgreSQL writes
    them. UTF-8 is scanned as bytes (no byte of a multi-byte character is an ASCII one).

    jsonb sorts the other members too; that cannot be undone, and matters to Newtonsoft only
    for ``$ref``: with PreserveReferencesHandling (which the library does not use) a ``$ref``
    can come to precede the ``$id`` it names, and then reads as null."""
    dollar = payload.find(b"$")
    if dollar == -1:
        return payload
    type_end = _event_type_end(payload, dollar)
    if type_end and payload.find(b"$", type_end) == -1:  # the object's own $type, nothing else
        start = dollar - 1
        return b"{" + payload[start:type_end] + b", " + payload[1 : start - 2] + payload[type_end:]
    try:
        edits = _metadata_edits(payload, dollar, type_end)
    except (ValueError, IndexError):  # not JSON: the full walk says so
        edits = None
    if edits is None:
        return _rewritten(payload)
    if not edits:
        return payload
    if len(edits) == 1:
        start, end, replacement = edits[0]
        return payload[:start] + replacement + payload[end:]
    parts: list[bytes] = []
    done = 0
    for start, end, replacement in edits:
        parts.append(payload[done:start])
        parts.append(replacement)
        done = end
    parts.append(payload[done:])
    return b"".join(parts)


def _event_type_end(payload: bytes, dollar: int) -> int:
    """The shape of nearly every event jsonb gives back, ``{"Id": "…", "$type": "…", …}``: the
    object's own ``$type`` after a few members with string or scalar values. Where that
    member ends when ``payload`` starts so (``dollar``: its first "$"), else 0."""
    start = dollar - 1
    if start < 3 or payload[0] != _OPEN_BRACE or not payload.startswith(b'"$type": "', start):
        return 0
    end = payload.find(b'"', start + 10) + 1
    if (
        end
        and payload[end - 2] != _BACKSLASH
        and payload[start - 2 : start] == b", "
        and _PLAIN_MEMBERS_RE.fullmatch(payload, 1, start - 2)
    ):
        return end
    return 0


# One loop, not split: a helper per metadata key measured 3-8% slower on jsonb event payloads.
def _metadata_edits(  # noqa: C901, PLR0912
    payload: bytes, dollar: int, type_end: int = 0
) -> list[tuple[int, int, bytes]] | None:
    """The fast path of :func:`newtonsoft_metadata_first`: when every metadata key that is out
    of place has only string and scalar members before it in its object (the usual case,
    ``{"Id": "…", "$type": …}``), the edits that put those keys first, as disjoint
    ``(start, end, replacement)`` spans in text order (``dollar``: where the first "$" is;
    ``type_end``: what :func:`_event_type_end` found). None when the JSON needs the full walk
    (:func:`_rewritten`).

    A ``"$type"`` whose opening quote is not escaped opens a string (a closing quote cannot be
    followed by ``$``), and a string followed by a colon is a key. Keys come in text order,
    and in this path one object's keys are consecutive: an out-of-place key has no nested
    value before it in its object, and an in-place key follows the object's "{" or the
    in-place key before it."""
    edits: list[tuple[int, int, bytes]] = []
    opening = -1  # the "{" of the current object
    lead_end = -1  # end of the current object's leading metadata (-1: none, -2: not simple)
    chain_end = -1  # value end of the previous key when it was in place, else -1
    moves: list[tuple[int, int]] = []  # out-of-place keys of the current object: (start, end)
    comma = -1  # the "," before the current object's first out-of-place key
    find = payload.find
    match_at = _METADATA_MEMBER_RE.match
    if type_end:  # the top object's $type is out of place: see _event_type_end
        opening, moves, comma, dollar = 0, [(dollar - 1, type_end)], dollar - 3, type_end
    while True:
        # one byte: find() runs at memchr speed (a two-byte needle or a regex several times slower)
        found = find(b"$", dollar)
        if found == -1:
            break
        start = found - 1  # the quote opening "$…"
        if start < 0 or payload[start] != _QUOTE:
            dollar = found + 1
            continue
        if payload.startswith(b'"$type": "', start):  # the usual key, as jsonb spaces it
            end = payload.index(b'"', start + 10) + 1
            if payload[end - 2] == _BACKSLASH:
                end = _string_end(payload, start + 9)
            dollar = end
        else:
            match = match_at(payload, start)
            if match is None:
                dollar = found + 1
                continue
            dollar = match.end()
            end = match.end(1)  # -1: the value is an object or a list
        if payload[start - 1] == _BACKSLASH and _escaped(payload, start):
            continue
        before = start - 1
        while before > 0 and payload[before] in _WHITESPACE:
            before -= 1
        char = payload[before]
        if char == _OPEN_BRACE or (
            char == _COMMA
            and chain_end != -1
            and (chain_end == before or not payload[chain_end:before].strip())
        ):
            if char == _OPEN_BRACE:
                if moves:
                    edits.append(_moved(payload, opening, lead_end, moves, comma))
                    moves = []
                opening = before
            chain_end = end
            lead_end = end if end != -1 else -2
            continue
        chain_end = -1
        nearest = payload.rfind(b"{", 0, start)
        if end == -1 or nearest == -1 or not _simple_members(payload, nearest + 1, start):
            return None
        if nearest != opening:
            if moves:
                edits.append(_moved(payload, opening, lead_end, moves, comma))
                moves = []
            opening, lead_end = nearest, -1
        elif lead_end == -2:
            return None
        if not moves:
            comma = before
        moves.append((start, end))
    if moves:
        edits.append(_moved(payload, opening, lead_end, moves, comma))
    return edits


def _simple_members(payload: bytes, start: int, end: int) -> bool:
    """Whether ``payload[start:end]`` is members with string or scalar values, each followed
    by a comma (what lies between an object's "{" and a key out of place)."""
    return (
        _PLAIN_MEMBERS_RE.fullmatch(payload, start, end) is not None
        or _SIMPLE_MEMBERS_RE.fullmatch(payload, start, end) is not None
    )


def _string_end(payload: bytes, quote: int) -> int:
    """Where the JSON string opening at ``quote`` ends (ValueError: it does not)."""
    match = _STRING_RE.match(payload, quote)
    if match is None:
        raise ValueError(f"not JSON at {quote}")
    return match.end()


def _moved(
    payload: bytes, opening: int, lead_end: int, moves: list[tuple[int, int]], comma: int
) -> tuple[int, int, bytes]:
    """The edit that puts the ``moves`` members of the object at ``opening`` right after its
    leading metadata (ending at ``lead_end``, -1: none), joined by the separator before the
    first of them (at ``comma``)."""
    if lead_end == -1:
        insert = opening + 1
        if payload[insert] in _WHITESPACE:
            insert = _skip_ws(payload, insert)
    else:
        insert = _skip_ws(payload, payload.index(b",", lead_end) + 1)
    start, end = moves[0]
    separator = payload[comma:start]
    if len(moves) == 1:  # the usual case: one key ($type) after some others
        return insert, end, payload[start:end] + separator + payload[insert:comma].rstrip()
    members = [payload[start:end] for start, end in moves]
    done = insert
    for start, end in moves:  # what lies between: the other members, with separators
        chunk = payload[done:start].strip().strip(b",").strip()
        if chunk:
            members.append(chunk)
        done = end
    return insert, moves[-1][1], separator.join(members)


def _escaped(payload: bytes, pos: int) -> bool:
    """Whether the byte at ``pos`` follows an odd run of backslashes."""
    run = 0
    while pos > run and payload[pos - run - 1] == _BACKSLASH:
        run += 1
    return run % 2 == 1


def _skip_ws(payload: bytes, pos: int) -> int:
    match = _WS_RE.match(payload, pos)
    assert match is not None
    return match.end()


def _rewritten(payload: bytes) -> bytes:
    """:func:`newtonsoft_metadata_first` by a walk of the whole JSON (the slow path)."""
    start = _skip_ws(payload, 0)
    try:
        rewritten, end = _rewrite_value(payload, start)
    except (ValueError, IndexError, RecursionError):
        return payload
    if payload[end:].strip():
        return payload
    return payload[:start] + rewritten + payload[end:]


def _rewrite_value(payload: bytes, pos: int) -> tuple[bytes, int]:
    """The JSON value at ``pos`` with metadata first in every object, and where it ends.
    Whitespace and the text of every string and scalar are kept. Raises ValueError or
    IndexError on what is not JSON."""
    char = payload[pos]
    if char == _OPEN_BRACE:
        return _rewrite_object(payload, pos)
    if char == _OPEN_BRACKET:
        return _rewrite_array(payload, pos)
    match = _SIMPLE_VALUE_RE.match(payload, pos)
    if match is None:
        raise ValueError(f"not JSON at {pos}")
    return match.group(), match.end()


def _rewrite_array(payload: bytes, pos: int) -> tuple[bytes, int]:
    p = _skip_ws(payload, pos + 1)
    if payload[p] == _CLOSE_BRACKET:
        return payload[pos : p + 1], p + 1
    parts = [payload[pos:p]]
    while True:
        value, end = _rewrite_value(payload, p)
        parts.append(value)
        q = _skip_ws(payload, end)
        if payload[q] == _CLOSE_BRACKET:
            parts.append(payload[end : q + 1])
            return b"".join(parts), q + 1
        if payload[q] != _COMMA:
            raise ValueError(f"not JSON at {q}")
        p = _skip_ws(payload, q + 1)
        parts.append(payload[end:p])


def _rewrite_object(payload: bytes, pos: int) -> tuple[bytes, int]:
    p = _skip_ws(payload, pos + 1)
    if payload[p] == _CLOSE_BRACE:
        return payload[pos : p + 1], p + 1
    opening = payload[pos:p]
    metadata: list[bytes] = []
    others: list[bytes] = []
    separators: list[bytes] = []
    while True:
        key = _KEY_RE.match(payload, p)
        if key is None:
            raise ValueError(f"not JSON at {p}")
        value, end = _rewrite_value(payload, key.end())
        member = payload[p : key.end()] + value
        if key.group(1) in _QUOTED_METADATA_KEYS:
            metadata.append(member)
        else:
            others.append(member)
        q = _skip_ws(payload, end)
        if payload[q] == _CLOSE_BRACE:
            closing = payload[end : q + 1]
            break
        if payload[q] != _COMMA:
            raise ValueError(f"not JSON at {q}")
        p = _skip_ws(payload, q + 1)
        separators.append(payload[end:p])
    members = metadata + others  # when nothing was out of place: the text's own order
    parts = [opening, members[0]]
    for separator, member in zip(separators, members[1:], strict=True):
        parts.append(separator)
        parts.append(member)
    parts.append(closing)
    return b"".join(parts), q + 1

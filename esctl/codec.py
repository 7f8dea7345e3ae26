"""Payload codec: stored value (bytes) -> text -> parsed event, and back. Pure, no I/O.

Follows the library's reading rule: a value starting with ``H4sI`` (base64 of the gzip magic) is
base64-decoded and gunzipped; if either step fails the value is used as it is. esctl keeps that
behaviour but flags such values as ``invalid_compressed``. zstd frames (esctl's own backup
files) are read too. Nothing here raises on bad input: problems are returned as data.
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
import zstandard

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


GUNZIP_ERRORS = (binascii.Error, ValueError, zlib.error)


def gunzip_base64(raw: bytes) -> bytes:
    """base64 then gunzip, as the library reads an ``H4sI`` value; raises GUNZIP_ERRORS."""
    return zlib.decompress(base64.b64decode(raw, validate=True), wbits=31)


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


def gzip_base64(text: str) -> bytes:
    """gzip + base64, as the library's writer does (gzip header with mtime 0)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    gz = compressor.compress(text.encode("utf-8")) + compressor.flush()
    return base64.b64encode(gz)


def encode_value(text: str, *, threshold: int | None = DEFAULT_COMPRESSION_THRESHOLD) -> bytes:
    """The stored value the library would write for ``text``: gzip+base64 when the UTF-8 size
    exceeds ``threshold`` (``None`` disables compression), the plain UTF-8 bytes otherwise."""
    data = text.encode("utf-8")
    if threshold is not None and len(data) > threshold:
        return gzip_base64(text)
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


def parse_event(text: str) -> ParsedEvent:
    """Extract the library's envelope fields from payload JSON. Never raises."""
    problems: list[Problem] = []
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return ParsedEvent(
            text,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            [Problem("invalid_json", str(exc))],
        )
    if not isinstance(data, dict):
        return ParsedEvent(
            text,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            [Problem("invalid_json", f"payload is a JSON {type(data).__name__}, not an object")],
        )

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

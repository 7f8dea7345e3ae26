"""esctl.codec: stored values -> payload text -> envelope fields, and back. Pure: no servers."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esctl import codec

PAYLOAD = (
    '{"$type":"Learning.Scoring.Events.ItemScoreCreated, Learning.Scoring",'
    '"Id":"0f8fad5b-d9cb-469f-a165-70867728950e","TimeStamp":"2018-07-16T17:04:12.1234567+00:00",'
    '"Version":3,"AggregateType":"ItemScore","Score":9.5,"Comment":"Zoë 日本語 🎉 \\"q\\"",'
    '"Tags":{"$type":"System.Collections.Generic.List`1[[System.String, mscorlib]], mscorlib",'
    '"$values":["a","b"]}}'
)


def dotnet_gzip_base64(text: str, *, os_byte: int, xfl: int = 0) -> bytes:
    """gzip + base64 the way .NET's GZipStream + Convert.ToBase64String write it: a 10-byte
    header with mtime 0 and .NET's OS byte, raw deflate, CRC-32 and size trailer."""
    data = text.encode("utf-8")
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    header = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + bytes([xfl, os_byte])
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return base64.b64encode(header + body + trailer)


# --- decode_value --------------------------------------------------------------------------


def test_plain_value_is_its_utf8_text() -> None:
    decoded = codec.decode_value(PAYLOAD.encode())
    assert decoded == codec.Decoded(PAYLOAD, None, len(PAYLOAD.encode()), None)


def test_str_value_is_accepted_too() -> None:
    assert codec.decode_value(PAYLOAD).text == PAYLOAD


@pytest.mark.parametrize("os_byte", [0x04, 0x0A, 0x00, 0x03, 0xFF])
@pytest.mark.parametrize("xfl", [0, 2, 4])
def test_dotnet_gzip_base64_decodes_to_the_exact_text(os_byte: int, xfl: int) -> None:
    stored = dotnet_gzip_base64(PAYLOAD, os_byte=os_byte, xfl=xfl)
    assert stored.startswith(b"H4sI")
    decoded = codec.decode_value(stored)
    assert decoded.text == PAYLOAD
    assert decoded.compressed == "gzip"
    assert decoded.stored_size == len(stored)
    assert decoded.problem is None


def test_gzip_base64_writer_matches_the_dotnet_header() -> None:
    """The whole 10-byte header: .NET on Linux by default, the chosen OS byte otherwise (whole
    values are compared with .NET's GZipStream in test_compress_gzip_header.py)."""
    gz = base64.b64decode(codec.gzip_base64(PAYLOAD))
    assert gz[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # mtime 0, OS Unix
    windows = base64.b64decode(codec.gzip_base64(PAYLOAD, codec.GzipHeader(0, 10)))
    assert windows[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x0a"
    assert windows[10:] == gz[10:]
    assert codec.decode_value(codec.gzip_base64(PAYLOAD)).text == PAYLOAD


def test_encode_value_compresses_only_above_the_threshold() -> None:
    small = '{"a":"' + "x" * 10 + '"}'
    assert codec.encode_value(small) == small.encode()
    big = '{"a":"' + "é" * 600 + '"}'  # 600 characters, 1200+ UTF-8 bytes
    assert len(big) < codec.DEFAULT_COMPRESSION_THRESHOLD < len(big.encode())
    assert codec.encode_value(big).startswith(b"H4sI")
    exact = "x" * codec.DEFAULT_COMPRESSION_THRESHOLD
    assert codec.encode_value(exact) == exact.encode()  # "exceeds": equal stays plain
    assert codec.encode_value(exact + "x").startswith(b"H4sI")
    assert codec.encode_value(big, threshold=None) == big.encode()


def test_zstd_frame_decodes() -> None:
    frame = codec.zstd_compress(PAYLOAD.encode())
    assert frame.startswith(codec.ZSTD_MAGIC)
    decoded = codec.decode_value(frame)
    assert (decoded.text, decoded.compressed, decoded.problem) == (PAYLOAD, "zstd", None)


def test_zstd_frame_without_content_size_decodes() -> None:
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=False).compress(PAYLOAD.encode())
    assert codec.decode_value(frame).text == PAYLOAD


def test_truncated_zstd_frame_is_a_problem() -> None:
    frame = codec.zstd_compress(PAYLOAD.encode())
    decoded = codec.decode_value(frame[:-8])
    assert decoded.problem is not None
    assert decoded.problem.kind == "invalid_compressed"


@pytest.mark.parametrize(
    "stored",
    [
        b"H4sI",
        b"H4sIthis is not base64!",
        b"H4sIAAAA",  # base64, but a truncated gzip header
        base64.b64encode(b"\x1f\x8b\x08\x00" + b"not deflate at all"),
        dotnet_gzip_base64(PAYLOAD, os_byte=4)[:-8],  # cut short: no trailer
        b"H4sI\xff\xfe",
    ],
)
def test_invalid_h4si_value_is_flagged_and_kept_as_stored(stored: bytes) -> None:
    decoded = codec.decode_value(stored)
    assert decoded.problem is not None
    assert decoded.problem.kind == "invalid_compressed"
    assert decoded.compressed is None
    assert decoded.text == stored.decode("utf-8", "replace")  # the library uses it as it is
    assert decoded.stored_size == len(stored)


def test_invalid_zstd_frame_is_flagged() -> None:
    stored = codec.ZSTD_MAGIC + b"\x00garbage"
    decoded = codec.decode_value(stored)
    assert decoded.problem is not None
    assert decoded.problem.kind == "invalid_compressed"


@pytest.mark.parametrize(
    "stored",
    [
        b"\xff\xfe{}",
        b'{"a":"\xc3"}',
        b"\xed\xa0\x80",
        "lone \ud800".encode("utf-8", "surrogatepass"),
    ],
)
def test_invalid_utf8_is_a_problem_not_an_error(stored: bytes) -> None:
    decoded = codec.decode_value(stored)
    assert decoded.problem is not None
    assert decoded.problem.kind == "invalid_utf8"
    assert "\ufffd" in decoded.text


def test_invalid_utf8_inside_gzip_is_a_problem() -> None:
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)
    stored = base64.b64encode(gz.compress(b"\xff\xfe") + gz.flush())
    decoded = codec.decode_value(stored)
    assert decoded.compressed == "gzip"
    assert decoded.problem is not None
    assert decoded.problem.kind == "invalid_utf8"


def test_decode_event_puts_the_decoding_problem_first() -> None:
    decoded, event = codec.decode_event(b"H4sI" + PAYLOAD.encode())
    assert decoded.problem is not None
    assert event.problems[0].kind == "invalid_compressed"
    assert not event.ok


# --- event type names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_name", "expected"),
    [
        ("Learning.Scoring.Events.ItemScoreCreated, Learning.Scoring", "ItemScoreCreated"),
        ("ItemScoreCreated, Learning.Scoring", "ItemScoreCreated"),
        ("Ns.ItemScoreCreated", "ItemScoreCreated"),
        ("Ns.Outer+Inner, Asm", "Inner"),
        ("Ns.Outer+Middle+Inner, Asm", "Inner"),
        ("Ns.Wrapper`1[[Ns.Payload, Asm]], Asm", "Wrapper`1"),
        (
            "Ns.Outer+Wrapper`2[[System.String, mscorlib],[Ns.X+Y, Asm, Version=1.0.0.0]], Asm",
            "Wrapper`2",
        ),
        (
            "System.Collections.Generic.List`1[[System.String, mscorlib]], mscorlib",
            "List`1",
        ),
        ("  Ns.Spaced , Asm", "Spaced"),
    ],
)
def test_event_type_from_type_name(type_name: str, expected: str) -> None:
    assert codec.event_type_from_type_name(type_name) == expected


# --- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "2018-07-16T17:04:12.1234567+00:00",
            datetime(2018, 7, 16, 17, 4, 12, 123456, tzinfo=UTC),
        ),
        # the seventh digit is truncated, never rounded (no carry into the next second)
        (
            "2018-07-16T17:04:12.9999999+00:00",
            datetime(2018, 7, 16, 17, 4, 12, 999999, tzinfo=UTC),
        ),
        ("2018-07-16T17:04:12.5+00:00", datetime(2018, 7, 16, 17, 4, 12, 500000, tzinfo=UTC)),
        ("2018-07-16T17:04:12+00:00", datetime(2018, 7, 16, 17, 4, 12, tzinfo=UTC)),
        ("2018-07-16T17:04:12Z", datetime(2018, 7, 16, 17, 4, 12, tzinfo=UTC)),
        (
            "2018-07-16T17:04:12.0000001+05:30",
            datetime(2018, 7, 16, 17, 4, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
        (
            "2018-12-31T23:59:59.1234567-08:00",
            datetime(2018, 12, 31, 23, 59, 59, 123456, tzinfo=timezone(timedelta(hours=-8))),
        ),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    parsed = codec.parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    "text",
    [
        "2018-07-16T17:04:12.1234567",  # no offset
        "2018-07-16 17:04:12+00:00",
        "2018-07-16T17:04:12.12345678+00:00",  # 8 digits
        "2018-13-16T17:04:12+00:00",
        "2018-07-16T17:04:12+24:00",
        "16/07/2018 17:04:12",
        "",
    ],
)
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        codec.parse_timestamp(text)


# --- parse_event ---------------------------------------------------------------------------


def test_parse_event_extracts_the_envelope() -> None:
    event = codec.parse_event(PAYLOAD)
    assert event.ok, event.problems
    assert event.text == PAYLOAD
    assert event.event_type == "ItemScoreCreated"
    assert event.type_name == "Learning.Scoring.Events.ItemScoreCreated, Learning.Scoring"
    assert event.aggregate_id == "0f8fad5b-d9cb-469f-a165-70867728950e"
    assert event.version == 3
    assert event.aggregate_type == "ItemScore"
    assert event.timestamp_text == "2018-07-16T17:04:12.1234567+00:00"
    assert event.timestamp == datetime(2018, 7, 16, 17, 4, 12, 123456, tzinfo=UTC)
    assert event.data is not None
    assert next(iter(event.data)) == "$type"
    assert event.data["Comment"] == 'Zoë 日本語 🎉 "q"'


def envelope(**changes: Any) -> str:
    fields: dict[str, Any] = {
        "$type": "Ns.Created, Asm",
        "Id": "agg-1",
        "TimeStamp": "2018-07-16T17:04:12.1234567+00:00",
        "Version": 1,
        "AggregateType": "Thing",
    }
    for name, value in changes.items():
        name = {"type_": "$type"}.get(name, name)
        if value is _MISSING:
            fields.pop(name)
        else:
            fields[name] = value
    return json.dumps(fields)


_MISSING = object()


@pytest.mark.parametrize(
    ("changes", "kind", "field"),
    [
        ({"Id": _MISSING}, "missing_field", "aggregate_id"),
        ({"Id": None}, "missing_field", "aggregate_id"),
        ({"Id": 42}, "wrong_type", "aggregate_id"),
        ({"Version": _MISSING}, "missing_field", "version"),
        ({"Version": "3"}, "wrong_type", "version"),
        ({"Version": True}, "wrong_type", "version"),
        ({"Version": 3.0}, "wrong_type", "version"),
        ({"AggregateType": _MISSING}, "missing_field", "aggregate_type"),
        ({"AggregateType": ["x"]}, "wrong_type", "aggregate_type"),
        ({"type_": _MISSING}, "missing_field", "event_type"),
        ({"type_": {"x": 1}}, "wrong_type", "event_type"),
        ({"TimeStamp": _MISSING}, "missing_field", "timestamp"),
        ({"TimeStamp": 1531760652}, "wrong_type", "timestamp"),
        ({"TimeStamp": "yesterday"}, "bad_timestamp", "timestamp"),
    ],
)
def test_missing_or_wrong_typed_fields_are_problems(
    changes: dict[str, Any], kind: str, field: str
) -> None:
    event = codec.parse_event(envelope(**changes))
    assert [p.kind for p in event.problems] == [kind]
    assert getattr(event, field) is None
    assert event.data is not None  # the rest is still there


def test_version_below_one_is_a_problem() -> None:
    event = codec.parse_event(envelope(Version=0))
    assert [p.kind for p in event.problems] == ["bad_version"]


@pytest.mark.parametrize("text", ["", "not json", '{"a":', "[1,2]", '"text"', "null", "3"])
def test_non_objects_are_invalid_json(text: str) -> None:
    event = codec.parse_event(text)
    assert [p.kind for p in event.problems] == ["invalid_json"]
    assert event.data is None
    assert event.text == text


# --- properties ----------------------------------------------------------------------------

utf8_text = st.text(alphabet=st.characters(codec="utf-8"))
thresholds = st.one_of(st.none(), st.integers(min_value=0, max_value=2000))
suspicious_bytes = st.one_of(
    st.binary(),
    st.binary().map(lambda b: b"H4sI" + b),
    st.binary().map(lambda b: base64.b64encode(b"\x1f\x8b\x08\x00" + b)),
    st.binary().map(lambda b: codec.ZSTD_MAGIC + b),
    utf8_text.map(lambda t: codec.zstd_compress(t.encode())[: len(t) // 2 + 4]),
)


@settings(max_examples=300)
@given(suspicious_bytes)
def test_any_bytes_never_raise(value: bytes) -> None:
    decoded = codec.decode_value(value)
    assert decoded.stored_size == len(value)
    _, event = codec.decode_event(value)
    assert isinstance(event.problems, list)


@given(st.text())
def test_any_str_never_raises(value: str) -> None:
    codec.decode_event(value)


@given(utf8_text, thresholds)
def test_text_round_trips_through_encode_value(text: str, threshold: int | None) -> None:
    stored = codec.encode_value(text, threshold=threshold)
    decoded = codec.decode_value(stored)
    assert decoded.text == text
    compressed = threshold is not None and len(text.encode()) > threshold
    # (plain text that happens to start with H4sI is tried as gzip, as the library does)
    if compressed or not text.startswith("H4sI"):
        assert decoded.compressed == ("gzip" if compressed else None)


@given(utf8_text)
def test_text_round_trips_through_zstd(text: str) -> None:
    assert codec.decode_value(codec.zstd_compress(text.encode())).text == text


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    utf8_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(utf8_text, children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(utf8_text, json_values, max_size=6)


@given(json_objects, thresholds, st.booleans())
def test_json_objects_round_trip_exactly(
    document: dict[str, Any], threshold: int | None, ensure_ascii: bool
) -> None:
    text = json.dumps(document, ensure_ascii=ensure_ascii)
    decoded, event = codec.decode_event(codec.encode_value(text, threshold=threshold))
    assert decoded.text == text
    assert event.text == text
    assert event.data == document
    assert not [p for p in event.problems if p.kind in ("invalid_json", "invalid_utf8")]


# --- Newtonsoft's metadata first again (jsonb's key order undone) ----------------------------

Tree = Any
"""A JSON value as Python data; dicts keep their key order."""

METADATA = codec.NEWTONSOFT_METADATA_KEYS


def jsonb_string(text: str) -> str:
    """A string as PostgreSQL's jsonb prints it (escape_json: the short escapes, \\u00xx for
    other control characters, everything else as it is)."""
    out = ['"']
    for char in text:
        if char in _JSONB_ESCAPES:
            out.append(_JSONB_ESCAPES[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


_JSONB_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"',
                  "\\": "\\\\"}  # fmt: skip


def jsonb_text(tree: Tree, *, metadata_first: bool = False) -> str:
    """``tree`` as ``jsonb::text`` prints it: keys by UTF-8 length, then bytewise; ``", "`` and
    ``": "`` between. With ``metadata_first``, each object's metadata keys come first, in
    their order in ``tree`` (what :func:`codec.newtonsoft_metadata_first` should give)."""
    if isinstance(tree, dict):
        keys = sorted(tree, key=lambda k: (len(k.encode()), k.encode()))
        if metadata_first:
            keys = [k for k in tree if k in METADATA] + [k for k in keys if k not in METADATA]
        members = (
            f"{jsonb_string(k)}: {jsonb_text(tree[k], metadata_first=metadata_first)}" for k in keys
        )
        return "{" + ", ".join(members) + "}"
    if isinstance(tree, list):
        return "[" + ", ".join(jsonb_text(v, metadata_first=metadata_first) for v in tree) + "]"
    if isinstance(tree, str):
        return jsonb_string(tree)
    return json.dumps(tree)


def jsonb_ordered(tree: Tree, *, metadata_first: bool = False) -> Tree:
    """``tree`` with every object's keys in jsonb's order (metadata first, if asked)."""
    if isinstance(tree, dict):
        keys = sorted(tree, key=lambda k: (len(k.encode()), k.encode()))
        if metadata_first:
            keys = [k for k in tree if k in METADATA] + [k for k in keys if k not in METADATA]
        return {k: jsonb_ordered(tree[k], metadata_first=metadata_first) for k in keys}
    if isinstance(tree, list):
        return [jsonb_ordered(v, metadata_first=metadata_first) for v in tree]
    return tree


def tree_json(tree: Tree) -> str:
    """``tree`` as Newtonsoft writes it: compact, keys in their order."""
    return orjson.dumps(tree).decode("utf-8")


# Strings jsonb accepts (no NUL) that look like pieces of JSON, and key names near the
# metadata names, so the scanner meets quotes, brackets and "$type" where they are not keys.
_jsonb_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"))
_tricky = st.sampled_from(
    ['"$type": "x"', '{"$type": 1}', "\\", '\\"', '"', "$type", "\\u0024type", "{", "[", "}",
     "]", ",", ":", '", "$type": "', "$", "é", "日本", "🎉", "\n", "\t\x01"]
)  # fmt: skip
_strings = st.one_of(_jsonb_text, _tricky, st.lists(_tricky | _jsonb_text, max_size=4).map("".join))
_names = ["Id", "a", "Zz", "$", "$t", "$types", "$Type", "$valuesX", "Sku", "TimeStamp", "ÿ"]
_keys = st.one_of(_strings, st.sampled_from(_names)).filter(lambda k: k not in METADATA)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), _strings
)


def _objects(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[dict[str, Tree]]:
    """Objects whose metadata (any of them) come first, in Newtonsoft's order."""
    metadata = st.fixed_dictionaries(
        {},
        optional={
            "$id": _strings,
            "$ref": _strings,
            "$type": _strings,
            "$value": _scalars,
            "$values": st.lists(children, max_size=3),
        },
    ).map(lambda found: {k: found[k] for k in METADATA if k in found})
    others = st.dictionaries(_keys, children, max_size=4)
    return st.tuples(metadata, others).map(lambda pair: {**pair[0], **pair[1]})


_trees = st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | _objects(c), max_leaves=12)
JSONB_METADATA_TREES = _objects(_trees)
"""JSON objects (nested to any depth) whose every object has its metadata first."""


@settings(max_examples=400)
@given(JSONB_METADATA_TREES)
def test_metadata_first_undoes_jsonb_key_order(tree: Tree) -> None:
    stored = jsonb_text(tree).encode()
    wanted = jsonb_text(tree, metadata_first=True).encode()
    assert codec.newtonsoft_metadata_first(stored) == wanted
    assert codec._rewritten(stored) == wanted  # the full walk agrees with the fast path


@given(JSONB_METADATA_TREES)
def test_metadata_already_first_is_left_alone(tree: Tree) -> None:
    for text in (tree_json(tree), jsonb_text(tree, metadata_first=True)):
        assert codec.newtonsoft_metadata_first(text.encode()) == text.encode()


@given(JSONB_METADATA_TREES, st.integers(min_value=0, max_value=3), st.booleans())
def test_any_whitespace_is_kept(tree: Tree, indent: int, ensure_ascii: bool) -> None:
    def dumps(value: Tree) -> bytes:
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii).encode()

    stored = dumps(jsonb_ordered(tree))
    assert codec.newtonsoft_metadata_first(stored) == dumps(
        jsonb_ordered(tree, metadata_first=True)
    )


@pytest.mark.parametrize(
    ("stored", "wanted"),
    [
        ('{"Id": "x", "$type": "T", "Version": 1}', '{"$type": "T", "Id": "x", "Version": 1}'),
        (  # a dictionary member: short keys before $type, and the list wrapper in place
            '{"Id": "x", "$type": "E", "Scores": {"a": 1.0, "$type": "D", "math": 9.50}, '
            '"Lines": {"$type": "L", "$values": [{"Sku": "s", "$type": "M", "Qty": 1}]}}',
            '{"$type": "E", "Id": "x", "Scores": {"$type": "D", "a": 1.0, "math": 9.50}, '
            '"Lines": {"$type": "L", "$values": [{"$type": "M", "Sku": "s", "Qty": 1}]}}',
        ),
        (  # references: $id and $type apart, $ref alone
            '{"Id": "1", "$id": "1", "Sku": "s", "$type": "T", "Next": {"$ref": "1"}}',
            '{"$id": "1", "$type": "T", "Id": "1", "Sku": "s", "Next": {"$ref": "1"}}',
        ),
        (  # a nested value before $type: the full walk
            '{"A": {"b": 1, "$type": "X"}, "$type": "T"}',
            '{"$type": "T", "A": {"$type": "X", "b": 1}}',
        ),
        (  # "$type" inside strings and keys is not a key; a "{" inside a string is no object
            '{"Id": "{\\"$type\\": 1", "a\\"$type": "$type", "$type": "T"}',
            '{"$type": "T", "Id": "{\\"$type\\": 1", "a\\"$type": "$type"}',
        ),
        ('[{"x": 1, "$type": "T"}, "$type"]', '[{"$type": "T", "x": 1}, "$type"]'),
        ('{"$types": 1, "$type": "T"}', '{"$type": "T", "$types": 1}'),
        ('{"Id": "x"}', '{"Id": "x"}'),
    ],
)
def test_metadata_first_examples(stored: str, wanted: str) -> None:
    assert codec.newtonsoft_metadata_first(stored.encode()) == wanted.encode()


def test_nesting_deeper_than_the_full_walk_comes_back_unchanged() -> None:
    stored = b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b', "$type": "T"}'
    assert codec.newtonsoft_metadata_first(stored) == stored


@pytest.mark.parametrize(
    "stored",
    [b'{"Id": "x", "$type": ', b'"$type": 1', b'{"a": 1, "$type": "T"', b'{"a": [, "$type": 1}',
     b'{"Id": "x", "$type": "T"} trailing', b'{"a": "\\', b'{"$type" "T"}', b'{"a": 1, "$id": [}',
     '{"Id": "\xe9", "$type": "T"'.encode("latin-1")],
)  # fmt: skip
def test_what_is_not_json_does_not_raise(stored: bytes) -> None:
    codec.newtonsoft_metadata_first(stored)


@given(
    st.binary() | _strings.map(str.encode) | st.lists(_tricky).map(lambda t: "".join(t).encode())
)
def test_metadata_first_never_raises(stored: bytes) -> None:
    codec.newtonsoft_metadata_first(stored)


@settings(max_examples=2000)
@given(st.text(alphabet="QUJDRTAaz09+/=\n -_", max_size=16))
def test_the_fast_base64_decoder_accepts_nothing_binascii_refuses(text: str) -> None:
    """gunzip_base64 decodes with pybase64 and leaves what it refuses to binascii's strict
    mode: so pybase64 must accept nothing binascii refuses, and decode the rest the same."""
    import binascii

    import pybase64

    data = text.encode()
    try:
        fast = pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return
    assert fast == binascii.a2b_base64(data, strict_mode=True)


def _inflate_with(module: Any, data: bytes) -> bytes | str:
    try:
        return bytes(module.decompress(data, wbits=31))
    except module.error as exc:
        return f"error {str(exc).split(':')[0]}"


@settings(max_examples=300)
@given(
    st.binary(max_size=3000),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(-40, 40),
    st.binary(max_size=30),
)
def test_gunzip_inflates_and_refuses_exactly_what_zlib_does(
    plain: bytes, flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    """gunzip_base64 inflates with zlib-ng (issue 17): on gzip streams, damaged ones, cut ones
    and ones with bytes after them, it gives what zlib gives or refuses what zlib refuses."""
    from zlib_ng import zlib_ng

    data = bytearray(zlib.compress(plain, wbits=31) if plain else b"\x1f\x8b")
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    stream = bytes(data[: len(data) + cut] if cut < 0 else data) + tail
    assert _inflate_with(zlib_ng, stream) == _inflate_with(zlib, stream)
    stored = base64.b64encode(stream)
    try:
        ours: bytes | None = codec.gunzip_base64(stored)
    except codec.GUNZIP_ERRORS:
        ours = None
    try:
        theirs: bytes | None = zlib.decompress(base64.b64decode(stored), wbits=31)
    except zlib.error:
        theirs = None
    assert ours == theirs

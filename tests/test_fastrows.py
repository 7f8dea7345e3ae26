"""The compiled hot path of a migration (esctl/_fastrows_src/) against the Python one.

The compiled helper may give None for any stream (the Python path then decides), but whatever
it accepts the Python path accepts too, with the same aggregate type and byte-identical rows.
These tests hold that on the property test's corrupted streams, on arbitrary JSON members, on
payloads with bytes flipped, inserted and cut, and on time stamps over the calendar; and they
check that it does take the common streams (else the fast path would be dead code)."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import independent_writer as iw
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_migrate import apply_mutations, corrupted_streams

from esctl import fastpath, layout
from esctl.codec import gunzip_base64, parse_timestamp
from esctl.migrate import rows
from esctl.pgevents import PgStream, binary_column_loaders
from esctl.redisio import resp
from esctl.streams import CleanPayload, clean_payloads, parsed
from esctl.verify import fast_identical

pytestmark = pytest.mark.skipif(
    not fastpath.COMPILED, reason="the compiled hot path is not built (no C compiler at install)"
)


def compiled(
    aggregate_id: str,
    values: Sequence[bytes | None],
    first_version: int = 1,
    known_type: str | None = None,
) -> tuple[str, list[bytes]] | None:
    return fastpath.clean_rows(aggregate_id, values, first_version, known_type)


def python_path(
    aggregate_id: str,
    values: Sequence[bytes | None],
    first_version: int = 1,
    known_type: str | None = None,
) -> tuple[str, list[bytes]] | None:
    return rows.clean_rows(
        clean_payloads(aggregate_id, values, first_version=first_version, known_type=known_type)
    )


def assert_compiled_within_python(
    aggregate_id: str,
    values: Sequence[bytes | None],
    first_version: int = 1,
    known_type: str | None = None,
) -> tuple[str, list[bytes]] | None:
    fast = compiled(aggregate_id, values, first_version, known_type)
    if fast is not None:
        assert python_path(aggregate_id, values, first_version, known_type) == fast, values
    events = fastpath.clean_payloads(aggregate_id, values, first_version, known_type)
    assert (events is None) == (fast is None), values  # the same checks
    if events is not None:
        assert_same_events(
            events,
            clean_payloads(
                aggregate_id, values, first_version=first_version, known_type=known_type
            ),
        )
    return fast


def assert_same_events(
    compiled_events: tuple[str, list[CleanPayload]],
    python_events: tuple[str, list[CleanPayload]] | None,
) -> None:
    """The compiled clean_payloads' events are the Python path's, but for the parsed payload it
    leaves to the caller (None), and with time stamps in the same zone."""
    assert python_events is not None
    assert compiled_events[0] == python_events[0]
    assert len(compiled_events[1]) == len(python_events[1])
    for mine, theirs in zip(compiled_events[1], python_events[1], strict=True):
        assert type(mine) is CleanPayload and mine.data is None
        assert mine._replace(data=theirs.data) == theirs
        assert mine.moment.tzinfo == theirs.moment.tzinfo  # equal also as text
        assert mine.moment.isoformat() == theirs.moment.isoformat()
        assert parsed(mine) == theirs.data


def doc(aggregate_id: str, version: int, **members: Any) -> dict[str, Any]:
    return {
        "$type": "Learning.Items.Events.ItemChanged, Learning.Items",
        "Id": aggregate_id,
        "TimeStamp": "2019-05-01T10:11:12.1234567+02:00",
        "Version": version,
        "AggregateType": "Item",
        **members,
    }


def encoded(document: dict[str, Any], *, ascii_only: bool = False) -> bytes:
    return json.dumps(document, ensure_ascii=ascii_only, separators=(",", ":")).encode()


# --- the property test's streams -----------------------------------------------------------


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted_streams(incremental=True))
def test_what_the_compiled_path_accepts_the_python_path_accepts_alike(
    case: tuple[Any, ...],
) -> None:
    aggregate_id, first_version, known_type, docs, mutations, compressed = case
    values = apply_mutations(aggregate_id, docs, mutations, compressed)
    assert_compiled_within_python(aggregate_id, values, first_version, known_type)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted_streams(incremental=True))
def test_the_compiled_path_takes_every_clean_stream_in_order(case: tuple[Any, ...]) -> None:
    """Without mutations (versions in order, no escape in the envelope) it must not give up."""
    aggregate_id, first_version, known_type, docs, _, compressed = case
    values = apply_mutations(aggregate_id, docs, [], compressed)
    expected = python_path(aggregate_id, values, first_version, known_type)
    if expected is None:  # a known type other than the events' "Item"
        assert known_type not in (None, "Item")
        return
    assert compiled(aggregate_id, values, first_version, known_type) == expected


# --- arbitrary JSON around the envelope ---------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
NUMBER_TEXTS = st.sampled_from(
    ("0", "-0", "1.5", "-0.0", "1e5", "1E-05", "1.5e+300", "2e308", "1e400", "123456789" * 40,
     "18446744073709551616", "-9223372036854775809", "0.1e-99", "1e999")
)  # fmt: skip


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    st.booleans(),
    st.booleans(),
)
def test_arbitrary_members_beside_the_envelope(
    extra: dict[str, Any], ascii_only: bool, gz: bool
) -> None:
    document = {**extra, **doc("agg-1", 1)}
    text = json.dumps(document, ensure_ascii=ascii_only, separators=(",", ":"))
    value = iw.gzip_base64(text) if gz else text.encode()
    fast = assert_compiled_within_python("agg-1", [value])
    if (
        "\x00" not in text
        and "\\u0000" not in text
        and not any(0xD800 <= ord(c) < 0xE000 for c in text)
    ):
        # every JSON here is plain (numbers as Python writes them, no NUL, no surrogate)
        big = any(t in text for t in ("e+", "e-", "inf")) or len(text) > 10_000
        if not big and "\\ud" not in text:
            assert fast is not None, text


@settings(max_examples=300)
@given(st.lists(NUMBER_TEXTS, min_size=1, max_size=4), st.sampled_from(("Number", "Version")))
def test_numbers_orjson_turns_into_floats_or_refuses(numbers: list[str], where: str) -> None:
    base = encoded(doc("agg-1", 1))[:-1]
    member = f',"{where}":' if where == "Number" else ',"Other":'
    for n in numbers:
        value = base + member.encode() + n.encode() + b"}"
        assert_compiled_within_python("agg-1", [value])
        value = base + b',"List":[' + n.encode() + b"]}"
        assert_compiled_within_python("agg-1", [value])


# --- damaged bytes ------------------------------------------------------------------------


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(("flip", "insert", "delete", "cut")), st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
    st.sampled_from(("plain", "Zoë 日本語 🎉", 'quote"d\\back', "tab\there")),
)  # fmt: skip
def test_damaged_bytes_are_never_accepted_where_python_refuses(
    damage: list[tuple[str, int, int]], text: str
) -> None:
    raw = bytearray(encoded(doc("agg-1", 1, Text=text, List=[1, 2.5, True, None, {"a": "b"}])))
    for kind, at, byte in damage:
        i = at % (len(raw) + 1)
        if kind == "flip" and i < len(raw):
            raw[i] ^= 1 << (byte % 8)
        elif kind == "insert":
            raw[i:i] = bytes([byte])
        elif kind == "delete" and i < len(raw):
            del raw[i]
        elif kind == "cut":
            del raw[i:]
    assert_compiled_within_python("agg-1", [bytes(raw)])


@pytest.mark.parametrize(
    "value",
    [
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item","Version":2}',
        b'{"\\u0024type":"T, A","$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item"}',
        b'{"$type":"T\\u002c A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item"}',
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item","N":"a\\u0000b"}',
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item","N":"\\ud83d\\ude00"}',
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1.0,"AggregateType":"Item"}',
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":2147483648,"AggregateType":"Item"}',
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z\\n","Version":1,"AggregateType":"Item"}',
        b'\xef\xbb\xbf{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item"}',
        b' {"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item"} \n',
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item"}x',
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item",}',
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"\xd9\xa2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item"}',
        b'{"$type":"T, A","Id":"agg-1","TimeStamp":"2019-05-01T10:11:12Z","Version":1,"AggregateType":"Item","Deep":'
        + b"[" * 600
        + b"]" * 600
        + b"}",
    ],
    ids=[
        "repeated-member", "escaped-key", "escaped-type", "nul-escape", "surrogate-pair",
        "float-version", "version-beyond-int4", "newline-after-stamp", "bom", "whitespace",
        "trailing-garbage", "trailing-comma", "arabic-indic-digit", "deep-nesting",
    ],
)  # fmt: skip
def test_corner_cases_agree(value: bytes) -> None:
    assert_compiled_within_python("agg-1", [value])


# --- time stamps ----------------------------------------------------------------------------


@settings(max_examples=500)
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
    st.integers(0, 7),
    st.booleans(),
)
def test_time_stamps_over_the_calendar(
    moment: datetime, offset_minutes: int, digits: int, zulu: bool
) -> None:
    if zulu:
        offset_minutes = 0
    sign = "-" if offset_minutes < 0 else "+"
    oh, om = divmod(abs(offset_minutes), 60)
    text = f"{moment.year:04d}-" + moment.strftime("%m-%dT%H:%M:%S")
    if digits:
        text += "." + (f"{moment.microsecond:06d}" + str(moment.microsecond % 10))[:digits]
    text += "Z" if zulu else f"{sign}{oh:02d}:{om:02d}"
    value = encoded({**doc("agg-1", 1), "TimeStamp": text})
    fast = assert_compiled_within_python("agg-1", [value])
    assert fast is not None, text
    micros = int.from_bytes(fast[1][0][4:12], "big", signed=True)
    tz = timezone(timedelta(minutes=offset_minutes))
    fraction = int(((f"{moment.microsecond:06d}" + "0")[:digits] + "000000")[:6]) if digits else 0
    expected = moment.replace(microsecond=fraction, tzinfo=tz)
    assert datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros) == expected


@pytest.mark.parametrize(
    "stamp",
    ["2019-02-29T00:00:00Z", "2020-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z",
     "0000-01-01T00:00:00Z", "2019-04-31T00:00:00Z", "2019-01-01T24:00:00Z", "2019-01-01T00:60:00Z",
     "2019-01-01T00:00:60Z", "2019-01-01T00:00:00+24:00", "2019-01-01T00:00:00+10:60",
     "2019-01-01T00:00:00.Z", "2019-01-01T00:00:00.12345678Z", "2019-01-01T00:00:00+0100",
     "2019-01-01T00:00:00", "2019-1-01T00:00:00Z", "2019-01-01t00:00:00Z"],
)  # fmt: skip
def test_time_stamps_the_calendar_refuses_agree(stamp: str) -> None:
    assert_compiled_within_python("agg-1", [encoded({**doc("agg-1", 1), "TimeStamp": stamp})])


# --- the stream as a whole ------------------------------------------------------------------


def test_a_bulk_store_stream_is_taken_and_alike() -> None:
    """Payloads as the bulk writer makes them (the benchmarks' store), 30% compressed."""
    rng = random.Random(7)
    values = []
    for version in range(1, 40):
        text = json.dumps(
            doc("3f2b1c4e-8d9a-4b7e-9c1d-2e3f4a5b6c7d", version,
                Lines=[{"$type": "Ns.Line, Asm", "Qty": rng.randint(1, 9), "Price": rng.random() * 100}
                       for _ in range(rng.randint(0, 20))],
                Note="Zoë 日本語 🎉 \"quoted\" \\ back\ttab"),
            ensure_ascii=False,
        )  # fmt: skip
        values.append(iw.gzip_base64(text) if rng.random() < 0.3 else text.encode())
    fast = compiled("3f2b1c4e-8d9a-4b7e-9c1d-2e3f4a5b6c7d", values)
    assert fast is not None
    assert fast == python_path("3f2b1c4e-8d9a-4b7e-9c1d-2e3f4a5b6c7d", values)
    assert rows.fast_rows("3f2b1c4e-8d9a-4b7e-9c1d-2e3f4a5b6c7d", values) == fast


def test_streams_it_gives_up_on_go_to_the_python_path() -> None:
    """Events stored out of version order: the compiled path gives None, fast_rows still
    gives the Python path's rows (sorted by version)."""
    values = [encoded(doc("agg-1", v)) for v in (2, 1, 3)]
    assert compiled("agg-1", values) is None
    got = rows.fast_rows("agg-1", values)
    assert got is not None and got == python_path("agg-1", values)
    assert compiled("agg-1", []) is None
    assert compiled("agg-1", [encoded(doc("agg-1", 1)), None]) is None
    assert compiled("agg-1", [encoded(doc("agg-1", 1))], 1, "Other") is None
    assert compiled("agg-1", [encoded(doc("agg-1", 2))], 2, "Item") is not None


def test_a_gunzip_that_fails_gives_none_but_an_interrupt_goes_through() -> None:
    value = iw.gzip_base64(encoded(doc("agg-1", 1)).decode())

    def broken(_: bytes) -> bytes:
        raise ValueError("bad")

    def interrupted(_: bytes) -> bytes:
        raise KeyboardInterrupt

    compiled_module = fastpath._compiled
    assert compiled_module is not None
    types: dict[bytes, bytes] = {}
    args = (fastpath._event_type_bytes, types)
    assert compiled_module.clean_rows("agg-1", [value], 1, None, broken, *args) is None
    with pytest.raises(KeyboardInterrupt):
        compiled_module.clean_rows("agg-1", [value], 1, None, interrupted, *args)
    assert compiled_module.clean_rows("agg-1", [value], 1, None, gunzip_base64, *args) is not None


# --- verify: a clean stream against PostgreSQL's columns --------------------------------------


@pytest.fixture
def jsonb_conn(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TEMP TABLE t (n int, ts timestamptz, d jsonb)")
        yield conn


def as_postgres_reads(
    conn: psycopg.Connection, texts: list[str], stamps: list[str]
) -> tuple[list[int], list[bytes]]:
    """The documents as jsonb, read back as verify reads them (binary, unparsed; the time
    stamps as microseconds since 2000)."""
    conn.execute("TRUNCATE t")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO t VALUES (%s, %s, %s::jsonb)",
            # the time as migrate writes it (a 7th digit truncated; PostgreSQL would round it)
            [
                (i, parse_timestamp(s), t)
                for i, (t, s) in enumerate(zip(texts, stamps, strict=True))
            ],
        )
        binary_column_loaders(cur)  # as verify reads them
        cur.execute("SELECT array_agg(ts ORDER BY n), array_agg(d ORDER BY n) FROM t", binary=True)
        got = cur.fetchone()
    assert got is not None
    return got[0], got[1]


def python_identical(aggregate_id: str, values: list[bytes | None], theirs: PgStream) -> bool:
    saved = fastpath._compiled
    fastpath._compiled = None
    try:
        return fast_identical(aggregate_id, values, theirs)
    finally:
        fastpath._compiled = saved


def keys_of(value: Any) -> Iterator[str]:
    """Every object key in a JSON value, at any depth."""
    if isinstance(value, dict):
        for key, member in value.items():
            yield key
            yield from keys_of(member)
    elif isinstance(value, list):
        for item in value:
            yield from keys_of(item)


def stored(text: str, gz: bool) -> bytes:
    return iw.gzip_base64(text) if gz else text.encode()


def dumps_as(document: dict[str, Any], style: str) -> str:
    if style == "compact":
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    if style == "ascii":
        return json.dumps(document, ensure_ascii=True)
    if style == "indented":
        return json.dumps(document, ensure_ascii=False, indent=2)
    members = list(document.items())
    random.Random(len(members)).shuffle(members)
    return json.dumps(dict(members), ensure_ascii=False, separators=(",", ":"))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), min_size=1, max_size=3),
    st.sampled_from(("compact", "ascii", "indented", "shuffled")),
    st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_identical_is_what_postgres_prints(
    jsonb_conn: psycopg.Connection, extras: list[dict[str, Any]], style: str, gz: list[bool]
) -> None:
    documents = [{**extra, **doc("agg-1", v + 1)} for v, extra in enumerate(extras)]
    texts = [dumps_as(d, style) for d in documents]
    if any("\\u0000" in t or "\x00" in t for t in texts):
        return  # PostgreSQL's jsonb refuses it: never migrated
    stamps = [d["TimeStamp"] for d in documents]
    time_stamps, data = as_postgres_reads(jsonb_conn, texts, stamps)
    values: list[bytes | None] = [stored(t, z) for t, z in zip(texts, gz, strict=False)]
    theirs = PgStream(
        "Item", list(range(1, len(texts) + 1)), ["ItemChanged"] * len(texts), time_stamps, data
    )
    fast = fastpath.identical("agg-1", values, theirs)
    assert python_identical("agg-1", values, theirs)
    escaped = '"\\' + "".join(map(chr, range(32)))
    unsure = any(  # what the compiled path leaves to the Python one: exponents, surrogates
        re.search(r"\d[eE][-+]?\d", t) or re.search(r"\\u[dD][89a-fA-F]", t) for t in texts
    ) or any(  # and keys written with an escape
        any(c in escaped or (style == "ascii" and not c.isascii()) for c in key)
        for key in keys_of(extras)
    )
    if not unsure:
        assert fast, texts
    # one thing PostgreSQL holds differently: never identical
    for changed in (
        theirs._replace(aggregate_type="Other"),
        theirs._replace(versions=[v + 1 for v in theirs.versions]),
        theirs._replace(event_types=["ItemChangedV2"] * len(texts)),
        theirs._replace(time_stamps=[t + 1 for t in time_stamps]),
    ):
        assert not fastpath.identical("agg-1", values, changed)
    for i, document in enumerate(documents):
        for other in (
            {**document, "Extra": 1},
            {k: v for k, v in document.items() if k in doc("", 1)},
        ):
            if other == document:
                continue
            _, other_data = as_postgres_reads(jsonb_conn, [json.dumps(other)], [stamps[i]])
            changed_data = [*data[:i], other_data[0], *data[i + 1 :]]
            assert not fastpath.identical("agg-1", values, theirs._replace(event_data=changed_data))


@pytest.mark.parametrize(
    ("redis", "postgres", "expected"),
    [
        ('{"N":-0}', '{"N":0}', True),
        ('{"N":-0.00}', '{"N":0.00}', True),
        ('{"N":1.50}', '{"N":1.50}', True),
        ('{"N":1.5}', '{"N":1.50}', False),  # jsonb equal, printed apart: the Python path decides
        ('{"N":12345678901234567890123}', '{"N":12345678901234567890123}', True),
        ('{"N":1E-05}', '{"N":1E-05}', False),  # an exponent: the Python path decides
        ('{"S":"\\u00e9\\/\\u001f\\"\\\\\\b\\f\\n\\r\\t\\u007f x"}', None, True),
        ('{"A":[],"B":{},"C":[{"z":1,"a":[true,false,null]}]}', None, True),
        ('{"A":1,"A":2}', None, False),  # a repeated key: jsonb keeps the last
        ('{"\\u0041":1}', None, False),  # a key with an escape
        ('{"bb":1,"a":2,"ab":3,"b":4}', None, True),
    ],
)  # fmt: skip
def test_identical_on_what_jsonb_prints_its_own_way(
    jsonb_conn: psycopg.Connection, redis: str, postgres: str | None, expected: bool
) -> None:
    envelope = encoded(doc("agg-1", 1)).decode()[1:-1]
    text = "{" + envelope + "," + redis[1:]
    pg_text = text if postgres is None else "{" + envelope + "," + postgres[1:]
    time_stamps, data = as_postgres_reads(jsonb_conn, [pg_text], [doc("agg-1", 1)["TimeStamp"]])
    theirs = PgStream("Item", [1], ["ItemChanged"], time_stamps, data)
    assert fastpath.identical("agg-1", [text.encode()], theirs) is expected
    if expected:
        assert python_identical("agg-1", [text.encode()], theirs)


def test_identical_with_time_stamps_in_a_named_zone(jsonb_conn: psycopg.Connection) -> None:
    """verify reads time stamps as PostgreSQL stores them, whatever the session's zone."""
    jsonb_conn.execute("SET TimeZone = 'Europe/Berlin'")
    documents = [
        {**doc("agg-1", v), "TimeStamp": stamp}
        for v, stamp in enumerate(
            ("2019-01-01T10:11:12.5-05:00", "2019-07-01T10:11:12Z", "2019-03-31T01:30:00+00:00"),
            start=1,
        )
    ]
    texts = [json.dumps(d) for d in documents]
    time_stamps, data = as_postgres_reads(jsonb_conn, texts, [d["TimeStamp"] for d in documents])
    theirs = PgStream("Item", [1, 2, 3], ["ItemChanged"] * 3, time_stamps, data)
    assert fastpath.identical("agg-1", [t.encode() for t in texts], theirs)


# --- reading the event hashes: the lookups' keys and the commands packed ---------------------


def python_lookup_orders(app: str, commit_ids: list[str]) -> list[tuple[str, str]]:
    saved = layout._compiled_orders
    layout._compiled_orders = None
    try:
        return layout.event_hash_lookup_orders(app, commit_ids)
    finally:
        layout._compiled_orders = saved


def python_pack(commands: list[tuple[Any, ...]]) -> bytes:
    saved = resp._compiled_pack
    resp._compiled_pack = None
    try:
        return resp.pack_commands(commands)
    finally:
        resp._compiled_pack = saved


commit_ids = st.lists(
    st.one_of(
        st.uuids().map(str),
        st.integers(0, 10**12).map(str),
        st.text(max_size=12),
        st.sampled_from(("", "0", "007", "12a", "٣", "²", "\udcff", "a\x00b")),
    ),
    max_size=30,
)


@settings(max_examples=300)
@given(st.sampled_from(("App", "Bench.Migrate", "Zürich", "a:b")), commit_ids)
def test_lookup_orders_are_the_python_ones(app: str, ids: list[str]) -> None:
    assert layout._compiled_lookup() is not None
    assert layout.event_hash_lookup_orders(app, ids) == python_lookup_orders(app, ids)


def test_lookup_orders_are_compiled_for_ascii_ids() -> None:
    ids = [str(uuid.uuid4()) for _ in range(50)] + ["1", "42", ""]
    lookup = layout._compiled_lookup()
    assert lookup is not None
    assert lookup("EventStore:App:", "EventStore:App", ids) == python_lookup_orders("App", ids)
    assert lookup("EventStore:App:", "EventStore:App", ["٣"]) is None


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("HGET"), st.text(max_size=20), st.text(max_size=20)),
            st.tuples(st.just("HGET"), st.just("k"), st.sampled_from(("\udcff", "é", "日本"))),
            st.tuples(st.just("LRANGE"), st.text(max_size=5), st.integers(), st.integers()),
            st.tuples(st.just("GET"), st.binary(max_size=5)),
            st.tuples(st.just("HGET"), st.binary(max_size=5), st.text(max_size=5)),
        ),
        max_size=20,
    )
)
def test_packed_commands_are_the_python_ones(commands: list[tuple[Any, ...]]) -> None:
    assert resp.pack_commands(commands) == python_pack(commands)


# --- the transforms' rows: binary_rows against rows.binary_row -------------------------------

NS, ASM = "Learning.Scoring.Events", "Learning.Scoring"

ZONES = st.one_of(
    st.integers(-1439 * 60, 1439 * 60).map(lambda s: timezone(timedelta(seconds=s))),
    st.integers(-86_399_999_999, 86_399_999_999).map(
        lambda us: timezone(timedelta(microseconds=us))
    ),  # (offsets of any microseconds: Python allows them, the payloads' never have them)
    st.sampled_from([UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("America/St_Johns")]),
)
ROW_EVENTS = st.lists(
    st.tuples(
        st.datetimes(timezones=ZONES, allow_imaginary=False),
        st.integers(-(2**31), 2**31 - 1),
        st.one_of(
            st.sampled_from([f"{NS}.{n}, {ASM}" for n in ("Created", "Noted", "Zürich")]),
            st.text(min_size=1, max_size=40),
        ),
        st.binary(max_size=300),
    ),
    max_size=8,
)


def python_rows(columns: Sequence[Sequence[Any]]) -> list[bytes]:
    return list(map(rows.binary_row, *columns))


@settings(max_examples=500)
@given(ROW_EVENTS)
def test_binary_rows_are_binary_row_s(events: list[tuple[datetime, int, str, bytes]]) -> None:
    """Over the calendar, any zone (DST folds, offsets of seconds and microseconds), the
    integer column's range and any ``$type``: the rows of binary_row, byte for byte."""
    columns = [list(c) for c in zip(*events, strict=True)] if events else [[], [], [], []]
    assert fastpath.binary_rows(*columns) == python_rows(columns)


@pytest.mark.parametrize(
    "change",
    [
        "naive time",
        "a time of a datetime subclass",
        "version past the integer column",
        "version below it",
        "version a bool",
        "payload a bytearray",
        "type name bytes",
        "one column shorter",
    ],
)
def test_binary_rows_it_is_not_sure_of_go_to_binary_row(change: str) -> None:
    """What binary_row refuses (a naive time, a version beyond an integer column) or takes in
    its own way, the compiled rows leave to it: None."""

    class Moment(datetime):
        pass

    moment = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    columns: list[list[Any]] = [[moment] * 2, [1, 2], [f"{NS}.Created, {ASM}"] * 2, [b"{}"] * 2]
    assert fastpath.binary_rows(*columns) == python_rows(columns)
    where, value = {
        "naive time": (0, datetime(2024, 3, 1, 10, 0)),
        "a time of a datetime subclass": (0, Moment(2024, 3, 1, 10, 0, tzinfo=UTC)),
        "version past the integer column": (1, 2**31),
        "version below it": (1, -(2**31) - 1),
        "version a bool": (1, True),
        "payload a bytearray": (3, bytearray(b"{}")),
        "type name bytes": (2, f"{NS}.Created, {ASM}".encode()),
        "one column shorter": (3, None),
    }[change]
    if value is None:
        columns[where].pop()
    else:
        columns[where][1] = value
    assert fastpath.binary_rows(*columns) is None


def test_binary_rows_raise_what_the_zone_raises() -> None:
    class Broken(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta:
            raise LookupError("no such zone")

        def dst(self, dt: datetime | None) -> timedelta:
            return timedelta(0)

        def tzname(self, dt: datetime | None) -> str:
            return "Broken"

    moment = datetime(2024, 3, 1, tzinfo=Broken())
    with pytest.raises(LookupError, match="no such zone"):
        python_rows([[moment], [1], ["T, A"], [b"{}"]])
    with pytest.raises(LookupError, match="no such zone"):
        fastpath.binary_rows([moment], [1], ["T, A"], [b"{}"])


def test_the_transforms_rows_are_compiled() -> None:
    """migrate --transforms builds its rows in C (checked against binary_row above)."""
    moment = datetime(2024, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    names, payloads = [f"{NS}.Created, {ASM}"], [b'{"Id":"a"}']
    built = fastpath.binary_rows([moment], range(1, 2), names, payloads)
    assert built is not None and built == python_rows([[moment], range(1, 2), names, payloads])

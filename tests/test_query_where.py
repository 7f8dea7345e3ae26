"""The where-language of ``events query`` (esctl.query): parsing, its error messages, its
semantics in Python, and that PostgreSQL's jsonpath translation means exactly the same."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esctl.errors import UsageError
from esctl.query import Selectors, parse_where

# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "op", "value"),
    [
        ("Score=7", ("Score",), "=", "7"),
        ("Score == 7", ("Score",), "=", "7"),
        ("  Rubric.Criteria.Name ~ Thèse ", ("Rubric", "Criteria", "Name"), "~", "Thèse"),
        ("a.b!=x y", ("a", "b"), "!=", "x y"),
        ("n>=-1.5e3", ("n",), ">=", "-1.5e3"),
        ("n<=0", ("n",), "<=", "0"),
        ("n>1", ("n",), ">", "1"),
        ("n<1", ("n",), "<", "1"),
        ('"Some.Key".x="quoted \\" value"', ("Some.Key", "x"), "=", 'quoted " value'),
        ("$type~Order", ("$type",), "~", "Order"),
        ("Tags.$values=a", ("Tags", "$values"), "=", "a"),
        ("Comment exists", ("Comment",), "exists", None),
        ("a.b  exists  ", ("a", "b"), "exists", None),
        ("url=http://x/y?a=b", ("url",), "=", "http://x/y?a=b"),
    ],
)
def test_parse(text: str, path: tuple[str, ...], op: str, value: str | None) -> None:
    clause = parse_where(text)
    assert clause.path == path
    assert clause.op == op
    assert (clause.literal.text if clause.literal else None) == value


def test_literal_readings() -> None:
    bare = parse_where("x=7").literal
    assert bare is not None and bare.number == 7 and not bare.quoted
    assert isinstance(bare.number, int)
    real = parse_where("x=7.50").literal
    assert real is not None and real.number == 7.5
    quoted = parse_where('x="7"').literal
    assert quoted is not None and quoted.number is None and quoted.quoted
    boolean = parse_where("x=true").literal
    assert boolean is not None and boolean.boolean is True
    null = parse_where("x=null").literal
    assert null is not None and null.null
    word = parse_where("x=007").literal  # not JSON number syntax: a string
    assert word is not None and word.number is None and word.text == "007"


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("", "empty", 1),
        ("   ", "empty", 1),
        ("Score", "no operator", 6),
        ("=5", "no path before '='", 1),
        ("a..b=1", "empty key", 3),
        (".a=1", "empty key", 1),
        ("a.=1", "empty key", 3),
        ("Score=", "no value after '='", 7),
        ("Score >> 5", "'>' after the operator '>'", 8),
        ("Score =! 5", "'!' after the operator '='", 8),
        ("Score ! 5", "expected an operator", 7),
        ("a b=1", "expected an operator", 3),
        ('x="open', "unterminated", 3),
        ('"open=1', "unterminated", 1),
        ('x="a" b', "after the quoted value", 7),
        ("x > true", "cannot be ordered", 3),
        ("x<=null", "cannot be ordered", 2),
        ("x exists y", "after 'exists'", 10),
        ("x=1e999", "out of range", 3),
        ("a.b.c.d.e.f.g.h.i=1", "more than 8 keys", 1),
    ],
)
def test_malformed_where_is_a_usage_error_pointing_at_the_bad_part(
    text: str, message: str, column: int
) -> None:
    with pytest.raises(UsageError) as caught:
        parse_where(text)
    error = caught.value
    assert message in error.message
    assert f"(column {column})" in error.message
    assert repr(text) in error.message
    assert error.hint is not None and "^" in error.hint


def test_filters_build_checks_everything() -> None:
    with pytest.raises(UsageError, match="--since"):
        Selectors(since="yesterday").filters()
    with pytest.raises(UsageError, match="--where"):
        Selectors(where=("ok=1", "bad")).filters()
    filters = Selectors(types=("A", "B", "A"), aggregates=("1", "1")).filters(limit=3)
    assert filters.types == ("A", "B") and filters.aggregates == ("1",) and filters.limit == 3


@pytest.mark.parametrize(
    ("option", "given"),
    [("--type", {"types": ("ItemScore*",)}), ("--aggregate-type", {"aggregate_type": "Item?"})],
)
def test_a_type_pattern_is_refused_not_matched_against_nothing(
    option: str, given: dict[str, Any]
) -> None:
    """Type names hold no * or ?: a pattern would select nothing, silently (exit 0)."""
    with pytest.raises(UsageError, match=f"{option} .*exact name") as caught:
        Selectors(**given).filters()
    assert "esctl inspect stats" in (caught.value.hint or "")
    assert Selectors(types=("Envelope`1",)).filters().types == ("Envelope`1",)


# --- semantics -----------------------------------------------------------------------------

LIST = "System.Collections.Generic.List`1[[System.String, mscorlib]], mscorlib"
DOC: dict[str, Any] = {
    "$type": "Ns.OrderLineAdded, Asm",
    "Id": "1001",
    "Score": 7.0,
    "Count": 3,
    "Name": "Zoë Ångström",
    "Flag": True,
    "Nothing": None,
    "Digits": "7",
    "Tags": {"$type": LIST, "$values": ["Feedback", "Écriture"]},
    "Empty": {"$type": LIST, "$values": []},
    "Lines": {
        "$type": "List`1[[Line]]",
        "$values": [
            {"$type": "Line", "Sku": "BK-1042", "Quantity": 2, "Tags": {"$values": ["a"]}},
            {"$type": "Line", "Sku": "PN-0007", "Quantity": 30},
        ],
    },
    "Raw": [1, 2, [3]],
    "Address": {"$type": "Address", "City": "München"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Score=7", True),  # 7.0 is the number 7
        ("Score=7.0", True),
        ('Score="7"', False),  # a quoted value matches strings only
        ("Digits=7", True),  # a bare number also matches the string "7"
        ('Digits="7"', True),
        ("Digits>5", False),  # ordering with a number looks at numbers only
        ("Digits>5x", True),  # a non-number orders strings, by code point: "7" > "5x"
        ("Id=1001", True),
        ("Count>=3", True),
        ("Count>3", False),
        ("Score<7.5", True),
        ("Name~Ång", True),
        ("Name~ång", False),  # case-sensitive
        ("Name>Zo", True),  # code point order
        ("Name<Zz", True),
        ("Flag=true", True),
        ("Flag!=true", False),
        ("Flag=1", False),  # booleans never equal numbers
        ("Nothing=null", True),
        ("Nothing exists", True),
        ("Nothing!=x", True),
        ("Missing exists", False),
        ("Missing!=x", False),  # != needs the path to exist
        ("Missing=null", False),
        ("Tags=Feedback", True),  # $values looked through
        ("Tags!=Feedback", False),
        ("Tags!=Other", True),
        ("Tags~Écri", True),
        ("Tags.$type~List", True),
        ("Empty exists", True),
        ("Empty=x", False),
        ("Empty!=x", True),
        ("Lines.Sku=PN-0007", True),
        ("Lines.Quantity>10", True),
        ("Lines.Quantity>30", False),
        ("Lines.Tags=a", True),
        ("Lines.Sku~BK", True),
        ("Lines=x", False),
        ("Raw=2", True),
        ("Raw=3", False),  # only one level of list is looked into (jsonpath's lax mode)
        ("Address.City=München", True),
        ("Address=München", False),  # objects equal nothing
        ("Address exists", True),
        ("Address.City.Deeper exists", False),
        ("$type~OrderLine", True),
    ],
)
def test_semantics(text: str, expected: bool) -> None:
    assert parse_where(text).matches(DOC) is expected


def test_needles_are_necessary_substrings() -> None:
    assert parse_where("Lines.Sku=BK-1042").needles() == [b'"Lines', b'"Sku', b"BK-1042"]
    assert parse_where("Score=7").needles() == [b'"Score']  # 7 could be 7.0 or 0.7e1
    assert parse_where("Name~Ång").needles() == [b'"Name', "Ång".encode()]
    assert parse_where('x="a\\"b"').needles() == [b'"x']  # a quote would be escaped in JSON
    assert parse_where("x!=abc").needles() == [b'"x']


# --- Python and PostgreSQL agree -------------------------------------------------------------

KEYS = ["a", "b", "$values", "Name"]
STRINGS = ["", "7", "a", "b", "é", "z", "Zoë", "true", "null", "ab", "1.5", "Ä"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 9),
    st.sampled_from([0.5, 1.5, 7.0, -2.25]),
    st.sampled_from(STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=3),
    ),
    max_leaves=8,
)
documents = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)
paths = st.lists(st.sampled_from(["a", "b", "$values", "Name"]), min_size=1, max_size=3)
values = st.sampled_from(
    ["7", "1.5", "-2.25", "0", "true", "false", "null", "a", "é", "z", "Zoë", '"7"', '"a"', '""']
)
operators = st.sampled_from(["=", "!=", ">", ">=", "<", "<=", "~"])


@st.composite
def clauses(draw: st.DrawFn) -> str:
    path = ".".join(draw(paths))
    if draw(st.integers(0, 7)) == 0:
        return f"{path} exists"
    op = draw(operators)
    value = draw(values)
    if op in (">", ">=", "<", "<=") and value in ("true", "false", "null"):
        value = "a"
    return f"{path}{op}{value}"


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE doc (id int PRIMARY KEY, body jsonb NOT NULL)")
        yield conn


def pg_matches(conn: psycopg.Connection, text: str) -> set[int]:
    path, variables = parse_where(text).jsonpath("v")
    rows = conn.execute(
        "SELECT id FROM doc WHERE jsonb_path_match(body, %s::jsonpath, %s::jsonb, true)",
        (path, json.dumps(variables)),
    ).fetchall()
    return {r[0] for r in rows}


@settings(
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(docs=st.lists(documents, min_size=1, max_size=25), exprs=st.lists(clauses(), max_size=12))
def test_python_and_postgresql_agree(
    pg: psycopg.Connection, docs: list[dict[str, Any]], exprs: list[str]
) -> None:
    pg.execute("TRUNCATE doc")
    with pg.cursor() as cur:
        cur.executemany(
            "INSERT INTO doc VALUES (%s, %s::jsonb)",
            [(i, orjson.dumps(d).decode()) for i, d in enumerate(docs)],
        )
    for text in exprs:
        clause = parse_where(text)
        python = {i for i, d in enumerate(docs) if clause.matches(d)}
        assert python == pg_matches(pg, text), (text, docs)


def test_python_and_postgresql_agree_on_the_examples(pg: psycopg.Connection) -> None:
    pg.execute("INSERT INTO doc VALUES (1, %s::jsonb)", (orjson.dumps(DOC).decode(),))
    for text in [
        "Score=7",
        "Digits=7",
        "Digits>5x",
        "Name>Zo",
        "Tags!=Other",
        "Empty!=x",
        "Lines.Tags=a",
        "Raw=3",
        "Address=München",
        "Nothing!=x",
        "Name~Å",
        'Name~"ë Å"',
        'x~"\\u0022"',
    ]:
        assert pg_matches(pg, text) == ({1} if parse_where(text).matches(DOC) else set()), text

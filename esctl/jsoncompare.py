"""Semantic JSON comparison as jsonb's ``=`` sees it: any key order, exact numbers, bools never
equal to numbers. Shared by ``migrate verify`` and ``migrate prune`` (docs/design/performance.md,
sections 5 and 7, on why the hot path looks as it does)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import orjson


def json_equal(a: Any, b: Any) -> bool:
    """Semantic JSON equality as jsonb sees it: object key order does not matter, numbers
    compare by value, but true/false never equal 1/0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(json_equal(v, b[k]) for k, v in a.items())
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, int | float | Decimal):
        return isinstance(b, int | float | Decimal) and a == b
    return type(a) is type(b) and a == b


_SORTED = orjson.OPT_SORT_KEYS


# Digits and "." to "0", everything else to " ": a run of 16 "0"s is a number a double may not
# hold (16 significant digits, a decimal point among them or not: "1234567890.1234567" and
# "…568" are one double). (bytes.translate + find: ~4x faster than a regex over every payload.)
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 or b == 0x2E else 0x20 for b in range(256))
_LONG_RUN = b"0" * 16


def _has_long_number(text: str | bytes) -> bool:
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    return _LONG_RUN in text.translate(_DIGITS)


_FLOAT, _BOOL = 1, 2


def _loose(value: Any) -> int:
    """Where in a parsed JSON value Python's ``==`` is looser than jsonb's ``=``: ``_FLOAT``
    when it holds a float (two numbers that parse to one double compare equal), ``_BOOL``
    (looked for first: it ends the search) when it holds a bool (``True == 1``), else 0."""
    kind = type(value)
    if kind is dict:
        values = value.values()
    elif kind is list:
        values = value
    else:
        return _FLOAT if kind is float else _BOOL if kind is bool else 0
    found = 0
    for v in values:
        kind = type(v)
        if kind is str or kind is int or v is None:
            continue
        if kind is float:
            found = _FLOAT
        elif kind is bool:
            return _BOOL
        else:
            found |= _loose(v)
            if found & _BOOL:
                return found
    return found


def _loose_both(a: Any, b: Any) -> int:
    """``_loose(a) | _loose(b)`` for ``a == b`` (one shape: only the leaves' types may differ,
    ``1 == 1.0 == True``), in one walk over both (~1.4 µs an event, where two walks took ~2)."""
    kind = type(a)
    if kind is dict:
        items: Iterable[tuple[Any, Any]] = a.items()
    elif kind is list:
        items = enumerate(a)  # (index, value): ``b[key]`` reads either side's leaf
    else:
        kb = type(b)
        if kind is bool or kb is bool:
            return _BOOL
        return _FLOAT if kind is float or kb is float else 0
    found = 0
    for key, v in items:
        kv = type(v)
        if kv is str or v is None:
            continue
        w = b[key]
        kw = type(w)
        if kv is int and kw is int:
            continue
        if kv is bool or kw is bool:
            return _BOOL
        if kv is float or kw is float:
            found = _FLOAT
        else:
            found |= _loose_both(v, w)
            if found & _BOOL:
                return found
    return found


def same_json(pg_text: str | bytes, data: Any, text: str | bytes) -> bool:
    """Whether PostgreSQL's jsonb text and a payload (``text``, parsed as ``data``) are the same
    JSON, as jsonb compares: exact numbers, any key order. Either text may be UTF-8 bytes.

    The common case is decided by Python's ``==`` on the parsed values, which is jsonb's ``=``
    where neither holds a bool and every number is exact (an int, or a float whose text has
    fewer than 16 digits: no other such number parses to the same double). Where a run of 16
    or more digits appears, a number may be beyond a double's precision, and both sides are
    parsed again with exact decimals. Else canonical (key-sorted) serialisations compared in
    C decide, and :func:`json_equal` looks closer when they differ (jsonb prints ``1E+20`` as
    ``100000000000000000000``)."""
    try:
        theirs = orjson.loads(pg_text)
    except orjson.JSONDecodeError:  # a number too large for a double: the exact path below
        theirs = long = None
    else:
        if theirs == data:
            loose = _loose_both(theirs, data)
            if not loose:
                return True
            long = _has_long_number(text) or _has_long_number(pg_text)
            if loose == _FLOAT and not long:
                return True
        else:
            long = None
    if long is None:
        long = _has_long_number(text) or _has_long_number(pg_text)
    if long:
        exact = {"parse_float": Decimal, "parse_int": int}
        return json_equal(json.loads(pg_text, **exact), json.loads(text, **exact))
    if orjson.dumps(theirs, option=_SORTED) == orjson.dumps(data, option=_SORTED):
        return True
    return json_equal(theirs, data)

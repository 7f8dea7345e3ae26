"""JSON documents of results: the attributes a document lists, in its order, with the rounding
every esctl document uses for durations and rates."""

from __future__ import annotations

from typing import Any

_DIGITS = (("_per_s", 1), ("_s", 3))
"""Rates (``events_per_s``) to one decimal, durations in seconds (``elapsed_s``) to three."""


def rounded(name: str, value: Any) -> Any:
    """``value`` rounded as a float named ``name`` is rounded in every document."""
    if not isinstance(value, float):
        return value
    for suffix, digits in _DIGITS:
        if name.endswith(suffix):
            return round(value, digits)
    return value


def document(result: object, names: str, /, **values: Any) -> dict[str, Any]:
    """``result``'s document: a key for each of ``names`` (space-separated), in that order,
    holding the attribute of that name (floats rounded by :func:`rounded`), or the value
    given for it in ``values`` as it is."""
    keys = names.split()
    unnamed = values.keys() - set(keys)
    if unnamed:
        raise ValueError(f"values for keys not named: {sorted(unnamed)}")
    return {
        key: values[key] if key in values else rounded(key, getattr(result, key)) for key in keys
    }

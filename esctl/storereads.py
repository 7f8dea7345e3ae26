"""Reads of the event store's keys over the transport."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from esctl import layout, redisio
from esctl.errors import ServerError


@dataclass(frozen=True, slots=True)
class StoredPayload:
    commit_id: str
    value: bytes | None
    hash_key: str | None
    """The hash the value was found in (None when missing in both)."""


def fetch_values(
    client: redisio.RedisClient, app: str, commit_ids: Sequence[str]
) -> tuple[list[bytes | None], list[str | None]]:
    """Look each commit id up as the library does (partitioned hash, then legacy hash), with
    pipelined round trips: one pass for the likely hash, one more only for the misses.
    Returns the values (None when in neither hash) and the hash each was found in. On a
    cluster a failover is waited out (reads only: see :func:`esctl.redisio.pipelined`)."""
    orders = layout.event_hash_lookup_orders(app, commit_ids)
    values: list[bytes | None] = redisio.pipelined(
        client,
        [("HGET", o[0], c) for o, c in zip(orders, commit_ids, strict=True)],
        retry_reads=True,
    )
    where: list[str | None] = [o[0] for o in orders]
    misses: list[int] = []
    for i, reply in enumerate(values):
        if reply is None:
            misses.append(i)
        elif isinstance(reply, Exception):
            raise ServerError(f"HGET {orders[i][0]} {commit_ids[i]} failed: {reply}")
    if misses:
        second = redisio.pipelined(
            client, [("HGET", orders[i][1], commit_ids[i]) for i in misses], retry_reads=True
        )
        for i, reply in zip(misses, second, strict=True):
            if isinstance(reply, Exception):
                raise ServerError(f"HGET {orders[i][1]} {commit_ids[i]} failed: {reply}")
            values[i] = reply
            where[i] = orders[i][1] if reply is not None else None
    return values, where


def fetch_payloads(
    client: redisio.RedisClient, app: str, commit_ids: Sequence[str]
) -> list[StoredPayload]:
    """:func:`fetch_values` as one record per commit id."""
    values, where = fetch_values(client, app, commit_ids)
    return [StoredPayload(c, v, w) for c, v, w in zip(commit_ids, values, where, strict=True)]


def commit_lists(
    client: redisio.RedisClient, keys: Sequence[str], starts: Sequence[int] | None = None
) -> list[list[str]]:
    """LRANGE each commit list (from ``starts[i]``, default 0) in pipelined round trips; on a
    cluster a failover is waited out (reads only: see :func:`esctl.redisio.pipelined`)."""
    begin = starts or [0] * len(keys)
    replies = redisio.pipelined(
        client,
        [("LRANGE", k, s, -1) for k, s in zip(keys, begin, strict=True)],
        retry_reads=True,
    )
    out: list[list[str]] = []
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(
                f"cannot read commit list {key}: {reply}",
                hint="the key is expected to be a Redis list (docs/layout.md §1)",
            )
        if reply and type(reply[0]) is bytes:  # redisio.key_str inlined: a call less per id
            out.append([c.decode("utf-8", "surrogateescape") for c in reply])
        else:
            out.append([redisio.key_str(c) for c in reply])
    return out

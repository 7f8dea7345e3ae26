"""Typed reads and writes for the tests' Redis clients, which return bytes (no
``decode_responses``, as esctl's own clients).

redis-py types every reply ``bytes | str`` (it cannot know how a client decodes): these check
that a reply is bytes, so a test reads it without a cast, and fail loudly if it is not."""

from __future__ import annotations

from typing import cast

from esctl.redisio import RedisClient


def as_bytes(value: object) -> bytes:
    """``value``, which must be bytes."""
    assert isinstance(value, bytes), f"expected bytes from Redis, got {type(value).__name__}"
    return value


def hget(client: RedisClient, key: str | bytes, field: str | bytes) -> bytes | None:
    """HGET: the field's value, or None when the hash or the field does not exist."""
    value = client.hget(key, field)
    return None if value is None else as_bytes(value)


def hgetall(client: RedisClient, key: str | bytes) -> dict[bytes, bytes]:
    """HGETALL: every field of the hash and its value."""
    return {as_bytes(f): as_bytes(v) for f, v in client.hgetall(key).items()}


def lrange(client: RedisClient, key: str | bytes) -> list[bytes]:
    """LRANGE key 0 -1: the whole list, head first."""
    return [as_bytes(v) for v in client.lrange(key, 0, -1)]


def smembers(client: RedisClient, key: str | bytes) -> set[bytes]:
    """SMEMBERS: the members of the set."""
    return {as_bytes(m) for m in client.smembers(key)}


def lrem(client: RedisClient, key: str | bytes, count: int, value: bytes) -> int:
    """LREM: remove ``count`` occurrences of ``value`` (0: all); how many went."""
    # redis-py annotates LREM's value as str; it sends bytes as they are (any EncodableT).
    return client.lrem(key, count, cast(str, value))


def hvals(client: RedisClient, key: str | bytes) -> list[bytes]:
    """HVALS: the values of every field of the hash."""
    return [as_bytes(v) for v in client.hvals(key)]

"""Where an event is: the partition and layout of the hash its payload was found in, and its
position in a commit list."""

from __future__ import annotations

from esctl import layout, redisio
from esctl.errors import ServerError


def where_stored(app: str, hash_key: str | None) -> tuple[int | None, str | None]:
    """(partition number, ``"partitioned"``/``"legacy"``) of the hash a payload was found in."""
    if hash_key is None:
        return None, None
    part = layout.event_hash_partition(app, hash_key)
    return part, "legacy" if part is None else "partitioned"


def list_position(client: redisio.RedisClient, key: str, commit_id: str) -> int | None:
    """Index of ``commit_id`` in the list ``key`` (LPOS; LRANGE on servers before 6.0.6)."""
    (reply,) = redisio.pipelined(client, [("LPOS", key, commit_id)])
    if not isinstance(reply, Exception):
        return None if reply is None else int(reply)
    (listed,) = redisio.pipelined(client, [("LRANGE", key, 0, -1)])
    if isinstance(listed, Exception):
        raise ServerError(f"cannot read commit list {key}: {listed}")
    wanted = redisio.key_bytes(commit_id)
    for index, item in enumerate(listed):
        if item == wanted:
            return index
    return None

"""``inspect event``: one stored payload found by commit id, decoded, and whether the commit
list of the aggregate it names lists it (an orphan when not)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esctl import codec, layout, redisio, storereads
from esctl.documents import document
from esctl.errors import NotFound
from esctl.inspect.locate import list_position, where_stored
from esctl.inspect.problems import DECODING_KINDS


@dataclass
class EventReport:
    """One stored payload found by commit id, and whether a commit list names it."""

    app: str
    commit_id: str
    hash_key: str
    partition: int | None
    layout: str
    stored_bytes: int
    compressed: str | None
    event_type: str | None
    type_name: str | None
    aggregate_id: str | None
    aggregate_type: str | None
    version: int | None
    timestamp: str | None
    commit_list_key: str | None
    committed: bool | None
    """True when the payload's aggregate's commit list names this commit id, False when it does
    not (an orphan), None when that could not be asked (no Id in the payload)."""
    position: int | None
    problems: list[dict[str, str]]
    text: str
    data: Any

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return document(
            self,
            "app commit_id hash_key partition layout stored_bytes compressed event_type type_name"
            " aggregate_id aggregate_type version timestamp commit_list_key committed position ok"
            " problems text data",
        )


def inspect_event(client: redisio.RedisClient, app: str, commit_id: str) -> EventReport:
    """Find a commit id's payload as the library does (partitioned hash, then legacy), decode
    it, and ask the commit list of the aggregate it names whether it is committed. An event no
    commit list names is an orphan (problem kind ``orphan``). Raises NotFound when neither hash
    holds the commit id."""
    values, where = storereads.fetch_values(client, app, [commit_id])
    value, hash_key = values[0], where[0]
    if value is None or hash_key is None:
        raise NotFound(
            f"commit {commit_id!r} of {app} is in neither {layout.event_hash_key(app, commit_id)} "
            f"nor the legacy hash {layout.legacy_event_hash_key(app)}",
            hint="check the commit id and --app; `esctl inspect integrity` finds payloads stored "
            "in the wrong partition",
        )
    decoded, event = codec.decode_event(value)
    partition, where_kind = where_stored(app, hash_key)
    problems: list[dict[str, str]] = []
    skip_rest = False
    for p in event.problems:
        if skip_rest:
            break
        problems.append({"kind": p.kind, "key": hash_key, "detail": p.detail})
        skip_rest = p.kind in DECODING_KINDS
    list_key = committed = position = None
    if event.aggregate_id is not None:
        list_key = layout.commit_list_key(app, event.aggregate_id)
        position = list_position(client, list_key, commit_id)
        committed = position is not None
        if not committed:
            problems.append(
                {
                    "kind": "orphan",
                    "key": hash_key,
                    "detail": f"commit list {list_key} does not name commit {commit_id}: the "
                    "payload was never committed (a save that died between HSET and RPUSH)",
                }
            )
    return EventReport(
        app=app,
        commit_id=commit_id,
        hash_key=hash_key,
        partition=partition,
        layout=where_kind or "legacy",
        stored_bytes=decoded.stored_size,
        compressed=decoded.compressed,
        event_type=event.event_type,
        type_name=event.type_name,
        aggregate_id=event.aggregate_id,
        aggregate_type=event.aggregate_type,
        version=event.version,
        timestamp=event.timestamp_text,
        commit_list_key=list_key,
        committed=committed,
        position=position,
        problems=problems,
        text=decoded.text,
        data=event.data,
    )

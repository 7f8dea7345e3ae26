"""esctl.layout: key names, partitions and SCAN patterns of the Learning.EventStore layout."""

from __future__ import annotations

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from esctl import layout


def crc32_ieee(data: bytes) -> int:
    """Bitwise CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), written out so the
    partition formula is checked against the definition rather than against zlib itself."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# --- partitions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        ("", 0),
        # the CRC-32 check value: crc32("123456789") = 0xCBF43926 = 3421780262
        ("123456789", 3421780262 % 655360),
        # GUID commit ids: crc32 0xF4A58A20 and 0xD3C1CE98
        ("0f8fad5b-d9cb-469f-a165-70867728950e", 625184),
        ("7c9e6679-7425-40de-944b-e07fc1f90ae7", 642712),
        ("1", 454583),  # crc32 0x83DCEFB7
    ],
)
def test_partition_known_values(identifier: str, expected: int) -> None:
    assert layout.partition(identifier) == expected


def test_partition_check_value_is_the_ieee_crc() -> None:
    assert crc32_ieee(b"123456789") == 0xCBF43926
    assert layout.partition("123456789") == 3421780262 % 655360 == 145702


def test_partition_uses_utf8_bytes() -> None:
    assert layout.partition("é") == crc32_ieee("é".encode()) % 655360
    assert layout.partition("é") != crc32_ieee("é".encode("latin-1")) % 655360


@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_partition_matches_the_definition(identifier: str) -> None:
    part = layout.partition(identifier)
    assert 0 <= part < layout.PARTITION_COUNT == 655360
    assert part == crc32_ieee(identifier.encode("utf-8")) % 655360


# --- keys ----------------------------------------------------------------------------------

APP = "Learning.ScoringService.Web-Prod"
COMMIT = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_event_storage_keys() -> None:
    assert (
        layout.commit_list_key(APP, "agg-1")
        == "{EventStore:Learning.ScoringService.Web-Prod}:agg-1"
    )
    assert layout.event_hash_key(APP, COMMIT) == f"EventStore:{APP}:{layout.partition(COMMIT)}"
    assert layout.event_hash_key_for_partition(APP, 17) == f"EventStore:{APP}:17"
    assert layout.legacy_event_hash_key(APP) == f"EventStore:{APP}"
    assert layout.snapshot_hash_key(APP, "agg-1") == f"Snapshots:{APP}:{layout.partition('agg-1')}"


def test_commit_list_key_round_trips() -> None:
    for aggregate_id in ["agg-1", "42", "with:colons:}{", "ünï", ""]:
        key = layout.commit_list_key(APP, aggregate_id)
        assert layout.aggregate_id_from_commit_list_key(APP, key) == aggregate_id
    with pytest.raises(ValueError):
        layout.aggregate_id_from_commit_list_key(APP, "{EventStore:Other}:agg-1")


def test_event_hash_partition() -> None:
    assert layout.event_hash_partition(APP, f"EventStore:{APP}:123") == 123
    assert layout.event_hash_partition(APP, f"EventStore:{APP}") is None
    for bad in [f"EventStore:{APP}:x", f"Snapshots:{APP}:1", f"EventStore:{APP}:"]:
        with pytest.raises(ValueError):
            layout.event_hash_partition(APP, bad)


def test_lookup_order_reads_partitioned_first_except_for_legacy_ids() -> None:
    partitioned = layout.event_hash_key(APP, COMMIT)
    assert layout.event_hash_lookup_order(APP, COMMIT) == (partitioned, f"EventStore:{APP}")
    assert layout.event_hash_lookup_order(APP, "17") == (
        f"EventStore:{APP}",
        layout.event_hash_key(APP, "17"),
    )


def test_messaging_keys() -> None:
    assert layout.subscribers_key("production", "ItemScoreCreated") == (
        "Subscribers:{production:ItemScoreCreated}"
    )
    assert (
        layout.queue_key("Svc", "production", "T", "published")
        == "Svc:{production:T}:PublishedEvents"
    )
    assert (
        layout.queue_key("Svc", "production", "T", "processing")
        == "Svc:{production:T}:ProcessingEvents"
    )
    assert layout.queue_key("Svc", "production", "T", "dead") == "Svc:{production:T}:DeadLetters"
    assert layout.retry_data_key("production", "T", "agg") == "RetryData:{production:T}:agg"
    assert layout.notification_channel("production", "T") == "production:T"
    with pytest.raises(ValueError, match="unknown queue list"):
        layout.queue_key("Svc", "production", "T", "deadletters")


# --- queue key parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            "Learning.ScoringService.Web-Prod:{production:ItemScoreCreated}:PublishedEvents",
            ("Learning.ScoringService.Web-Prod", "production", "ItemScoreCreated", "published"),
        ),
        ("Svc:{prod:T}:ProcessingEvents", ("Svc", "prod", "T", "processing")),
        ("Svc:{prod:T}:DeadLetters", ("Svc", "prod", "T", "dead")),
        ("A:B:{prod:T}:DeadLetters", ("A:B", "prod", "T", "dead")),
        ("Svc:{prod:Outer+Inner}:DeadLetters", ("Svc", "prod", "Outer+Inner", "dead")),
        ("Svc:{prod:Wrapper`1}:DeadLetters", ("Svc", "prod", "Wrapper`1", "dead")),
    ],
)
def test_parse_queue_key(key: str, expected: tuple[str, str, str, str]) -> None:
    assert layout.parse_queue_key(key) == expected


@pytest.mark.parametrize(
    "key",
    [
        "Subscribers:{prod:T}",
        "RetryData:{prod:T}:agg",
        "Svc:{prod:T}:Published",
        "Svc:{prod:T}:DeadLetters:extra",
        ":{prod:T}:DeadLetters",
        "Svc:{prodT}:DeadLetters",
        "{EventStore:App}:agg",
        "EventStore:App:12",
    ],
)
def test_parse_queue_key_rejects_other_keys(key: str) -> None:
    assert layout.parse_queue_key(key) is None


names = st.text(
    # braces delimit the hash tag; control characters: see test_parse_queue_key_with_newlines
    alphabet=st.characters(codec="utf-8", exclude_characters="{}", exclude_categories=["Cc"]),
    min_size=1,
    max_size=20,
)


@given(
    subscriber=names,
    env=names.filter(lambda s: ":" not in s),
    event_type=names,
    which=st.sampled_from(layout.QUEUE_LISTS),
)
def test_queue_key_round_trips(subscriber: str, env: str, event_type: str, which: str) -> None:
    key = layout.queue_key(subscriber, env, event_type, which)
    assert layout.parse_queue_key(key) == (subscriber, env, event_type, which)


def test_parse_queue_key_with_newlines() -> None:
    assert layout.parse_queue_key("Svc:{prod:T}:DeadLetters\n") is None
    key = layout.queue_key("line1\nline2", "prod", "T", "dead")
    assert layout.parse_queue_key(key) == ("line1\nline2", "prod", "T", "dead")


# --- glob escaping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain.App-1", "plain.App-1"),
        ("a*b", r"a\*b"),
        ("a?b", r"a\?b"),
        ("a[bc]d", r"a\[bc\]d"),
        ("back\\slash", r"back\\slash"),
        ("{braces}:^-!", "{braces}:^-!"),
    ],
)
def test_glob_escape(text: str, escaped: str) -> None:
    assert layout.glob_escape(text) == escaped


def test_patterns_match_only_their_own_app_on_a_real_server(redis_client: redis.Redis) -> None:
    tricky = "App*[x]?\\"
    neighbours = ["AppZ[x]Q\\", "App*[x]?\\X", "Appx", "App*[x]", "App"]
    for app in [tricky, *neighbours]:
        redis_client.rpush(layout.commit_list_key(app, "agg"), "c1")
        redis_client.hset(layout.event_hash_key(app, "c1"), "c1", "{}")
        redis_client.hset(layout.snapshot_hash_key(app, "agg"), "agg", "{}")
    for pattern, expected in [
        (layout.commit_list_pattern(tricky), layout.commit_list_key(tricky, "agg")),
        (layout.event_hash_pattern(tricky), layout.event_hash_key(tricky, "c1")),
        (layout.snapshot_hash_pattern(tricky), layout.snapshot_hash_key(tricky, "agg")),
    ]:
        found = {k.decode() for k in redis_client.scan_iter(match=pattern, count=1000)}
        assert found == {expected}, pattern


def test_queue_and_subscriber_patterns_on_a_real_server(redis_client: redis.Redis) -> None:
    env, other = "prod*", "prodX"
    for e in (env, other):
        redis_client.sadd(layout.subscribers_key(e, "T"), "Svc")
        redis_client.lpush(layout.queue_key("Svc", e, "T", "dead"), "{}")
    queues = {k.decode() for k in redis_client.scan_iter(match=layout.queue_pattern(env))}
    assert queues == {layout.queue_key("Svc", env, "T", "dead")}
    subs = {k.decode() for k in redis_client.scan_iter(match=layout.subscribers_pattern(env))}
    assert subs == {layout.subscribers_key(env, "T")}


def test_lookup_orders_of_many_ids_are_each_ids_lookup_order() -> None:
    ids = [COMMIT, "17", "0", "Zürich-1", "\udcff\udcfe", "", "12a", "٣"]
    assert layout.event_hash_lookup_orders(APP, ids) == [
        layout.event_hash_lookup_order(APP, c) for c in ids
    ]

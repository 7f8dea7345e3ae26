"""esctl's Redis layer (esctl.redisio) on a real three-primary Redis Cluster: connecting, SCAN
over every primary with resumable positions, pipelined commands of any slot (replies shaped as
on a single server), scripts, INFO-based helpers (issue 8)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis
import redis.cluster
from cluster import LocalCluster, redis_cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esctl import redisio
from esctl.errors import ConnectionFailed
from esctl.redisio import commands as redisio_commands
from esctl.redisio import pipelines as redisio_pipelines

__all__ = ["redis_cluster"]  # the fixture, imported for pytest


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[redisio.RedisClient]:
    client = redisio.connect(redis_cluster.url)
    try:
        yield client
    finally:
        client.close()


def test_connect_takes_a_cluster_url_or_the_cluster_flag(redis_cluster: LocalCluster) -> None:
    by_url = redisio.connect(redis_cluster.url)
    by_flag = redisio.connect(f"redis://127.0.0.1:{redis_cluster.nodes[2].port}/0", cluster=True)
    try:
        for client in (by_url, by_flag):
            assert isinstance(client, redis.cluster.RedisCluster)
            assert len(client.get_primaries()) == 3
            assert redisio.describe(client).startswith("cluster 127.0.0.1:")
    finally:
        by_url.close()
        by_flag.close()


def test_connect_to_a_dead_cluster_seed_is_connection_failed() -> None:
    from esctl.servers import free_port

    with pytest.raises(ConnectionFailed) as caught:
        redisio.connect(f"redis+cluster://:secret@127.0.0.1:{free_port()}")
    assert "secret" not in str(caught.value)


def test_scan_pages_finds_keys_on_every_primary_and_resumes_from_any_position(
    redis_cluster: LocalCluster, cluster_client: redisio.RedisClient
) -> None:
    tag = secrets.token_hex(4)
    keys = {f"scan-{tag}:{i}" for i in range(600)}
    redisio.pipelined(cluster_client, [("SET", k, "x") for k in keys])
    per_node = {
        n.port: len(list(redis.Redis(port=n.port).scan_iter(match=f"scan-{tag}:*")))
        for n in redis_cluster.nodes
    }
    assert sorted(per_node.values())[0] > 0  # spread over all three primaries

    pages = list(redisio.scan_pages(cluster_client, f"scan-{tag}:*", count=50))
    found = [k for _, page in pages for k in page]
    assert set(found) == keys
    assert pages[-1][0].done and not any(p.done for p, _ in pages[:-1])
    assert {p.node for p, _ in pages[:-1]} == {0, 1, 2} or len(pages) < 4

    # Resuming from each position yields the rest (SCAN may repeat, never skip).
    for cut in range(0, len(pages) - 1, 3):
        position = redisio.ScanPosition.decode(pages[cut][0].encode())
        rest = {k for _, page in redisio.scan_pages(
            cluster_client, f"scan-{tag}:*", count=50, start=position
        ) for k in page}  # fmt: skip
        before = {k for _, page in pages[: cut + 1] for k in page}
        assert before | rest == keys

    typed = {k for _, page in redisio.scan_pages(cluster_client, f"scan-{tag}:*", type_="hash")
             for k in page}  # fmt: skip
    assert typed == set()


def test_pipelined_replies_have_the_same_shape_as_on_a_single_server(
    cluster_client: redisio.RedisClient, redis_client: redis.Redis
) -> None:
    tag = secrets.token_hex(4)
    commands: list[tuple[object, ...]] = [
        ("HSET", f"h-{tag}", "a", "1", "b", "2"),
        ("SADD", f"s-{tag}", "m"),
        ("RPUSH", f"l-{tag}", "x", "y"),
        ("HGETALL", f"h-{tag}"),
        ("HSCAN", f"h-{tag}", 0, "COUNT", 100),
        ("SMEMBERS", f"s-{tag}"),
        ("TYPE", f"l-{tag}"),
        ("LRANGE", f"l-{tag}", 0, -1),
        ("LPOS", f"l-{tag}", "y"),
        ("HGET", f"h-{tag}", "missing"),
        ("LLEN", f"h-{tag}"),  # an error reply, returned as an exception object
    ]
    on_cluster = redisio.pipelined(cluster_client, commands)
    on_single = redisio.pipelined(redis_client, commands)
    assert isinstance(on_cluster.pop(), Exception) and isinstance(on_single.pop(), Exception)
    # TYPE is a status reply: callers read it with key_str, which takes str or bytes.
    on_cluster[6], on_single[6] = redisio.key_str(on_cluster[6]), redisio.key_str(on_single[6])
    assert on_cluster == on_single
    assert on_cluster[3] == [b"a", b"1", b"b", b"2"]
    assert on_cluster[4] == [b"0", [b"a", b"1", b"b", b"2"]]


def test_eval_pipelined_runs_a_script_on_keys_of_every_slot(
    cluster_client: redisio.RedisClient,
) -> None:
    script = f"-- {secrets.token_hex(4)}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    keys = [f"eval-{secrets.token_hex(4)}:{i}" for i in range(30)]
    first = redisio.eval_pipelined(cluster_client, script, [(1, k, 2) for k in keys])
    assert first == [2] * 30  # NOSCRIPT on every node at first: EVAL fallback
    again = redisio.eval_pipelined(cluster_client, script, [(1, k, 3) for k in keys])
    assert again == [5] * 30


def test_scan_epoch_used_memory_and_the_latency_pacer_work_on_a_cluster(
    cluster_client: redisio.RedisClient,
) -> None:
    epoch = redisio.scan_epoch(cluster_client)
    assert epoch and epoch == redisio.scan_epoch(cluster_client)
    assert redisio.used_memory(cluster_client) > 3 * 100_000
    assert redisio.used_memory_or_none(cluster_client) is not None
    pacer = redisio.LatencyPacer(cluster_client, rate=None, max_latency_ms=1000)
    pacer.wait(10)
    assert 0 < pacer.last_latency_ms < 1000


def mixed_batch(tag: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Writes, then reads of keys spread over every slot: present and missing keys and fields,
    large values, binary and non-UTF-8 bytes, error replies, scripts and MEMORY USAGE."""
    big = bytes(range(256)) * 4096  # 1 MiB of every byte value, read twice from 10 keys
    writes: list[tuple[object, ...]] = []
    reads: list[tuple[object, ...]] = []
    for i in range(3000):
        key = f"mix-{tag}:{i}"
        if i % 3 == 0:
            writes.append(("HSET", key, "f", f"v{i}", "g", b"\xff\x00"))
            reads += [("HGET", key, "f"), ("HGET", key, "missing"), ("HLEN", key)]
            reads += [("HGETALL", key), ("HSCAN", key, 0, "COUNT", 10), ("LLEN", key)]
        elif i % 3 == 1:
            writes.append(("RPUSH", key, *(f"c{j}" for j in range(i % 7 + 1))))
            reads += [("LRANGE", key, 0, -1), ("LRANGE", key, 2, -1), ("LINDEX", key, -1)]
            reads += [("LPOS", key, "c0"), ("TYPE", key), ("HGET", key, "x")]
        elif i % 300 == 2:
            writes.append(("SET", key, big))
            reads += [("GET", key), ("GET", key), ("TYPE", key)]
        else:
            reads += [("GET", key), ("LRANGE", key, 0, -1), ("HGET", key, "f"), ("TYPE", key)]
            reads += [("EXISTS", key), ("EVALSHA", "0" * 40, 1, key)]
    reads += [("EVAL", "return redis.call('TYPE', KEYS[1])", 1, f"mix-{tag}:1")]
    return writes, reads


def comparable(replies: list[object]) -> list[object]:
    """Replies with errors as their text and status replies as str (TYPE: a status reply is
    bytes from hiredis and str from redis-py's parser; callers read it with key_str)."""
    out: list[object] = []
    for reply in replies:
        if redisio_commands._is_noscript(reply):  # redis-py's NoScriptError drops the code
            out.append(("error", "NOSCRIPT"))
        elif isinstance(reply, Exception):
            out.append(("error", str(reply).split(" ")[0]))
        elif isinstance(reply, bytes) and reply in (b"hash", b"list", b"none", b"string"):
            out.append(reply.decode())
        else:
            out.append(reply)
    return out


def test_per_node_pipelines_answer_as_a_single_server_and_as_redis_pys_pipeline(
    cluster_client: redisio.RedisClient,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(cluster_client, redis.cluster.RedisCluster)
    tag = secrets.token_hex(4)
    writes, reads = mixed_batch(tag)
    # the fast path
    assert redisio_pipelines._pipelined_by_node(cluster_client, writes, 1000) is not None
    redisio.pipelined(redis_client, writes)
    on_single = redisio.pipelined(redis_client, reads)
    on_cluster = redisio.pipelined(cluster_client, reads, chunk=700)
    slots = {cluster_client.keyslot(c[1]) for c in reads if c[0] == "GET"}
    assert len(slots) > 900  # keys of many slots, on every primary
    assert comparable(on_cluster) == comparable(on_single)
    assert sum(isinstance(r, bytes) and len(r) == 1 << 20 for r in on_cluster) == 20
    assert ("error", "WRONGTYPE") in comparable(on_cluster)
    assert ("error", "NOSCRIPT") in comparable(on_cluster)

    monkeypatch.setattr(redisio_pipelines, "BY_NODE_PIPELINES", False)  # redis-py's ClusterPipeline
    assert redisio_pipelines._pipelined_by_node(cluster_client, reads, 1000) is None
    assert comparable(redisio.pipelined(cluster_client, reads)) == comparable(on_cluster)
    memory = [("MEMORY", "USAGE", f"mix-{tag}:{i}") for i in range(0, 3000, 7)]
    monkeypatch.setattr(redisio_pipelines, "BY_NODE_PIPELINES", True)
    sizes = redisio.pipelined(cluster_client, memory)
    assert all(isinstance(s, int) and s > 0 for s in sizes[0::3])


def test_commands_the_per_node_path_cannot_place_go_through_redis_py(
    cluster_client: redisio.RedisClient,
) -> None:
    """Keys of several slots in one command, or a command with no key: redis-py's pipeline
    decides (and answers as before)."""
    assert isinstance(cluster_client, redis.cluster.RedisCluster)
    tag = secrets.token_hex(4)
    spread = [("EXISTS", f"a-{tag}", f"b-{tag}", f"c-{tag}")]
    assert cluster_client.keyslot(f"a-{tag}") != cluster_client.keyslot(f"b-{tag}")
    assert redisio_pipelines._pipelined_by_node(cluster_client, spread, 1000) is None
    together = [("EXISTS", f"{{{tag}}}a", f"{{{tag}}}b"), ("SET", f"{{{tag}}}a", 1)]
    assert redisio_pipelines._pipelined_by_node(cluster_client, together, 1000) == [0, b"OK"]
    assert redisio.pattern_slot("{EventStore:App\\*}:*") == cluster_client.keyslot(
        "{EventStore:App*}:x"
    )
    assert redisio.pattern_slot("EventStore:App:*") is None
    assert redisio.pattern_slot("{Event*}:*") is None
    assert redisio.pattern_slot("{}:*") is None


def test_read_only_calls_are_told_from_writing_ones() -> None:
    assert redisio.is_read_only([("HGET", "h", "f"), ("LRANGE", "l", 0, -1), ("TYPE", "k")])
    assert redisio.is_read_only([("MEMORY", "USAGE", "k"), (b"llen", b"l")])
    assert not redisio.is_read_only([("HGET", "h", "f"), ("HSET", "h", "f", "v")])
    assert not redisio.is_read_only([("EVALSHA", "0" * 40, 1, "k")])
    assert not redisio.is_read_only([("MEMORY", "PURGE")])


# --- the glob of SCAN MATCH, applied to keys read by GETKEYSINSLOT ---------------------------

GLOB_BYTES = st.sampled_from([bytes([c]) for c in b"abz:-*?[]^\\{\x00\x80\xc3\xff"])
"""Every character the glob gives a meaning, and bytes over 0x7f (ranges compare bytes as
signed chars on x86-64)."""
GLOB_PIECES = st.one_of(
    GLOB_BYTES,
    st.builds(
        lambda negate, low, high: b"[" + negate + low + b"-" + high + b"]",
        st.sampled_from([b"", b"^"]),
        GLOB_BYTES,
        GLOB_BYTES,
    ),
)
"""Pieces of patterns: a character, or a range class (rare by chance alone)."""


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pattern=st.lists(GLOB_PIECES, max_size=6).map(b"".join),
    keys=st.lists(st.lists(GLOB_BYTES, max_size=5).map(b"".join), min_size=1, max_size=12),
)
def test_glob_matcher_matches_what_scan_match_matches(
    redis_client: redis.Redis, pattern: bytes, keys: list[bytes]
) -> None:
    """A moved slot's keys come from GETKEYSINSLOT, which has no MATCH: esctl filters them
    itself and must keep exactly the keys SCAN MATCH would have returned (empty key, unclosed
    ``[``, trailing ``\\``, reversed ranges and bytes over 0x7f included)."""
    redis_client.flushdb()
    redis_client.mset(dict.fromkeys(keys, b"x"))
    by_redis = set(redis_client.scan_iter(match=pattern, count=1000))
    matches = redisio.glob_matcher(redisio.key_str(pattern))
    assert {k for k in keys if matches(k)} == by_redis


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("{EventStore:App\\*}:*", b"{EventStore:App*}:42", True),
        ("{EventStore:App\\*}:*", b"{EventStore:Apps}:42", False),
        ("EventStore:App:*", b"EventStore:App:7", True),
        ("EventStore:App:*", b"EventStore:App", False),
        ("k[^a-c]?", b"kdx", True),
        ("k[^a-c]?", b"kbx", False),
        ("k[z-a]", b"km", True),  # a reversed range is swapped
        ("k[ab", b"kb", True),  # an unclosed class runs to the end
        ("k\\", b"k\\", True),  # a trailing backslash is itself
        ("?", "é".encode(), False),  # ? is one byte, é is two
        ("[a-\udcff]", b"\xff", True),  # bytes compare as signed chars: -1 < 97
        ("[a-\udcff]", b"\x00", True),
        ("[a-\udcff]", b"\x80", False),
        ("*", b"", True),  # SCAN's "*" filters nothing
        ("a*", b"", False),
    ],
)
def test_glob_matcher_examples(pattern: str, key: bytes, expected: bool) -> None:
    assert redisio.glob_matcher(pattern)(key) is expected

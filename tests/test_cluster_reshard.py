"""Resharding under esctl's feet (issue 8): slots moved between the primaries of a real cluster
while pipelines, SCANs, ``migrate redis-to-pg`` and ``events query`` run. MOVED and ASK
replies are followed, SCAN misses no key, and the results are those of a quiet run. Also: on
a lost node, read-only work retries for a while, writes fail at once."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import independent_writer as iw
import pytest
import redis
import redis.cluster
from cluster import (
    LocalCluster,
    Resharder,
    key_slots,
    move_slot,
    node_id,
    redis_cluster,
    slot_owner,
    start_cluster,
    wait_for_agreement,
    wait_for_epochs,
)
from helpers import run_cli
from test_cluster_commands import VOLATILE
from test_migrate import assert_clean_aggregates_migrated, cli_args, new_database, pg_rows

from esctl import layout, redisio, servers
from esctl.errors import ConnectionFailed, ServerError
from esctl.redisio import cluster_scan, pipelines
from esctl.redisio import retry as redisio_retry

__all__ = ["redis_cluster"]  # the fixture, imported for pytest


@pytest.fixture
def single_pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A second database, for the run without resharding."""
    with new_database(pg_admin_dsn) as dsn:
        yield dsn


def busiest_slots(client: redis.cluster.RedisCluster, app: str, count: int) -> list[int]:
    """The commit lists' slot and the ``count - 1`` slots holding most of the app's payload
    hashes: moving these moves most of what a migration reads."""
    lists = client.keyslot(layout.commit_list_key(app, "x"))
    hashes = key_slots(client, f"EventStore:{app}:*")
    ranked = sorted(hashes, key=lambda s: (-hashes[s], s))
    return [lists, *[s for s in ranked if s != lists][: count - 1]]


def test_pipelined_follows_ask_and_moved_while_a_slot_moves(redis_cluster: LocalCluster) -> None:
    tag = secrets.token_hex(4)
    keys = [f"{{ask-{tag}}}:{i}" for i in range(40)]
    seed = redis_cluster.client()
    seed.mset({k: f"value-{k}" for k in keys})
    slot = seed.keyslot(keys[0])
    source = slot_owner(redis_cluster, slot)
    target = next(p for p in redis_cluster.primaries() if p.port != source.port)
    stale = redisio.connect(redis_cluster.url)  # its slot map is taken before the move
    assert isinstance(stale, redis.cluster.RedisCluster)
    reads = [("GET", k) for k in keys]
    assert redisio.pipelined(stale, reads) == [f"value-{k}".encode() for k in keys]

    # Half-moved: the source answers ASK for the keys already on the target.
    with redis.Redis(port=source.port) as src, redis.Redis(port=target.port) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source.port))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target.port))
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys[:20])
        assert isinstance(redisio.pipelined(stale, reads[:1], retry_reads=False)[0], bytes)
        try:
            assert redisio.pipelined(stale, reads) == [f"value-{k}".encode() for k in keys]
            # A new key of a half-moved slot is created on the target (ASK), once.
            new_key = f"{{ask-{tag}}}:new"
            assert redisio.pipelined(stale, [("SET", new_key, "n")]) == [b"OK"]
            assert dst.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 21
            assert src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 20
        finally:
            src.execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys[20:]
            )
            for node in redis_cluster.primaries():
                with redis.Redis(port=node.port) as plain:
                    plain.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(target.port))
    wait_for_agreement(redis_cluster)

    # Moved: the stale map learns the new owner from MOVED, and the writes land there.
    assert stale.nodes_manager.slots_cache[slot][0].port == source.port
    writes = [("SET", k, f"again-{k}") for k in keys]
    assert redisio.pipelined(stale, writes) == [b"OK"] * len(keys)
    assert stale.nodes_manager.slots_cache[slot][0].port == target.port
    assert redisio.pipelined(stale, reads) == [f"again-{k}".encode() for k in keys]
    with redis.Redis(port=target.port) as dst:
        assert dst.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == len(keys) + 1
    move_slot(redis_cluster, slot, source)
    wait_for_agreement(redis_cluster)
    stale.close()


def test_a_reshard_changes_the_scan_epoch_so_no_cursor_outlives_it(
    redis_cluster: LocalCluster,
) -> None:
    """A SCAN cursor saved by a run (migrate's resume position) is only reused on the layout it
    was taken on: moving a slot away, and moving it back (the config epoch is bumped), each
    give a new epoch."""
    client = redisio.connect(redis_cluster.url)
    slot = 4321
    home = slot_owner(redis_cluster, slot)
    other = next(p for p in redis_cluster.primaries() if p.port != home.port)
    epochs = [redisio.scan_epoch(client)]
    assert redisio.scan_epoch(client) == epochs[0]  # stable while nothing changes
    try:
        move_slot(redis_cluster, slot, other)
        wait_for_agreement(redis_cluster)
        epochs.append(redisio.scan_epoch(client))
    finally:
        move_slot(redis_cluster, slot, home)
        wait_for_agreement(redis_cluster)
    epochs.append(redisio.scan_epoch(client))
    assert len(set(epochs)) == 3, epochs
    client.close()


@pytest.mark.parametrize("pattern", ["{scan-TAG}:*", "scan-TAG:*"])
def test_scan_pages_during_a_reshard_hands_out_every_key_once(
    redis_cluster: LocalCluster, pattern: str
) -> None:
    """One hash tag (scanned on its slot's owner, then on the node it moves to) and keys
    spread over every slot (scanned on every primary) both come out whole."""
    tag = secrets.token_hex(4)
    match = pattern.replace("TAG", tag)
    keys = {match.replace("*", str(i)) for i in range(2000)}
    client = redisio.connect(redis_cluster.url)
    redisio.pipelined(client, [("SET", k, "x") for k in keys])
    slots = key_slots(redis_cluster.client(), match)
    moving = sorted(slots, key=lambda s: -slots[s])[:40]
    scans = 0
    with Resharder(redis_cluster, moving, keys_per_step=40) as resharder:
        while scans < 15 or resharder.moves < 6:
            found = [k for _, page in redisio.scan_pages(client, match, count=100) for k in page]
            assert len(found) == len(set(found)) and set(found) == keys, f"scan {scans}"
            scans += 1
            assert scans < 500, "the resharder moved nothing"
    assert resharder.moves >= 6 and resharder.keys > 0
    client.close()


def test_migrate_during_a_reshard_gives_the_rows_of_a_run_without_one(
    redis_cluster: LocalCluster, pg_dsn: str, single_pg_dsn: str, app_name: str
) -> None:
    writer = redis_cluster.client()
    truth = iw.write_store(writer, app=app_name, aggregates=250, seed=21)
    moving = busiest_slots(writer, app_name, 60)
    args = [*cli_args(redis_cluster.url, pg_dsn, app_name), "--init-schema", "--json"]
    with Resharder(redis_cluster, moving) as resharder:
        # --rate stretches the run over the resharding (~1,200 events at 500/s)
        during = run_cli("migrate", "redis-to-pg", *args, "--batch-size", "50", "--rate", "500")
        moves_during = resharder.moves
    assert moves_during >= 5, "the slots did not move while the migration ran"
    assert during.returncode == 0, during.stdout + during.stderr
    quiet_args = [*cli_args(redis_cluster.url, single_pg_dsn, app_name), "--init-schema", "--json"]
    quiet = run_cli("migrate", "redis-to-pg", *quiet_args, "--batch-size", "50")
    assert quiet.returncode == 0, quiet.stderr
    assert_clean_aggregates_migrated(pg_dsn, truth)
    assert pg_rows(pg_dsn) == pg_rows(single_pg_dsn)
    doc, quiet_doc = json.loads(during.stdout), json.loads(quiet.stdout)
    for name in ("aggregates", "events_migrated", "events_already_present", "problems"):
        assert doc[name] == quiet_doc[name], name


def test_events_query_during_a_reshard_gives_the_results_of_a_quiet_run(
    redis_cluster: LocalCluster, app_name: str
) -> None:
    writer = redis_cluster.client()
    iw.write_store(writer, app=app_name, aggregates=250, seed=22)
    query = ["events", "query", "--redis-url", redis_cluster.url, "--app", app_name]
    quiet = run_cli(*query, "--format", "jsonl")
    assert quiet.returncode == 0, quiet.stderr
    expected = sorted(quiet.stdout.splitlines())
    assert len(expected) > 1000
    with Resharder(redis_cluster, busiest_slots(writer, app_name, 60)) as resharder:
        runs = 0
        while runs < 3 or resharder.moves < 5:
            during = run_cli(*query, "--format", "jsonl")
            assert during.returncode == 0, during.stderr
            assert sorted(during.stdout.splitlines()) == expected, f"run {runs}"
            runs += 1
            assert runs < 30, "the resharder moved nothing"


@pytest.mark.slow
def test_migrate_integrity_and_query_during_a_continuous_reshard_answer_as_on_a_quiet_cluster(
    redis_cluster: LocalCluster, pg_dsn: str, single_pg_dsn: str, app_name: str
) -> None:
    """Issue 12: slots (the commit lists' one among them) move back and forth the whole time
    while ``migrate redis-to-pg``, ``inspect integrity`` and ``events query`` read a store of
    3,000 aggregates. Each exits 0 with the answer of a quiet cluster. Before, a SCAN restarted
    its pass whenever the layout had changed under it and gave up after ten: migrate exited 1
    after about half the aggregates."""
    writer = redis_cluster.client()
    truth = iw.write_store(writer, app=app_name, aggregates=3000, seed=12)
    url = redis_cluster.url
    migrate = ["migrate", "redis-to-pg", "--init-schema", "--json", "--batch-size", "200"]
    integrity = ["inspect", "integrity", "--redis-url", url, "--app", app_name, "--json"]
    query = ["events", "query", "--redis-url", url, "--app", app_name, "--format", "jsonl"]
    try:
        quiet = {
            "migrate": run_cli(*migrate, *cli_args(url, single_pg_dsn, app_name)),
            "integrity": run_cli(*integrity),
            "query": run_cli(*query),
        }
        for name, result in quiet.items():
            assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}{result.stderr}"
        # the commit lists' slot goes round the primaries after every 25 of 200 slots of event
        # hashes, which move one after another: the layout changes every few milliseconds. The
        # legacy hash's slot goes round with the commit lists' one: integrity reads that hash
        # with HSCAN, whose cursor does not survive a move (redisio.hash_pages starts it over).
        legacy_slot = writer.keyslot(layout.legacy_event_hash_key(app_name))
        lists_slot, *hash_slots = busiest_slots(writer, app_name, 202)
        hash_slots = [s for s in hash_slots if s != legacy_slot][:200]
        rotation = [
            s
            for at in range(0, 200, 25)
            for s in (lists_slot, legacy_slot, *hash_slots[at : at + 25])
        ]
        during = run_during_a_reshard(
            redis_cluster,
            rotation,
            {
                "migrate": [*migrate, *cli_args(url, pg_dsn, app_name)],
                "integrity": integrity,
                "query": query,
            },
        )
        settled = run_cli(*integrity)  # the store itself came through the reshard whole
    finally:
        drop_store(redis_cluster, app_name)

    quiet_integrity = without_timings(json.loads(quiet["integrity"].stdout))
    assert without_timings(json.loads(settled.stdout)) == quiet_integrity
    assert without_timings(json.loads(during["integrity"].stdout)) == quiet_integrity
    assert_clean_aggregates_migrated(pg_dsn, truth)
    assert pg_rows(pg_dsn) == pg_rows(single_pg_dsn)
    doc, quiet_doc = json.loads(during["migrate"].stdout), json.loads(quiet["migrate"].stdout)
    for field in ("aggregates", "events_migrated", "events_already_present", "problems"):
        assert doc[field] == quiet_doc[field], field
    assert doc["aggregates"] == 3000
    expected_events = sorted(quiet["query"].stdout.splitlines())
    assert len(expected_events) > 10_000
    assert sorted(during["query"].stdout.splitlines()) == expected_events


def run_during_a_reshard(
    cluster: LocalCluster, slots: list[int], commands: dict[str, list[str]]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run the esctl ``commands`` all at once (as they might run in production) while a
    resharder as fast as ``redis-cli --cluster reshard`` in a loop moves ``slots`` round the
    primaries (one mover: two would deadlock on MIGRATEs crossing between two nodes). Each must
    exit 0 with slots moving for as long as it ran."""

    def run(args: list[str]) -> tuple[subprocess.CompletedProcess[str], int]:
        moves = resharder.moves
        return run_cli(*args), resharder.moves - moves

    with (
        Resharder(cluster, slots, keys_per_step=100, pause=0, quick=True) as resharder,
        ThreadPoolExecutor(len(commands)) as pool,
    ):
        runs = dict(zip(commands, pool.map(run, commands.values()), strict=True))
    for name, (result, moves) in runs.items():
        assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}{result.stderr}"
        assert moves >= 20, f"only {moves} slots moved while {name} ran: nothing was tested"
    return {name: result for name, (result, _) in runs.items()}


def drop_store(cluster: LocalCluster, app: str) -> None:
    """Delete every key naming ``app``: the session's cluster is shared, and a test that moves a
    slot by hand expects to find no key of another test in it."""
    for node in cluster.primaries():
        with redis.Redis(port=node.port) as plain:
            pipe = plain.pipeline(transaction=False)
            for key in plain.scan_iter(match=f"*{layout.glob_escape(app)}*", count=1000):
                pipe.unlink(key)  # one by one: a key of another slot is CROSSSLOT
            pipe.execute()


def without_timings(document: Any) -> Any:
    """A JSON document less what measures time or names the server."""
    if isinstance(document, dict):
        return {k: without_timings(v) for k, v in document.items() if k not in VOLATILE}
    if isinstance(document, list):
        return [without_timings(v) for v in document]
    return document


def half_move(cluster: LocalCluster, slot: int, keys: list[str]) -> tuple[int, int]:
    """Leave ``slot`` half-moved, as an interrupted ``redis-cli --cluster reshard`` does: the
    target IMPORTING, the source MIGRATING, ``keys`` migrated. Returns (source, target) ports."""
    source = slot_owner(cluster, slot)
    target = next(p for p in cluster.primaries() if p.port != source.port)
    with redis.Redis(port=source.port) as src, redis.Redis(port=target.port) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source.port))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target.port))
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    return source.port, target.port


def settle_on_target(cluster: LocalCluster, slot: int, source: int, target: int) -> None:
    """Finish the move :func:`half_move` began."""
    with redis.Redis(port=source) as src:
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    for node in cluster.primaries():
        with redis.Redis(port=node.port) as plain:
            plain.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))
    wait_for_agreement(cluster)


def settle(cluster: LocalCluster, slot: int, source: int, target: int) -> None:
    """Undo :func:`half_move`: the move finished, then the slot moved back to the source."""
    settle_on_target(cluster, slot, source, target)
    move_slot(cluster, slot, next(p for p in cluster.primaries() if p.port == source))
    wait_for_agreement(cluster)


def test_a_stale_ask_is_not_taken_for_a_missing_key(
    redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source answers ASK (the key is on the target); before the read after ASKING reaches
    the target, the move ends, the slot comes back, and moves to the target again, the keys not
    there yet: the target, importing, answers as if they did not exist. Such an answer is asked
    again where the slot map says (it read empty lists: the migrate of a store during a busy
    reshard stopped with 'unexpected IndexError', events query left events out)."""
    tag = secrets.token_hex(4)
    keys = [f"{{stale-{tag}}}:{i}" for i in range(10)]
    client = redisio.connect(redis_cluster.url)
    assert isinstance(client, redis.cluster.RedisCluster)
    redisio.pipelined(client, [("RPUSH", k, "a", "b") for k in keys])
    slot = client.keyslot(keys[0])
    source, target = half_move(redis_cluster, slot, keys[:5])
    real = pipelines._exchange
    rounds: list[int] = []

    def slot_moves_on_and_back(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        rounds.append(len(rounds))
        if len(rounds) == 1:  # the ASKs are in hand
            settle(redis_cluster, slot, source, target)  # ... and back on the source
            assert half_move(redis_cluster, slot, []) == (source, target)  # importing again

    monkeypatch.setattr(pipelines, "_exchange", slot_moves_on_and_back)
    try:
        replies = redisio.pipelined(client, [("LRANGE", k, 0, -1) for k in keys])
    finally:
        monkeypatch.undo()
        settle(redis_cluster, slot, source, target)
        client.close()
    assert len(rounds) >= 3  # the ASK, the stale answer, the read asked again
    assert replies == [[b"a", b"b"]] * len(keys)


def test_reads_still_redirected_after_the_last_round_wait_and_run_again_writes_fail(
    redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot that moves to and fro faster than a round goes redirects some commands past the
    last round: a read call waits, as after a failover, and runs again (it failed at once);
    a writing call fails at once, naming the slot, as it did."""
    tag = secrets.token_hex(4)
    keys = [f"{{unsettled-{tag}}}:{i}" for i in range(10)]
    client = redisio.connect(redis_cluster.url)
    assert isinstance(client, redis.cluster.RedisCluster)
    redisio.pipelined(client, [("SET", k, f"v{i}") for i, k in enumerate(keys)])
    slot = client.keyslot(keys[0])
    monkeypatch.setattr(pipelines, "REDIRECT_ROUNDS", 0)  # the first redirect is one too many
    source, target = half_move(redis_cluster, slot, keys[:5])
    real_wait = redisio_retry.wait_to_retry
    waits: list[str] = []

    def settles_meanwhile(*args: Any, **kwargs: Any) -> tuple[float, float]:
        waits.append(kwargs["problem"])
        settle_on_target(redis_cluster, slot, source, target)
        return real_wait(*args, **kwargs)

    try:
        with pytest.raises(ServerError, match=f"still redirects 5 commands .* on slot {slot}"):
            redisio.pipelined(client, [("SET", k, "w") for k in keys])
        monkeypatch.setattr(redisio_retry, "wait_to_retry", settles_meanwhile)
        replies = redisio.pipelined(client, [("GET", k) for k in keys])
    finally:
        settle(redis_cluster, slot, source, target)
        client.close()
    assert replies == [f"v{i}".encode() for i in range(5)] + [b"w"] * 5
    assert len(waits) == 1 and "still redirects 5 commands" in waits[0]


@pytest.mark.parametrize("spread", [False, True])
def test_a_slot_left_half_moved_is_read_on_its_source_then_its_target(
    redis_cluster: LocalCluster, spread: bool
) -> None:
    """A slot stuck half-moved is never served whole by one node: the scan reads it on its own
    (source, then target), filters its keys by the pattern and the type, and hands out each
    once, the last page marked done. ``spread``: a pattern over every slot, else a hash tag."""
    tag = secrets.token_hex(4)
    prefix = f"half-{tag}" if spread else f"{{half-{tag}}}"
    wanted = {f"{prefix}:{i}" for i in range(300)}
    others = [f"{{{prefix}:a}}:x{i}" for i in range(50)]  # hash tag: one slot, not matched
    client = redisio.connect(redis_cluster.url)
    assert isinstance(client, redis.cluster.RedisCluster)
    redisio.pipelined(client, [("RPUSH", k, "x") for k in wanted])
    redisio.pipelined(client, [("SET", k, "x") for k in others])
    redisio.pipelined(client, [("SET", f"{prefix}:string-{i}", "x") for i in range(20)])
    slot = client.keyslot(others[0]) if spread else client.keyslot(f"{prefix}:0")
    in_slot = [k for k in (*wanted, *others) if client.keyslot(k) == slot]
    source, target = half_move(redis_cluster, slot, in_slot[: len(in_slot) // 2])
    try:
        match = f"{layout.glob_escape(prefix)}:*"
        pages = list(redisio.scan_pages(client, match, type_="list", count=40))
    finally:
        settle(redis_cluster, slot, source, target)
    found = [k for _, page in pages for k in page]
    assert sorted(found) == sorted(wanted)
    assert pages[-1][0].done and not any(p.done for p, _ in pages[:-1])
    assert all(len(page) <= 40 for _, page in pages)
    client.close()


def test_a_slot_being_migrated_is_read_on_its_target_before_any_key_is_handed_out(
    redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller takes its time over each page. Were the target of a slot being migrated read
    only after the keys read on its source had been handed out, the move could end meanwhile
    and the slot go on to a third node with the keys the target had: the target, having no
    part in the slot any more, would say nothing of them. Here the move ends and the slot
    moves on exactly then, and every key still comes out."""
    tag = secrets.token_hex(4)
    keys = [f"{{gap-{tag}}}:{i}" for i in range(200)]
    client = redisio.connect(redis_cluster.url)
    assert isinstance(client, redis.cluster.RedisCluster)
    redisio.pipelined(client, [("SET", k, "x") for k in keys])
    slot = client.keyslot(keys[0])
    home = slot_owner(redis_cluster, slot)
    source, target = half_move(redis_cluster, slot, keys[:100])
    third = next(p for p in redis_cluster.primaries() if p.port not in (source, target))
    hand_out = cluster_scan._ClusterScan._hand_out

    def caller_takes_its_time(scan: object, raw_keys: list[bytes]) -> object:
        if not moved:
            moved.append(True)
            settle_on_target(redis_cluster, slot, source, target)
            wait_for_epochs([redis.Redis(port=p.port) for p in redis_cluster.primaries()])
            move_slot(redis_cluster, slot, third)
            wait_for_agreement(redis_cluster)
        return hand_out(scan, raw_keys)  # type: ignore[arg-type]

    moved: list[bool] = []
    monkeypatch.setattr(cluster_scan._ClusterScan, "_hand_out", caller_takes_its_time)
    try:
        found = [k for _, page in redisio.scan_pages(client, f"{{gap-{tag}}}:*") for k in page]
    finally:
        monkeypatch.undo()
        if not moved:
            settle_on_target(redis_cluster, slot, source, target)
        wait_for_epochs([redis.Redis(port=p.port) for p in redis_cluster.primaries()])
        move_slot(redis_cluster, slot, home)
        wait_for_agreement(redis_cluster)
    assert moved, "the slot was not read on its own: nothing was tested"
    assert sorted(found) == sorted(keys)
    client.close()


def test_a_slot_that_never_settles_ends_the_scan_naming_it(
    redis_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot whose source says it migrates it to a node that imports it from a third node
    cannot be read whole anywhere: after READ_RETRY_SECONDS without progress the scan fails,
    naming the slot and the way out."""
    tag = secrets.token_hex(4)
    client = redisio.connect(redis_cluster.url)
    assert isinstance(client, redis.cluster.RedisCluster)
    redisio.pipelined(client, [("SET", f"{{stuck-{tag}}}:{i}", "x") for i in range(10)])
    slot = client.keyslot(f"{{stuck-{tag}}}:0")
    source = slot_owner(redis_cluster, slot)
    target, third = [p for p in redis_cluster.primaries() if p.port != source.port]
    monkeypatch.setattr(redisio_retry, "READ_RETRY_SECONDS", 1.0)
    with redis.Redis(port=source.port) as src, redis.Redis(port=target.port) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(third.port))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target.port))
        try:
            started = time.monotonic()
            with pytest.raises(ServerError) as caught:
                list(redisio.scan_pages(client, f"{{stuck-{tag}}}:*"))
            assert time.monotonic() - started < 15
        finally:
            for node in (dst, src):
                node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    wait_for_agreement(redis_cluster)
    assert f"kept 1 hash slot ({slot})" in str(caught.value)
    assert "imports it from another node" in str(caught.value)
    assert "redis-cli --cluster fix" in (caught.value.hint or "")
    client.close()


# --- lost nodes: reads retry, writes fail fast ---------------------------------------------


@pytest.fixture
def doomed_cluster() -> Iterator[LocalCluster]:
    """A cluster of its own (three primaries, no replica): the test kills one of them."""
    if servers.find_redis_server() is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli are not installed")
    cluster = start_cluster(3, 0)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_a_lost_node_fails_writes_at_once_and_reads_after_the_retry_window(
    doomed_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redisio.connect(doomed_cluster.url)
    keys = [f"lost-{i}" for i in range(300)]
    assert redisio.pipelined(client, [("SET", k, "v") for k in keys]) == [b"OK"] * 300
    assert redisio.pipelined(client, [("GET", k) for k in keys]) == [b"v"] * 300
    victim = doomed_cluster.primaries()[1]
    os.kill(victim.pid, signal.SIGKILL)  # no replica: its slots stay unserved

    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as writing:
        redisio.pipelined(client, [("SET", k, "w") for k in keys])
    assert time.monotonic() - started < 5  # no retry for writes
    assert "rerun" in (writing.value.hint or "")

    monkeypatch.setattr(redisio_retry, "READ_RETRY_SECONDS", 3.0)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as reading:
        redisio.pipelined(client, [("GET", k) for k in keys])
    assert 3.0 <= time.monotonic() - started < 15
    assert "did not answer reads for 3 s" in str(reading.value)
    assert "cluster_state:ok" in (reading.value.hint or "")
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        redisio.pipelined(client, [("GET", k) for k in keys], retry_reads=False)
    assert time.monotonic() - started < 5
    with pytest.raises(ConnectionFailed):
        list(redisio.scan_pages(client, "lost-*"))


def test_per_node_connections_are_not_shared_with_a_forked_child(
    redis_cluster: LocalCluster,
) -> None:
    """The parent's raw node sockets are closed in a forked child (register_at_fork): the
    child opens its own, and the parent's stay in step."""
    client = redisio.connect(redis_cluster.url)
    keys = [f"fork-{secrets.token_hex(4)}-{i}" for i in range(200)]
    redisio.pipelined(client, [("SET", k, k) for k in keys])
    reads = [("GET", k) for k in keys]
    assert redisio.pipelined(client, reads) == [k.encode() for k in keys]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = redisio.pipelined(client, reads) == [k.encode() for k in keys]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for _ in range(3):
        assert redisio.pipelined(client, reads) == [k.encode() for k in keys]
    client.close()


def test_a_script_answered_tryagain_mid_reshard_runs_once_the_slot_has_moved(
    redis_cluster: LocalCluster,
) -> None:
    """A writing script whose keys a half-moved slot splits between two nodes is answered
    TRYAGAIN (not run). eval_pipelined sends exactly those calls again until the slot has
    moved: the script then runs once, on the new owner."""
    import threading

    tag = secrets.token_hex(4)
    first, second = f"{{try-{tag}}}:a", f"{{try-{tag}}}:b"
    seed = redis_cluster.client()
    seed.mset({first: 1, second: 1})
    slot = seed.keyslot(first)
    source = slot_owner(redis_cluster, slot)
    target = next(p for p in redis_cluster.primaries() if p.port != source.port)
    client = redisio.connect(redis_cluster.url)
    script = "return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])"
    with redis.Redis(port=source.port) as src, redis.Redis(port=target.port) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source.port))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target.port))
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", first)
        replies: list[object] = []
        runner = threading.Thread(
            target=lambda: replies.extend(
                redisio.eval_pipelined(client, script, [(2, first, second)])
            )
        )
        runner.start()
        time.sleep(1.0)  # the script meets the split slot (TRYAGAIN) meanwhile
        assert runner.is_alive() and not replies
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", second)
        # another test's keys of the same slot, if any, must go too before SETSLOT NODE
        while others := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *others)
        for node in redis_cluster.primaries():
            with redis.Redis(port=node.port) as plain:
                plain.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(target.port))
        runner.join(timeout=30)
        assert not runner.is_alive()
        assert replies == [4]  # run once: both keys went from 1 to 2
        assert dst.mget(first, second) == [b"2", b"2"]
    wait_for_agreement(redis_cluster)
    move_slot(redis_cluster, slot, source)
    wait_for_agreement(redis_cluster)
    client.close()


def big_hash(cluster: LocalCluster, fields: int) -> tuple[str, set[bytes]]:
    """A hash of ``fields`` fields (stored as a hash table: HSCAN takes many calls), alone in
    its slot, and its field names."""
    key = f"{{hscan-{secrets.token_hex(4)}}}:hash"
    names = {f"field-{i:06d}".encode() for i in range(fields)}
    client = cluster.client()
    for start in range(0, fields, 5000):
        client.hset(key, mapping={n: b"v" for n in sorted(names)[start : start + 5000]})
    return key, names


def every_field(pages: Iterator[tuple[str, list[bytes]]]) -> list[bytes]:
    return [f for _, flat in pages for f in flat[0::2]]


@pytest.mark.parametrize("how", ["moved", "half-moved"])
def test_hash_pages_hands_out_every_field_once_when_the_hash_moves_between_calls(
    redis_cluster: LocalCluster, how: str
) -> None:
    """Issue 12 for HSCAN: the hash is migrated to another primary after the first page. Its
    cursor means nothing there (redis-py would follow the MOVED/ASK and continue it), so the
    read starts over where the hash is, handing out only the fields not handed out yet."""
    key, names = big_hash(redis_cluster, 20_000)
    slot = redis_cluster.client().keyslot(key)
    client = redisio.connect(redis_cluster.url)
    source = slot_owner(redis_cluster, slot)
    try:
        pages = redisio.hash_pages(client, [key], count=200)
        found = every_field(itertools.islice(pages, 3))
        if how == "moved":
            move_slot(
                redis_cluster, slot, next(p for p in redis_cluster.primaries() if p != source)
            )
            wait_for_agreement(redis_cluster)
            found += every_field(pages)
        else:  # the hash is on the target, the slot still migrating: ASK, then ASKING
            _, target = half_move(redis_cluster, slot, [key])
            found += every_field(pages)
            settle(redis_cluster, slot, source.port, target)
        assert len(found) == len(set(found)), f"{len(found) - len(set(found))} fields twice"
        assert set(found) == names, f"{len(names - set(found))} fields missing"
    finally:
        move_slot(redis_cluster, slot, source)
        wait_for_agreement(redis_cluster)
        redis_cluster.client().delete(key)
        client.close()


def test_hash_pages_during_a_continuous_reshard_hands_out_every_field_once(
    redis_cluster: LocalCluster,
) -> None:
    """The hashes' slots go round the primaries the whole time the hashes are read (two slots:
    with as many slots as primaries, the resharder would send each to the same one each turn)."""
    hashes = [big_hash(redis_cluster, 8000) for _ in range(2)]
    client = redisio.connect(redis_cluster.url)
    assert isinstance(client, redis.cluster.RedisCluster)
    slots = [client.keyslot(key) for key, _ in hashes]
    reads = 0
    deadline = time.monotonic() + 120
    try:
        with Resharder(redis_cluster, slots) as resharder:
            while reads < 20 or resharder.moves < 20:
                found: dict[str, list[bytes]] = {key: [] for key, _ in hashes}
                for key, flat in redisio.hash_pages(client, [k for k, _ in hashes], count=100):
                    found[key] += flat[0::2]
                for key, names in hashes:
                    fields = found[key]
                    assert len(fields) == len(set(fields)), f"read {reads}: fields twice"
                    assert set(fields) == names, f"read {reads}: fields missing"
                reads += 1
                assert time.monotonic() < deadline, f"{resharder.moves} moves in {reads} reads"
        assert resharder.moves >= 20
    finally:
        for key, _ in hashes:
            redis_cluster.client().delete(key)
        client.close()

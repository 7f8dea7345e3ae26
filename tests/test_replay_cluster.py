"""``replay`` on a real three-primary Redis Cluster answers as on a single instance: the same
events in the same order, and the same messages in every subscriber's queue (published there by
one Lua script per event, redis-py's cluster pipeline cannot carry MULTI/EXEC)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from credservers import PASSWORD, acl_users, cluster_extras, set_user
from helpers import run_cli

from esctl import demo, layout
from esctl.demo import write_demo_store

cluster = pytest.importorskip("cluster", reason="tests/cluster.py (the cluster harness) is absent")
redis_cluster = cluster.redis_cluster  # the session fixture, imported for pytest

VOLATILE = {"elapsed_s", "events_per_s"}


def queues(client: Any, env: str) -> dict[str, list[bytes]]:
    found = {}
    for event_type, subscribers in demo.SUBSCRIPTIONS.items():
        for sub in subscribers:
            key = layout.queue_key(sub, env, event_type, "published")
            found[key] = client.lrange(key, 0, -1)
    return found


def test_replay_is_the_same_on_the_cluster(
    redis_cluster: Any,
    redis_client: redis.Redis,
    redis_test_url: str,
    app_name: str,
    env_name: str,
) -> None:
    redis_cluster.flushall()
    on_cluster = redis_cluster.client()
    assert write_demo_store(on_cluster, app=app_name, env=env_name) == write_demo_store(
        redis_client, app=app_name, env=env_name
    )
    scope = ["--app", app_name, "--env", env_name]
    answers = []
    for url, client in ((redis_cluster.url, on_cluster), (redis_test_url, redis_client)):
        printed = run_cli(
            "replay", "--from", "redis", "--all", "--order", "time", "--to", "stdout",
            "--redis-url", url, *scope,
        )  # fmt: skip
        assert printed.returncode == 3, printed.stderr  # the demo's planted unreadable events
        published = run_cli(
            "replay", "--from", "redis", "--all", "--to", "queue", "--yes", "--json",
            "--redis-url", url, *scope,
        )  # fmt: skip
        assert published.returncode == 3, published.stderr
        summary = {k: v for k, v in json.loads(published.stdout).items() if k not in VOLATILE}
        answers.append((printed.stdout, summary, queues(client, env_name)))
    assert answers[0] == answers[1]
    printed_lines, summary, lists = answers[0]
    assert summary["notifications"] > 0 and summary["messages"] > summary["notifications"]
    assert len(printed_lines.splitlines()) == summary["events"]
    assert sum(len(v) for v in lists.values()) >= summary["messages"]


# --- a publish refused on one node part-way ------------------------------------------------

SUB = "Svc"
RATE = 400
"""--rate: round trips of RATE / 10 = 40 events, one a tenth of a second apart."""
PER_ROUND_TRIP = RATE // 10
EVENTS = 4 * PER_ROUND_TRIP
FIRST_REFUSED = 2 * PER_ROUND_TRIP + 10
"""From here on every other event is of the type one node refuses: in the third round trip."""


def spread_types(client: Any, env: str) -> tuple[str, str, str]:
    """Three event types whose ``{ENV:TYPE}`` slots are served by three different primaries:
    two published to, and the one refused on its node (last)."""
    chosen: dict[str, str] = {}
    for n in range(1000):
        event_type = f"Kind{n}Happened"
        node = client.get_node_from_key(layout.subscribers_key(env, event_type)).name
        chosen.setdefault(node, event_type)
        if len(chosen) == 3:
            first, second, third = chosen.values()
            return first, second, third
    raise AssertionError("no three types spread over three primaries")


def write_events(client: Any, app: str, env: str, kinds: list[str]) -> list[bytes]:
    """One aggregate per event (``agg-000``, …: replayed in that order) of type ``kinds[i]``,
    saved as the library saves them, every type subscribed to by SUB. Returns the payloads."""
    payloads = []
    pipe = client.pipeline(transaction=False)
    for number, kind in enumerate(kinds):
        aggregate_id = f"agg-{number:03d}"
        commit_id = str(uuid.uuid4())
        payload = (
            f'{{"$type":"Test.Events.{kind}, Test","Id":"{aggregate_id}",'
            f'"TimeStamp":"2020-01-01T00:00:00.0000000+00:00","Version":1,'
            f'"AggregateType":"Thing","N":{number}}}'
        ).encode()
        pipe.hset(layout.event_hash_key(app, commit_id), commit_id, payload)
        pipe.rpush(layout.commit_list_key(app, aggregate_id), commit_id)
        payloads.append(payload)
    for kind in set(kinds):
        pipe.sadd(layout.subscribers_key(env, kind), SUB)
    pipe.execute()
    return payloads


def test_a_publish_refused_on_one_node_counts_what_every_node_ran(
    redis_cluster: Any, app_name: str, env_name: str
) -> None:
    """The user may not LPUSH to one type's queue, whose slot is on a node of its own. The
    first two round trips are published whole; in the third, that node refuses its events
    while the other two primaries run theirs (one of them loading the script first: NOSCRIPT,
    then EVAL). The run stops after that round trip (the fourth is never sent) with exit 1 and
    its summary: every event that ran on any node counted (what the lists hold), each
    refused one a problem."""
    client = redis_cluster.client()
    good_a, good_b, refused = spread_types(client, env_name)
    kinds = [
        good_a if n < FIRST_REFUSED else refused if n % 2 == 0 else (good_a, good_b)[n // 2 % 2]
        for n in range(EVENTS)
    ]
    payloads = write_events(client, app_name, env_name, kinds)
    queue_rule = f"~*:{{{env_name}:*}}:PublishedEvents"
    rules = acl_users(app_name, env_name)["esctl-queues"]
    assert queue_rule in rules
    rules = [
        *(r for r in rules if r != queue_rule),
        *(f"~*:{{{env_name}:{t}}}:PublishedEvents" for t in (good_a, good_b)),
        *cluster_extras(),
    ]
    nodes = [redis.Redis(port=n.port) for n in redis_cluster.primaries()]
    try:
        for node in nodes:
            set_user(node, "esctl-queues", rules)
            node.script_flush()  # good_b's node first sees the script beside the refusal
        result = run_cli(
            "replay", "--from", "redis", "--all", "--to", "queue", "--rate", str(RATE),
            "--yes", "--json", "--app", app_name, "--env", env_name, "--redis-url",
            f"redis+cluster://esctl-queues:{PASSWORD}@127.0.0.1:{redis_cluster.seed.port}",
        )  # fmt: skip
    finally:
        for node in nodes:
            node.execute_command("ACL", "DELUSER", "esctl-queues")
            node.close()
    assert result.returncode == 1, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    sent = range(3 * PER_ROUND_TRIP)  # the round trip refused part-way is the third
    ran = [n for n in sent if kinds[n] != refused]
    failed = [n for n in sent if kinds[n] == refused]
    lists = {
        t: client.lrange(layout.queue_key(SUB, env_name, t, "published"), 0, -1)
        for t in (good_a, good_b, refused)
    }
    for event_type, values in lists.items():  # LPUSH: the newest first
        assert values[::-1] == [payloads[n] for n in ran if kinds[n] == event_type], event_type
    assert summary["published"] == {SUB: {t: len(lists[t]) for t in (good_a, good_b)}}, summary
    assert summary["messages"] == summary["notifications"] == len(ran)
    assert summary["events"] == len(ran)
    stopped = summary["stopped"]
    assert stopped["kind"] == "publish_failed"
    assert (stopped["aggregate_id"], stopped["event_type"]) == (f"agg-{FIRST_REFUSED:03d}", refused)
    assert (stopped["failed"], stopped["published_after"]) == (
        len(failed),
        len([n for n in ran if n > FIRST_REFUSED]),
    )
    assert "NOPERM" in stopped["error"] and "ACL" in stopped["error"], stopped
    assert [p["kind"] for p in summary["problems"]] == ["publish_failed"] * len(failed)
    for problem, n in zip(summary["problems"], failed, strict=True):
        assert f"{refused} agg-{n:03d} version 1 failed" in problem["detail"], problem

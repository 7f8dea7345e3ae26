"""doctor's event-store and queue checks against the test's own Redis database: memory
shares, plain payloads over the threshold, growth and draining between two runs (the clock
is injected, so "two hours later" takes no time), stuck messages and dead letters."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import independent_writer as iw
import orjson
import redis

from esctl import compress, doctor, layout, redisio
from esctl.cli import wrapping
from esctl.doctor import DoctorOptions, DoctorReport

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def run(url: str, **options: Any) -> DoctorReport:
    return doctor.run_doctor(DoctorOptions(redis_url=url, **options))


def message(aggregate_id: str, stamp: datetime) -> bytes:
    return orjson.dumps(
        {
            "$type": "Ns.ItemScoreCreated, Asm",
            "Id": aggregate_id,
            "TimeStamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00",
            "Version": 1,
            "AggregateType": "ItemScore",
        }
    )


def test_memory_shares_and_uncompressed_payloads_then_compress_fixes_them(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=40, threshold=None, seed=7)
    plain_big = sum(1 for e in truth.events() if len(e.payload.encode("utf-8")) > 1000)
    assert plain_big > 0

    report = run(redis_test_url, app=app_name, now=T0)
    memory = report.check("store.memory")
    assert memory.status == "ok"
    families = memory.values["families"]
    assert families["event_hashes"]["keys"] > 0 and families["commit_lists"]["keys"] == 40
    assert memory.values["events"] == len(truth.events())
    assert "event hashes" in memory.observed and "commit lists" in memory.observed

    found = report.check("store.uncompressed")
    assert found.status == "warn"
    # the store is smaller than the sample: every payload was examined, the estimate is exact
    assert found.values["estimated_plain_over_threshold"] == plain_big
    assert found.values["estimated_saving_bytes"] > 0
    assert f"esctl compress --app {app_name}" in (found.action or "")

    client = redisio.connect(redis_test_url)
    try:
        done = compress.compress(client, compress.CompressOptions(app=app_name))
    finally:
        client.close()
    assert done.total.compressed == plain_big
    after = run(redis_test_url, app=app_name, now=T0 + timedelta(minutes=1))
    assert after.check("store.uncompressed").status == "ok"
    assert after.check("store.key_types").status == "ok"


def test_keys_of_another_type_fail_naming_each_and_the_other_checks_still_judge(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    """A string where a commit list should be, a partition hash that is a list, a legacy hash
    that is a string: found by the scans the memory figures make (the library fails on each),
    a failure naming them; the memory figures are the store's (doctor skipped the commit-list
    key, and could not sample memory at all when a sampled payload was in such a hash)."""
    truth = iw.write_store(redis_client, app=app_name, aggregates=20, legacy_share=0.3, seed=4)
    stray = layout.commit_list_key(app_name, "stray")
    partition = next(e.hash_key for e in truth.events() if not e.legacy)
    legacy = layout.legacy_event_hash_key(app_name)
    redis_client.set(stray, b"x")
    for key, value in ((partition, None), (legacy, b"x")):
        redis_client.delete(key)
        if value is None:
            redis_client.rpush(key, b"x")
        else:
            redis_client.set(key, value)
    report = run(redis_test_url, app=app_name, now=T0, read_only=True)
    found = report.check("store.key_types")
    assert found.status == "fail" and report.failed
    assert found.values["keys"] == 3
    assert {(k["key"], k["type"], k["expected"]) for k in found.values["listed"]} == {
        (stray, "string", "list"),
        (partition, "list", "hash"),
        (legacy, "string", "hash"),
    }
    assert f"{stray} is a string, not a list" in "\n".join(found.details)
    assert f"esctl inspect integrity --app {app_name}" in (found.action or "")
    assert [(m.name, m.value) for m in found.metrics] == [("esctl_doctor_store_wrong_type_keys", 3)]
    memory = report.check("store.memory")
    assert memory.status == "ok", memory.observed
    assert memory.values["aggregates"] == 20


def test_growth_is_measured_against_a_reading_at_least_an_hour_old(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=10, seed=3)
    first = run(redis_test_url, app=app_name, now=T0)
    growth = first.check("store.growth")
    assert growth.status == "unavailable" and "no reading old enough" in growth.observed
    assert "(this run's was stored)" in growth.observed
    assert redis_client.exists(layout.doctor_reading_key(app_name))
    assert {
        "key": layout.doctor_reading_key(app_name),
        "stored": True,
        "detail": None,
    } in first.readings

    iw.append_events(redis_client, truth, 24)
    soon = run(redis_test_url, app=app_name, now=T0 + timedelta(minutes=10))
    assert soon.check("store.growth").status == "unavailable"
    # the first run's reading is kept; this one is not stored, and says so
    assert "this run's was not: the newer stored reading is recent" in (
        soon.check("store.growth").observed
    )

    later = run(redis_test_url, app=app_name, now=T0 + timedelta(hours=2))
    growth = later.check("store.growth")
    assert growth.status == "ok", growth.observed
    assert growth.values["interval_s"] == 7200
    assert growth.values["events_per_day"] == 24 * 12
    assert "/day" in growth.observed


def test_an_app_with_no_keys_warns_and_gets_no_reading(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    """--app naming no store here (a typo): the store checks warn, naming the apps that have
    keys; no reading is stored, and one an earlier run left is neither read nor renewed."""
    iw.write_store(redis_client, app=app_name, aggregates=3)
    wrong = app_name + "x"
    key = layout.doctor_reading_key(wrong)
    report = run(redis_test_url, app=wrong, now=T0)
    for check_id in ("store.memory", "store.uncompressed", "store.growth", "store.key_types"):
        check = report.check(check_id)
        assert check.status == "warn", (check_id, check.observed)
        assert check.action == f"apps with keys here: {app_name}; check --app / ESCTL_APP"
    assert report.status != "ok" and report.warned
    assert not redis_client.exists(key)
    assert report.readings == [{"key": key, "stored": False, "detail": "the app has no keys here"}]

    old = {"taken_at": (T0 - timedelta(hours=3)).timestamp(), "used_memory": 1, "events": 0}
    redis_client.set(key, orjson.dumps({"older": old, "newer": old}), ex=100)
    later = run(redis_test_url, app=wrong, now=T0 + timedelta(hours=2))
    assert later.check("store.growth").status == "warn"
    assert 0 < redis_client.ttl(key) <= 100  # not rewritten with a new 90-day expiry


def test_a_store_left_with_snapshots_alone_is_still_the_apps(
    redis_client: redis.Redis, redis_test_url: str, app_name: str
) -> None:
    """A full prune keeps snapshots: that app has keys, its checks judge as before."""
    redis_client.hset(layout.snapshot_hash_key(app_name, "1"), "1", '{"Id":"1","Version":3}')
    report = run(redis_test_url, app=app_name, now=T0)
    assert report.check("store.memory").status == "ok"
    assert report.check("store.uncompressed").status == "ok"
    assert report.check("store.growth").status == "unavailable"  # its first reading
    assert redis_client.exists(layout.doctor_reading_key(app_name))


def test_read_only_stores_no_reading(
    redis_client: redis.Redis, redis_test_url: str, app_name: str, env_name: str
) -> None:
    iw.write_store(redis_client, app=app_name, aggregates=3)
    redis_client.sadd(layout.subscribers_key(env_name, "T"), "Sub")  # a queue of the env
    report = run(redis_test_url, app=app_name, env=env_name, read_only=True, now=T0)
    assert not redis_client.exists(layout.doctor_reading_key(app_name))
    assert not redis_client.exists(layout.doctor_queue_reading_key(env_name))
    assert all(not note["stored"] for note in report.readings)
    # the checks that compare runs say so too, and what would give them a reading
    for check_id in ("store.growth", "queues.draining"):
        check = report.check(check_id)
        assert check.status == "unavailable", check_id
        assert "was stored" not in check.observed and "--read-only" in check.observed, check_id
        assert "without --read-only" in (check.action or ""), check_id


def test_stuck_messages_and_dead_letters(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    sub, kind = "Reporting.Worker", "ItemScoreCreated"
    redis_client.sadd(layout.subscribers_key(env_name, kind), sub)
    processing = layout.queue_key(sub, env_name, kind, "processing")
    redis_client.lpush(processing, message("a-1", T0 - timedelta(minutes=10)))
    redis_client.lpush(processing, message("a-2", T0 - timedelta(seconds=30)))
    redis_client.lpush(layout.queue_key(sub, env_name, kind, "dead"), message("a-3", T0))

    report = run(redis_test_url, env=env_name, now=T0)
    stuck = report.check("queues.stuck")
    assert stuck.status == "fail"
    assert stuck.values["queues"][0]["subscriber"] == sub
    assert stuck.values["queues"][0]["oldest_processing_age_s"] == 600
    assert f"esctl queue requeue {sub} {kind} --env {env_name}" in (stuck.action or "")
    dead = report.check("queues.dead_letters")
    assert dead.status == "warn" and dead.values["dead_letters"] == 1

    relaxed = run(redis_test_url, env=env_name, now=T0, stuck_after=timedelta(hours=1))
    assert relaxed.check("queues.stuck").status == "ok"


def test_a_subscriber_nobody_drains_is_found_between_two_runs(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    kind = "ItemScoreCreated"
    live, gone = "Live.Worker", "Retired.Worker"
    redis_client.sadd(layout.subscribers_key(env_name, kind), live)
    live_published = layout.queue_key(live, env_name, kind, "published")
    gone_published = layout.queue_key(gone, env_name, kind, "published")
    for i in range(3):
        redis_client.lpush(live_published, message(f"m-{i}", T0))
        redis_client.lpush(gone_published, message(f"m-{i}", T0))

    first = run(redis_test_url, env=env_name, now=T0)
    assert first.check("queues.draining").status == "unavailable"
    metrics = doctor.render_prometheus(first)  # queue lengths are figures from the first run on
    assert (
        f'esctl_doctor_queue_messages{{env="{env_name}",event_type="{kind}",list="published",'
        f'subscriber="{live}"}} 3'
    ) in metrics

    redis_client.lpush(live_published, message("m-new", T0))  # published, nobody consumes
    second = run(redis_test_url, env=env_name, now=T0 + timedelta(minutes=2))
    draining = second.check("queues.draining")
    assert draining.status == "fail", draining.observed
    assert any(d.startswith(f"{live} {kind}: 3 → 4") for d in draining.details)
    assert any(d.startswith(f"(not subscribed) {gone}") for d in draining.details)

    # the live consumer starts: it takes the oldest message; the retired queue stays put
    redis_client.rpoplpush(live_published, layout.queue_key(live, env_name, kind, "processing"))
    third = run(redis_test_url, env=env_name, now=T0 + timedelta(minutes=4))
    draining = third.check("queues.draining")
    assert draining.status == "warn", draining.observed
    assert draining.details == [f"{gone} {kind}: 3 → 3 published, same oldest message"]
    rows = {r["subscriber"]: r for r in draining.values["queues"]}
    assert rows[live]["draining"] and not rows[gone]["draining"]


def test_eviction_policy_verdict_uses_what_the_scope_holds(
    redis_test_url: str, app_name: str, env_name: str
) -> None:
    report = run(redis_test_url, app=app_name, env=env_name, now=T0)
    # nothing of this app or env is stored: the machine's policy decides ok or warn, never fail
    assert report.check("redis.maxmemory_policy").status in ("ok", "warn")
    assert {s["group"] for s in report.skipped} == {"postgresql"}


def test_the_commands_doctor_suggests_survive_a_shell(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    """A generic type's queue (``Envelope`1``): pasted unquoted, the backtick would start a
    command substitution. The suggested command (the example, quoted in backticks as the
    wrapper reads them), split as a shell does, names the queue."""
    sub, kind = "Reporting.Worker", "Envelope`1"
    redis_client.sadd(layout.subscribers_key(env_name, kind), sub)
    redis_client.lpush(
        layout.queue_key(sub, env_name, kind, "processing"),
        message("a-1", T0 - timedelta(minutes=10)),
    )
    redis_client.lpush(layout.queue_key(sub, env_name, kind, "dead"), message("a-2", T0))
    report = run(redis_test_url, env=env_name, now=T0)
    for check, verb in (("queues.stuck", "requeue"), ("queues.dead_letters", "peek")):
        action = report.check(check).action or ""
        quoted = [m[0][1:-1] for m in wrapping.QUOTED_COMMAND.finditer(action)]
        [args] = [q for q in quoted if q.startswith(f"esctl queue {verb} {sub} ")]  # not SUB TYPE
        shell = subprocess.run(  # the words a shell makes of the pasted command
            ["bash", "-c", "printf '%s\\n' " + args], capture_output=True, text=True, check=False
        )
        words = shell.stdout.splitlines()
        assert words[:5] == ["esctl", "queue", verb, sub, kind], (check, action, shell.stderr)
        assert words[words.index("--env") + 1] == env_name

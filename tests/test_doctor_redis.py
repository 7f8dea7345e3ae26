"""doctor's Redis checks against real throwaway servers, each started with one risky setting
(the issue's acceptance), one configured as recommended, one with CONFIG renamed away, and a
primary that leaves persistence to its replica. The machine's own Redis is never
reconfigured: every setting here is a command-line argument of a server of the test's own."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis

from esctl import doctor, servers
from esctl.doctor import DoctorOptions, DoctorReport

RECOMMENDED = [
    "--maxmemory", "256mb",
    "--maxmemory-policy", "noeviction",
    "--appendonly", "yes",
    "--appendfsync", "everysec",
    "--no-appendfsync-on-rewrite", "yes",
    "--latency-monitor-threshold", "100",
]  # fmt: skip


@contextmanager
def redis_server(*args: str) -> Iterator[servers.LocalRedis]:
    server = servers.start_redis(extra_args=list(args))
    try:
        yield server
    finally:
        server.stop()


def run(url: str, **options: object) -> DoctorReport:
    return doctor.run_doctor(DoctorOptions(redis_url=url, **options))  # type: ignore[arg-type]


def statuses(report: DoctorReport, ids: Sequence[str]) -> dict[str, str]:
    return {i: report.check(i).status for i in ids}


def test_allkeys_lru_is_a_failure() -> None:
    with redis_server("--maxmemory-policy", "allkeys-lru") as server:
        report = run(server.url)
    check = report.check("redis.maxmemory_policy")
    assert check.status == "fail"
    assert check.observed.startswith("allkeys-lru")
    assert "noeviction" in (check.action or "")
    assert "evict" in check.why
    assert report.failed


def test_aof_without_no_appendfsync_on_rewrite_is_a_warning() -> None:
    with redis_server("--appendonly", "yes", "--no-appendfsync-on-rewrite", "no") as server:
        report = run(server.url)
    check = report.check("redis.aof_rewrite")
    assert check.status == "warn"
    assert "no-appendfsync-on-rewrite yes" in (check.action or "")
    assert "RPOPLPUSH" in check.why  # the latency trade-off is explained
    assert report.check("redis.persistence").status == "ok"  # AOF on the primary
    assert report.check("redis.appendfsync").status == "ok"  # everysec


def test_latency_monitor_off_is_a_warning() -> None:
    with redis_server("--latency-monitor-threshold", "0") as server:
        report = run(server.url)
    assert report.check("redis.latency_monitor").status == "warn"
    assert report.check("redis.latency_monitor").observed.startswith("0")
    assert report.check("redis.latency").status == "unavailable"


def test_a_server_configured_as_recommended_is_ok() -> None:
    with redis_server(*RECOMMENDED) as server:
        report = run(server.url)
    ids = [
        "redis.reachable",
        "redis.version",
        "redis.maxmemory_policy",
        "redis.maxmemory",
        "redis.persistence",
        "redis.appendfsync",
        "redis.aof_rewrite",
        "redis.latency_monitor",
        "redis.latency",
        "redis.slowlog",
        "redis.fragmentation",
    ]
    assert statuses(report, ids) == dict.fromkeys(ids, "ok")
    # a lone primary is the only remaining finding
    assert report.check("redis.role").status == "warn"
    assert not report.failed


def test_config_renamed_away_completes_with_those_checks_unavailable() -> None:
    with redis_server("--rename-command", "CONFIG", "", "--maxmemory-policy", "allkeys-lru") as s:
        with redis.Redis.from_url(s.url) as client:
            client.rpush("x", "1")
        report = run(s.url)
    unavailable = ["redis.persistence", "redis.latency_monitor", "redis.latency"]
    assert statuses(report, unavailable) == dict.fromkeys(unavailable, "unavailable")
    assert "renamed or disabled" in report.check("redis.latency_monitor").observed
    # the rest still runs: INFO carries the eviction policy, maxmemory and appendonly
    assert report.check("redis.reachable").status == "ok"
    assert report.check("redis.maxmemory_policy").status == "fail"
    assert report.check("redis.maxmemory_policy").values["source"] == "INFO"
    assert report.check("redis.maxmemory").status == "warn"
    assert report.check("redis.slowlog").status == "ok"
    assert report.check("redis.fragmentation").status == "ok"
    assert len(report.checks) == len(doctor.REDIS_CHECKS)


def test_persistence_only_on_a_replica_is_found_by_asking_the_replica() -> None:
    with (
        redis_server() as primary,
        redis_server(
            "--replicaof", "127.0.0.1", str(primary.port), "--appendonly", "yes"
        ) as replica,
    ):
        with redis.Redis.from_url(primary.url) as client:
            deadline = time.monotonic() + 10
            while not int(client.info("replication")["connected_slaves"]):
                assert time.monotonic() < deadline, "the replica did not connect"
                time.sleep(0.05)
        report = run(primary.url)
        on_replica = run(replica.url)
    check = report.check("redis.persistence")
    assert check.status == "ok", check.observed
    assert "1 of 1 replica persists" in check.observed
    assert any("only on replicas" in d for d in check.details)
    assert check.values["replicas"][0]["aof"] is True
    assert report.check("redis.role").observed.startswith("primary with 1 replica")
    assert on_replica.check("redis.role").values["role"] == "replica"
    assert on_replica.check("redis.persistence").status == "ok"


def test_a_primary_without_any_persistence_fails() -> None:
    with redis_server() as server:  # throwaway servers run with save "" and appendonly no
        report = run(server.url)
    check = report.check("redis.persistence")
    assert check.status == "fail"
    assert "restart loses every event" in check.observed


def test_slow_library_commands_and_latency_spikes_are_reported() -> None:
    with redis_server(
        "--slowlog-log-slower-than", "0",
        "--latency-monitor-threshold", "1",
        "--enable-debug-command", "yes",
    ) as server:  # fmt: skip
        with redis.Redis.from_url(server.url) as client:
            client.lpush("published", "m")
            client.rpoplpush("published", "processing")
            client.hget("h", "f")
            client.execute_command("DEBUG", "SLEEP", "0.02")
        report = run(server.url)
    slowlog = report.check("redis.slowlog")
    assert slowlog.status == "warn"
    assert slowlog.values["commands"]["RPOPLPUSH"]["count"] == 1
    assert slowlog.values["commands"]["HGET"]["count"] == 1
    latency = report.check("redis.latency")
    assert latency.status == "warn"
    assert latency.values["events"][0]["event"] == "command"
    assert latency.details  # LATENCY DOCTOR's findings, summarised


def test_unreachable_redis_is_a_failed_check_not_a_crash() -> None:
    port = servers.free_port()
    report = run(f"redis://:secret@127.0.0.1:{port}/0", app="A", env="e")
    assert report.check("redis.reachable").status == "fail"
    assert "secret" not in report.check("redis.reachable").observed
    assert {c.status for c in report.checks[1:]} == {"unavailable"}
    assert report.failed
    assert {"group": "event_store", "reason": "Redis unreachable"} in report.skipped
    assert "esctl_doctor_redis_up" in doctor.render_prometheus(report)


def test_a_locked_down_redis_still_gets_a_complete_report() -> None:
    # a managed Redis's user: no CONFIG, INFO, LATENCY, SLOWLOG or MEMORY (NOPERM)
    rules = [
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-config",
        "-info",
        "-latency",
        "-slowlog",
        "-memory",
    ]
    with redis_server("--user", "doctor", *rules) as server:
        with redis.Redis.from_url(server.url) as client:
            client.hset("EventStore:A:1", "c", "x" * 1500)
            client.rpush("{EventStore:A}:agg", "c")
            client.sadd("Subscribers:{e:T}", "Sub")  # a queue of env e, so its checks judge
            client.rpush("Sub:{e:T}:PublishedEvents", "{}")
        url = server.url.replace("redis://", "redis://doctor:pw@")
        report = run(url, app="A", env="e")
    assert report.check("redis.reachable").status == "ok"
    ids = [c.id for c in report.checks]
    assert ids[: len(doctor.REDIS_CHECKS)] == [i for i, _ in doctor.REDIS_CHECKS]
    for check_id, _ in doctor.REDIS_CHECKS[1:]:
        assert report.check(check_id).status == "unavailable", check_id
    assert "ACL" in report.check("redis.latency_monitor").observed
    assert report.check("store.memory").status == "unavailable"
    assert report.check("store.uncompressed").status == "warn"  # needs only SCAN and HSCAN
    assert report.check("store.growth").status == "unavailable"  # used_memory needs INFO
    assert report.check("queues.stuck").status == "ok"

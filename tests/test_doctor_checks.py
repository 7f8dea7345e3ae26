"""doctor's verdicts as pure functions of what a server reported (no server needed): the
thresholds, the persistence matrix, the reading rotation, the cluster combination and the
Prometheus rendering. The same verdicts against real servers are in test_doctor_redis.py."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import promtext
import pytest

from esctl import doctor
from esctl.doctor import Check, DataPresence, ReplicaFacts, ServerFacts, SlowEntry
from esctl.doctor import redis_memory_checks as memory
from esctl.doctor import redis_server_checks as server
from esctl.doctor.report import guarded
from esctl.metrics import Metric

NOW = 1_750_000_000.0


def facts(
    config: dict[str, str] | None = None,
    config_error: str | None = None,
    replicas: list[ReplicaFacts] | None = None,
    **info: Any,
) -> ServerFacts:
    base: dict[str, Any] = {
        "redis_version": "7.2.4",
        "role": "master",
        "connected_slaves": 0,
        "used_memory": 10 << 20,
        "total_system_memory": 8 << 30,
        "maxmemory": 0,
        "maxmemory_policy": "noeviction",
        "aof_enabled": 0,
        "mem_fragmentation_ratio": 1.1,
    }
    base.update(info)
    recommended = {
        "maxmemory": str(4 << 30),
        "maxmemory-policy": "noeviction",
        "appendonly": "yes",
        "appendfsync": "everysec",
        "no-appendfsync-on-rewrite": "yes",
        "save": "",
        "latency-monitor-threshold": "100",
        "slowlog-log-slower-than": "10000",
    }
    return ServerFacts(
        "node:6379",
        [0.2, 0.3, 0.25],
        base,
        config=recommended if config is None else config,
        config_error=config_error,
        server_time=NOW,
        latency_latest=[],
        slowlog=[],
        replicas=replicas or [],
    )


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "presence", "status"),
    [
        ("noeviction", DataPresence(), "ok"),
        ("allkeys-lru", DataPresence(), "fail"),  # scope unknown: assume event data
        ("allkeys-lru", DataPresence(events=10, queues=0), "fail"),
        ("volatile-lru", DataPresence(events=0, queues=3), "fail"),
        ("allkeys-lfu", DataPresence(events=0, queues=0), "warn"),  # nothing stored yet
    ],
)
def test_maxmemory_policy(policy: str, presence: DataPresence, status: str) -> None:
    f = facts()
    f.config["maxmemory-policy"] = policy
    check = memory.check_maxmemory_policy(f, presence)
    assert check.status == status
    assert policy in check.observed
    assert (check.action is None) == (status == "ok")


def test_maxmemory_policy_falls_back_to_info_without_config() -> None:
    f = facts(config={}, config_error="unknown command", maxmemory_policy="allkeys-lru")
    check = memory.check_maxmemory_policy(f, DataPresence())
    assert check.status == "fail"
    assert check.values["source"] == "INFO"


@pytest.mark.parametrize(
    ("used", "maxmemory", "status"),
    [(100, 1000, "ok"), (750, 1000, "warn"), (900, 1000, "fail"), (100, 0, "warn")],
)
def test_maxmemory_headroom(used: int, maxmemory: int, status: str) -> None:
    f = facts(used_memory=used)
    f.config["maxmemory"] = str(maxmemory)
    assert memory.check_maxmemory(f).status == status


@pytest.mark.parametrize(
    ("appendonly", "fsync", "rewrite", "fsync_status", "rewrite_status"),
    [
        ("yes", "everysec", "yes", "ok", "ok"),
        ("yes", "everysec", "no", "ok", "warn"),
        ("yes", "always", "yes", "warn", "ok"),
        ("yes", "no", "yes", "warn", "ok"),
        ("no", "everysec", "no", "ok", "ok"),  # AOF off: neither applies
    ],
)
def test_aof_settings(
    appendonly: str, fsync: str, rewrite: str, fsync_status: str, rewrite_status: str
) -> None:
    f = facts()
    f.config.update(
        {"appendonly": appendonly, "appendfsync": fsync, "no-appendfsync-on-rewrite": rewrite}
    )
    assert memory.check_appendfsync(f).status == fsync_status
    assert memory.check_aof_rewrite(f).status == rewrite_status


def judged(check_id: str, evaluate: Callable[[ServerFacts], Check], f: ServerFacts) -> Check:
    """``evaluate``'s verdict on ``f`` as the runner gets it (a fact it needs but was not read
    makes it unavailable)."""
    return guarded(check_id, functools.partial(evaluate, f))


def test_settings_missing_without_config_are_unavailable() -> None:
    f = facts(config={}, config_error="ERR unknown command 'CONFIG' (renamed)", aof_enabled=1)
    for check in (
        judged("redis.appendfsync", memory.check_appendfsync, f),
        judged("redis.aof_rewrite", memory.check_aof_rewrite, f),
        judged("redis.latency_monitor", server.check_latency_monitor, f),
    ):
        assert check.status == "unavailable"
        assert "unknown command 'CONFIG'" in check.observed
        assert check.action
    # appendonly comes from INFO, so persistence is judged without CONFIG
    assert memory.check_persistence(f).status == "ok"


PERSISTENCE_CASES = [
    # primary AOF, primary save, replicas -> status
    ("yes", "", [], "ok"),
    ("no", "3600 1 300 100", [], "warn"),
    ("no", "", [], "fail"),
    ("no", "", [ReplicaFacts("r:1", True, aof=True, rdb=False)], "ok"),
    ("no", "", [ReplicaFacts("r:1", True, aof=False, rdb=False)], "fail"),
    ("no", "", [ReplicaFacts("r:1", False, error="timeout")], "unavailable"),
    ("no", "900 1", [ReplicaFacts("r:1", True, aof=True, rdb=False)], "ok"),
]


@pytest.mark.parametrize(("aof", "save", "replicas", "status"), PERSISTENCE_CASES)
def test_persistence_and_where_it_runs(
    aof: str, save: str, replicas: list[ReplicaFacts], status: str
) -> None:
    f = facts(replicas=replicas, connected_slaves=len(replicas))
    f.config.update({"appendonly": aof, "save": save})
    check = memory.check_persistence(f)
    assert check.status == status, check.observed
    if status == "ok" and aof == "no":
        assert any("only on replicas" in d and "restart" in d for d in check.details)


@pytest.mark.parametrize(
    ("field", "check_id", "evaluate"),
    [
        ("redis_version", "redis.version", server.check_version),
        ("role", "redis.role", server.check_role),
        ("used_memory", "redis.maxmemory", memory.check_maxmemory),
        ("mem_fragmentation_ratio", "redis.fragmentation", memory.check_fragmentation),
    ],
)
def test_info_field_missing_is_unavailable(
    field: str, check_id: str, evaluate: Callable[[ServerFacts], Check]
) -> None:
    f = facts()
    del f.info[field]
    check = judged(check_id, evaluate, f)
    assert (check.status, check.observed) == (
        "unavailable",
        "INFO unavailable: the field is missing",
    )
    assert (
        check.action
        == "grant INFO (read-only) to the user in --redis-url: `ACL SETUSER USER +info`"
    )


def test_persistence_unknown_without_config_or_info_is_unavailable_not_a_failure() -> None:
    f = facts(config={}, config_error="NOPERM")
    del f.info["aof_enabled"]
    check = memory.check_persistence(f)
    assert check.status == "unavailable"
    assert "cannot read appendonly: NOPERM" in check.observed


def test_latency_monitor_threshold() -> None:
    f = facts()
    f.config["latency-monitor-threshold"] = "0"
    assert server.check_latency_monitor(f).status == "warn"
    f.config["latency-monitor-threshold"] = "100"
    assert server.check_latency_monitor(f).status == "ok"


def test_latency_spikes_recent_warn_old_ok() -> None:
    f = facts()
    f.latency_latest = [("aof-fsync-always", int(NOW) - 60, 120, 900), ("command", 1, 50, 60)]
    f.latency_doctor = "Dave, ...\n\n1. aof-fsync-always: 3 latency spikes\n\n- Check your disk\n"
    check = server.check_latency(f)
    assert check.status == "warn"
    assert check.observed.startswith("aof-fsync-always max 900 ms")
    assert check.details == ["1. aof-fsync-always: 3 latency spikes", "- Check your disk"]
    f.latency_latest = [("command", int(NOW) - 3 * 86400, 50, 60)]
    assert server.check_latency(f).status == "ok"
    f.latency_latest, f.latency_error = None, "NOPERM"
    assert server.check_latency(f).status == "unavailable"


def test_slowlog_counts_only_the_library_commands() -> None:
    f = facts()
    f.slowlog = [
        SlowEntry("RPOPLPUSH", 25_000, int(NOW)),
        SlowEntry("RPOPLPUSH", 40_000, int(NOW)),
        SlowEntry("KEYS", 900_000, int(NOW)),
        SlowEntry("EXEC", 12_000, int(NOW)),
    ]
    check = server.check_slowlog(f)
    assert check.status == "warn"
    assert "RPOPLPUSH 2 (slowest 40.0 ms)" in check.observed and "KEYS" not in check.observed
    assert check.values["commands"]["EXEC"] == {"count": 1, "max_ms": 12.0}
    f.slowlog = [SlowEntry("KEYS", 900_000, int(NOW))]
    assert server.check_slowlog(f).status == "ok"


@pytest.mark.parametrize(
    ("ratio", "used", "status"),
    [(1.2, 1 << 30, "ok"), (1.8, 1 << 30, "warn"), (0.7, 1 << 30, "warn"), (9.0, 1 << 20, "ok")],
)
def test_fragmentation(ratio: float, used: int, status: str) -> None:
    f = facts(mem_fragmentation_ratio=ratio, used_memory=used)
    assert memory.check_fragmentation(f).status == status


def test_version_and_role() -> None:
    assert server.check_version(facts(redis_version="6.0.16")).status == "warn"
    assert server.check_version(facts(redis_version="7.0.15")).status == "ok"
    assert server.check_role(facts()).status == "warn"  # no replica
    online = {"ip": "10.0.0.2", "port": 6379, "state": "online", "lag": 0}
    assert server.check_role(facts(connected_slaves=1, slave0=online)).status == "ok"
    lagging = online | {"lag": 120}
    assert server.check_role(facts(connected_slaves=1, slave0=lagging)).status == "warn"
    replica = facts(role="slave", master_host="10.0.0.1", master_port=6379)
    replica.info["master_link_status"] = "down"
    assert server.check_role(replica).status == "fail"


def test_reachable_warns_on_slow_round_trips() -> None:
    f = facts()
    assert server.check_reachable(f).status == "ok"
    f.ping_ms = [25.0, 30.0, 28.0]
    assert server.check_reachable(f).status == "warn"


# --- readings, combination, rendering --------------------------------------------------------


def reading(at: float) -> dict[str, Any]:
    return {"taken_at": at, "used_memory": int(at)}


def test_rotation_compares_with_a_reading_between_one_and_two_intervals_old() -> None:
    interval = 3600.0
    stored: dict[str, Any] | None = None
    compared: list[tuple[float, float | None]] = []
    for minute in range(0, 301, 5):
        at = minute * 60.0
        baseline, document = doctor.rotate_readings(stored, reading(at), interval)
        compared.append((at, baseline["taken_at"] if baseline else None))
        if document is not None:
            stored = document
    for at, base in compared:
        if at < interval:
            assert base is None
        else:
            assert base is not None and interval <= at - base <= 2 * interval


def test_rotation_starts_over_on_garbage_or_a_clock_moving_back() -> None:
    fresh = reading(100.0)
    assert doctor.rotate_readings(None, fresh, 60) == (None, {"older": fresh, "newer": fresh})
    assert doctor.rotate_readings({"x": 1}, fresh, 60)[0] is None
    future = {"older": reading(500.0), "newer": reading(600.0)}
    assert doctor.rotate_readings(future, fresh, 60) == (None, {"older": fresh, "newer": fresh})


def test_combine_takes_the_worst_status_and_names_the_servers_it_is_about() -> None:
    a = Check("redis.maxmemory_policy", "t", "ok", "noeviction", "w", metrics=[Metric("x", 1)])
    b = Check("redis.maxmemory_policy", "t", "fail", "allkeys-lru", "w", action="fix it")
    c = Check("redis.maxmemory_policy", "t", "unavailable", "no CONFIG", "w")
    d = Check("redis.maxmemory_policy", "t", "ok", "noeviction", "w")
    combined = doctor.combine(
        "redis.maxmemory_policy", [("a:1", a), ("b:1", b), ("c:1", c), ("d:1", d)]
    )
    assert combined.status == "fail" and combined.action == "on b:1: fix it"
    # worst first; servers that saw the same thing are named together
    assert combined.observed == "b:1: allkeys-lru; c:1: no CONFIG; a:1, d:1: noeviction"
    assert combined.servers == {"a:1": "ok", "b:1": "fail", "c:1": "unavailable", "d:1": "ok"}
    assert combined.metrics[0].labels == {"server": "a:1"}
    assert combined.as_dict()["servers"] == combined.servers
    only_ok_and_unavailable = doctor.combine("redis.maxmemory_policy", [("a", a), ("c", c)])
    assert only_ok_and_unavailable.status == "unavailable"
    everywhere = doctor.combine("redis.maxmemory_policy", [("b:1", b), ("b:2", b)])
    assert everywhere.action == "on every primary: fix it"
    assert everywhere.observed == "b:1, b:2: allkeys-lru"
    single = doctor.combine("redis.maxmemory_policy", [("b:1", b)])
    assert single.action == "fix it" and single.servers is None


def test_memory_limit_adds_maxmemory_and_counts_a_shared_host_once() -> None:
    def node(name: str, maxmemory: int, system: int | None = 8 << 30) -> ServerFacts:
        f = facts(config={"maxmemory": str(maxmemory)}, total_system_memory=system)
        f.name = name
        return f

    assert doctor.memory_limit([node("h1:7000", 1 << 30), node("h2:7000", 2 << 30)]) == 3 << 30
    # three nodes on one host without maxmemory share that host's memory
    same_host = [node(f"h1:{p}", 0) for p in (7000, 7001, 7002)]
    assert doctor.memory_limit(same_host) == 8 << 30
    assert doctor.memory_limit([*same_host, node("h2:7000", 0)]) == 16 << 30
    assert doctor.memory_limit([node("h1:7000", 1 << 30), node("h2:7000", 0)]) == 9 << 30
    assert doctor.memory_limit([node("h1:7000", 0, None)]) is None


def cluster_facts(**cluster_info: str) -> ServerFacts:
    f = facts(cluster_enabled=1)
    f.cluster_info = {
        "cluster_state": "ok",
        "cluster_slots_assigned": "16384",
        "cluster_slots_ok": "16384",
        "cluster_slots_pfail": "0",
        "cluster_slots_fail": "0",
        "cluster_known_nodes": "6",
        "cluster_size": "3",
        **cluster_info,
    }
    return f


@pytest.mark.parametrize(
    ("info", "status"),
    [
        ({}, "ok"),
        ({"cluster_slots_pfail": "5461", "cluster_slots_ok": "10923"}, "warn"),
        ({"cluster_state": "fail", "cluster_slots_fail": "5461"}, "fail"),
        ({"cluster_state": "fail", "cluster_slots_assigned": "10923"}, "fail"),
    ],
)
def test_cluster_state(info: dict[str, str], status: str) -> None:
    check = server.check_cluster(cluster_facts(**info), through_cluster_client=True)
    assert check.status == status
    assert check.observed.startswith(f"cluster_state {info.get('cluster_state', 'ok')}")
    assert (check.action is None) == (status == "ok")


def test_a_cluster_node_checked_alone_fails_and_says_how_to_check_the_cluster() -> None:
    check = server.check_cluster(cluster_facts(), through_cluster_client=False)
    assert check.status == "fail"
    assert "redis+cluster://" in (check.action or "") and "--cluster" in (check.action or "")
    refused = cluster_facts()
    refused.cluster_info, refused.cluster_error = None, "NOPERM"
    assert server.check_cluster(refused, through_cluster_client=True).status == "unavailable"


SAMPLE_LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? '
    r"-?[0-9.e+-]+$"
)


def test_prometheus_rendering_is_valid_textfile_format() -> None:
    check = memory.check_maxmemory_policy(facts(), DataPresence())
    weird = Check(
        "queues.stuck",
        "stuck",
        "fail",
        "x",
        "w",
        metrics=[
            Metric(
                "esctl_doctor_queue_oldest_processing_age_seconds",
                12.5,
                {"subscriber": 'A "quoted" \\ name\n', "event_type": "Envelope`1", "env": "e"},
            )
        ],
    )
    report = doctor.DoctorReport(
        "2025-01-01T00:00:00+00:00", "r", "App", "env", None, [check, weird], [], [], 0.5
    )
    text = doctor.render_prometheus(report)
    names_seen: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name = line.split()[2]
            if line.startswith("# TYPE "):
                assert name not in names_seen, f"{name} declared twice"
                names_seen.add(name)
            continue
        assert SAMPLE_LINE.match(line), line
    assert (
        'esctl_doctor_check_status{app="App",check="queues.stuck",env="env",group="queues"} 2'
        in text
    )
    assert 'subscriber="A \\"quoted\\" \\\\ name\\n"' in text
    assert 'esctl_doctor_checks{app="App",env="env",status="fail"} 1' in text
    promtext.parse(text)  # the format's every rule


@pytest.mark.parametrize(
    ("app", "env", "scope"),
    [
        ("App", "prod", {"app": "App", "env": "prod"}),
        (None, "prod", {"env": "prod"}),
        ("App", None, {"app": "App"}),
        (None, None, {}),
    ],
)
def test_every_sample_is_labelled_with_the_app_and_env_given(
    app: str | None, env: str | None, scope: dict[str, str]
) -> None:
    """Two doctor jobs for other apps or environments write textfiles that one node_exporter
    collects: every series names the job's app and env (those given: a label left out, never
    empty), so that none is in both files (the collector refuses a duplicate) and an alert on a
    check's status says which app and environment it is about."""
    checks = [
        memory.check_maxmemory_policy(facts(), DataPresence()),
        Check(
            "queues.stuck", "stuck", "warn", "x", "w",
            metrics=[Metric("esctl_doctor_queue_draining", 1, {"env": env or "", "subscriber": "S"})],
        ),
        Check(
            "store.memory", "memory", "ok", "x", "w",
            metrics=[Metric("esctl_doctor_store_events", 12, {"app": app or ""})],
        ),
    ]  # fmt: skip
    if env is None:
        checks[1].metrics[0].labels.pop("env")
    if app is None:
        checks[2].metrics[0].labels.pop("app")
    report = doctor.DoctorReport(
        "2025-01-01T00:00:00+00:00", "r", app, env, None, checks, [], [], 0.5
    )
    families = promtext.parse(doctor.render_prometheus(report))
    series = [(name, dict(labels)) for name, f in families.items() for labels in f.samples]
    assert {name for name, _ in series} >= {
        "esctl_doctor_check_status", "esctl_doctor_checks", "esctl_doctor_redis_noeviction",
        "esctl_doctor_queue_draining", "esctl_doctor_store_events",
    }  # fmt: skip
    for name, labels in series:
        assert {k: v for k, v in labels.items() if k in ("app", "env")} == scope, (name, labels)
        assert "" not in labels.values(), (name, labels)
    status = families["esctl_doctor_check_status"].samples
    assert (
        status[tuple(sorted((scope | {"check": "queues.stuck", "group": "queues"}).items()))] == 1
    )


def test_every_check_has_a_title_and_a_why_and_every_metric_a_help() -> None:
    assert all(spec.title and spec.why for spec in doctor.SPECS.values())
    report_ids = {check_id for check_id, _ in doctor.REDIS_CHECKS} | {"redis.cluster"}
    assert report_ids <= set(doctor.SPECS)
    help_texts = doctor.metric_help()
    for path in sorted(Path(doctor.__file__).parent.glob("*.py")):
        used = set(re.findall(r'"(esctl_doctor_[a-z_]+)"', path.read_text(encoding="utf-8")))
        assert used <= set(help_texts), (path.name, used - set(help_texts))


def test_a_check_or_a_metric_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        doctor.declare("redis.reachable", "again", why="w")
    with pytest.raises(ValueError, match="declared by another check"):
        doctor.declare("redis.new", "new", why="w", metrics={"esctl_doctor_redis_up": "h"})
    with pytest.raises(ValueError, match="no group"):
        doctor.declare("nowhere.check", "t", why="w")
    assert {"redis.new", "nowhere.check"}.isdisjoint(doctor.SPECS)

"""``esctl doctor`` end to end (a real subprocess): exit codes, --strict, --json, the metrics
file, which DSN counts as configured. The verdicts themselves are tested in test_doctor_*.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import promtext
import pytest
import redis
from helpers import run_cli

from esctl import servers
from esctl.demo import write_demo_store

RECOMMENDED = [
    "--maxmemory", "256mb",
    "--appendonly", "yes",
    "--no-appendfsync-on-rewrite", "yes",
    "--latency-monitor-threshold", "100",
]  # fmt: skip


@pytest.fixture
def recommended() -> Iterator[servers.LocalRedis]:
    server = servers.start_redis(extra_args=RECOMMENDED)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def risky() -> Iterator[servers.LocalRedis]:
    server = servers.start_redis(
        extra_args=["--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", ""]
    )
    try:
        yield server
    finally:
        server.stop()


def test_warnings_exit_0_and_3_with_strict(recommended: servers.LocalRedis) -> None:
    plain = run_cli("doctor", "--redis-url", recommended.url)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "WARN" in plain.stdout and "redis.role" in plain.stdout  # a lone primary
    assert "why:" in plain.stdout and "do:" in plain.stdout
    assert "skipped event_store checks: no --app given" in plain.stdout
    strict = run_cli("doctor", "--redis-url", recommended.url, "--strict", "--json")
    assert strict.returncode == 3
    document = json.loads(strict.stdout)
    assert document["strict"] is True and document["exit_code"] == 3
    assert document["status"] == "warn"
    # the last line counts them, the noun agreeing ('1 warning'; it said 'warning(s)')
    warned = document["counts"]["warn"]
    words = " ".join(plain.stdout.split())
    assert f" failed, {warned} {'warning' if warned == 1 else 'warnings'}, " in words, words


@pytest.fixture
def healthy() -> Iterator[servers.LocalRedis]:
    """A primary set up as recommended with a replica online: no Redis check warns."""
    primary = servers.start_redis(extra_args=[*RECOMMENDED, "--repl-diskless-sync-delay", "0"])
    replica = None
    try:
        replica = servers.start_redis(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
        with redis.Redis.from_url(primary.url) as client:
            deadline = time.monotonic() + 20
            while client.info("replication").get("slave0", {}).get("state") != "online":
                assert time.monotonic() < deadline, "the replica did not come online"
                time.sleep(0.05)
        yield primary
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def test_a_mistyped_app_warns_so_strict_exits_3(healthy: servers.LocalRedis) -> None:
    """doctor from cron with --strict and an --app that has no keys here: exit 3, where the
    right app's run exits 0; without --strict both exit 0 (warnings do not fail doctor)."""
    with redis.Redis.from_url(healthy.url) as client:
        app = write_demo_store(client, app="Learning.Doctor.Web", env="prod").app

    def doctor(app: str, *args: str) -> tuple[int, dict[str, str]]:
        result = run_cli("doctor", "--redis-url", healthy.url, "--app", app, "--json", *args)
        document = json.loads(result.stdout)
        assert document["exit_code"] == result.returncode
        return result.returncode, {c["id"]: c["status"] for c in document["checks"]}

    right_code, right = doctor(app, "--strict")
    assert right_code == 0, {k: v for k, v in right.items() if v != "ok"}
    assert doctor(app[:-1])[0] == 0
    wrong_code, wrong = doctor(app[:-1], "--strict")
    assert wrong_code == 3
    assert {k for k, v in wrong.items() if v == "warn"} == {
        "store.memory", "store.uncompressed", "store.growth", "store.key_types"
    }  # fmt: skip


def test_a_mistyped_env_warns_naming_the_envs_there_are(healthy: servers.LocalRedis) -> None:
    """doctor --env with a name that has no queue here: the three queue checks warned nothing
    ("ok … in 0 queues"), so a cron job with a typo stayed green. They warn, naming the
    environments that have queues, and --strict exits 3; the right env is not warned about
    for want of queues."""
    with redis.Redis.from_url(healthy.url) as client:
        write_demo_store(client, app="Learning.Doctor.Web", env="prod")

    def doctor(env: str) -> tuple[int, dict[str, dict[str, str]]]:
        result = run_cli(
            "doctor", "--redis-url", healthy.url, "--env", env, "--json", "--strict", "--read-only"
        )
        document = json.loads(result.stdout)
        assert document["exit_code"] == result.returncode
        return result.returncode, {c["id"]: c for c in document["checks"]}

    code, checks = doctor("prd")
    assert code == 3
    for check in ("queues.stuck", "queues.dead_letters", "queues.draining"):
        assert checks[check]["status"] == "warn", checks[check]
        assert checks[check]["observed"] == "env prd has no queues in this database"
        assert checks[check]["action"] == (
            "environments with queues here: prod; check --env / ESCTL_ENV"
        )
    _, right = doctor("prod")
    assert all("has no queues" not in c["observed"] for c in right.values())


def test_failures_exit_3_with_one_json_document(risky: servers.LocalRedis) -> None:
    result = run_cli("doctor", "--redis-url", risky.url, "--json")
    assert result.returncode == 3, result.stderr
    document = json.loads(result.stdout)  # exactly one document
    assert document["status"] == "fail"
    checks = {c["id"]: c for c in document["checks"]}
    assert checks["redis.maxmemory_policy"]["status"] == "fail"
    assert checks["redis.latency_monitor"]["status"] == "unavailable"
    assert set(checks["redis.maxmemory_policy"]) >= {
        "id", "group", "title", "status", "observed", "why", "action", "values", "details"
    }  # fmt: skip
    assert document["counts"]["fail"] >= 1
    assert "Traceback" not in result.stderr


def test_metrics_file_is_written_whole(tmp_path: Path, risky: servers.LocalRedis) -> None:
    target = tmp_path / "esctl_doctor.prom"
    target.write_text("old contents\n")
    result = run_cli("doctor", "--redis-url", risky.url, "--metrics-file", str(target))
    assert result.returncode == 3
    text = target.read_text()
    assert "old contents" not in text
    assert 'esctl_doctor_check_status{check="redis.maxmemory_policy",group="redis"} 2' in text
    assert 'esctl_doctor_check_status{check="redis.latency_monitor",group="redis"} -1' in text
    assert re.search(r"^esctl_doctor_redis_up\{server=\"[^\"]+\"\} 1$", text, re.M)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left
    assert oct(target.stat().st_mode & 0o777) == "0o644"

    missing = run_cli(
        "doctor", "--redis-url", risky.url, "--metrics-file", str(tmp_path / "no" / "x.prom")
    )
    assert missing.returncode == 1 and "metrics file" in missing.stderr


def test_the_textfiles_of_doctor_jobs_for_other_apps_and_envs_are_collected_together(
    tmp_path: Path, recommended: servers.LocalRedis, pg_dsn: str
) -> None:
    """Doctor jobs of one machine, for two apps in their environments, write their textfiles
    into node_exporter's one folder: the collector refuses a series two files hold, and every
    check's status was the same series whatever the app (``esctl_doctor_check_status{check=
    "redis.reachable",group="redis"}`` in each file), as were the Redis and PostgreSQL figures.
    Each series carries its job's app and env now."""
    with redis.Redis.from_url(recommended.url) as client:
        write_demo_store(client, app="Learning.Doctor.Web", env="prod")
        write_demo_store(client, app="Learning.Doctor.Worker", env="staging")
    jobs = {
        "web": {"app": "Learning.Doctor.Web", "env": "prod"},
        "worker": {"app": "Learning.Doctor.Worker", "env": "staging"},
    }
    files = []
    for job, scope in jobs.items():
        path = tmp_path / f"esctl_doctor_{job}.prom"
        given = [arg for name, value in scope.items() for arg in (f"--{name}", value)]
        result = run_cli(
            "doctor", "--redis-url", recommended.url, "--pg-dsn", pg_dsn, *given, "--read-only",
            "--metrics-file", str(path),
        )  # fmt: skip
        assert result.returncode in (0, 3), result.stdout + result.stderr
        files.append((path.name, path.read_text()))
    merged = promtext.merge(files)  # each file by the format's rules, and no series in two
    for (source, text), scope in zip(files, jobs.values(), strict=True):
        for name, family in promtext.parse(text, source).items():
            for labels in family.samples:
                of_scope = {k: v for k, v in labels if k in ("app", "env")}
                assert of_scope == scope, (source, name, labels)
    status = merged["esctl_doctor_check_status"].samples
    assert {dict(labels)["app"] for labels in status} == {
        "Learning.Doctor.Web",
        "Learning.Doctor.Worker",
    }
    assert "esctl_doctor_pg_up" in merged and "esctl_doctor_store_events" in merged


def test_only_a_configured_dsn_adds_postgresql_checks(
    recommended: servers.LocalRedis, pg_dsn: str
) -> None:
    default = run_cli("doctor", "--redis-url", recommended.url, "--json")
    assert not [c for c in json.loads(default.stdout)["checks"] if c["group"] == "postgresql"]
    configured = run_cli(
        "doctor", "--redis-url", recommended.url, "--json", env={"ESCTL_PG_DSN": pg_dsn}
    )
    ids = [c["id"] for c in json.loads(configured.stdout)["checks"] if c["group"] == "postgresql"]
    assert ids == ["pg.reachable", "pg.schema", "pg.constraints", "pg.migration"]


def test_app_and_env_add_their_checks(
    recommended: servers.LocalRedis,
) -> None:
    result = run_cli("doctor", "--redis-url", recommended.url, "--app", "A", "--env", "e", "--json")
    groups = {c["group"] for c in json.loads(result.stdout)["checks"]}
    assert groups == {"redis", "event_store", "queues"}


def test_bad_duration_is_a_usage_error(recommended: servers.LocalRedis) -> None:
    result = run_cli("doctor", "--redis-url", recommended.url, "--stuck-after", "soon")
    assert result.returncode == 2
    assert "duration" in result.stderr


def test_the_server_is_named_alike_whether_it_answers_or_not(
    tmp_path: Path, recommended: servers.LocalRedis
) -> None:
    """doctor's JSON ``redis`` and the metrics' ``server`` label: one name for one server, up or
    down (a Prometheus alert on ``esctl_doctor_redis_up == 0`` needs the same series)."""
    url, name = recommended.url, f"127.0.0.1:{recommended.port}/0"
    up = run_cli("doctor", "--redis-url", url, "--json", "--metrics-file", str(tmp_path / "up"))
    assert json.loads(up.stdout)["redis"] == name
    assert f'esctl_doctor_redis_up{{server="{name}"}} 1' in (tmp_path / "up").read_text()
    recommended.stop()
    down = run_cli("doctor", "--redis-url", url, "--json", "--metrics-file", str(tmp_path / "down"))
    assert down.returncode == 3
    assert json.loads(down.stdout)["redis"] == name
    assert f'esctl_doctor_redis_up{{server="{name}"}} 0' in (tmp_path / "down").read_text()


def test_a_multi_line_server_error_is_observed_on_one_line(
    recommended: servers.LocalRedis,
) -> None:
    """libpq's refusal spans two lines ("…Connection refused\\n\\tIs the server running…?"):
    doctor's ``observed`` is one line in --json, in the table's row and after ``observed:``,
    as README's prose rule says of a pipe (it continued at the margin, under no column)."""
    refused = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1
    args = ("doctor", "--redis-url", recommended.url, "--pg-dsn", refused, "--read-only")
    result = run_cli(*args, "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    (check,) = [c for c in json.loads(result.stdout)["checks"] if c["id"] == "pg.reachable"]
    assert check["status"] == "fail" and "Connection refused" in check["observed"]
    assert "\n" not in check["observed"] and "\t" not in check["observed"]
    text = run_cli(*args).stdout
    rows = [line for line in text.splitlines() if "Is the server running" in line]
    assert len(rows) == 2, text  # the table's row and the finding's observed:, each whole
    assert all("cannot connect to PostgreSQL" in row for row in rows), rows


def test_the_metrics_job_from_cron_mails_nothing(
    tmp_path: Path, recommended: servers.LocalRedis
) -> None:
    """README's every-minute cron line (`esctl doctor --env … --metrics-file … > /dev/null`):
    cron mails whatever reaches stderr, so with no terminal doctor says nothing there (it said
    'wrote PATH', a mail a minute); the file is written all the same."""
    target = tmp_path / "esctl_doctor.prom"
    result = run_cli(
        "doctor", "--redis-url", recommended.url, "--env", "production",
        "--metrics-file", str(target),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert "esctl_doctor_check_status" in target.read_text()


def read_only_user(server: servers.LocalRedis, *more: str) -> str:
    """The URL of a user of ``server`` with (about) README's esctl-read rules, and ``more``."""
    with redis.Redis(port=server.port) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "esctl-read", "on", ">pw", "resetkeys", "resetchannels", "-@all",
            "%R~*", "+ping", "+hello", "+select", "+info", "+time", "+scan", "+type", "+exists",
            "+get", "+pttl", "+llen", "+lrange", "+lindex", "+hget", "+hgetall", "+hlen",
            "+hkeys", "+hscan", "+smembers", "+sismember", "+lpos", "+memory|usage", *more,
        )  # fmt: skip
    return f"redis://esctl-read:pw@127.0.0.1:{server.port}/0"


def test_what_a_read_only_user_may_not_run_comes_with_the_rules_to_grant(
    recommended: servers.LocalRedis,
) -> None:
    """Under README's esctl-read user (no CONFIG, LATENCY or SLOWLOG) the checks that need them
    are n/a, and each `do:` gives the ACL rules to paste, in backticks as README promises of
    doctor's actions (it said "grant LATENCY to the user": no rule, and a wider one)."""
    url = read_only_user(recommended)
    result = run_cli("doctor", "--redis-url", url, "--read-only", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    actions = {c["id"]: c["action"] for c in json.loads(result.stdout)["checks"]}
    assert "`ACL SETUSER USER +config|get`" in actions["redis.latency_monitor"]
    assert "`ACL SETUSER USER +latency|latest +latency|doctor`" in actions["redis.latency"]
    assert "`ACL SETUSER USER +slowlog|get`" in actions["redis.slowlog"]


def test_a_memory_limit_hours_away_is_said_in_hours(recommended: servers.LocalRedis) -> None:
    """store.growth with the limit under a day away at the measured rate: the observation says
    how many hours (it said 'the memory limit is 0 days away')."""
    with redis.Redis.from_url(recommended.url) as client:
        app = write_demo_store(client, app="Learning.Doctor.Web", env="prod").app
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 2_000_000)
        # 2 h ago 1 MB less: over 12 MB a day, so the ~2 MB left last some hours
        old = {"taken_at": time.time() - 7200, "used_memory": used - 1_000_000, "events": 0}
        client.set(f"esctl:doctor:{{{app}}}", json.dumps({"older": old, "newer": old}))
    result = run_cli("doctor", "--redis-url", recommended.url, "--app", app, "--read-only")
    assert result.returncode == 3, result.stdout + result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL   │ store.g")]
    assert re.search(r"the memory limit is \d+h \d+m away at this rate", row), row


def test_readings_the_user_may_not_store_come_with_the_rules_to_grant(
    recommended: servers.LocalRedis,
) -> None:
    """doctor without --read-only under a user that may not SET: growth and draining are n/a
    and said "run doctor again later", which a refused user can do forever. They give the
    rules to paste instead; with them the readings are stored."""
    with redis.Redis.from_url(recommended.url) as client:
        app = write_demo_store(client, app="Learning.Doctor.Web", env="prod").app
    args = ("doctor", "--app", app, "--env", "prod", "--json")
    refused = run_cli(*args, "--redis-url", read_only_user(recommended))
    document = json.loads(refused.stdout)
    assert [r["stored"] for r in document["readings"]] == [False, False], document["readings"]
    for check in document["checks"]:
        if check["id"] in ("store.growth", "queues.draining"):
            assert check["status"] == "unavailable", check
            assert "`ACL SETUSER USER +get +set ~esctl:doctor:*`" in check["action"], check
    rules = ["+get", "+set", "~esctl:doctor:*"]
    stored = run_cli(*args, "--redis-url", read_only_user(recommended, *rules))
    assert [r["stored"] for r in json.loads(stored.stdout)["readings"]] == [True, True]

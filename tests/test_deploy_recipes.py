"""The deployment recipes in ``docs/deploy/`` say what they do: the Kubernetes manifests run
``--shard auto`` with exactly the variables it reads (the count equal to ``completions``),
take the credentials from a Secret into variables esctl reads, and, run as a pod of index k
would run them, work on shard k/N; the systemd units run esctl command lines that work, with
the exit codes handled as docs/deploy/systemd.md says."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
import yaml
from helpers import run_cli

from esctl import pg
from esctl.config import SETTINGS
from esctl.shard import COUNT_VAR, INDEX_VAR

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
SYSTEMD = DEPLOY / "systemd"

SETTING_VARS = {s.env_var for s in SETTINGS}
SECRET_VARS = {s.env_var for s in SETTINGS if s.secret_bearing}


# --- Kubernetes ----------------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), f"{path.name}: not one YAML mapping"
    return document


def job_spec(document: dict[str, Any]) -> dict[str, Any]:
    """The Job spec of a Job, or of a CronJob's job template."""
    if document["kind"] == "CronJob":
        spec: dict[str, Any] = document["spec"]["jobTemplate"]["spec"]
    else:
        assert document["kind"] == "Job"
        spec = document["spec"]
    return spec


def container(document: dict[str, Any]) -> dict[str, Any]:
    containers = job_spec(document)["template"]["spec"]["containers"]
    assert len(containers) == 1
    only: dict[str, Any] = containers[0]
    return only


def literal_env(document: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(document)["env"] if "value" in e}


def secret_env(document: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Variable -> (Secret name, key) of every variable taken from a Secret."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container(document)["env"]
        if "valueFrom" in e
    }


def test_there_are_manifests_for_each_sharded_command() -> None:
    commands = {" ".join(container(load(p))["command"][1:3]) for p in MANIFESTS}
    assert commands >= {
        "migrate redis-to-pg",
        "migrate verify",
        "inspect integrity",
        "replay --from",
    }, commands
    assert {load(p)["kind"] for p in MANIFESTS} == {"Job", "CronJob"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_runs_shard_auto_with_the_variables_it_reads(path: Path) -> None:
    document = load(path)
    spec = job_spec(document)
    box = container(document)
    command = box["command"]
    # Kubernetes takes strings only (an unquoted 1 is a YAML number: the API refuses it).
    assert all(isinstance(word, str) for word in command), command
    assert all(isinstance(e.get("value", ""), str) for e in box["env"]), box["env"]
    assert command[0] == "esctl"
    assert [command[i : i + 2] for i in range(len(command))].count(["--shard", "auto"]) == 1
    assert "--json" in command  # the pod's log holds the summary

    assert spec["completionMode"] == "Indexed"
    env = literal_env(document)
    names = [e["name"] for e in box["env"]]
    assert len(names) == len(set(names)), f"a variable set twice: {names}"
    # --shard auto reads JOB_COMPLETION_INDEX (Kubernetes sets it: the manifest must not) and
    # ESCTL_SHARD_COUNT, which must be the Job's completion count.
    assert {INDEX_VAR, COUNT_VAR} & set(names) == {COUNT_VAR}
    assert int(env[COUNT_VAR]) == spec["completions"] == spec["parallelism"] >= 2
    # Every other variable is a setting esctl reads; passwords only ever come from a Secret.
    assert set(names) - {COUNT_VAR} <= SETTING_VARS, set(names) - SETTING_VARS
    secrets = secret_env(document)
    assert set(secrets) <= SECRET_VARS
    assert not SECRET_VARS & set(env), "a URL or DSN (with its password) written in the manifest"
    assert {name for name, _ in secrets.values()} == {"esctl-credentials"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_handles_the_exit_codes_as_documented(path: Path) -> None:
    spec = job_spec(load(path))
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # backoffLimitPerIndex and podFailurePolicy need it
    assert spec["backoffLimitPerIndex"] >= 1
    assert spec["podReplacementPolicy"] == "Failed"
    actions = {}
    for rule in spec["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes["containerName"] == container(load(path))["name"]
            assert codes["operator"] == "In"
            actions.update(dict.fromkeys(codes["values"], rule["action"]))
        else:
            assert rule == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    # 2 (usage, refusal) fails the Job; 3 (problems found) fails the index without a retry;
    # 1, 75 and 130 are retried (safe to rerun).
    assert actions == {2: "FailJob", 3: "FailIndex"}


def test_the_kubernetes_document_shows_every_manifest_and_the_secret_keys() -> None:
    text = (DEPLOY / "kubernetes.md").read_text(encoding="utf-8")
    keys = set()
    for path in MANIFESTS:
        assert f"k8s/{path.name}" in text, f"docs/deploy/kubernetes.md does not show {path.name}"
        keys |= {key for _, key in secret_env(load(path)).values()}
    for key in sorted(keys):
        assert f"--from-literal={key}=" in text, f"the Secret recipe lacks the key {key}"
    # The manifest shown in full is the file, as it is.
    shown = re.findall(r"^```yaml\n(.*?)^```$", text, re.S | re.M)
    assert shown == [(DEPLOY / "k8s" / "migrate-job.yaml").read_text(encoding="utf-8")]


def test_the_nightly_cronjob_runs_the_job_without_creating_the_schema() -> None:
    job, nightly = (
        load(DEPLOY / "k8s" / name) for name in ("migrate-job.yaml", "migrate-cronjob.yaml")
    )
    assert container(nightly)["command"] == [
        word for word in container(job)["command"] if word != "--init-schema"
    ]
    assert container(nightly)["env"] == container(job)["env"]
    assert nightly["spec"]["concurrencyPolicy"] == "Forbid"


def pod_env(document: dict[str, Any], index: int, servers: dict[str, str]) -> dict[str, str]:
    """The environment a pod of completion ``index`` gets: the manifest's values, the Secret's
    (here the test servers), and JOB_COMPLETION_INDEX as Kubernetes sets it."""
    env = literal_env(document) | {name: servers[name] for name in secret_env(document)}
    return env | {"ESCTL_APP": servers["ESCTL_APP"], INDEX_VAR: str(index)}


def run_pod(document: dict[str, Any], index: int, servers: dict[str, str]) -> dict[str, Any]:
    command = container(document)["command"]
    result = run_cli(*command[1:], env=pod_env(document, index, servers))
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr}"
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def test_each_manifest_run_as_pod_k_works_on_shard_k(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=24, seed=14)
    documents = {p.stem: load(p) for p in MANIFESTS}
    count = job_spec(documents["migrate-job"])["completions"]
    index = count - 1
    servers = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_PG_DSN": pg_dsn, "ESCTL_APP": app_name}
    owned = [
        a for a in truth.aggregates if zlib.crc32(a.aggregate_id.encode("utf-8")) % count == index
    ]
    assert 0 < len(owned) < len(truth.aggregates)
    owned_events = sum(len(a.events) for a in owned)

    migrated = run_pod(documents["migrate-job"], index, servers)
    assert (migrated["aggregates"], migrated["events_migrated"]) == (len(owned), owned_events)
    verified = run_pod(documents["verify-job"], index, servers)
    assert (verified["aggregates"], verified["aggregates_identical"]) == (len(owned), len(owned))
    checked = run_pod(documents["integrity-job"], index, servers)
    assert checked["shard"] == f"{index}/{count}"
    assert checked["aggregates_with_problems"] == 0
    replayed = run_pod(documents["replay-job"], index, servers)
    assert replayed["shard"] == f"{index}/{count}"
    assert replayed["events"] == owned_events
    with psycopg.connect(pg_dsn) as conn:
        shards = conn.execute(
            "SELECT DISTINCT shard FROM esctl.migration_run WHERE application_name = %s",
            (app_name,),
        ).fetchall()
    assert shards == [(f"{index}/{count}",)]


# --- systemd -------------------------------------------------------------------------------


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections: key -> every value given (ExecStart may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}: continuation lines are not parsed here"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: cannot read {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {k: v for k, v in pairs}


SERVICE = SYSTEMD / "esctl-migrate.service"
TIMER = SYSTEMD / "esctl-migrate.timer"


def test_service_and_timer_say_what_the_document_says() -> None:
    service = unit(SERVICE)["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["SuccessExitStatus"] == ["75"]  # another run holds the lock: nothing done
    assert set(service["RestartPreventExitStatus"][0].split()) == {"2", "3"}
    assert service["Restart"] == ["on-failure"]
    assert service["EnvironmentFile"] == ["/etc/esctl/esctl.env"]
    assert service["StateDirectory"] == ["esctl"]
    assert service["WorkingDirectory"] == ["/var/lib/esctl"]
    timer = unit(TIMER)
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Timer"]["RandomizedDelaySec"]
    assert timer["Timer"]["OnCalendar"]
    assert "Unit" not in timer["Timer"]  # the default: the service of the same name
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    # The example environment file holds settings esctl reads, and nothing else.
    assert set(env_file(SYSTEMD / "esctl.env.example")) == SECRET_VARS | {"ESCTL_APP"}
    text = (DEPLOY / "systemd.md").read_text(encoding="utf-8")
    for path in (SERVICE, TIMER, SYSTEMD / "esctl.env.example"):
        assert f"systemd/{path.name}" in text


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    esctl = Path(sys.executable).with_name("esctl")
    if analyze is None or not esctl.exists():
        pytest.skip("needs systemd-analyze and the esctl script beside this Python")
    for path in (SERVICE, TIMER):
        text = path.read_text(encoding="utf-8")
        (tmp_path / path.name).write_text(text.replace("/opt/esctl/venv/bin/esctl", str(esctl)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / p.name) for p in (SERVICE, TIMER))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "esctl-migrate" not in result.stdout + result.stderr


def test_the_service_command_lines_run_as_the_service_would(
    redis_client: redis.Redis, redis_test_url: str, pg_dsn: str, app_name: str
) -> None:
    truth = iw.write_store(redis_client, app=app_name, aggregates=12, seed=15)
    with pg.connect(pg_dsn) as conn:  # created once by hand (docs/deploy/systemd.md)
        pg.ensure_event_store_schema(conn, "public", create=True)
        pg.ensure_state_schema(conn)
    settings = env_file(SYSTEMD / "esctl.env.example")
    env = {"ESCTL_REDIS_URL": redis_test_url, "ESCTL_PG_DSN": pg_dsn, "ESCTL_APP": app_name}
    assert set(env) == set(settings)
    service = unit(SERVICE)["Service"]
    succeeded = {0, *map(int, service["SuccessExitStatus"][0].split())}
    summaries = []
    for line in service["ExecStart"]:
        argv = shlex.split(line)
        assert argv[0] == "/opt/esctl/venv/bin/esctl"
        result = run_cli(*argv[1:], env=env)
        assert result.returncode in succeeded, f"{line}: exit {result.returncode}\n{result.stderr}"
        summaries.append(json.loads(result.stdout))
    migrated, verified = summaries
    assert migrated["events_migrated"] == len(truth.events())
    assert verified["aggregates"] == verified["aggregates_identical"] == len(truth.aggregates)

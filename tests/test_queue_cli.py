"""``esctl queue`` end to end (a real subprocess): options, output shape, confirmation, exit
codes. The behaviour itself is tested in test_queue_ops.py."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import lostlock
import redis
import redis_bytes as rb
from helpers import cli_env, run_cli

from esctl import layout, queues
from esctl.demo import DemoSummary


def esctl(url: str, env: str, *args: str) -> Any:
    return run_cli("queue", *args, "--redis-url", url, "--env", env)


def lists(client: redis.Redis, env: str) -> dict[bytes, list[bytes]]:
    return {
        key: rb.lrange(client, key)
        for key in client.scan_iter(match=f"*:{{{env}:*}}:*")
        if client.type(key) == b"list"
    }


def test_list_json_and_metrics_file(
    tmp_path: Path, redis_test_url: str, demo_store: DemoSummary
) -> None:
    metrics = tmp_path / "queues.prom"
    result = esctl(redis_test_url, demo_store.env, "list", "--json", "--metrics-file", str(metrics))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["env"] == demo_store.env
    assert document["totals"]["dead"] == demo_store.dead_letters
    assert document["totals"]["processing"] == demo_store.processing_messages
    assert len(document["queues"]) == len(demo_store.queues)
    assert set(document["queues"][0]) >= {
        "subscriber",
        "event_type",
        "published",
        "processing",
        "dead",
        "oldest_processing_age_s",
        "retry_data",
    }
    assert "esctl_queue_messages{" in metrics.read_text()
    # README's every-minute cron line (stdout to /dev/null): nothing on stderr, which cron
    # would mail every minute ('wrote PATH' was); the file is written all the same
    metrics.unlink()
    cron = esctl(redis_test_url, demo_store.env, "list", "--metrics-file", str(metrics))
    assert (cron.returncode, cron.stderr) == (0, ""), cron.stderr
    assert "esctl_queue_messages{" in metrics.read_text()

    missing = run_cli("queue", "list", "--redis-url", redis_test_url, "--json")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"]["kind"] == "config"
    assert "ESCTL_ENV" in missing.stderr


def test_peek_json_shows_dead_letters_with_retry_data(
    redis_test_url: str, demo_store: DemoSummary
) -> None:
    sub, kind = demo_store.samples["dead_subscriber"], demo_store.samples["dead_event_type"]
    result = esctl(redis_test_url, demo_store.env, "peek", sub, kind, "--list", "dead", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["list"] == "dead" and document["length"] >= 1
    first = document["messages"][0]
    assert first["position"] == 0
    assert first["retry"]["retry_count"] >= 1 and first["retry"]["last_exception"]
    assert json.loads(first["text"])["Id"] == first["aggregate_id"]
    human = esctl(redis_test_url, demo_store.env, "peek", sub, kind, "--list", "dead")
    assert human.returncode == 0 and "last exception" in human.stdout


def test_peek_says_one_message_in_the_singular(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    """A queue of one message: the title says '1 message' (it said '1 message(s)')."""
    key = layout.queue_key("Reporting.Worker", env_name, "ItemScoreCreated", "published")
    message = {"Id": "a1", "Version": 1, "TimeStamp": "2024-05-01T10:00:00.0000000+00:00"}
    redis_client.lpush(key, json.dumps(message))
    human = esctl(redis_test_url, env_name, "peek", "Reporting.Worker", "ItemScoreCreated")
    assert human.returncode == 0, human.stderr
    assert f"{key}: 1 message, the next 1 shown" in " ".join(human.stdout.split()), human.stdout


def test_requeue_asks_refuses_without_terminal_and_runs_with_yes(
    redis_client: redis.Redis, redis_test_url: str, demo_store: DemoSummary
) -> None:
    env = demo_store.env
    sub, kind = demo_store.samples["stuck_subscriber"], demo_store.samples["stuck_event_type"]
    processing = layout.queue_key(sub, env, kind, "processing")
    stuck = redis_client.llen(processing)
    assert stuck >= 1
    before = lists(redis_client, env)

    refused = esctl(redis_test_url, env, "requeue", sub, kind, "--older-than", "5m")
    assert refused.returncode == 2
    assert "no terminal" in refused.stderr and "--yes" in refused.stderr
    assert lists(redis_client, env) == before

    dry = esctl(
        redis_test_url, env, "requeue", sub, kind, "--older-than", "5m", "--dry-run", "--json"
    )
    assert dry.returncode == 0, dry.stderr
    document = json.loads(dry.stdout)
    assert (
        document["dry_run"] is True and document["selected"] == stuck and document["requeued"] == 0
    )
    assert lists(redis_client, env) == before

    done = esctl(redis_test_url, env, "requeue", sub, kind, "--older-than", "5m", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {"dry_run", "selected", "requeued", "gone", "problems"} <= set(summary)
    assert (summary["dry_run"], summary["requeued"], summary["gone"], summary["problems"]) == (
        False,
        stuck,
        0,
        [],
    )
    assert redis_client.llen(processing) == 0


def test_lock_held_exits_75(
    redis_client: redis.Redis, redis_test_url: str, demo_store: DemoSummary
) -> None:
    sub, kind = demo_store.samples["dead_subscriber"], demo_store.samples["dead_event_type"]
    ref = queues.QueueRef(sub, demo_store.env, kind)
    redis_client.set(ref.lock_key, "cron-host:1234:abcd", px=60_000)
    result = esctl(
        redis_test_url, demo_store.env, "requeue", sub, kind, "--from", "dead", "--yes", "--json"
    )
    assert result.returncode == 75
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "locked" and "cron-host:1234" in error["message"]
    assert redis_client.llen(ref.key("dead")) >= 1


def test_drain_restore_round_trip(
    tmp_path: Path, redis_client: redis.Redis, redis_test_url: str, demo_store: DemoSummary
) -> None:
    env = demo_store.env
    sub, kind = demo_store.samples["dead_subscriber"], demo_store.samples["dead_event_type"]
    before = lists(redis_client, env)

    refused = esctl(redis_test_url, env, "drain", sub, kind, "--list", "dead", "--yes")
    assert refused.returncode == 2 and "--to-file" in refused.stderr
    assert lists(redis_client, env) == before

    backup = tmp_path / "dead.jsonl.zst"
    drained = esctl(
        redis_test_url,
        env,
        "drain",
        sub,
        kind,
        "--list",
        "dead",
        "--to-file",
        str(backup),
        "--yes",
        "--json",
    )
    assert drained.returncode == 0, drained.stderr
    summary = json.loads(drained.stdout)
    assert summary["drained"] == summary["selected"] >= 1 and summary["backup_file"] == str(backup)
    assert not redis_client.exists(layout.queue_key(sub, env, kind, "dead"))

    restored = run_cli(
        "queue", "restore", str(backup), "--yes", "--json", "--redis-url", redis_test_url
    )
    assert restored.returncode == 0, restored.stderr
    assert json.loads(restored.stdout)["restored"] == summary["drained"]
    assert lists(redis_client, env) == before

    again = run_cli(
        "queue", "restore", str(backup), "--yes", "--json", "--redis-url", redis_test_url
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["already_restored"] == summary["drained"]
    assert lists(redis_client, env) == before


def test_usage_errors_exit_2(redis_test_url: str, demo_store: DemoSummary) -> None:
    sub, kind = demo_store.samples["dead_subscriber"], demo_store.samples["dead_event_type"]
    for args in (
        ("requeue", sub, kind, "--older-than", "five minutes", "--yes"),
        ("requeue", sub, kind, "--from", "published", "--yes"),
        ("peek", sub, kind, "--list", "waiting"),
    ):
        result = esctl(redis_test_url, demo_store.env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_failed_moves_exit_1_and_problems_exit_3(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    ref = queues.QueueRef("Svc", env_name, "T")
    redis_client.lpush(ref.key("processing"), b"not json at all")
    problems = esctl(
        redis_test_url, env_name, "requeue", "Svc", "T", "--older-than", "1m", "--yes", "--json"
    )
    assert problems.returncode == 3, problems.stderr
    assert json.loads(problems.stdout)["problems"][0]["kind"] == "no_timestamp"
    redis_client.set(ref.key("published"), "a string")
    failed = esctl(redis_test_url, env_name, "requeue", "Svc", "T", "--yes", "--json")
    assert failed.returncode == 1
    summary = json.loads(failed.stdout)
    assert summary["failed"] == 1 and summary["problems"][0]["kind"] == "move_failed"
    assert redis_client.llen(ref.key("processing")) == 1


def test_list_reports_a_key_of_another_type_and_exits_3(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    """README, esctl queue list: a queue list or Subscribers set of another Redis type is a
    wrong_type problem, the other queues are still listed, and the exit code is 3."""
    good, bad = queues.QueueRef("Svc", env_name, "T"), queues.QueueRef("Svc", env_name, "U")
    redis_client.lpush(good.key("published"), b"{}")
    redis_client.set(bad.key("dead"), "a string")
    redis_client.set(f"Subscribers:{{{env_name}:V}}", "a string")
    result = esctl(redis_test_url, env_name, "list", "--json")
    assert result.returncode == 3, result.stderr
    document = json.loads(result.stdout)
    assert sorted(p["key"] for p in document["problems"] if p["kind"] == "wrong_type") == sorted(
        [bad.key("dead"), f"Subscribers:{{{env_name}:V}}"]
    )
    assert [q["published"] for q in document["queues"] if q["event_type"] == "T"] == [1]


def test_a_requeue_that_loses_its_lock_exits_1_with_its_summary(
    redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    """Another run takes the queue lock once the fourth batch of moves was made: exit 1 with
    the summary, counting exactly what moved (as Redis holds it) and naming the lost lock as
    the reason the run stopped."""
    ref = queues.QueueRef("Svc", env_name, "T")
    values = [b'{"Id": "%d"}' % i for i in range(30)]
    redis_client.lpush(ref.key("processing"), *values)
    result = lostlock.run_cli_losing_the_lock(
        redis_test_url,
        "esctl.queues.requeue:_move_call",
        4,
        ["queue", "requeue", "Svc", "T", "--redis-url", redis_test_url, "--env", env_name,
         "--yes", "--json"],
        settings=("esctl.queues.scripts:MOVE_BATCH=3",),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    published = rb.lrange(redis_client, ref.key("published"))
    processing = rb.lrange(redis_client, ref.key("processing"))
    # batches 1-2 were answered before the lock went, batch 4 was sent after (its script
    # found the lock gone); batch 3 ran unless the other run's SET came first
    assert 6 <= summary["requeued"] == len(published) <= 9
    assert summary["failed"] == 30 - summary["requeued"] == len(processing)
    assert sorted(published + processing) == sorted(values)
    assert summary["notified"] is True
    [problem] = summary["problems"]
    assert problem["kind"] == "move_failed"
    assert problem["detail"].startswith(f"lost the queue lock: {ref.lock_key} ")
    assert "rerun to requeue the rest" in problem["detail"]


def test_a_full_temporary_folder_is_said_as_such_and_changes_nothing(
    tmp_path: Path, redis_client: redis.Redis, redis_test_url: str, env_name: str
) -> None:
    """requeue and drain snapshot the list onto a temporary file first: when that file cannot
    grow (a full TMPDIR; here a file size limit), the error names the folder and what to do,
    not "lost the connection to Redis" (an OSError in the snapshot's sink was taken for the
    socket's), and no message moved."""
    ref = queues.QueueRef("Learning.Full.Worker", env_name, "ItemScoreUpdated")
    redis_client.sadd(layout.subscribers_key(env_name, ref.event_type), ref.subscriber)
    values = [json.dumps({"Id": i, "Pad": os.urandom(200).hex()}) for i in range(3000)]
    redis_client.rpush(ref.key("dead"), *values)
    folder = tmp_path / "tmp"
    folder.mkdir()

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    for args in (
        ["requeue", "--from", "dead"],
        ["drain", "--list", "dead", "--to-file", str(tmp_path / "d.jsonl.zst")],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "esctl", "queue", args[0], ref.subscriber, ref.event_type,
             *args[1:], "--redis-url", redis_test_url, "--env", env_name, "--yes", "--json"],
            env=cli_env({"TMPDIR": str(folder)}), capture_output=True, text=True, timeout=60,
            preexec_fn=limited, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["message"].startswith(
            f"cannot write the list's snapshot to a temporary file in {folder}: File too large"
        ), error
        assert error["message"].endswith("; nothing was changed") and "TMPDIR" in error["hint"]
        assert "Redis" not in error["message"]
        assert rb.lrange(redis_client, ref.key("dead")) == [v.encode() for v in values]
        assert redis_client.llen(ref.key("processing")) == 0
    assert not (tmp_path / "d.jsonl.zst").exists()

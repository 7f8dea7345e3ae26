"""The demo store (esctl.demo) against a real Redis, and ``esctl demo`` end to end.

The demo summary is ground truth for later tests, so every number in it is recounted here
straight from Redis (SCAN / HLEN / LLEN / HGET), not from esctl's readers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import redis_bytes as rb
from bulk_store import write_bulk_store
from helpers import _EMPTY_DIR, cli_env, run_cli
from terminal import ESCTL
from typer.testing import CliRunner

from esctl import codec, demo, layout
from esctl.cli import demo_tour
from esctl.errors import Refused

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}[+-]\d\d:\d\d$")


def _keys(client: redis.Redis, pattern: str) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))


def _commit_lists(client: redis.Redis, app: str) -> dict[str, list[str]]:
    prefix = "{EventStore:" + app + "}:"
    return {
        key[len(prefix) :]: [c.decode() for c in rb.lrange(client, key)]
        for key in _keys(client, layout.commit_list_pattern(app))
    }


def _timestamp(message: bytes) -> datetime:
    """The TimeStamp of a queued message (a payload the demo wrote: it has one)."""
    timestamp = codec.parse_event(message.decode()).timestamp
    assert timestamp is not None
    return timestamp


def _hash_fields(client: redis.Redis, app: str) -> dict[str, dict[str, bytes]]:
    """Every event hash (partitioned and legacy) of ``app``: key -> field -> value."""
    keys = [*_keys(client, layout.event_hash_pattern(app)), layout.legacy_event_hash_key(app)]
    return {
        key: {f.decode(): v for f, v in rb.hgetall(client, key).items()}
        for key in keys
        if client.exists(key)
    }


def test_summary_matches_redis(redis_client: redis.Redis, app_name: str, env_name: str) -> None:
    started = time.perf_counter()
    summary = demo.write_demo_store(redis_client, app=app_name, env=env_name)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0

    assert redis_client.dbsize() == summary.keys
    lists = _commit_lists(redis_client, app_name)
    hashes = _hash_fields(redis_client, app_name)
    legacy_key = layout.legacy_event_hash_key(app_name)
    assert len(lists) == summary.commit_lists
    assert sum(len(ids) for ids in lists.values()) == summary.commit_ids
    assert len(hashes) == summary.event_hashes
    assert sum(len(fields) for fields in hashes.values()) == summary.hash_fields
    assert len(hashes[legacy_key]) == summary.legacy_events

    # Look every commit up as the library does: partitioned hash first, then legacy.
    listed: set[tuple[str, str]] = set()
    missing: list[tuple[str, str]] = []
    invalid: list[tuple[str, str, str]] = []
    readable = compressed = legacy = 0
    by_aggregate_type: Counter[str] = Counter()
    by_event_type: Counter[str] = Counter()
    streams: dict[tuple[str, str], list[int]] = {}
    types_per_list: dict[str, set[str]] = {}
    for aggregate_id, commit_ids in lists.items():
        for commit_id in commit_ids:
            partitioned = layout.event_hash_key(app_name, commit_id)
            if commit_id in hashes.get(partitioned, {}):
                key = partitioned
            elif commit_id in hashes[legacy_key]:
                key = legacy_key
                legacy += 1
                assert commit_id.isdigit()
            else:
                missing.append((aggregate_id, commit_id))
                continue
            listed.add((key, commit_id))
            value = hashes[key][commit_id]
            decoded, event = codec.decode_event(value)
            if decoded.problem is not None:
                assert decoded.problem.kind == "invalid_compressed"
                invalid.append((key, aggregate_id, commit_id))
                continue
            assert event.ok, event.problems
            readable += 1
            if decoded.compressed == "gzip":
                compressed += 1
                assert len(decoded.text.encode("utf-8")) > 1000
            else:
                assert len(value) <= 1000
            assert event.aggregate_id == aggregate_id
            assert event.timestamp_text is not None and TIMESTAMP.match(event.timestamp_text)
            assert decoded.text.startswith('{"$type":"')
            assert event.aggregate_type is not None and event.event_type is not None
            assert event.version is not None
            by_aggregate_type[event.aggregate_type] += 1
            by_event_type[event.event_type] += 1
            streams.setdefault((event.aggregate_type, aggregate_id), []).append(event.version)
            types_per_list.setdefault(aggregate_id, set()).add(event.aggregate_type)
            assert (event.timestamp is not None) and (
                (event.timestamp < demo.LEGACY_CUTOFF) == (key == legacy_key)
            )

    assert summary.events == summary.commit_ids - len(missing)
    assert summary.readable_events == readable == summary.events - len(invalid)
    assert summary.compressed_events == compressed
    assert summary.legacy_events == legacy
    assert summary.partitioned_events == summary.events - legacy
    assert summary.events_by_aggregate_type == dict(by_aggregate_type)
    assert summary.events_by_event_type == dict(by_event_type)
    assert summary.aggregates == len(streams)
    assert {t: sorted(ids) for t, ids in summary.aggregate_ids.items()} == {
        t: sorted(a for (tt, a) in streams if tt == t) for t in summary.aggregates_by_type
    }
    assert summary.aggregates_by_type == dict(Counter(t for t, _ in streams))
    legacy_ids = sorted(int(c) for c in hashes[legacy_key])
    assert legacy_ids == list(range(1, len(legacy_ids) + 1))
    layouts = {aggregate_id: {c.isdigit() for c in ids} for aggregate_id, ids in lists.items()}
    assert sum(1 for v in layouts.values() if v == {True}) == summary.legacy_only_aggregates
    assert sum(1 for v in layouts.values() if v == {True, False}) == (
        summary.mixed_layout_aggregates
    )

    # The planted defects, and nothing else wrong.
    defects = {d.kind: d for d in summary.defects}
    assert sorted(defects) == sorted(demo.DEFECT_KINDS)
    orphans = [
        (key, commit_id)
        for key, fields in hashes.items()
        for commit_id in fields
        if (key, commit_id) not in listed
        and (key, commit_id) not in {(k, c) for k, _, c in invalid}
    ]
    assert orphans == [(defects["orphan"].key, defects["orphan"].commit_id)]
    orphan_text = codec.decode_value(hashes[orphans[0][0]][orphans[0][1]]).text
    orphan = codec.parse_event(orphan_text)
    assert orphan.ok and orphan.aggregate_id == defects["orphan"].aggregate_id
    assert orphan.version == max(streams[("ItemScore", orphan.aggregate_id)]) + 1

    assert missing == [
        (defects["missing_payload"].aggregate_id, defects["missing_payload"].commit_id)
    ]
    assert defects["missing_payload"].key == layout.commit_list_key(
        app_name, defects["missing_payload"].aggregate_id
    )
    assert invalid == [
        (
            defects["invalid_compressed"].key,
            defects["invalid_compressed"].aggregate_id,
            defects["invalid_compressed"].commit_id,
        )
    ]
    gaps = [
        k
        for k, versions in streams.items()
        if sorted(versions) != list(range(1, len(versions) + 1))
    ]
    assert gaps == [
        (defects["version_gap"].aggregate_types[0], defects["version_gap"].aggregate_id)
    ]
    shared = [a for a, types in types_per_list.items() if len(types) > 1]
    assert shared == [defects["shared_commit_list"].aggregate_id]
    assert types_per_list[shared[0]] == set(defects["shared_commit_list"].aggregate_types)
    assert defects["shared_commit_list"].key == layout.commit_list_key(app_name, shared[0])
    for aggregate_type in types_per_list[shared[0]]:  # both streams start at version 1
        assert min(streams[(aggregate_type, shared[0])]) == 1

    # The variety the demo promises.
    texts = [codec.decode_value(v).text for fields in hashes.values() for v in fields.values()]
    joined = "".join(texts)
    assert "$values" in joined and "+ResponseRecorded" in joined and "Envelope`1[[" in joined
    assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", joined)  # CJK
    assert re.search(r"[\U0001F300-\U0001FAFF]", joined)  # emoji
    assert "é" in joined
    offsets = {t[-6:] for t in re.findall(r'"TimeStamp":"([^"]+)"', joined)}
    assert "+00:00" in offsets and len(offsets) >= 3
    assert {"guid", "int"} == {"int" if a.isdigit() else "guid" for _, a in streams}
    for aggregate_id in (a for _, a in streams if not a.isdigit()):
        assert aggregate_id == aggregate_id.lower() and len(aggregate_id) == 36
    assert summary.legacy_events > 0 and summary.mixed_layout_aggregates > 0
    assert 0 < summary.compressed_events < summary.readable_events


def test_snapshots_subscribers_and_queues(
    redis_client: redis.Redis, app_name: str, env_name: str
) -> None:
    summary = demo.write_demo_store(redis_client, app=app_name, env=env_name)
    now = datetime.fromisoformat(summary.now)

    snapshot_keys = _keys(redis_client, layout.snapshot_hash_pattern(app_name))
    snapshots = {
        f.decode(): (key, v)
        for key in snapshot_keys
        for f, v in rb.hgetall(redis_client, key).items()
    }
    assert len(snapshots) == summary.snapshots
    compressed = 0
    for aggregate_id, (key, value) in snapshots.items():
        assert key == layout.snapshot_hash_key(app_name, aggregate_id)
        decoded = codec.decode_value(value)
        assert decoded.problem is None
        compressed += decoded.compressed == "gzip"
        data = json.loads(decoded.text)
        assert list(data)[:3] == ["$type", "Id", "Version"] and data["Id"] == aggregate_id
    assert compressed == summary.compressed_snapshots
    assert 0 < summary.compressed_snapshots < summary.snapshots

    for event_type, subscribers in summary.subscribers.items():
        members = rb.smembers(redis_client, layout.subscribers_key(env_name, event_type))
        assert sorted(m.decode() for m in members) == subscribers
        assert 2 <= len(subscribers) <= 3

    stored_texts = {
        codec.decode_value(v).text
        for key in _keys(redis_client, layout.event_hash_pattern(app_name))
        for v in redis_client.hvals(key)
    }
    stuck = 0
    for queue in summary.queues:
        lengths = {}
        for which in layout.QUEUE_LISTS:
            key = layout.queue_key(queue.subscriber, env_name, queue.event_type, which)
            messages = [m.decode() for m in rb.lrange(redis_client, key)]
            lengths[which] = len(messages)
            for message in messages:
                assert not message.startswith("H4sI")  # queues carry uncompressed JSON
                assert message in stored_texts
                event = codec.parse_event(message)
                assert event.ok and event.event_type == queue.event_type
                assert event.timestamp is not None
                if which == "processing" and now - event.timestamp > demo.STUCK_AFTER:
                    stuck += 1
                if which == "dead":
                    retry = redis_client.hgetall(
                        layout.retry_data_key(env_name, queue.event_type, event.aggregate_id or "")
                    )
                    if retry:
                        assert set(retry) == {b"RetryCount", b"LastRetryTime", b"LastException"}
                        assert int(retry[b"RetryCount"]) >= 1
        assert (lengths["published"], lengths["processing"], lengths["dead"]) == (
            queue.published,
            queue.processing,
            queue.dead_letters,
        )
    assert stuck == summary.stuck_messages >= 2
    assert summary.processing_messages > summary.stuck_messages  # some are in flight
    assert summary.published_messages > 0 and summary.dead_letters >= 2
    retry_keys = _keys(redis_client, f"RetryData:{{{env_name}:*}}:*")
    assert len(retry_keys) == summary.retry_data >= 1
    assert summary.retry_data < summary.dead_letters  # one dead letter was never retried
    # one duplicate message, as replays leave
    duplicates = 0
    for key in _keys(redis_client, f"*:{{{env_name}:*}}:PublishedEvents"):
        values = redis_client.lrange(key, 0, -1)
        duplicates += len(values) - len(set(values))
    assert duplicates == 1


def test_deterministic_per_seed(redis_client: redis.Redis, app_name: str, env_name: str) -> None:
    first = demo.write_demo_store(redis_client, app=app_name, env=env_name, seed=3)
    second = demo.write_demo_store(redis_client, app=app_name + "2", env=env_name + "2", seed=3)
    other = demo.write_demo_store(redis_client, app=app_name + "3", env=env_name + "3", seed=4)

    def comparable(summary: demo.DemoSummary) -> dict[str, object]:
        data = asdict(summary)
        for name in ("app", "env", "defects", "samples"):
            data.pop(name)
        return data

    assert comparable(first) == comparable(second)
    assert first.aggregate_ids != other.aggregate_ids
    first_values = sorted(
        v
        for k in _keys(redis_client, f"EventStore:{app_name}:*")
        for v in rb.hvals(redis_client, k)
    )
    second_values = sorted(
        v.replace(app_name.encode() + b"2", app_name.encode())
        for k in _keys(redis_client, f"EventStore:{app_name}2:*")
        for v in rb.hvals(redis_client, k)
    )
    assert first_values == second_values


def test_refuses_a_store_that_has_data(
    redis_client: redis.Redis, app_name: str, env_name: str
) -> None:
    demo.write_demo_store(redis_client, app=app_name, env=env_name)
    size = redis_client.dbsize()
    with pytest.raises(Refused, match="already holds data"):
        demo.write_demo_store(redis_client, app=app_name, env=env_name)
    assert redis_client.dbsize() == size


@pytest.mark.parametrize("aggregates", [demo.MIN_AGGREGATES, 80])
def test_size_and_clock(
    redis_client: redis.Redis, app_name: str, env_name: str, aggregates: int
) -> None:
    now = datetime.now(UTC)
    summary = demo.write_demo_store(
        redis_client, app=app_name, env=env_name, aggregates=aggregates, now=now
    )
    assert summary.aggregates == aggregates
    assert sorted(d.kind for d in summary.defects) == sorted(demo.DEFECT_KINDS)
    assert datetime.fromisoformat(summary.now) == now
    fresh = [
        m
        for q in summary.queues
        for m in rb.lrange(
            redis_client, layout.queue_key(q.subscriber, env_name, q.event_type, "processing")
        )
        if now - _timestamp(m) < timedelta(minutes=5)
    ]
    assert len(fresh) == summary.processing_messages - summary.stuck_messages > 0


def test_rejects_bad_arguments(redis_client: redis.Redis, app_name: str, env_name: str) -> None:
    with pytest.raises(ValueError, match="at least"):
        demo.write_demo_store(redis_client, app=app_name, env=env_name, aggregates=5)
    with pytest.raises(ValueError, match="now must be"):
        demo.write_demo_store(
            redis_client, app=app_name, env=env_name, now=datetime(2020, 1, 1, tzinfo=UTC)
        )
    assert redis_client.dbsize() == 0


def test_bulk_store(redis_client: redis.Redis, app_name: str) -> None:
    written = write_bulk_store(
        redis_client, app=app_name, aggregates=400, events_per_aggregate=(1, 9), seed=5
    )
    lists = _commit_lists(redis_client, app_name)
    assert len(lists) == 400
    assert sum(len(ids) for ids in lists.values()) == written
    hashes = _hash_fields(redis_client, app_name)
    assert sum(len(f) for f in hashes.values()) == written  # no orphans
    legacy_key = layout.legacy_event_hash_key(app_name)
    compressed = legacy = 0
    for aggregate_id, commit_ids in lists.items():
        versions = []
        for commit_id in commit_ids:
            key = layout.event_hash_key(app_name, commit_id)
            if commit_id not in hashes.get(key, {}):
                key = legacy_key
                legacy += 1
            decoded, event = codec.decode_event(hashes[key][commit_id])
            assert event.ok, event.problems
            assert event.aggregate_id == aggregate_id
            assert (event.timestamp is not None) and (
                (event.timestamp < demo.LEGACY_CUTOFF) == (key == legacy_key)
            )
            compressed += decoded.compressed == "gzip"
            versions.append(event.version)
        assert versions == list(range(1, len(versions) + 1))
    assert 0.2 < compressed / written < 0.4
    assert 0.04 < legacy / written < 0.17
    assert sorted(int(c) for c in hashes[legacy_key]) == list(range(1, legacy + 1))


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_demo_command_json_end_to_end() -> None:
    started = time.monotonic()
    result = run_cli("demo", "--json", timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 30
    document = json.loads(result.stdout)
    assert document["kept"] is False
    assert document["app"] == demo.DEMO_APP and document["env"] == demo.DEMO_ENV
    assert document["exports"] is None
    summary = document["summary"]
    assert summary["aggregates"] == demo.DEFAULT_AGGREGATES
    assert summary["events"] > 200
    assert sorted(d["kind"] for d in summary["defects"]) == sorted(demo.DEFECT_KINDS)
    assert [step["command"].split(" | ")[-1] for step in document["tour"]]
    for server in ("redis", "postgres"):
        pid = document[server]["pid"]
        assert isinstance(pid, int) and pid > 0
        assert not _alive(pid) or server not in _cmdline(pid), f"{server} {pid} still runs"
        assert not Path(document[server]["workdir"]).exists()
    assert "Traceback" not in result.stderr


def _children(pid: int) -> dict[str, int]:
    """The live child processes of ``pid``, by name (``redis-server``, ``postgres``)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, ppid = text.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[name] = int(stat.parent.name)
    return found


def _demo_redis(pid: int) -> redis.Redis | None:
    """A client of the demo's Redis once it runs (its title says where: ``… 127.0.0.1:PORT``)."""
    child = _children(pid).get("redis-server")
    title = _cmdline(child).split() if child else []
    if len(title) < 2 or ":" not in title[1]:
        return None
    client = redis.Redis.from_url(f"redis://{title[1]}", single_connection_client=True)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        return None
    return client


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_demo_command_stopped_by_a_signal_stops_its_servers(stop: signal.Signals) -> None:
    """SIGTERM (``timeout``, systemctl stop) or SIGHUP (the terminal hung up) while the demo's
    servers run stops them and removes their data folders, as Ctrl-C does, and says which
    signal it was (exit 130). SIGHUP killed esctl on the spot: the servers died with it
    (PR_SET_PDEATHSIG), their data folders stayed. The demo is held writing its store (its
    Redis's writes paused) when the signal comes, both servers started."""
    proc = subprocess.Popen(
        [*ESCTL, "demo", "--json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        cwd=_EMPTY_DIR,
        start_new_session=True,
    )
    client = None
    try:
        deadline = time.monotonic() + 60

        def waiting(what: str) -> None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"the demo never got to {what}"
            time.sleep(0.01)

        while (client := _demo_redis(proc.pid)) is None:
            waiting("start Redis")
        client.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
        while not int(client.info("clients")["blocked_clients"]):
            waiting("write its store")
        running = _children(proc.pid)
        running = {name: running[name] for name in ("redis-server", "postgres")}
        workdirs = [Path(os.readlink(f"/proc/{pid}/cwd")) for pid in running.values()]
        proc.send_signal(stop)
        client.execute_command("CLIENT", "UNPAUSE")
        out, err = proc.communicate(timeout=60)
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    said = {signal.SIGTERM: "stopped by SIGTERM", signal.SIGHUP: "stopped by SIGHUP"}[stop]
    assert proc.returncode == 130, err
    assert said in err.decode() and "Traceback" not in err.decode(), err.decode()
    assert json.loads(out)["error"]["kind"] == "interrupted"
    for name, pid in running.items():
        assert not _alive(pid) or name not in _cmdline(pid), f"{name} {pid} still runs"
    assert [w for w in workdirs if w.exists()] == []


def test_demo_command_human_output() -> None:
    result = run_cli("demo", timeout=60)
    assert result.returncode == 0, result.stderr
    for text in ("Demo store in Redis", "ItemScore", "orphan", "shared_commit_list", "Try next"):
        assert text in result.stdout
    assert "export ESCTL_REDIS_URL" not in result.stdout
    assert "stopped the demo servers" in result.stderr


def test_demo_command_keep() -> None:
    result = run_cli("demo", "--keep", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    pids = [document["redis"]["pid"], document["postgres"]["pid"]]
    try:
        assert document["kept"] is True
        exports = document["exports"]
        assert exports["ESCTL_APP"] == demo.DEMO_APP and exports["ESCTL_ENV"] == demo.DEMO_ENV
        assert all(_alive(pid) for pid in pids)
        client = redis.Redis.from_url(exports["ESCTL_REDIS_URL"])
        try:
            assert client.dbsize() == document["summary"]["keys"]
        finally:
            client.close()
        config = run_cli("config", "show", "--json", env=exports)
        assert config.returncode == 0, config.stderr
        shown = json.loads(config.stdout)["settings"]
        assert shown["app"]["value"] == demo.DEMO_APP
        assert shown["redis_url"]["value"] == exports["ESCTL_REDIS_URL"]
        assert any(c.startswith("kill ") for c in document["stop_commands"])
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for server in ("redis", "postgres"):
            shutil.rmtree(document[server]["workdir"], ignore_errors=True)
    assert not any(_alive(pid) for pid in pids)


def test_demo_environment_stops_servers_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), demo.demo_environment() as run:
        pids = [run.redis.pid, run.postgres.pid]
        assert all(_alive(pid) for pid in pids)
        raise RuntimeError("boom")
    assert not any(_alive(pid) for pid in pids)
    assert not run.redis.workdir.exists() and not run.postgres.workdir.exists()


def test_tour_names_only_existing_commands() -> None:
    from esctl.cli.app import app

    summary_steps = demo_tour.TOUR
    assert summary_steps, "the tour is empty"
    runner = CliRunner()
    for step in summary_steps:
        for part in step.command.split("|"):
            words = part.split()
            if not words or words[0] != "esctl":
                continue
            command = [w for w in words[1:] if not w.startswith("-") and "{" not in w][:2]
            result = runner.invoke(app, [*command, "--help"])
            assert result.exit_code == 0, (step.command, result.output)


def test_tour_fills_placeholders(redis_client: redis.Redis, app_name: str, env_name: str) -> None:
    summary = demo.write_demo_store(redis_client, app=app_name, env=env_name)
    steps = demo_tour.tour(summary)
    assert len(steps) == len(demo_tour.TOUR)
    for step in steps:
        assert "{" not in step.command and "}" not in step.command
    sample_hash = summary.samples["compressed_hash"]
    value = rb.hget(redis_client, sample_hash, summary.samples["compressed_commit"])
    assert value is not None and value.startswith(b"H4sI")
    invalid = redis_client.hget(summary.samples["invalid_hash"], summary.samples["invalid_commit"])
    assert invalid is not None and codec.decode_value(invalid).problem is not None


def test_tour_runs_the_psql_beside_the_server_when_path_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine with only the bundled servers (the ``local`` extra) has no psql on PATH: the
    tour names the one beside the running server, and that command works."""
    with demo.demo_environment() as run:
        assert run.postgres.bin_dir is not None
        monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
        tools = run.tools()
        assert tools["psql"] == str(run.postgres.bin_dir / "psql")
        steps = [s.command for s in demo_tour.tour(run.summary, tools)]
        assert any(c.startswith(shlex.quote(tools["psql"]) + " ") for c in steps)
        monkeypatch.undo()
        answer = subprocess.run(
            [tools["psql"], run.postgres.dsn, "-Atc", "SELECT 6 * 7"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert answer.stdout.strip() == "42"
        # With psql on PATH, the tour says plain `psql`.
        assert run.tools()["psql"] == ("psql" if shutil.which("psql") else tools["psql"])

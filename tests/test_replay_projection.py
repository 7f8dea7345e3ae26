"""``replay --to projection`` against real servers: the protocol, the built-in example
projection, checkpoints (exactly once across kill -9), failures and dead letters, the lock."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
from helpers import cli_env, run_cli
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from test_bench_relay import relay_module

from esctl import errors
from esctl.locks import AdvisoryLock
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.projections import (
    Event,
    ProjectionAdapter,
    ProjectionContext,
    load_projection,
)
from esctl.projections.event_counts import EventCounts
from esctl.replay import ReplayOptions, Selection, replay

SEEN_PROJECTION = '''
"""A test projection: one row per handled event (no unique key, so a repeat would show), and
ways to die: SIGKILL itself in handle or in flush (after writing, before esctl commits), or
sleep per batch; and raise on every event of one version (for --skip-errors)."""
import os, signal, time

MARKER = os.environ.get("SEEN_MARKER", "")


def _die_once():
    if MARKER and not os.path.exists(MARKER):
        open(MARKER, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)


class Seen:
    def setup(self, ctx):
        ctx.conn.execute(
            "CREATE TABLE IF NOT EXISTS replay_seen"
            " (aggregate_id text, version int, event_type text, batch int)"
        )
        if ctx.fresh:
            ctx.conn.execute("TRUNCATE replay_seen")
        self.rows = []
        self.handled = 0

    def handle(self, event):
        self.handled += 1
        if event.version == int(os.environ.get("SEEN_FAIL_VERSION", "0")):
            raise ValueError(f"version {event.version} is refused here")
        if self.handled == int(os.environ.get("SEEN_KILL_IN_HANDLE", "0")):
            _die_once()
        self.rows.append((event.aggregate_id, event.version, event.event_type))

    def flush(self, ctx):
        with ctx.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO replay_seen VALUES (%s, %s, %s, %s)",
                [(*row, ctx.batch) for row in self.rows],
            )
        self.rows = []
        if ctx.batch == int(os.environ.get("SEEN_KILL_IN_FLUSH", "0")):
            _die_once()
        time.sleep(float(os.environ.get("SEEN_DELAY", "0")))


projection = Seen
'''


def seen_projection(folder: Path) -> str:
    """The SPEC of :data:`SEEN_PROJECTION` written to a file in ``folder``."""
    projection_file = folder / "seen.py"
    projection_file.write_text(SEEN_PROJECTION)
    return f"{projection_file}:Seen"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def truth(redis_client: redis.Redis, app_name: str, pg_dsn: str) -> iw.GroundTruth:
    """A store with defects, migrated: PostgreSQL holds the clean aggregates."""
    store = iw.write_store(
        redis_client,
        app=app_name,
        aggregates=50,
        events_per_aggregate=(1, 8),
        defects=["version_gap", "missing_payload"],
        seed=11,
    )
    migrate_redis_to_pg(
        redis_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True, writers=1)
    )
    return store


def in_pg(truth: iw.GroundTruth) -> list[iw.TruthEvent]:
    return [e for a in truth.clean_aggregates() for e in a.events]


def in_redis(truth: iw.GroundTruth) -> list[iw.TruthEvent]:
    return [e for a in truth.aggregates for e in a.events if e.readable]


def day_counts(events: list[iw.TruthEvent]) -> dict[tuple[str, date], int]:
    return dict(
        Counter(
            (e.event_type, datetime.fromisoformat(e.timestamp).astimezone(UTC).date())
            for e in events
        )
    )


def table_counts(dsn: str) -> dict[tuple[str, date], int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT event_type, day, events FROM projections.event_counts")
        return {(t, d): n for t, d, n in rows}


def seen_rows(dsn: str) -> Counter[tuple[str, int, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT aggregate_id, version, event_type FROM replay_seen")
        return Counter((a, v, t) for a, v, t in rows)


def options(app: str, dsn: str, **overrides: Any) -> ReplayOptions:
    values: dict[str, Any] = {
        "source": "pg",
        "target": "projection",
        "app": app,
        "pg_dsn": dsn,
        "selection": Selection(all_events=True),
        "projection": "esctl.projections.event_counts",
    }
    values.update(overrides)
    return ReplayOptions(**values)


def checkpoint_row(dsn: str, name: str) -> dict[str, Any] | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT position, events, batches, finished_at FROM esctl.projection_checkpoint"
            " WHERE name = %s",
            (name,),
        ).fetchone()
    if row is None:
        return None
    return {"position": row[0], "events": row[1], "batches": row[2], "finished_at": row[3]}


# --- the built-in example ------------------------------------------------------------------


@pytest.mark.parametrize("source", ["pg", "redis"])
def test_event_counts_counts_per_type_and_day(
    truth: iw.GroundTruth, redis_client: redis.Redis, app_name: str, pg_dsn: str, source: str
) -> None:
    summary = replay(
        options(app_name, pg_dsn, source=source, checkpoint="counts", batch_size=17),
        redis_client=redis_client,
    )
    events = in_pg(truth) if source == "pg" else in_redis(truth)
    assert table_counts(pg_dsn) == day_counts(events)
    assert summary.events == len(events)
    assert summary.checkpoint is not None and not summary.checkpoint["resumed"]
    row = checkpoint_row(pg_dsn, "counts")
    assert row is not None and row["events"] == len(events) and row["finished_at"] is not None
    # a rerun resumes at the end: nothing more, nothing counted twice
    again = replay(
        options(app_name, pg_dsn, source=source, checkpoint="counts", batch_size=17),
        redis_client=redis_client,
    )
    assert again.events == 0 and again.checkpoint is not None and again.checkpoint["resumed"]
    assert table_counts(pg_dsn) == day_counts(events)
    # without a checkpoint every run starts from the beginning: the table is rebuilt
    replay(options(app_name, pg_dsn, source=source), redis_client=redis_client)
    assert table_counts(pg_dsn) == day_counts(events)


def test_a_projection_that_stopped_resumes_exactly(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    class Breaks(EventCounts):
        def flush(self, ctx: ProjectionContext) -> None:
            super().flush(ctx)  # written, then the batch fails before esctl commits it
            if ctx.batch == 4:
                raise RuntimeError("disk full")

    first = replay(
        options(app_name, pg_dsn, checkpoint="c", batch_size=10),
        projection=ProjectionAdapter(Breaks, "breaks"),
    )
    assert first.stopped is not None and first.stopped["in"] == "flush"
    assert first.events == 30
    row = checkpoint_row(pg_dsn, "c")
    assert row is not None and row["events"] == 30 and row["finished_at"] is None
    assert sum(table_counts(pg_dsn).values()) == 30
    second = replay(
        options(app_name, pg_dsn, checkpoint="c", batch_size=10),
        projection=ProjectionAdapter(EventCounts, "breaks"),
    )
    assert second.checkpoint is not None and second.checkpoint["resumed"]
    assert second.events == len(in_pg(truth)) - 30
    assert table_counts(pg_dsn) == day_counts(in_pg(truth))


def test_at_a_distance_default_batches_grow_and_count_the_same(
    redis_client: redis.Redis, app_name: str, pg_dsn: str
) -> None:
    """Without --batch-size, a batch is 1,000 events on loopback and grows when PostgreSQL
    is at a distance (here a relay adding 5 ms each way), so that its round trips stay a small
    part of its time; the counts are the same either way. --batch-size is kept as given."""
    store = iw.write_store(
        redis_client, app=app_name, aggregates=800, events_per_aggregate=(2, 6), seed=3
    )
    migrate_redis_to_pg(
        redis_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True, writers=1)
    )
    events = in_pg(store)
    assert len(events) > 2000
    at_default = math.ceil(len(events) / 1000)
    near = replay(options(app_name, pg_dsn, checkpoint="near"))
    server = conninfo_to_dict(pg_dsn)
    target = (str(server.get("host") or "127.0.0.1"), int(server.get("port") or 5432))
    with relay_module.Relay(target, 0.005) as relay:
        far_dsn = make_conninfo(pg_dsn, host="127.0.0.1", port=str(relay.port))
        far = replay(options(app_name, far_dsn, checkpoint="far"))
        fixed = replay(options(app_name, far_dsn, checkpoint="fixed", batch_size=1000))
    assert near.events == far.events == fixed.events == len(events)
    assert table_counts(pg_dsn) == day_counts(events)
    rows = {name: checkpoint_row(pg_dsn, name) for name in ("near", "far", "fixed")}
    assert all(row is not None for row in rows.values())
    batches = {name: row["batches"] for name, row in rows.items() if row is not None}
    assert batches["near"] == batches["fixed"] == at_default
    assert batches["far"] < at_default


# --- exactly once across kill -9 -----------------------------------------------------------


def replay_cli(app: str, dsn: str, redis_url: str, *extra: str) -> list[str]:
    return [
        "replay",
        "--all",
        "--to",
        "projection",
        "--app",
        app,
        "--pg-dsn",
        dsn,
        "--redis-url",
        redis_url,
        "--no-progress",
        "--json",
        *extra,
    ]


@pytest.mark.parametrize(
    ("source", "order", "kill"),
    [
        ("pg", "aggregate", "SEEN_KILL_IN_FLUSH=3"),
        ("pg", "time", "SEEN_KILL_IN_HANDLE=45"),
        ("redis", "aggregate", "SEEN_KILL_IN_HANDLE=52"),
        ("redis", "time", "SEEN_KILL_IN_FLUSH=4"),
    ],
)
def test_kill_9_mid_replay_then_rerun_equals_an_uninterrupted_run(
    truth: iw.GroundTruth,
    app_name: str,
    pg_dsn: str,
    redis_test_url: str,
    tmp_path: Path,
    source: str,
    order: str,
    kill: str,
) -> None:
    args = replay_cli(
        app_name, pg_dsn, redis_test_url,
        "--from", source, "--order", order, "--batch-size", "10",
        "--projection", seen_projection(tmp_path), "--checkpoint", "seen",
    )  # fmt: skip
    whole = run_cli(*args)
    assert whole.returncode in (0, 3), whole.stderr
    uninterrupted = seen_rows(pg_dsn)
    expected = in_pg(truth) if source == "pg" else in_redis(truth)
    assert uninterrupted == Counter((e.aggregate_id, e.version, e.event_type) for e in expected)

    name, _, value = kill.partition("=")
    env = {"SEEN_MARKER": str(tmp_path / "killed"), name: value}
    killed = run_cli(*args, "--reset", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert 0 < sum(seen_rows(pg_dsn).values()) < len(expected)
    rerun = run_cli(*args, env=env)  # the marker exists: no second death
    assert rerun.returncode in (0, 3), rerun.stderr
    assert seen_rows(pg_dsn) == uninterrupted


def test_external_kill_9_of_event_counts_then_rerun(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str, redis_test_url: str
) -> None:
    args = replay_cli(
        app_name, pg_dsn, redis_test_url,
        "--from", "pg", "--batch-size", "5", "--rate", "200",
        "--projection", "esctl.projections.event_counts", "--checkpoint", "counts",
    )  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "esctl", *args],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = checkpoint_row(pg_dsn, "counts") if _has_state(pg_dsn) else None
            if row is not None and row["events"] >= 20:
                break
            assert process.poll() is None, "the replay ended before it could be killed"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(10)
    row = checkpoint_row(pg_dsn, "counts")
    assert row is not None and row["finished_at"] is None
    assert sum(table_counts(pg_dsn).values()) == row["events"] < len(in_pg(truth))
    rerun = run_cli(*args[: args.index("--rate")], *args[args.index("--rate") + 2 :])
    assert rerun.returncode == 0, rerun.stderr
    assert table_counts(pg_dsn) == day_counts(in_pg(truth))


def _has_state(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('esctl.projection_checkpoint')").fetchone()
        return row is not None and row[0] is not None


# --- failures ------------------------------------------------------------------------------


class Picky:
    """Writes one row per event in handle; fails on the events it is told to."""

    def __init__(self, bad: set[tuple[str, int]]) -> None:
        self.bad = bad

    def setup(self, ctx: ProjectionContext) -> None:
        self.ctx = ctx
        ctx.conn.execute("CREATE TABLE IF NOT EXISTS picky (aggregate_id text, version int)")
        if ctx.fresh:
            ctx.conn.execute("TRUNCATE picky")

    def handle(self, event: Event) -> None:
        self.ctx.conn.execute(
            "INSERT INTO picky VALUES (%s, %s)", (event.aggregate_id, event.version)
        )
        if (event.aggregate_id, event.version) in self.bad:
            raise ValueError(f"cannot project {event.event_type}")


def picky_rows(dsn: str) -> set[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return {(a, v) for a, v in conn.execute("SELECT aggregate_id, version FROM picky")}


def test_a_failing_event_stops_with_its_aggregate_version_and_error(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    events = replay_order_pg(pg_dsn, app_name)
    bad = events[24]
    summary = replay(
        options(app_name, pg_dsn, checkpoint="picky", batch_size=10),
        projection=ProjectionAdapter(Picky({bad}), "picky"),
    )
    assert summary.stopped is not None
    assert (summary.stopped["aggregate_id"], summary.stopped["version"]) == bad
    assert "ValueError: cannot project" in summary.stopped["error"]
    assert summary.events == 20  # batches 1 and 2; batch 3 was rolled back
    assert picky_rows(pg_dsn) == set(events[:20])
    row = checkpoint_row(pg_dsn, "picky")
    assert row is not None and row["events"] == 20
    assert (row["position"]["aggregate_id"], row["position"]["version"]) == events[19]


def test_skip_errors_dead_letters_the_event_and_undoes_its_writes(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    events = replay_order_pg(pg_dsn, app_name)
    bad = {events[3], events[24], events[-1]}
    summary = replay(
        options(app_name, pg_dsn, checkpoint="picky", batch_size=10, skip_errors=True),
        projection=ProjectionAdapter(Picky(bad), "picky"),
    )
    assert summary.stopped is None
    assert summary.dead_lettered == 3 and summary.events == len(events)
    assert picky_rows(pg_dsn) == set(events) - bad
    assert {p["kind"] for p in summary.problems} == {"dead_lettered"}
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT aggregate_id, version, checkpoint_name, error, payload::jsonb ->> 'Id'"
            " FROM esctl.projection_dead_letter"
        ).fetchall()
    assert {(r[0], r[1]) for r in rows} == bad
    assert all(r[2] == "picky" and r[3].startswith("ValueError") and r[4] == r[0] for r in rows)


def replay_order_pg(dsn: str, app: str) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        return [
            (a, v)
            for a, v in conn.execute(
                "SELECT a.aggregate_id, e.version FROM event e JOIN aggregate a USING"
                " (aggregate_key) WHERE a.application_name = %s ORDER BY e.aggregate_key,"
                " e.version",
                (app,),
            )
        ]


def test_setup_failure_is_an_error_and_nothing_is_replayed(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    class NoSetup:
        def setup(self, ctx: ProjectionContext) -> None:
            raise RuntimeError("no permission")

        def handle(self, event: Event) -> None:
            raise AssertionError("never called")

    with pytest.raises(errors.EsctlError, match="setup failed: RuntimeError: no permission"):
        replay(options(app_name, pg_dsn), projection=NoSetup())


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_of_another_replay_is_refused_and_reset_starts_over(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    replay(options(app_name, pg_dsn, checkpoint="c", selection=Selection(types=("InvoicePaid",))))
    for other in (
        {"selection": Selection(types=("InvoiceIssued",))},
        {"order": "time", "selection": Selection(types=("InvoicePaid",))},
        {"source": "redis", "selection": Selection(types=("InvoicePaid",))},
    ):
        with pytest.raises(errors.UsageError, match="belongs to another replay"):
            replay(options(app_name, pg_dsn, checkpoint="c", **other))
    summary = replay(
        options(
            app_name,
            pg_dsn,
            checkpoint="c",
            reset=True,
            selection=Selection(types=("InvoiceIssued",)),
        )
    )
    assert summary.checkpoint is not None and not summary.checkpoint["resumed"]
    issued = [e for e in in_pg(truth) if e.event_type == "InvoiceIssued"]
    assert table_counts(pg_dsn) == day_counts(issued)  # fresh: the old counts were emptied


def test_relative_times_resume_from_the_checkpoints_moment(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    stamps = sorted(datetime.fromisoformat(e.timestamp) for e in in_pg(truth))
    middle = stamps[len(stamps) // 2]
    created = middle + timedelta(days=365)
    selection = Selection(since="365d")

    class StopsAfterTwoBatches(EventCounts):
        def flush(self, ctx: ProjectionContext) -> None:
            super().flush(ctx)
            if ctx.batch == 3:
                raise RuntimeError("stop here")

    first = replay(
        options(app_name, pg_dsn, checkpoint="r", selection=selection, batch_size=5, now=created),
        projection=ProjectionAdapter(StopsAfterTwoBatches, "x"),
    )
    assert first.stopped is not None and first.events == 10
    # resumed much later: "365d" still counts back from when the checkpoint was made
    second = replay(
        options(
            app_name, pg_dsn, checkpoint="r", selection=selection, batch_size=5,
            now=created + timedelta(days=3 * 365),
        ),
        projection=ProjectionAdapter(EventCounts, "x"),
    )  # fmt: skip
    wanted = [e for e in in_pg(truth) if datetime.fromisoformat(e.timestamp) >= middle]
    assert first.events + second.events == len(wanted)
    assert table_counts(pg_dsn) == day_counts(wanted)


def test_limit_counts_across_resumes(truth: iw.GroundTruth, app_name: str, pg_dsn: str) -> None:
    class StopsAtBatchTwo(EventCounts):
        def flush(self, ctx: ProjectionContext) -> None:
            super().flush(ctx)
            if ctx.batch == 2:
                raise RuntimeError("stop")

    selection = Selection(all_events=True, limit=23)
    replay(
        options(app_name, pg_dsn, checkpoint="l", selection=selection, batch_size=4),
        projection=ProjectionAdapter(StopsAtBatchTwo, "x"),
    )
    second = replay(
        options(app_name, pg_dsn, checkpoint="l", selection=selection, batch_size=4),
        projection=ProjectionAdapter(EventCounts, "x"),
    )
    assert second.events == 19
    assert sum(table_counts(pg_dsn).values()) == 23


def test_a_checkpoint_in_use_exits_locked(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    with (
        AdvisoryLock(pg_dsn, "esctl:replay:busy", what="test"),
        pytest.raises(errors.LockHeld, match="busy"),
    ):
        replay(options(app_name, pg_dsn, checkpoint="busy"))
    replay(options(app_name, pg_dsn, checkpoint="busy"))


def test_dry_run_counts_from_the_checkpoint_and_writes_nothing(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    dry = replay(options(app_name, pg_dsn, checkpoint="d", dry_run=True))
    assert dry.events == len(in_pg(truth)) and dry.dry_run
    assert checkpoint_row(pg_dsn, "d") is None  # the checkpoint is not even created

    class StopsAtBatchThree(EventCounts):
        def flush(self, ctx: ProjectionContext) -> None:
            super().flush(ctx)
            if ctx.batch == 3:
                raise RuntimeError("stop")

    replay(
        options(app_name, pg_dsn, checkpoint="d", batch_size=10),
        projection=ProjectionAdapter(StopsAtBatchThree, "esctl.projections.event_counts"),
    )
    dry = replay(options(app_name, pg_dsn, checkpoint="d", dry_run=True))
    assert dry.events == len(in_pg(truth)) - 20
    assert dry.by_type == dict(
        Counter(e.event_type for e in in_pg(truth)) - Counter(_first_types(pg_dsn, app_name, 20))
    )


def _first_types(dsn: str, app: str, n: int) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT e.event_type FROM event e JOIN aggregate a USING (aggregate_key)"
                " WHERE a.application_name = %s ORDER BY e.aggregate_key, e.version LIMIT %s",
                (app, n),
            )
        ]


# --- the protocol --------------------------------------------------------------------------


def test_a_function_projection_needs_no_postgresql(
    truth: iw.GroundTruth, redis_client: redis.Redis, app_name: str
) -> None:
    seen: list[Event] = []
    summary = replay(
        options(
            app_name,
            "postgresql://nobody@127.0.0.1:1/none",
            source="redis",
            selection=Selection(aggregate_type="Invoice"),
        ),
        redis_client=redis_client,
        projection=seen.append,
    )
    wanted = [e for e in in_redis(truth) if e.aggregate_type == "Invoice"]
    assert summary.events == len(seen) == len(wanted)
    by_key = {(e.aggregate_id, e.version): e for e in wanted}
    for event in seen:
        truth_event = by_key[(event.aggregate_id, event.version)]
        assert event.text == truth_event.payload  # exact text, decompressed
        assert event.data["Id"] == event.aggregate_id
        assert event.commit_id == truth_event.commit_id
        assert event.timestamp == truth_event.timestamp
        assert event.moment == datetime.fromisoformat(truth_event.timestamp)


def test_teardown_runs_at_the_end_and_after_a_failure(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    calls: list[str] = []

    class Hooks:
        def setup(self, ctx: ProjectionContext) -> None:
            calls.append(f"setup fresh={ctx.fresh}")

        def handle(self, event: Event) -> None:
            if len(calls) > 3:
                raise KeyError("x")

        def flush(self, ctx: ProjectionContext) -> None:
            calls.append(f"flush {ctx.batch}")

        def teardown(self, ctx: ProjectionContext) -> None:
            calls.append("teardown")

    summary = replay(
        options(app_name, pg_dsn, batch_size=10, selection=Selection(all_events=True)),
        projection=Hooks(),
    )
    assert calls == ["setup fresh=True", "flush 1", "flush 2", "flush 3", "teardown"]
    assert summary.stopped is not None and summary.stopped["batch"] == 4


def test_load_projection_forms(tmp_path: Path) -> None:
    module_default = load_projection("esctl.projections.event_counts")
    assert isinstance(module_default.target, EventCounts)
    explicit = load_projection("esctl.projections.event_counts:EventCounts")
    assert isinstance(explicit.target, EventCounts)
    path = tmp_path / "proj.py"
    path.write_text(
        textwrap.dedent(
            """
            handled = []
            def count(event):
                handled.append(event)
            class Obj:
                def handle(self, event):
                    pass
            instance = Obj()
            """
        )
    )
    function = load_projection(f"{path}:count")
    assert function.handle.__name__ == "count"
    assert load_projection(f"{path}:instance").target.__class__.__name__ == "Obj"
    for bad, message in (
        ("no.such.module:x", "cannot import"),
        ("esctl.projections.event_counts:Nope", "has no 'Nope'"),
        (f"{tmp_path}/missing.py:x", "does not exist"),
        (f"{path}", "has no 'projection'"),
        ("esctl.projections.event_counts:TABLE", "neither a function"),
    ):
        with pytest.raises(errors.UsageError, match=message):
            load_projection(bad)


def test_rate_paces_a_projection_replay_smaller_than_a_batch(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str, redis_test_url: str
) -> None:
    # --rate 20 over 20 events takes about a second (19/20 s: the first batch waits for none).
    # The default batch of 1,000 held the whole selection: it went through at once, unpaced.
    args = replay_cli(
        app_name, pg_dsn, redis_test_url,
        "--from", "pg", "--limit", "20", "--rate", "20",
        "--projection", "esctl.projections.event_counts", "--checkpoint", "paced",
    )  # fmt: skip
    started = time.monotonic()
    result = run_cli(*args)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] == 20 and summary["events_per_s"] <= 25
    assert took >= 0.9

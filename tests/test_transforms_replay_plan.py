"""``replay --transforms FILE`` and ``migrate plan --transforms FILE`` against a real Redis and PostgreSQL, on a store from the
independent writer: queues and projections get exactly what the engine makes of each Redis
stream (one rule of each kind, a callable that splits and leaves out), an aggregate a rule
cannot transform is a ``transform_failed`` problem with none of its events replayed,
``--from pg`` refuses the rules, and a checkpoint remembers the rules' fingerprint. The plan's per-rule counts on a store sampled
whole are what its ground truth (and the engine) says, and its PostgreSQL estimate is the size
after the rules."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import independent_writer as iw
import pytest
import redis
import redis_bytes as rb
from helpers import run_cli

from esctl import errors, layout, plan, redisio
from esctl.replay import ReplayOptions, Selection, replay
from esctl.transforms import (
    Numbering,
    RuleEffect,
    Rules,
    SourceEvent,
    load_rules,
    transform_stream,
)

ASM = "Learning.Enrollment.Domain"
NS = f"{ASM}.Events"
SUB = "Learning.ReportingService.Worker-Test"

CALLABLE = '''
def split_notes(event):
    """Leaves out EnrollmentProgressed, splits EnrollmentNoteAdded in two, fails on FailMe."""
    if event.data.get("FailMe"):
        raise ValueError("a failing event")
    if event.event_type == "EnrollmentProgressed":
        return None
    if event.event_type == "EnrollmentNoteAdded":
        indexed = dict(event.data)
        indexed["$type"] = indexed["$type"].replace("NoteAdded", "NoteIndexed")
        return [event, indexed]
    return event
'''

RULES = f"""
[[leave_out]]
event_type = "InvoicePaid"

[[leave_out]]
aggregate_type = "Course"

[[rename_type]]
from = "{NS}.InvoiceIssued"
to = "Learning.Billing.Events.InvoiceOpened"

[[rename_namespace]]
from = "{ASM}.Models"
to = "Learning.Enrollment.Shapes"

[[rename_assembly]]
from = "{ASM}"
to = "Learning.Enrollment.Core"

[[upcast]]
event_type = "EnrollmentNoteAdded"
rename = {{ Note = "Remark" }}
default = {{ Reviewed = false }}

[[python]]
callable = "MODULE:split_notes"
"""

Row = tuple[str, int, str, str]
"""(aggregate id, version, event type, payload text)"""


def write_rules(tmp_path: Path, name: str = "rules.toml", extra: str = "") -> Rules:
    """The rules file with its callable's module (named after the test: the import is cached
    per process)."""
    module = "tf_replay_" + "".join(c if c.isalnum() else "_" for c in tmp_path.name)
    (tmp_path / f"{module}.py").write_text(CALLABLE, encoding="utf-8")
    path = tmp_path / name
    path.write_text(RULES.replace("MODULE", module) + extra, encoding="utf-8")
    return load_rules(path)


def engine_rows(truth: iw.GroundTruth, rules: Rules, *, skip: str | None = None) -> list[Row]:
    """What the engine makes of every aggregate's stream, by aggregate id then new version."""
    out: list[Row] = []
    for aggregate in sorted(truth.aggregates, key=lambda a: a.aggregate_id):
        if aggregate.aggregate_id == skip:
            continue
        events = sorted(aggregate.events, key=lambda e: e.version)
        sources = [SourceEvent(e.commit_id, e.version, e.payload) for e in events]
        outcome = transform_stream(rules.rules, aggregate.aggregate_id, sources, Numbering())
        assert outcome.failure is None, outcome.failure
        out += [(aggregate.aggregate_id, t.version, t.event_type, t.text) for t in outcome.events]
    return out


@pytest.fixture
def store(redis_client: redis.Redis, app_name: str) -> iw.GroundTruth:
    return iw.write_store(redis_client, app=app_name, aggregates=24, seed=7, legacy_share=0.0)


def plant_failure(client: redis.Redis, truth: iw.GroundTruth) -> str:
    """Make the callable fail on one Enrollment event; the aggregate's id."""
    target = next(a for a in truth.aggregates if a.aggregate_type == "Enrollment")
    event = target.events[-1]
    data = json.loads(event.payload)
    data["FailMe"] = True
    client.hset(event.hash_key, event.commit_id, iw.to_json(data))
    return target.aggregate_id


class Collect:
    """An in-process projection keeping what it was handed."""

    name = "collect"

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def setup(self, ctx: Any) -> None:
        pass

    def handle(self, event: Any) -> None:
        self.rows.append((event.aggregate_id, event.version, event.event_type, event.text))

    def flush(self, ctx: Any) -> None:
        pass


def test_queues_get_the_transformed_events(
    redis_client: redis.Redis,
    store: iw.GroundTruth,
    app_name: str,
    env_name: str,
    tmp_path: Path,
) -> None:
    rules = write_rules(tmp_path)
    failing = plant_failure(redis_client, store)
    wanted = engine_rows(store, rules, skip=failing)
    types = sorted({r[2] for r in wanted})
    # every kind of rule did something on this store
    assert {"InvoiceOpened", "EnrollmentNoteIndexed"} <= set(types)
    assert not {"InvoicePaid", "EnrollmentProgressed", "InvoiceIssued"} & set(types)
    assert any(e.event_type == "EnrollmentProgressed" for e in store.events())
    for event_type in types:
        redis_client.sadd(layout.subscribers_key(env_name, event_type), SUB)
    options = ReplayOptions(
        source="redis",
        target="queue",
        app=app_name,
        env=env_name,
        selection=Selection(all_events=True),
        transforms=rules,
    )
    summary = replay(options, redis_client=redis_client)
    for event_type in types:
        key = layout.queue_key(SUB, env_name, event_type, "published")
        got = list(reversed(rb.lrange(redis_client, key)))
        assert got == [r[3].encode() for r in wanted if r[2] == event_type], event_type
    assert summary.events == len(wanted)
    assert summary.problem_counts == {"transform_failed": 1}
    problem = summary.problems[0]
    assert problem["key"] == layout.commit_list_key(app_name, failing)
    assert "[[python]] #1" in problem["detail"] and "a failing event" in problem["detail"]
    assert summary.transforms is not None
    assert summary.transforms["fingerprint"] == rules.fingerprint
    source_count = sum(len(a.events) for a in store.aggregates if a.aggregate_id != failing)
    split = sum(1 for r in wanted if r[2] == "EnrollmentNoteIndexed")
    assert summary.transforms["events_left_out"] == source_count - (len(wanted) - split)


def test_a_projection_gets_the_transformed_events_and_selectors_ask_them(
    redis_client: redis.Redis,
    store: iw.GroundTruth,
    app_name: str,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    rules = write_rules(tmp_path)
    wanted = engine_rows(store, rules)

    def run(**overrides: Any) -> tuple[list[Row], Any]:
        values: dict[str, Any] = {
            "source": "redis",
            "target": "projection",
            "app": app_name,
            "pg_dsn": pg_dsn,
            "selection": Selection(all_events=True),
            "transforms": rules,
            "batch_size": 7,
        }
        values.update(overrides)
        projection = Collect()
        summary = replay(ReplayOptions(**values), redis_client=redis_client, projection=projection)
        return projection.rows, summary

    rows, summary = run()
    assert rows == wanted
    assert summary.problems == []
    # every aggregate's versions run 1, 2, 3, … as the library loads them
    for aggregate_id in {r[0] for r in rows}:
        versions = [r[1] for r in rows if r[0] == aggregate_id]
        assert versions == list(range(1, len(versions) + 1))
        assert [json.loads(r[3])["Version"] for r in rows if r[0] == aggregate_id] == versions
    # --type names the new types; --order time gives the same events
    rows, _ = run(selection=Selection(types=("InvoiceOpened",)))
    assert rows == [r for r in wanted if r[2] == "InvoiceOpened"] and rows
    rows, _ = run(order="time")
    assert sorted(rows) == sorted(wanted)


def test_a_checkpoint_remembers_the_rules(
    redis_client: redis.Redis,
    store: iw.GroundTruth,
    app_name: str,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    rules = write_rules(tmp_path)
    other = write_rules(tmp_path, "other.toml", '\n[[leave_out]]\nevent_type = "Nothing*"\n')
    assert other.fingerprint != rules.fingerprint

    def run(transforms: Rules | None, limit: int | None, **overrides: Any) -> tuple[list[Row], Any]:
        projection = Collect()
        options = ReplayOptions(
            source="redis",
            target="projection",
            app=app_name,
            pg_dsn=pg_dsn,
            selection=Selection(all_events=True, limit=limit),
            transforms=transforms,
            checkpoint="tf",
            batch_size=10,
            **overrides,
        )
        summary = replay(options, redis_client=redis_client, projection=projection)
        return projection.rows, summary

    wanted = engine_rows(store, rules)
    half = len(wanted) // 2
    rows, _ = run(rules, half)
    assert rows == wanted[:half]
    for changed in (other, None):
        with pytest.raises(errors.UsageError, match="transforms") as refused:
            run(changed, half)
        assert "--reset" in (refused.value.hint or "")
    rows, _ = run(rules, half)  # resumes: the limit counts the checkpoint's events
    assert rows == []
    rows, summary = run(other, half, reset=True)
    assert rows == engine_rows(store, other)[:half]
    assert summary.checkpoint["events_total"] == half


def test_from_pg_refuses_the_rules(
    redis_test_url: str, app_name: str, pg_dsn: str, tmp_path: Path
) -> None:
    rules = write_rules(tmp_path)
    result = run_cli(
        "replay", "--from", "pg", "--to", "stdout", "--all", "--app", app_name,
        "--redis-url", redis_test_url, "--pg-dsn", pg_dsn, "--transforms", rules.path,
        "--json",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    error = json.loads(result.stdout.splitlines()[-1])["error"]
    assert error["kind"] == "usage"
    assert "--from redis" in error["message"] and "already transformed" in error["message"]


def test_per_rule_counts_are_the_stores(
    redis_client: redis.Redis,
    store: iw.GroundTruth,
    redis_test_url: str,
    app_name: str,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    rules = write_rules(tmp_path)
    failing = plant_failure(redis_client, store)
    client = redisio.connect(redis_test_url)
    summary = plan.plan(
        client, plan.PlanOptions(app=app_name, pg_dsn=pg_dsn, sample=1000, transforms=rules)
    )
    plain = plan.plan(client, plan.PlanOptions(app=app_name, pg_dsn=pg_dsn, sample=1000))
    assert summary.exact and summary.transforms is not None
    got = {r["rule"].split(" (")[0]: r for r in summary.transforms["rules"]}

    # the ground truth, aggregate by aggregate (the failing one is quarantined whole)
    kept = [a for a in store.aggregates if a.aggregate_id != failing]
    events = [e for a in kept for e in a.events]
    by_type = Counter(e.event_type for e in events)
    courses = [e for a in kept if a.aggregate_type == "Course" for e in a.events]
    paid = [e for e in events if e.event_type == "InvoicePaid"]
    assert paid and courses and by_type["EnrollmentProgressed"] and by_type["InvoiceIssued"]
    assert got["[[leave_out]] #1"]["events_left_out"] == len(paid)
    assert got["[[leave_out]] #1"]["bytes_left_out"] == sum(len(e.payload.encode()) for e in paid)
    assert got["[[leave_out]] #2"]["events_left_out"] == len(courses)
    assert got["[[rename_type]] #1"]["events_changed"] == by_type["InvoiceIssued"]
    assert got["[[upcast]] #1"]["events_changed"] == by_type["EnrollmentNoteAdded"]
    python = got["[[python]] #1"]
    assert python["events_left_out"] == by_type["EnrollmentProgressed"]
    assert python["events_added"] == by_type["EnrollmentNoteAdded"]
    assert python["aggregates_failed"] == 1
    assert summary.problems_in_sample == {"transform_failed": 1}
    assert sum(r["aggregates_failed"] for r in summary.transforms["rules"]) == 1

    # ... and what the engine says, stream by stream
    effects = RuleEffect.of(rules.rules)
    after = 0
    for aggregate in kept:
        ordered = sorted(aggregate.events, key=lambda e: e.version)
        sources = [SourceEvent(e.commit_id, e.version, e.payload) for e in ordered]
        outcome = transform_stream(
            rules.rules, aggregate.aggregate_id, sources, Numbering(), effects=effects
        )
        after += len(outcome.events)
    for mine, theirs in zip(summary.transforms["rules"], effects, strict=True):
        assert mine["events_left_out"] == theirs.events_left_out
        assert mine["events_changed"] == theirs.events_changed
        assert mine["events_added"] == theirs.events_added
    assert got["[[rename_assembly]] #1"]["events_changed"] > 0
    assert summary.transforms["sample_events_before"] == len(events)
    assert summary.transforms["sample_events_after"] == after
    # the trial wrote the transformed rows: PostgreSQL after the rules is smaller
    assert summary.pg_bytes_estimate and plain.pg_bytes_estimate
    assert summary.pg_bytes_estimate < plain.pg_bytes_estimate

    # the command: --json carries the same; the table names each rule
    common = ("--app", app_name, "--redis-url", redis_test_url, "--pg-dsn", pg_dsn)
    args = ("migrate", "plan", *common, "--sample", "1000", "--transforms", rules.path)
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["transforms"]["rules"] == summary.transforms["rules"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "[[python]] #1" in result.stdout and "left out" in result.stdout

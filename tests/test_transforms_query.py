"""``esctl events query --transforms FILE`` end to end (a real subprocess, a real Redis, a store
from the independent writer): the preview shows the events as the rules make them."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import independent_writer as iw
import pytest
import redis
from helpers import run_cli

from esctl.transforms.typenames import name_spans

ASM = "Learning.Enrollment.Domain"
NS = f"{ASM}.Events"

RULES = f"""
[[leave_out]]
event_type = "InvoicePaid"

[[rename_type]]
from = "{NS}.InvoiceIssued"
to = "Learning.Billing.Events.InvoiceOpened"

[[rename_assembly]]
from = "{ASM}"
to = "Learning.Enrollment.Core"

[[upcast]]
event_type = "Enrollment[PN]*"
rename = {{ Note = "Remark" }}
default = {{ Reviewed = false }}
"""


def type_names(value: Any) -> list[str]:
    """Every ``$type`` value in a parsed payload."""
    if isinstance(value, dict):
        own = [value["$type"]] if "$type" in value else []
        return own + [t for v in value.values() for t in type_names(v)]
    if isinstance(value, list):
        return [t for v in value for t in type_names(v)]
    return []


@pytest.fixture
def store(redis_client: redis.Redis, app_name: str) -> iw.GroundTruth:
    return iw.write_store(redis_client, app=app_name, aggregates=30, seed=11)


def test_the_preview_shows_the_transformed_events(
    store: iw.GroundTruth, redis_test_url: str, app_name: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES, encoding="utf-8")
    common = ("--app", app_name, "--redis-url", redis_test_url, "--transforms", str(rules))
    result = run_cli("events", "query", "--format", "jsonl", *common)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_aggregate: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_aggregate[row["aggregate_id"]].append(row)
    for aggregate in store.aggregates:
        source = aggregate.events
        shown = by_aggregate.get(aggregate.aggregate_id, [])
        assert len(shown) == sum(1 for e in source if e.event_type != "InvoicePaid")
        # versions consecutive from 1, the payload's Version the same
        assert [r["version"] for r in shown] == list(range(1, len(shown) + 1))
        assert [r["data"]["Version"] for r in shown] == [r["version"] for r in shown]
    assert any(e.event_type == "InvoicePaid" for e in store.events())  # some were left out
    assert "InvoicePaid" not in {r["event_type"] for r in rows}
    assert len(rows) == sum(1 for e in store.events() if e.event_type != "InvoicePaid")
    for row in rows:
        for type_name in type_names(row["data"]):
            assemblies = [
                type_name[a:b] for k, a, b in name_spans(type_name) or [] if k == "assembly"
            ]
            assert ASM not in assemblies, type_name
        if row["aggregate_type"] == "Invoice" and row["version"] == 1:
            assert row["event_type"] == "InvoiceOpened"
            assert (
                row["data"]["$type"]
                == "Learning.Billing.Events.InvoiceOpened, Learning.Enrollment.Core"
            )
        upcast = row["event_type"] in ("EnrollmentProgressed", "EnrollmentNoteAdded")
        assert ("Remark" in row["data"]) is upcast and ("Reviewed" in row["data"]) is upcast
        assert "Note" not in row["data"] or not upcast
    assert re.search(r"transforms: [\d,]+ events? left out", result.stderr), result.stderr

    # the filters ask the transformed events: --type names the new type
    result = run_cli("events", "query", "--type", "InvoiceOpened", "--format", "json", *common)
    assert result.returncode == 0, result.stderr
    opened = json.loads(result.stdout)
    invoices = [a for a in store.aggregates if a.aggregate_type == "Invoice"]
    assert sorted(r["aggregate_id"] for r in opened) == sorted(a.aggregate_id for a in invoices)
    assert all(r["version"] == 1 for r in opened)


def test_a_failing_rule_hides_the_whole_aggregate_and_exits_3(
    store: iw.GroundTruth, redis_test_url: str, app_name: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[upcast]]\nevent_type = "EnrollmentProgressed"\nrename = { Missing = "X" }\n',
        encoding="utf-8",
    )
    common = ("--app", app_name, "--redis-url", redis_test_url, "--transforms", str(rules))
    result = run_cli("events", "query", "--format", "jsonl", *common)
    assert result.returncode == 3, result.stderr
    failing = {
        a.aggregate_id
        for a in store.aggregates
        if any(e.event_type == "EnrollmentProgressed" for e in a.events)
    }
    assert failing
    shown = {json.loads(line)["aggregate_id"] for line in result.stdout.splitlines()}
    assert not shown & failing
    assert shown == {a.aggregate_id for a in store.aggregates} - failing
    assert "transform_failed" in result.stderr and "[[upcast]] #1 (line 1)" in result.stderr
    assert "'Missing'" in result.stderr


def test_bad_rules_files_and_pg_are_usage_errors(redis_test_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rename_type]]\nfrom = "A.B"\n', encoding="utf-8")
    common = ("--app", "X", "--redis-url", redis_test_url, "--transforms", str(rules))
    result = run_cli("events", "query", "--format", "json", *common)
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "usage"
    assert "[[rename_type]] #1 (line 1): the key 'to' is missing" in error["message"]
    assert str(rules) in error["message"]

    rules.write_text('[[leave_out]]\nevent_type = "A"\n', encoding="utf-8")
    result = run_cli("events", "query", "--source", "pg", *common)
    assert result.returncode == 2 and "--source pg" in result.stderr
    assert "Traceback" not in result.stderr


def test_unloadable_streams_are_not_renumbered_into_loadable_ones(
    redis_client: redis.Redis, redis_test_url: str, app_name: str, tmp_path: Path
) -> None:
    store = iw.write_store(
        redis_client, app=app_name, aggregates=12, seed=5, events_per_aggregate=(3, 6),
        defects=("version_gap", "invalid_compressed"),
    )  # fmt: skip
    broken = {d.aggregate_id for d in store.defects_of("version_gap")}
    broken |= {d.aggregate_id for d in store.defects_of("invalid_compressed")}
    assert broken
    rules = tmp_path / "rules.toml"
    rules.write_text('[[leave_out]]\nevent_type = "Nothing"\n', encoding="utf-8")
    common = ("--app", app_name, "--redis-url", redis_test_url, "--transforms", str(rules))
    result = run_cli("events", "query", "--format", "jsonl", *common)
    assert result.returncode == 0, result.stderr
    shown = {json.loads(line)["aggregate_id"] for line in result.stdout.splitlines()}
    assert shown == {a.aggregate_id for a in store.aggregates} - broken
    aggregates = "aggregate" if len(broken) == 1 else "aggregates"
    assert f"{len(broken)} {aggregates} not shown" in result.stderr

"""Replay order and positions: by aggregate and by time, from Redis and from PostgreSQL; exact
resumes from every position; the external sort; the PostgreSQL selection agrees with
``events query``."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import independent_writer as iw
import psycopg
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from esctl.errors import EsctlError
from esctl.migrate import MigrateOptions, migrate_redis_to_pg
from esctl.projections import Event
from esctl.query import PgQuery, QueryFilters, Selectors
from esctl.replay import (
    PgSource,
    RedisSource,
    decode_position,
    encode_position,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture
def truth(redis_client: redis.Redis, app_name: str, pg_dsn: str) -> iw.GroundTruth:
    store = iw.write_store(
        redis_client, app=app_name, aggregates=45, events_per_aggregate=(1, 7), seed=3
    )
    migrate_redis_to_pg(
        redis_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True, writers=1)
    )
    return store


def micros(text: str) -> int:
    return (datetime.fromisoformat(text) - _EPOCH) // timedelta(microseconds=1)


def effective_times(truth: iw.GroundTruth) -> dict[tuple[str, int], int]:
    """(aggregate id, version) -> the latest TimeStamp (µs) of versions 1..version."""
    found = {}
    for aggregate in truth.aggregates:
        latest: int | None = None
        for event in sorted(aggregate.events, key=lambda e: e.version):
            moment = micros(event.timestamp)
            latest = moment if latest is None else max(latest, moment)
            found[(aggregate.aggregate_id, event.version)] = latest
    return found


def aggregate_keys(dsn: str, app: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(
            conn.execute(
                "SELECT aggregate_id, aggregate_key FROM aggregate WHERE application_name = %s",
                (app,),
            ).fetchall()
        )


def ids(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.aggregate_id, e.version) for e in events]


def test_every_order_of_every_source(
    truth: iw.GroundTruth, redis_client: redis.Redis, app_name: str, pg_dsn: str
) -> None:
    everything = QueryFilters()
    events = [e for a in truth.aggregates for e in a.events]
    effective = effective_times(truth)
    keys = aggregate_keys(pg_dsn, app_name)
    expected = {
        ("redis", "aggregate"): sorted(events, key=lambda e: (e.aggregate_id, e.version)),
        ("redis", "time"): sorted(
            events,
            key=lambda e: (effective[(e.aggregate_id, e.version)], e.aggregate_id, e.version),
        ),
        ("pg", "aggregate"): sorted(events, key=lambda e: (keys[e.aggregate_id], e.version)),
        ("pg", "time"): sorted(
            events,
            key=lambda e: (effective[(e.aggregate_id, e.version)], keys[e.aggregate_id], e.version),
        ),
    }
    for (source, order), wanted in expected.items():
        if source == "redis":
            got = list(RedisSource(redis_client, app_name, everything, order=order))
        else:
            got = list(PgSource(pg_dsn, "public", app_name, everything, order=order))
        assert ids(got) == [(e.aggregate_id, e.version) for e in wanted], (source, order)
        assert [e.text for e in got][:1] and all(e.event_type for e in got)
        if source == "redis":
            assert [e.text for e in got] == [e.payload for e in wanted]
        # positions increase strictly: a total order, so resuming after one is exact
        positions = [e.position for e in got]
        assert all(a < b for a, b in itertools.pairwise(positions))


@pytest.mark.parametrize(
    ("source", "order"), [(s, o) for s in ("redis", "pg") for o in ("aggregate", "time")]
)
def test_resuming_after_any_position_gives_exactly_the_rest(
    truth: iw.GroundTruth,
    redis_client: redis.Redis,
    app_name: str,
    pg_dsn: str,
    source: str,
    order: str,
) -> None:
    filters = Selectors(types=("EnrollmentProgressed", "InvoicePaid", "CourseCreated")).filters()

    def read(after: tuple[Any, ...] | None = None, limit: int | None = None) -> list[Event]:
        if source == "redis":
            return list(
                RedisSource(redis_client, app_name, filters, order=order, after=after, limit=limit)
            )
        return list(
            PgSource(pg_dsn, "public", app_name, filters, order=order, after=after, limit=limit)
        )

    whole = read()
    assert len(whole) > 20
    for index in (0, 1, len(whole) // 3, len(whole) // 2, len(whole) - 2, len(whole) - 1):
        stored = encode_position(source, order, whole[index])
        after = decode_position(source, order, stored)
        assert after == whole[index].position
        assert ids(read(after)) == ids(whole[index + 1 :]), index
        assert ids(read(after, limit=3)) == ids(whole[index + 1 : index + 4])


def test_redis_time_order_with_an_external_sort(
    truth: iw.GroundTruth, redis_client: redis.Redis, app_name: str, tmp_path: Any
) -> None:
    in_memory = list(RedisSource(redis_client, app_name, QueryFilters(), order="time"))
    spilled_source = RedisSource(
        redis_client,
        app_name,
        QueryFilters(),
        order="time",
        sort_dir=str(tmp_path),
        sort_run_bytes=3000,
    )
    spilled = list(spilled_source)
    assert spilled_source.runs > 5
    assert ids(spilled) == ids(in_memory)
    assert [e.payload for e in spilled] == [e.payload for e in in_memory]
    assert [e.position for e in spilled] == [e.position for e in in_memory]
    assert list(tmp_path.iterdir()) == []  # anonymous files, gone


def test_a_sort_that_cannot_spill_says_where_and_that_nothing_was_replayed(
    truth: iw.GroundTruth, redis_client: redis.Redis, app_name: str, tmp_path: Any
) -> None:
    """The external sort's folder unwritable (here: gone): an error naming it, before any
    event comes out (not an unexpected FileNotFoundError)."""
    missing = tmp_path / "gone"
    source = RedisSource(
        redis_client, app_name, QueryFilters(), order="time", sort_dir=str(missing),
        sort_run_bytes=3000,
    )  # fmt: skip
    with pytest.raises(EsctlError) as caught:
        next(iter(source))
    message = caught.value.message
    assert message.startswith(
        f"cannot write the events sorted by time to a temporary file in {missing}"
    )
    assert message.endswith("; nothing was replayed") and "No such file" in message
    assert caught.value.hint == f"free space in {missing}, then rerun"


# --- a clock that went backwards -----------------------------------------------------------


def write_event(
    client: redis.Redis, app: str, aggregate_id: str, version: int, moment: datetime
) -> None:
    commit_id = str(uuid.uuid4())
    text = iw.to_json(
        {
            "$type": "Ns.Thing" + ("Created" if version == 1 else "Changed") + ", Asm",
            "Id": aggregate_id,
            "TimeStamp": moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "3+00:00",
            "Version": version,
            "AggregateType": "Thing",
        }
    )
    client.hset(iw.event_hash_key(app, commit_id), commit_id, text)
    client.rpush(iw.commit_list_key(app, aggregate_id), commit_id)


def test_time_order_keeps_versions_in_order_when_time_stamps_go_back(
    redis_client: redis.Redis, app_name: str, pg_dsn: str
) -> None:
    t = datetime(2021, 3, 1, tzinfo=UTC)
    write_event(redis_client, app_name, "a", 1, t + timedelta(seconds=10))
    write_event(redis_client, app_name, "a", 2, t + timedelta(seconds=30))
    write_event(redis_client, app_name, "a", 3, t + timedelta(seconds=20))  # clock went back
    write_event(redis_client, app_name, "b", 1, t + timedelta(seconds=25))
    write_event(redis_client, app_name, "c", 1, t + timedelta(seconds=31))
    migrate_redis_to_pg(
        redis_client, MigrateOptions(app=app_name, pg_dsn=pg_dsn, init_schema=True, writers=1)
    )
    wanted = [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("c", 1)]
    assert ids(list(RedisSource(redis_client, app_name, QueryFilters(), order="time"))) == wanted
    assert ids(list(PgSource(pg_dsn, "public", app_name, QueryFilters(), order="time"))) == wanted


# --- the PostgreSQL selection is events query's ----------------------------------------------


QUESTIONS: list[dict[str, Any]] = [
    {},
    {"types": ("InvoicePaid", "ModuleAdded")},
    {"aggregate_type": "Course"},
    {"since": "2017-06-01", "until": "2018-03-01T12:00:00+02:00"},
    {"where": ("Lines.Amount>250",)},
    {"where": ("Owner.Address.City!=Zürich", "Comment exists")},
    {"where": ("Lines.Text~é",), "types": ("InvoiceLineAdded",)},
]


def test_pg_selection_agrees_with_events_query(
    truth: iw.GroundTruth, app_name: str, pg_dsn: str
) -> None:
    some = tuple(a.aggregate_id for a in truth.aggregates[:5])
    for spec in [*QUESTIONS, {"aggregates": some}]:
        filters = Selectors(**spec).filters()
        queried = {
            (r.aggregate_id, r.version) for r in PgQuery(pg_dsn, "public", app_name, filters)
        }
        for order in ("aggregate", "time"):
            replayed = ids(list(PgSource(pg_dsn, "public", app_name, filters, order=order)))
            assert len(replayed) == len(set(replayed))
            assert set(replayed) == queried, (spec, order)
        assert queried or spec.get("where"), spec


# --- the merge, as a property ---------------------------------------------------------------


class _Groups(RedisSource):
    """A RedisSource over groups given in memory (no Redis)."""

    def __init__(self, groups: list[list[Event]], **kwargs: Any) -> None:
        super().__init__(None, "app", QueryFilters(), order="time", **kwargs)  # type: ignore[arg-type]
        self.given = groups

    def aggregate_ids(self) -> list[str]:
        return [g[0].aggregate_id for g in self.given]

    def _groups(self, ids: Any) -> Iterator[list[Event]]:
        yield from self.given


@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=6),
        min_size=1,
        max_size=12,
    ),
    st.integers(min_value=1, max_value=4000),
)
def test_time_order_merge_matches_a_plain_sort(seconds: list[list[int]], run_bytes: int) -> None:
    base = datetime(2020, 1, 1, tzinfo=UTC)
    groups = []
    model = []
    for number, offsets in enumerate(seconds):
        aggregate_id = f"agg-{number:02d}"
        group = []
        latest = None
        for index, offset in enumerate(offsets):
            moment = base + timedelta(seconds=offset)
            stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.0000000+00:00")
            event = Event(
                aggregate_id, "T", index + 1, "E", stamp, f"c{index}",
                (aggregate_id, index + 1, f"c{index}"), b"{}",
            )  # fmt: skip
            group.append(event)
            us = micros(stamp)
            latest = us if latest is None else max(latest, us)
            model.append((latest, aggregate_id, index + 1))
        groups.append(group)
    got = list(_Groups(groups, sort_run_bytes=run_bytes))
    assert [(e.position[0], e.aggregate_id, e.version) for e in got] == sorted(model)
    # resuming after any event gives the rest
    middle = got[len(got) // 2].position
    rest = list(_Groups(groups, sort_run_bytes=run_bytes, after=middle))
    assert ids(rest) == ids(got[len(got) // 2 + 1 :])

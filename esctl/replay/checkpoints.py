"""``--checkpoint NAME``: the rows of ``esctl.projection_checkpoint`` (one per shard) where a
projection replay stands, and the advisory lock of a run (what a checkpoint remembers, and why
one made by another replay is refused: docs/design/replay.md, "Positions and checkpoints")."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg

from esctl.errors import UsageError
from esctl.locks import AdvisoryLock, held_error
from esctl.replay.options import ReplayOptions
from esctl.replay.positions import decode_position
from esctl.shard import Shard

_COLUMNS = (
    "shard, projection, application_name, source, replay_order, selection, position, events,"
    " selection_now, transforms"
)


@dataclass
class CheckpointState:
    """A checkpoint row as a run found it."""

    name: str
    after: tuple[Any, ...] | None
    """The position to resume after (None: from the start)."""
    after_document: dict[str, Any] | None
    events_before: int
    selection_now: datetime
    """The moment relative selectors count back from (when the checkpoint was created)."""
    resumed: bool
    shard: str = "0/1"
    alone: bool = True
    """No other shard of the checkpoint has a row (after a --reset took those of other shard
    counts): no run of it has written anything a projection's tables must keep."""


def checkpoint_lock_name(name: str, shard: Shard) -> str:
    """The advisory lock of one checkpoint's run: one per shard, so the shards of a checkpoint
    run side by side; an unsharded run keeps the name earlier releases used."""
    if shard.count == 1:
        return f"esctl:replay:{name}"
    return f"esctl:replay:{name}:shard {shard}"


def checkpoint_lock(options: ReplayOptions) -> contextlib.AbstractContextManager[object]:
    """The lock a run with ``options`` holds for its whole length (none without a checkpoint
    or for a dry run); LockHeld when another run has it."""
    name = options.checkpoint
    if name is None or options.dry_run:
        return contextlib.nullcontext()
    which = f" (shard {options.shard})" if options.shard.count > 1 else ""
    return AdvisoryLock(
        options.pg_dsn,
        checkpoint_lock_name(name, options.shard),
        what="replay",
        held=f"another replay holds checkpoint {name!r}{which}",
    )


def _identity(options: ReplayOptions, projection_name: str) -> dict[str, Any]:
    source = "redis" if options.source == "redis" else f"pg:{options.pg_schema}"
    return {
        "projection": projection_name,
        "application_name": options.app,
        "source": source,
        "replay_order": options.order,
        "selection": options.selection.fingerprint(),
        "transforms": options.transforms.fingerprint if options.transforms else None,
    }


def _shard_count(spec: str) -> int:
    return Shard.parse(spec).count


def open_checkpoint(
    conn: psycopg.Connection, options: ReplayOptions, projection_name: str
) -> CheckpointState:
    """Read (create, or with --reset start over) the checkpoint row of ``options.shard``,
    inside the caller's transaction. A checkpoint made by another source, order, selection or
    projection is refused: resuming it would skip or repeat events. So is one whose other rows
    were written with another shard count (another N, or sharded against unsharded): their
    positions cover other sets of aggregates. ``--reset`` deletes those rows too (refused while
    one of their runs holds its lock: LockHeld)."""
    name = options.checkpoint
    assert name is not None
    shard = str(options.shard)
    now = options.now or datetime.now(UTC)
    rows = _read_rows(conn, options, name)
    if options.reset:  # (a dry run's reset: as if done)
        rows = [r for r in rows if _shard_count(r[0]) == options.shard.count and r[0] != shard]
    _refuse_other_shard_counts(rows, options, name)
    row = next((r for r in rows if r[0] == shard), None)
    # The rows left are this count's (the others refused, or deleted by --reset): another
    # shard's row is a setup that committed, whose run may have written and may resume.
    alone = all(r[0] == shard for r in rows)
    if row is None:
        if not options.dry_run:
            _create_row(conn, options, name, _identity(options, projection_name), now)
        return CheckpointState(name, None, None, 0, now, False, shard, alone)
    _refuse_other_replays(row, _identity(options, projection_name), options, name)
    position = row[6]
    after = decode_position(options.source, options.order, position) if position else None
    return CheckpointState(
        name, after, position, int(row[7]), row[8], after is not None, shard, alone
    )


def _read_rows(conn: psycopg.Connection, options: ReplayOptions, name: str) -> list[Any]:
    """Every row of checkpoint ``name`` (for a run: after a --reset)."""
    if options.dry_run:
        if not _has_table(conn, "esctl.projection_checkpoint"):
            return []
        columns = _COLUMNS
        if not _has_shard_column(conn):  # made by an earlier release; a dry run does no DDL
            columns = columns.replace("shard,", "'0/1',", 1)
        if not _has_column(conn, "transforms"):  # from before replay --transforms
            columns = columns.replace(", transforms", ", NULL::text", 1)
        return conn.execute(
            f"SELECT {columns} FROM esctl.projection_checkpoint WHERE name = %s", (name,)
        ).fetchall()
    # The shards of one checkpoint start at once: one at a time checks and creates rows.
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"esctl:replay-checkpoint:{name}",),
    )
    if options.reset:
        _reset_checkpoint(conn, name, options.shard)
    # No FOR UPDATE: this run's own row is its lock's (docs/design/replay.md, "Positions and
    # checkpoints").
    return conn.execute(
        f"SELECT {_COLUMNS} FROM esctl.projection_checkpoint WHERE name = %s", (name,)
    ).fetchall()


def _refuse_other_shard_counts(rows: list[Any], options: ReplayOptions, name: str) -> None:
    strangers = sorted(r[0] for r in rows if _shard_count(r[0]) != options.shard.count)
    if not strangers:
        return
    made_by = (
        "runs without --shard"
        if strangers == ["0/1"]
        else "runs with --shard " + ", ".join(strangers)
    )
    now_run = f"--shard {options.shard}" if options.shard.count > 1 else "no --shard"
    raise UsageError(
        f"checkpoint {name!r} was written by {made_by}, and this run has {now_run}: their "
        "positions are in other sets of aggregates, resuming from them would skip or "
        "repeat events",
        hint="run it as it was made (with --shard: one process per shard), or start it "
        "over with --reset"
        + (f" (on every shard I/{options.shard.count})" if options.shard.count > 1 else "")
        + ", or use another --checkpoint name",
    )


def _refuse_other_replays(
    row: Any, identity: dict[str, Any], options: ReplayOptions, name: str
) -> None:
    stored = {
        "projection": row[1],
        "application_name": row[2],
        "source": row[3],
        "replay_order": row[4],
        "selection": row[5],
        "transforms": row[9],
    }
    differs = [k for k in identity if identity[k] != stored[k]]
    if not differs:
        return
    detail = "; ".join(f"{k}: checkpoint {stored[k]!r}, now {identity[k]!r}" for k in differs)
    which = f"checkpoint {name!r}" + (
        f" (shard {options.shard})" if options.shard.count > 1 else ""
    )
    if "transforms" in differs:
        detail += (
            " (the fingerprint of the --transforms rules file and its callables' modules: "
            "the projection holds events transformed otherwise)"
        )
    raise UsageError(
        f"{which} belongs to another replay ({detail})",
        hint="resuming it would skip or repeat events: rerun with the same options, "
        "or start over with --reset, or use another --checkpoint name",
    )


def _create_row(
    conn: psycopg.Connection,
    options: ReplayOptions,
    name: str,
    identity: dict[str, Any],
    now: datetime,
) -> None:
    conn.execute(
        "INSERT INTO esctl.projection_checkpoint (name, shard, projection,"
        " application_name, source, replay_order, selection, selection_now, transforms)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            name,
            str(options.shard),
            identity["projection"],
            identity["application_name"],
            identity["source"],
            identity["replay_order"],
            orjson.dumps(identity["selection"]).decode(),
            now,
            identity["transforms"],
        ),
    )


def _reset_checkpoint(conn: psycopg.Connection, name: str, shard: Shard) -> None:
    """--reset: delete this shard's row and the rows of other shard counts, whose runs must
    not be running (their locks are tried for the rest of the transaction)."""
    rows = conn.execute(
        "SELECT shard FROM esctl.projection_checkpoint WHERE name = %s", (name,)
    ).fetchall()
    doomed = [s for (s,) in rows if s == str(shard) or _shard_count(s) != shard.count]
    for spec in doomed:
        if spec == str(shard):
            continue  # this run holds that lock already
        lock = checkpoint_lock_name(name, Shard.parse(spec))
        row = conn.execute(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (lock,)
        ).fetchone()
        if not row or not row[0]:
            raise held_error(
                conn,
                lock,
                f"--reset of checkpoint {name!r} would delete the row of shard {spec}, and a "
                "run of that shard is going on",
                "wait for it to finish (or stop it), then rerun with --reset",
            )
    conn.execute(
        "DELETE FROM esctl.projection_checkpoint WHERE name = %s AND shard = ANY(%s)",
        (name, doomed),
    )


def _has_shard_column(conn: psycopg.Connection) -> bool:
    return _has_column(conn, "shard")


def _has_column(conn: psycopg.Connection, column: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid ="
        " 'esctl.projection_checkpoint'::regclass AND attname = %s AND NOT attisdropped)",
        (column,),
    ).fetchone()
    return bool(row and row[0])


def _has_table(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


def save_position(
    conn: psycopg.Connection,
    state: CheckpointState,
    position: dict[str, Any],
    events: int,
    dead_lettered: int,
) -> None:
    """Store a batch's last position and counts, in the batch's transaction."""
    conn.execute(
        "UPDATE esctl.projection_checkpoint SET position = %s, events = events + %s,"
        " dead_lettered = dead_lettered + %s, batches = batches + 1,"
        " updated_at = now(), finished_at = NULL WHERE name = %s AND shard = %s",
        (orjson.dumps(position).decode(), events, dead_lettered, state.name, state.shard),
    )


def mark_finished(conn: psycopg.Connection, state: CheckpointState) -> None:
    """The run reached the end of its selection (commits)."""
    conn.execute(
        "UPDATE esctl.projection_checkpoint SET finished_at = now(), updated_at = now()"
        " WHERE name = %s AND shard = %s",
        (state.name, state.shard),
    )
    conn.commit()


def checkpoint_document(
    state: CheckpointState | None, position: dict[str, Any] | None, events: int
) -> dict[str, Any] | None:
    """The summary's ``checkpoint``: where the run started and stands (None without one)."""
    if state is None:
        return None
    return {
        "name": state.name,
        "shard": state.shard,
        "resumed": state.resumed,
        "resumed_from": state.after_document,
        "position": position if position is not None else state.after_document,
        "events_total": state.events_before + events,
    }

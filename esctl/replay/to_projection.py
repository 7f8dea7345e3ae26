"""``--to projection``: feed the selected events to a Python projection in batches, each batch
one PostgreSQL transaction with the projection's writes, the checkpoint and the dead letters
(exactly once for what it writes through ``ctx.conn``: docs/design/replay.md, "Projections:
exactly once for what they write")."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from esctl import inflight, interrupts, pg, redisio, units
from esctl.config import redact
from esctl.defaults import REPLAY_BATCH_SIZE as DEFAULT_BATCH_SIZE
from esctl.errors import EsctlError, Interrupted
from esctl.projections import Event, ProjectionAdapter, ProjectionContext
from esctl.replay.checkpoints import (
    CheckpointState,
    checkpoint_document,
    checkpoint_lock,
    mark_finished,
    open_checkpoint,
    save_position,
)
from esctl.replay.options import ReplayOptions
from esctl.replay.pacing import Pacer
from esctl.replay.positions import encode_position
from esctl.replay.sources import Source, open_source
from esctl.replay.summary import ReplayProgress, ReplaySummary


class ProjectionFailed(EsctlError):
    """A projection raised; the replay stopped (its summary says where)."""


def replay_to_projection(
    options: ReplayOptions,
    adapter: ProjectionAdapter,
    *,
    redis_client: redisio.RedisClient | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Feed the selected events to a projection (protocol: :mod:`esctl.projections`) in
    batches of ``batch_size``, each batch one PostgreSQL transaction holding the projection's
    writes and, with a checkpoint, the position of its last event: a crash loses only the
    batch in flight, and a rerun continues after the last committed batch.

    A checkpoint is locked for the run (:func:`esctl.replay.checkpoints.checkpoint_lock`, one
    per shard): LockHeld when another run has it. An exception from ``handle`` rolls the batch
    back and stops the run (``summary.stopped``) unless ``skip_errors``: then the event goes to
    ``esctl.projection_dead_letter`` and the run goes on. A dry run counts what would be
    replayed (from the checkpoint's position) and calls nothing."""
    started = time.monotonic()
    summary = ReplaySummary.start(options)
    dsn = options.pg_dsn
    try:
        with checkpoint_lock(options):
            ctx = ProjectionContext(
                app=options.app,
                source=options.source,
                checkpoint=options.checkpoint,
                fresh=True,
                fresh_all=options.shard.count == 1,
                connect=lambda: pg.connect(dsn, application_name="esctl replay"),
                shard=options.shard,
            )
            try:
                with pg.translate_errors(dsn):
                    return _run_projection(
                        options, adapter, ctx, summary, started, redis_client, on_progress, sleep
                    )
            except KeyboardInterrupt as exc:
                if options.dry_run or isinstance(exc, Interrupted):
                    raise
                raise _interrupted(options, summary) from exc
            finally:
                ctx.close()
    except KeyboardInterrupt as exc:
        said = interrupts.account(exc)
        if said is None or said is exc:
            raise
        raise said from None  # (a second signal while the checkpoint's lock was given back)


def _interrupted(options: ReplayOptions, summary: ReplaySummary) -> Interrupted:
    """What Ctrl-C or SIGTERM left: every batch commits whole with its checkpoint position, so
    the tables and the checkpoint agree, wherever the signal came; the events of the batches
    this run committed (a batch's COMMIT and its count are one step a first signal waits for:
    :meth:`_BatchRunner.run`), those dead-lettered among them, and a batch whose COMMIT a
    second signal cut short, whose outcome is not known."""
    committed = f"{units.counted(summary.events, 'event')} replayed by this run"
    if summary.dead_lettered:
        committed += (
            f" ({summary.dead_lettered:,} of them dead-lettered into esctl.projection_dead_letter)"
        )
    committed += " stays committed" if summary.events == 1 else " stay committed"
    done = {"events": summary.events, "dead_lettered": summary.dead_lettered}
    doubt = ""
    if summary.in_doubt:
        doubt = (
            f"; whether the {units.counted(summary.in_doubt, 'event')} of the batch whose "
            f"COMMIT was under way {'was' if summary.in_doubt == 1 else 'were'} committed too "
            "is not known (a second signal stopped the wait for PostgreSQL's answer)"
        )
        done["events_in_doubt"] = summary.in_doubt
    if options.checkpoint is None:
        return Interrupted(
            f"{committed} in the projection's tables"
            + (doubt or ", the batch in progress was rolled back"),
            hint="rerun the same command: without --checkpoint it starts from the beginning "
            "(with --checkpoint NAME a rerun resumes)",
            done=done,
        )
    which = f" (shard {options.shard})" if options.shard.count > 1 else ""
    return Interrupted(
        f"{committed}; checkpoint {options.checkpoint!r}{which} stays at the "
        f"last batch committed (each batch commits with its position){doubt}",
        hint="rerun the same command without --reset to resume after it (with --reset it "
        "starts over)"
        if options.reset
        else "rerun the same command to resume after it",
        done=done,
    )


def _run_projection(
    options: ReplayOptions,
    adapter: ProjectionAdapter,
    ctx: ProjectionContext,
    summary: ReplaySummary,
    started: float,
    redis_client: redisio.RedisClient | None,
    on_progress: Callable[[ReplayProgress], None] | None,
    sleep: Callable[[float], None],
) -> ReplaySummary:
    state = _open_state(options, adapter, ctx)
    selection_now = state.selection_now if state is not None else options.now or datetime.now(UTC)
    filters = options.selection.filters(selection_now)
    limit = options.selection.limit
    if limit is not None and state is not None:
        limit = max(0, limit - state.events_before)
    after = state.after if state is not None else None
    source = open_source(options, filters, redis_client, after=after, limit=limit)
    summary.checkpoint = checkpoint_document(state, None, 0)
    if options.dry_run:
        summary.counted(source.count_by_type())
        if ctx.connected:
            ctx.conn.rollback()
        return summary.finish(started, source)

    ctx.fresh = after is None
    # Without a checkpoint a shard cannot know whether the others have written: never all.
    alone = state.alone if state is not None else options.shard.count == 1
    ctx.fresh_all = ctx.fresh and alone
    _setup(adapter, ctx)
    runner = _BatchRunner(options, adapter, ctx, summary, state, on_progress)
    if on_progress is not None:  # holding the checkpoint's lock: the bar may be drawn now
        on_progress(runner.progress)
    try:
        growth = _batch_growth(options.batch_size, ctx if ctx.connected else None)
        _feed(source, runner, Pacer(options.rate, sleep), growth)
        if summary.stopped is None and state is not None:
            mark_finished(ctx.conn, state)
    finally:
        _teardown(adapter, ctx, summary)
    summary.by_type = dict(runner.by_type)
    summary.checkpoint = checkpoint_document(state, runner.position, summary.events)
    return summary.finish(started, source)


def _open_state(
    options: ReplayOptions, adapter: ProjectionAdapter, ctx: ProjectionContext
) -> CheckpointState | None:
    """The checkpoint (None without one); the ``esctl`` tables made first unless a dry run."""
    if options.checkpoint is not None:
        if not options.dry_run:
            pg.ensure_state_schema(ctx.conn)
        return open_checkpoint(ctx.conn, options, adapter.name)
    if options.skip_errors and not options.dry_run:
        pg.ensure_state_schema(ctx.conn)
    return None


def _setup(adapter: ProjectionAdapter, ctx: ProjectionContext) -> None:
    try:
        adapter.setup(ctx)
    except Exception as exc:
        failure = redact(adapter.describe(exc))
        raise ProjectionFailed(
            f"the projection's setup failed: {failure}; nothing was replayed",
            hint="fix the projection and rerun; --debug shows its traceback",
        ) from exc
    if ctx.connected:
        ctx.conn.commit()


ROUND_TRIPS = 4
"""What a batch waits on when PostgreSQL is at a distance: its BEGIN, the projection's flush
(as a rule one statement or two), and the checkpoint with the COMMIT."""


def _batch_growth(batch_size: int | None, ctx: ProjectionContext | None) -> inflight.BatchGrowth:
    """``--batch-size`` when given; else :data:`DEFAULT_BATCH_SIZE`, grown while a batch's
    round trips to PostgreSQL would be more than a tenth of its time (a replay into a server
    at a distance keeps its speed: docs/design/distance.md). On loopback the round trip is
    far too short for that and batches stay at the default."""
    if batch_size is not None:
        return inflight.BatchGrowth(batch_size)
    if ctx is None:  # nothing goes to PostgreSQL per batch: no round trips to weigh
        return inflight.BatchGrowth(DEFAULT_BATCH_SIZE)
    return inflight.BatchGrowth(DEFAULT_BATCH_SIZE, ROUND_TRIPS * pg.round_trip(ctx.conn))


def _feed(source: Source, runner: _BatchRunner, pacer: Pacer, growth: inflight.BatchGrowth) -> None:
    """Run the source's events in batches until the end or a batch that stops the replay;
    with --rate, batches of a tenth of a second's worth (:meth:`Pacer.batch`), so that the
    rate holds between them (one batch of a whole small selection was not paced at all)."""
    batch: list[Event] = []
    growth.start()
    for event in source:
        batch.append(event)
        if len(batch) >= pacer.batch(growth.size):
            pacer.wait(len(batch))
            if not runner.run(batch):
                return
            growth.done(len(batch))
            batch = []
    if batch:
        pacer.wait(len(batch))
        runner.run(batch)


def _teardown(adapter: ProjectionAdapter, ctx: ProjectionContext, summary: ReplaySummary) -> None:
    try:
        if ctx.connected:
            ctx.conn.rollback()
        adapter.teardown(ctx)
        if ctx.connected:
            ctx.conn.commit()
    except Exception as exc:
        summary.add_problem(
            "teardown_failed", adapter.name, f"{type(exc).__name__}: {redact(str(exc))}"
        )


_DeadLetter = tuple[Event, str, str]
"""An event ``handle`` raised on, the error (as stored) and the error in one line with where in
the projection it was raised."""


@dataclass
class _BatchRunner:
    """One batch = handle each event, flush, store the checkpoint, COMMIT."""

    options: ReplayOptions
    adapter: ProjectionAdapter
    ctx: ProjectionContext
    summary: ReplaySummary
    state: CheckpointState | None
    on_progress: Callable[[ReplayProgress], None] | None
    by_type: Counter[str] = field(init=False, default_factory=Counter)
    position: dict[str, Any] | None = field(init=False, default=None)
    progress: ReplayProgress = field(init=False, default_factory=ReplayProgress)

    def run(self, batch: list[Event]) -> bool:
        """False when the replay must stop (``summary.stopped`` says why)."""
        ctx, options = self.ctx, self.options
        ctx.batch += 1
        dead: list[_DeadLetter] = []
        if options.skip_errors:
            dead = self._handle_skipping_errors(batch)
        elif not self._handle(batch):
            return False
        try:
            self.adapter.flush(ctx)
        except Exception as exc:
            self._stop(batch[-1], "flush", exc)
            return False
        position = encode_position(options.source, options.order, batch[-1])
        # The dead letters, the checkpoint and the COMMIT in one round trip. (Not the
        # projection's own statements: a projection may COPY, which pipeline mode refuses.)
        # Ctrl-C and SIGTERM wait until it is answered and counted, so that an interrupted
        # run says exactly what it committed; a second one stops the wait (outcome unknown).
        pipelined = self.state is not None or bool(dead)
        with interrupts.interrupts_held() as hold:
            try:
                with (
                    hold.waiting(),
                    pg.pipelined(ctx.conn) if pipelined else contextlib.nullcontext(),
                ):
                    if dead:
                        self._dead_letter(dead)
                    if self.state is not None:
                        save_position(ctx.conn, self.state, position, len(batch), len(dead))
                    if ctx.connected:
                        ctx.conn.commit()
            except KeyboardInterrupt:
                if hold.broke:
                    self.summary.in_doubt = len(batch)
                raise
            self.position = position
            self._committed(batch, len(dead))
        return True

    def _handle(self, batch: list[Event]) -> bool:
        """Each event to the projection; False (the replay stopped) at the first it raises on."""
        handle = self.adapter.handle
        for event in batch:
            try:
                handle(event)
            except Exception as exc:
                self._stop(event, "handle", exc)
                return False
        return True

    def _handle_skipping_errors(self, batch: list[Event]) -> list[_DeadLetter]:
        """Each event to the projection inside a savepoint; the events it raised on (their
        writes rolled back), with the error."""
        handle = self.adapter.handle
        conn = self.ctx.conn
        dead: list[_DeadLetter] = []
        for event in batch:
            conn.execute("SAVEPOINT esctl_event")
            try:
                handle(event)
            except Exception as exc:
                conn.execute("ROLLBACK TO SAVEPOINT esctl_event")
                dead.append((event, f"{type(exc).__name__}: {exc}", self.adapter.describe(exc)))
            else:
                conn.execute("RELEASE SAVEPOINT esctl_event")
        return dead

    def _committed(self, batch: list[Event], dead_lettered: int) -> None:
        summary = self.summary
        summary.events += len(batch)
        summary.dead_lettered += dead_lettered
        for event in batch:
            self.by_type[event.event_type] += 1
        if self.on_progress is not None:
            self.progress.events = summary.events
            self.on_progress(self.progress)

    def _stop(self, event: Event, where: str, exc: Exception) -> None:
        ctx = self.ctx
        if ctx.connected:
            ctx.conn.rollback()
        error = f"{type(exc).__name__}: {redact(str(exc))}"
        self.summary.failure = exc
        self.summary.stopped = {
            "kind": "projection_failed",
            "in": where,
            "aggregate_id": event.aggregate_id,
            "aggregate_type": event.aggregate_type,
            "version": event.version,
            "event_type": event.event_type,
            "error": error,
            "at": self.adapter.where(exc),
            "batch": ctx.batch,
        }
        what = (
            f"{event.event_type} {event.aggregate_id} version {event.version}"
            if where == "handle"
            else f"flush of batch {ctx.batch} (ending at {event.aggregate_id} version "
            f"{event.version})"
        )
        self.summary.add_problem(
            "projection_failed",
            self.adapter.name,
            f"the projection failed on {what}: {redact(self.adapter.describe(exc))}; the batch "
            "was rolled back",
        )

    def _dead_letter(self, dead: list[_DeadLetter]) -> None:
        """Into ``esctl.projection_dead_letter``, in the batch's transaction."""
        options = self.options
        self.ctx.conn.cursor().executemany(
            "INSERT INTO esctl.projection_dead_letter (checkpoint_name, projection,"
            " application_name, source, aggregate_id, aggregate_type, version, event_type,"
            " commit_id, position, error, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s)",
            [
                (
                    options.checkpoint,
                    self.adapter.name,
                    options.app,
                    options.source,
                    e.aggregate_id,
                    e.aggregate_type,
                    e.version,
                    e.event_type,
                    e.commit_id,
                    orjson.dumps(encode_position(options.source, options.order, e)).decode(),
                    redact(error),
                    e.text,
                )
                for e, error, _ in dead
            ],
        )
        for event, _, described in dead:
            self.summary.add_problem(
                "dead_lettered",
                f"{event.aggregate_id} version {event.version}",
                f"{event.event_type}: {redact(described)} (in esctl.projection_dead_letter)",
            )

"""``migrate redis-to-pg --follow``: after catching up, keep PostgreSQL in step with Redis until
stopped. Keyspace notifications on the commit lists (esctl.redisio.notify) name the aggregates
that got new commits; they are migrated in small batches as soon as the previous ones are handed
to the writers, through the incremental run's reader and writers (same checks, COPY,
quarantine, transforms and bookkeeping). A full incremental sweep runs at the start, every
``sweep_interval`` and after every lost subscription; without notifications it sweeps
continuously (polling).

How following works, what the lag means and why a restart sweeps everything:
docs/design/migrate.md, "Following".
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from esctl import layout, metrics, pg, redisio
from esctl.errors import ConfigError, ConnectionFailed, EsctlError
from esctl.migrate.options import MigrateOptions
from esctl.migrate.rows import Batch, BatchResult
from esctl.migrate.run import WriterPool, migration_lock, prepare_target
from esctl.migrate.runs import RunStart, open_run, set_status
from esctl.migrate.transformed import check_transforms, open_reader, with_rules
from esctl.redisio import notify
from esctl.transforms import Rules
from esctl.units import counted

HEARTBEAT_S = 1.0
"""At least one ``lag`` line (and a metrics file update) this often."""
TOPOLOGY_S = 2.0
"""How often a cluster's primaries are checked (CLUSTER SLOTS) for a failover or a new node."""
POLL_PAUSE_S = 0.5
"""Without notifications: the pause after a sweep that found nothing new."""
START_POSITION = redisio.ScanPosition().encode()
"""What a follower's batches outside a sweep record: a resume of the run starts the scan over."""


class Stalled(EsctlError):
    """Behind, and no progress for the stall timeout."""


@dataclass(frozen=True)
class FollowOptions:
    sweep_interval_s: float = 600.0
    stall_timeout_s: float | None = None
    enable_notifications: bool = False
    metrics_file: str | None = None


@dataclass
class FollowState:
    """The figures a follower reports on every line."""

    mode: str = "notifications"
    """``notifications``, or ``polling`` when the server publishes none."""
    lag_seconds: float = 0.0
    events_behind: int = 0
    aggregates_behind: int = 0
    events_migrated: int = 0
    events_already_present: int = 0
    batches: int = 0
    quarantined: int = 0
    """Aggregates quarantined by this invocation (counted at each quarantine)."""
    sweeps: int = 0
    sweeping: bool = False
    last_batch_at: float | None = None
    obstacle: str | None = None

    def line(self, event: str, **extra: Any) -> dict[str, Any]:
        return {
            "event": event,
            "at": datetime.now(UTC),
            "mode": self.mode,
            "lag_seconds": round(self.lag_seconds, 3),
            "events_behind": self.events_behind,
            "aggregates_behind": self.aggregates_behind,
            "events_migrated": self.events_migrated,
            "events_already_present": self.events_already_present,
            "quarantined": self.quarantined,
            "batches": self.batches,
            "sweeps": self.sweeps,
            "sweeping": self.sweeping,
            **extra,
        }


@dataclass
class _Sweep:
    reason: str
    started: float
    batches: Iterator[Batch]
    blind_since: float | None
    events: int = 0
    exhausted: bool = False
    """Every batch of it read; it ends once they all committed (``outstanding``)."""
    outstanding: set[int] = field(default_factory=set)


@dataclass
class _Committed:
    seq: int
    source: str
    aggregates: int
    result: BatchResult
    at: float


@dataclass
class _Pending:
    """Aggregates known to be behind: named by notifications (not read yet), or read into a
    batch the writers have not committed yet."""

    waiting: dict[str, notify.Seen] = field(default_factory=dict)
    in_flight: dict[str, notify.Seen] = field(default_factory=dict)

    def oldest(self) -> float | None:
        firsts = [s.first for s in (*self.waiting.values(), *self.in_flight.values())]
        return min(firsts) if firsts else None

    def events(self) -> int:
        return sum(s.count for s in (*self.waiting.values(), *self.in_flight.values()))

    def aggregates(self) -> int:
        return len(self.waiting.keys() | self.in_flight.keys())


def follow(
    client: redisio.RedisClient,
    opts: MigrateOptions,
    fopts: FollowOptions,
    *,
    on_line: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], str | None],
) -> dict[str, Any]:
    """Follow until ``should_stop`` returns a reason (``terminate`` or ``interrupt``; checked
    between batches); returns the last line (``event: stopped``). ``on_line`` gets every line
    (in the calling thread). Raises Stalled (behind without progress for the stall timeout,
    naming the cause), LockHeld, and what a plain run raises for errors that retrying cannot
    mend."""
    if opts.dry_run:
        raise ConfigError("--follow cannot be combined with --dry-run")
    opts, rules = with_rules(opts)
    with migration_lock(opts):
        control = pg.connect(opts.pg_dsn, application_name="esctl migrate follow")
        try:
            with pg.translate_errors(opts.pg_dsn):
                prepare_target(control, opts)
                check_transforms(client, control, opts, rules)
                run = open_run(control, opts, redisio.scan_epoch(client))
            follower = _Follower(client, opts, fopts, control, run, rules, on_line, should_stop)
            return follower.run()
        finally:
            control.close()


class _Follower:
    def __init__(
        self,
        client: redisio.RedisClient,
        opts: MigrateOptions,
        fopts: FollowOptions,
        control: psycopg.Connection,
        run: RunStart,
        rules: Rules | None,
        on_line: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], str | None],
    ) -> None:
        self.client = client
        self.opts = opts
        self.fopts = fopts
        self.control = control
        self.run_id = run.run_id
        self.on_line = on_line
        self.should_stop = should_stop
        self.state = FollowState()
        self.pending = _Pending()
        self.lock = threading.Lock()
        self.done: deque[_Committed] = deque()
        self.seq_lock = threading.Lock()
        self.seq = run.first_seq
        self.sources: dict[int, tuple[str, list[str], _Sweep | None]] = {}
        self.started = time.time()
        self.progress_at = time.monotonic()
        self.next_line = 0.0
        self.sweep: _Sweep | None = None
        self.next_sweep = 0.0
        self.last_sweep_start: float | None = None
        self.redis_down_since: float | None = None
        self.pg_losses = 0
        self.feed: notify.KeyspaceFeed | None = None
        self.sweeper = open_reader(client, opts, control, rules, state_present=True)
        self.notified = open_reader(client, opts, control, rules, state_present=True)
        self.notified.lookups = True
        # What this run quarantined is not read (and quarantined) again until it changes.
        self.held: dict[str, int | str | None] = {}
        self.sweeper.held = self.notified.held = self.held

    # --- the writer pool's hooks (called in the writers' threads) ---------------------------

    def committed(self, batch: Batch, result: BatchResult) -> None:
        with self.lock:
            source, ids, sweep = self.sources.pop(batch.seq, ("sweep", [], None))
            if sweep is not None:
                sweep.outstanding.discard(batch.seq)
            for aggregate_id in ids:
                self.pending.in_flight.pop(aggregate_id, None)
            for aggregate_id in batch.clean:
                self.held.pop(aggregate_id, None)
            for q in result.quarantined:
                self.held[q.aggregate_id] = q.commits
            self.done.append(_Committed(batch.seq, source, batch.aggregates, result, time.time()))
        feed = self.feed
        if feed is not None:
            with feed.cond:  # wake the loop: the lines and the lag follow the commit
                feed.cond.notify_all()

    def lost(self, error: ConnectionFailed, attempt: int) -> bool:
        with self.lock:
            self.pg_losses += 1
            self.state.obstacle = (
                f"the PostgreSQL connection was terminated {counted(self.pg_losses, 'time')} "
                f"(last: {error.message})"
            )
        return True

    def next_seq(self) -> int:
        with self.seq_lock:
            self.seq += 1
            return self.seq - 1

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self._start_notifications()
        self.pool = WriterPool(
            self.opts,
            self.run_id,
            target_exists=True,
            count=max(1, self.opts.writers),
            hooks=self,
        )
        stopped: str | None = None
        try:
            self._start_sweep("start", None)
            while stopped is None:
                self._step()
                stopped = self.should_stop()
        except Stalled:
            self.pool.cancel()
            self._set_status("failed")
            raise
        except BaseException:
            self.pool.stop.set()
            self._close()
            self._set_status("failed")
            raise
        self._close()
        self.pool.raise_failure()
        self._drain()
        self._set_status("finished" if stopped == "terminate" else "interrupted")
        line = self.state.line("stopped", reason=stopped, run_id=self.run_id)
        self.on_line(line)
        self._write_metrics()
        return line

    def _close(self) -> None:
        self.pool.close()
        if self.feed is not None:
            self.feed.close()

    def _set_status(self, status: str) -> None:
        set_status(self.control, self.run_id, status)

    def _step(self) -> None:
        self.pool.raise_failure()
        did = False
        try:
            self._check_feed()
            did = self._migrate_notified() or self._sweep_step()
            self._redis_back()
        except (ConnectionFailed, *redisio.REDIS_ERRORS) as exc:
            if isinstance(exc.__cause__, psycopg.Error):
                raise  # esctl's own PostgreSQL connection: not something to wait out
            self._redis_lost(exc)
        self._drain()
        self._heartbeat()
        self._check_stall()
        if not did:
            self._idle()

    def _idle(self) -> None:
        if self.redis_down_since is not None:
            time.sleep(0.5)
        elif self.feed is not None and self.sweep is None:
            self.feed.wait(0.2)
        else:
            time.sleep(0.02)

    # --- notifications ---------------------------------------------------------------------

    def _start_notifications(self) -> None:
        if self.fopts.enable_notifications:
            with _redis_errors(self.client):
                notify.enable_notifications(self.client)
        with _redis_errors(self.client):
            flags = notify.notification_flags(self.client)
        off = {n: f for n, f in flags.items() if f is None or notify.missing_flags(f)}
        if off:
            self.state.mode = "polling"
            self.on_line(self.state.line("notice", message=_notifications_off(off)))
            return
        setting = next(iter(flags.values())) or ""
        self.feed = notify.KeyspaceFeed(
            self.client, layout.commit_list_pattern(self.opts.app), flags=setting
        )
        with _redis_errors(self.client):
            self.feed.start()

    def _publishing(self, new: list[str]) -> bool:
        """Whether the new primaries of a cluster publish what the follower needs (set with
        --enable-notifications); if not, it says so and polls from now on."""
        flags = notify.notification_flags(self.client)
        off = {
            n: f for n, f in flags.items() if n in new and (f is None or notify.missing_flags(f))
        }
        if not off:
            return True
        if self.fopts.enable_notifications:
            notify.enable_notifications(self.client)
            return True
        assert self.feed is not None
        self.feed.close()
        self.feed = None
        self.state.mode = "polling"
        self.next_sweep = 0.0
        self.on_line(self.state.line("notice", message=_notifications_off(off)))
        return False

    def _check_feed(self) -> None:
        feed = self.feed
        if feed is None:
            return
        if time.monotonic() >= self.next_topology:
            self.next_topology = time.monotonic() + TOPOLOGY_S
            new = feed.refresh_topology()
            if new and not self._publishing(new):
                return
        down = feed.down()
        if down:
            name, error = next(iter(down.items()))
            self.state.obstacle = f"Redis is unreachable ({name}: {error})"
        elif self.redis_down_since is None and (self.state.obstacle or "").startswith("Redis"):
            self.state.obstacle = None
        since = feed.take_resync()
        if since is not None:
            self._start_sweep("resubscribed", since)
        prefix = layout.commit_list_prefix(self.opts.app)
        with self.lock:
            for key, seen in feed.take().items():
                aggregate_id = key[len(prefix) :]
                old = self.pending.waiting.get(aggregate_id)
                if old is None:
                    self.pending.waiting[aggregate_id] = seen
                else:
                    old.count += seen.count

    next_topology = 0.0

    def _migrate_notified(self) -> bool:
        """Read the aggregates named since the last time (none that is in a batch not yet
        committed: the next round reads those) and hand their batches to the writers."""
        with self.lock:
            ready = {
                a: s for a, s in self.pending.waiting.items() if a not in self.pending.in_flight
            }
            for a in ready:
                del self.pending.waiting[a]
        if not ready:
            return False
        keys = [layout.commit_list_key(self.opts.app, a) for a in ready]
        try:
            with pg.translate_errors(self.opts.pg_dsn):
                for batch in self.notified.batches_of(keys, START_POSITION):
                    ids = [*batch.clean, *(q.aggregate_id for q in batch.quarantined)]
                    self._hand_over(batch, "notifications", ids, ready)
        except BaseException:
            with self.lock:  # not read: still behind
                for a, s in ready.items():
                    self.pending.waiting.setdefault(a, s)
            raise
        return True

    def _hand_over(
        self, batch: Batch, source: str, ids: list[str], seen: dict[str, notify.Seen]
    ) -> None:
        batch.seq = self.next_seq()
        sweep = self.sweep if source == "sweep" else None
        with self.lock:
            self.sources[batch.seq] = (source, ids, sweep)
            if sweep is not None:
                sweep.outstanding.add(batch.seq)
            for a in ids:
                if a in seen:
                    self.pending.in_flight[a] = seen.pop(a)
        while True:
            try:
                self.pool.work.put(batch, timeout=0.2)
                return
            except queue.Full:
                # The writers are busy (or blocked): keep reporting, and notice a stall or a
                # stop (the batch is then not written; the next follower reads it again).
                self._drain()
                self._heartbeat()
                self._check_stall()
                if self.pool.stop.is_set() or self.should_stop():
                    self.pool.raise_failure()
                    return

    # --- sweeps ----------------------------------------------------------------------------

    def _start_sweep(self, reason: str, blind_since: float | None) -> None:
        epoch = redisio.scan_epoch(self.client)
        start = redisio.ScanPosition(epoch=epoch)
        self.sweep = _Sweep(
            reason,
            time.time(),
            self.sweeper.batches(start, 0),
            blind_since if blind_since is not None else self.started,
        )
        self.state.sweeping = True
        self._update_lag()
        self.on_line(self.state.line("sweep", phase="started", reason=reason))

    def _sweep_step(self) -> bool:
        if self.sweep is None:
            if self._sweep_due():
                self._start_sweep(self._sweep_reason(), self.last_sweep_start)
            return False
        if self.sweep.exhausted:
            with self.lock:
                if self.sweep.outstanding:
                    return False
            self._end_sweep()
            return True
        with pg.translate_errors(self.opts.pg_dsn):
            batch = next(self.sweep.batches, None)
        self.progress_at = time.monotonic()
        if batch is None:
            self.sweep.exhausted = True
            return True
        self.sweep.events += batch.events
        if batch.aggregates or batch.events:
            self._hand_over(batch, "sweep", [], {})
        return True

    def _sweep_due(self) -> bool:
        now = time.monotonic()
        if self.feed is None:
            return now >= self.next_sweep
        return now >= self.next_sweep and self.fopts.sweep_interval_s > 0

    def _sweep_reason(self) -> str:
        return "poll" if self.feed is None else "interval"

    def _end_sweep(self) -> None:
        self._drain()  # its last batches' lines first
        sweep = self.sweep
        assert sweep is not None
        self.sweep = None
        self.state.sweeping = False
        self.state.sweeps += 1
        self.last_sweep_start = sweep.started
        self.sweeper.lookups = True  # a first run's shortcut holds for its first sweep only
        if self.feed is not None:
            self.feed.sweep_done(sweep.started)
            self.next_sweep = time.monotonic() + self.fopts.sweep_interval_s
        else:
            self.next_sweep = time.monotonic() + (0.0 if sweep.events else POLL_PAUSE_S)
        self.progress_at = time.monotonic()
        self._update_lag()
        self.on_line(
            self.state.line(
                "sweep",
                phase="finished",
                reason=sweep.reason,
                events_read=sweep.events,
                elapsed_s=round(time.time() - sweep.started, 3),
            )
        )

    # --- Redis lost and back ---------------------------------------------------------------

    def _redis_lost(self, exc: BaseException) -> None:
        if self.redis_down_since is None:
            self.redis_down_since = time.time()
            if self.sweep is not None and self.sweep.blind_since is not None:
                # the sweep that stops here had a gap to close: the next one inherits it
                self.redis_down_since = min(self.redis_down_since, self.sweep.blind_since)
        text = exc.message if isinstance(exc, EsctlError) else str(exc)
        self.state.obstacle = f"Redis is unreachable ({text})"
        self.sweep = None  # its SCAN is gone; a new one runs once Redis answers
        self.state.sweeping = True

    def _redis_back(self) -> None:
        if self.redis_down_since is None:
            return
        self.client.ping()
        since = self.redis_down_since
        self.redis_down_since = None
        self.state.obstacle = None
        self._start_sweep("redis_back", since)

    # --- reporting -------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self.lock:
                if not self.done:
                    break
                done = self.done.popleft()
            self._count(done)
            self._update_lag()
            self.on_line(
                self.state.line(
                    "batch",
                    seq=done.seq,
                    source=done.source,
                    aggregates=done.aggregates,
                    events=done.result.inserted,
                    batch_quarantined=len(done.result.quarantined),
                )
            )

    def _count(self, done: _Committed) -> None:
        st = self.state
        st.batches += 1
        st.events_migrated += done.result.inserted
        st.events_already_present += done.result.already_present
        st.quarantined += len(done.result.quarantined)
        st.last_batch_at = done.at
        self.progress_at = time.monotonic()
        if self.pg_losses and not self.pool.failure:
            with self.lock:
                self.pg_losses = 0
                st.obstacle = None

    def _blind_since(self) -> float | None:
        """Since when commits may exist that no notification named: during a sweep after a
        lost subscription (or the first one), while Redis is unreachable, and, when polling,
        since the last completed sweep started."""
        moments = [
            m
            for m in (
                self.redis_down_since,
                self.sweep.blind_since if self.sweep is not None else None,
                self.feed.blind_since if self.feed is not None else None,
            )
            if m is not None
        ]
        if self.feed is None and self.sweep is not None:
            moments.append(self.last_sweep_start or self.started)
        return min(moments) if moments else None

    def _update_lag(self) -> None:
        with self.lock:
            oldest = self.pending.oldest()
            events = self.pending.events()
            aggregates = self.pending.aggregates()
        if self.feed is not None:
            waiting = self.feed.pending()
            events += sum(s.count for s in waiting.values())
            aggregates += len(waiting)
            firsts = [s.first for s in waiting.values()]
            if firsts and (oldest is None or min(firsts) < oldest):
                oldest = min(firsts)
        blind = self._blind_since()
        if blind is not None and (oldest is None or blind < oldest):
            oldest = blind
        st = self.state
        st.lag_seconds = max(0.0, time.time() - oldest) if oldest is not None else 0.0
        st.events_behind = events
        st.aggregates_behind = aggregates

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now < self.next_line:
            return
        self.next_line = now + HEARTBEAT_S
        self._update_lag()
        extra = {"obstacle": self.state.obstacle} if self.state.obstacle else {}
        self.on_line(self.state.line("lag", **extra))
        self._write_metrics()

    def _write_metrics(self) -> None:
        if self.fopts.metrics_file is None:
            return
        metrics.write_textfile(
            self.fopts.metrics_file, follow_metrics(self.state, self.opts, self.run_id)
        )

    # --- stalls ----------------------------------------------------------------------------

    def _behind(self) -> bool:
        with self.lock:
            known = bool(self.pending.waiting or self.pending.in_flight)
        blind = self.feed is not None and self.feed.blind_since is not None
        return known or blind or self.sweep is not None or self.redis_down_since is not None

    def _check_stall(self) -> None:
        limit = self.fopts.stall_timeout_s
        if not self._behind():
            self.progress_at = time.monotonic()
            return
        if limit is None or time.monotonic() - self.progress_at < limit:
            return
        raise Stalled(
            f"behind and no progress for {limit:g} s: {self._stall_cause()}",
            hint="the committed batches stay; fix the cause and start the follower again "
            "(it resumes where PostgreSQL stands)",
        )

    def _stall_cause(self) -> str:
        if (self.state.obstacle or "").startswith("Redis"):
            return self.state.obstacle or "Redis is unreachable"
        waits = _lock_waits(self.opts.pg_dsn, self.pool.backend_pids())
        if waits:
            return waits
        if self.state.obstacle:
            return self.state.obstacle
        return "the writers committed nothing (PostgreSQL slow or unresponsive?)"


def _lock_waits(dsn: str, pids: list[int]) -> str | None:
    """What the writers wait for in PostgreSQL: a lock (on which table, held by whom)."""
    if not pids:
        return None
    try:
        with pg.connect(dsn, application_name="esctl migrate follow check") as conn:
            rows = conn.execute(
                "SELECT a.pid, a.wait_event_type, a.wait_event,"
                "       (SELECT string_agg(DISTINCT l.relation::regclass::text, ', ')"
                "          FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted"
                "           AND l.relation IS NOT NULL),"
                "       pg_blocking_pids(a.pid)"
                "  FROM pg_stat_activity a WHERE a.pid = ANY(%s)",
                (pids,),
            ).fetchall()
    except (psycopg.Error, EsctlError):
        return None
    for _pid, kind, event, tables, blockers in rows:
        if kind == "Lock":
            where = f"on table {tables}" if tables else f"({event})"
            backends = "backend" if len(blockers) == 1 else "backends"
            by = f", held by {backends} {', '.join(map(str, blockers))}" if blockers else ""
            return f"PostgreSQL lock wait {where}{by}"
    return None


@contextlib.contextmanager
def _redis_errors(client: redisio.RedisClient) -> Iterator[None]:
    try:
        yield
    except redisio.REDIS_ERRORS as exc:
        raise redisio.wrap_errors(client, exc) from exc


def _notifications_off(flags: dict[str, str | None]) -> str:
    where = ", ".join(
        f"{n} ({f!r})" if f is not None else f"{n} (unreadable)" for n, f in flags.items()
    )
    return (
        f"keyspace notifications for list commands are off on {where}: polling with "
        "incremental sweeps (one LLEN per aggregate each). To follow by notifications, run "
        "`CONFIG SET notify-keyspace-events Kl` on every primary (or pass "
        "--enable-notifications); it makes Redis publish a message per list command on "
        "every key, a few percent of CPU on a busy server"
    )


METRIC_HELP = {
    "esctl_migrate_follow_lag_seconds": "Age of the oldest commit in Redis not yet in "
    "PostgreSQL (0 when level).",
    "esctl_migrate_follow_events_behind": "Commits known to be in Redis and not yet in PostgreSQL.",
    "esctl_migrate_follow_events_migrated": "Events this follower migrated since it started.",
    "esctl_migrate_follow_aggregates_quarantined": "Aggregates this follower quarantined.",
    "esctl_migrate_follow_last_batch_timestamp_seconds": "Unix time of the last committed "
    "batch (0 before the first).",
    "esctl_migrate_follow_updated_timestamp_seconds": "Unix time this file was written.",
}


def follow_metrics(state: FollowState, opts: MigrateOptions, run_id: str) -> str:
    labels = {
        "app": opts.app,
        "schema": opts.pg_schema,
        "shard": str(opts.shard),
        "mode": state.mode,
    }
    values = {
        "esctl_migrate_follow_lag_seconds": state.lag_seconds,
        "esctl_migrate_follow_events_behind": state.events_behind,
        "esctl_migrate_follow_events_migrated": state.events_migrated,
        "esctl_migrate_follow_aggregates_quarantined": state.quarantined,
        "esctl_migrate_follow_last_batch_timestamp_seconds": state.last_batch_at or 0.0,
        "esctl_migrate_follow_updated_timestamp_seconds": time.time(),
    }
    return metrics.render(
        [metrics.Metric(name, value, labels) for name, value in values.items()], METRIC_HELP
    )

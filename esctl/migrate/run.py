""":func:`migrate_redis_to_pg`, the operation: takes the run's lock, prepares the tables, opens
or resumes the run, then reads in the calling thread while writer threads, one PostgreSQL
connection each, commit the batches (docs/design/migrate.md, "Threads")."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from functools import partial
from typing import Any, Protocol

import psycopg

from esctl import pg, redisio, storereads, units
from esctl.errors import ConfigError, ConnectionFailed, Interrupted
from esctl.locks import AdvisoryLock, ShardFamily, overlap_words
from esctl.migrate.options import Invocation, MigrateOptions, MigrationSummary, Progress
from esctl.migrate.reader import Reader
from esctl.migrate.rows import Batch, BatchResult
from esctl.migrate.runs import (
    RunStart,
    RunTotals,
    open_run,
    quarantine_query,
    run_totals,
    set_status,
)
from esctl.migrate.transformed import (
    TransformCounts,
    TransformingReader,
    check_transforms,
    open_reader,
    with_rules,
)
from esctl.migrate.writer import BatchWriter
from esctl.problems import ProblemTally
from esctl.transforms import Rules


def migrate_redis_to_pg(
    client: redisio.RedisClient,
    opts: MigrateOptions,
    *,
    on_progress: Callable[[Progress], None] | None = None,
) -> MigrationSummary:
    """Run (or resume) a migration. Only committed events move; an aggregate with any problem
    is skipped whole and quarantined; rows already there are never overwritten; each batch
    commits with its bookkeeping, so a rerun continues and a later run moves only what is new
    (the promises in full: docs/design/migrate.md).

    Raises LockHeld when another run holds this app/schema/shard's lock, ConnectionFailed when
    a server goes away (the committed batches stay; rerunning continues), KeyboardInterrupt
    after the in-flight batches were committed or rolled back.
    """
    if opts.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    opts, rules = with_rules(opts)
    started = time.monotonic()
    dsn = opts.pg_dsn
    with migration_lock(opts):
        control = pg.connect(dsn, application_name="esctl migrate")
        try:
            with pg.translate_errors(dsn):
                target_exists = prepare_target(control, opts)
                state_present = pg.state_schema_present(control)
                deleted = 0
                if state_present:
                    deleted = check_transforms(client, control, opts, rules)
                if not opts.dry_run and unknown_app(client, control, opts):
                    summary = unrecorded(opts, time.monotonic() - started)
                    if rules is not None:
                        summary = replace(
                            summary, transforms=_transforms_summary(None, rules, deleted)
                        )
                    return summary
                epoch = redisio.scan_epoch(client)
                run = open_run(control, opts, epoch)
                run = replace(run, position=replace(run.position, epoch=epoch))
            try:
                invocation = _Invocation(
                    client,
                    opts,
                    control,
                    run,
                    state_present=state_present,
                    target_exists=target_exists,
                    on_progress=on_progress,
                    rules=rules,
                )
            except KeyboardInterrupt:
                # Stopped while opening its connections: nothing migrated by this invocation,
                # the run recorded as interrupted (left 'running', it read as killed).
                if opts.dry_run:
                    raise
                set_status(control, run.run_id, "interrupted")
                raise interrupted(
                    {"events_migrated": 0, "events_already_present": 0, "aggregates_quarantined": 0}
                ) from None
            invocation.execute()
            summary = invocation.summary(started)
            if rules is not None:
                transforms = _transforms_summary(invocation.reader, rules, deleted)
                summary = replace(summary, transforms=transforms)
            return summary
        finally:
            control.close()


def unknown_app(
    client: redisio.RedisClient, control: psycopg.Connection, opts: MigrateOptions
) -> bool:
    """Whether ``opts.app`` is a name esctl has never seen: no run of it into this schema (any
    shard, any status) and no key of its store in Redis at all (a typo in --app / ESCTL_APP,
    the wrong database). A run of such an app records nothing (:func:`unrecorded`); an app
    with an earlier run (a store pruned empty, a follower's) is run and recorded as ever. The
    look-up in Redis, one SCAN that stops at the app's first key, is made only for an app
    without a run; for a name that has no key it goes through the keyspace, as the run's own
    SCAN of the commit lists would."""
    [(has_run,)] = pg.read_ended(
        control,
        "SELECT EXISTS (SELECT 1 FROM esctl.migration_run"
        " WHERE target_schema = %s AND application_name = %s)",
        (opts.pg_schema, opts.app),
    )
    if has_run:
        return False
    return storereads.find_store_key(client, opts.app) is None


def unrecorded(opts: MigrateOptions, elapsed: float) -> MigrationSummary:
    """The summary of a run of an app esctl has never seen (:func:`unknown_app`): nothing read,
    nothing written, no run recorded (``run_id`` None), so ``migrate status`` and doctor show
    no run of a mistyped name."""
    return MigrationSummary(
        run_id=None,
        dry_run=opts.dry_run,
        resumed=False,
        aggregates=0,
        aggregates_unchanged=0,
        events_migrated=0,
        events_already_present=0,
        aggregates_quarantined=0,
        events_quarantined=0,
        problems=[],
        elapsed_s=elapsed,
        events_per_s=0.0,
    )


def _transforms_summary(reader: Reader | None, rules: Rules, deleted: int) -> dict[str, Any]:
    counts = reader.counts if isinstance(reader, TransformingReader) else TransformCounts()
    return {
        "fingerprint": rules.fingerprint,
        "file": rules.path,
        **asdict(counts),
        "aggregates_deleted_by_restart": deleted,
    }


def lock_name(pg_schema: str, app: str, shard: str) -> str:
    """The name of the advisory lock a run of this schema, app and shard holds (``migrate
    status`` looks for its holder in pg_locks)."""
    return f"esctl:migrate:{pg_schema}:{app}:{shard}"


def migration_lock(opts: MigrateOptions) -> contextlib.AbstractContextManager[object]:
    """One run at a time per app, schema and shard, and never two whose shards share an
    aggregate (another shard count, or an unsharded run beside a sharded one: their shard
    locks differ, so the runs also join the app and schema's :class:`ShardFamily`). A dry
    run writes nothing and takes none."""
    if opts.dry_run:
        return contextlib.nullcontext()
    schema, app = opts.pg_schema, opts.app

    return AdvisoryLock(
        opts.pg_dsn,
        lock_name(schema, app, str(opts.shard)),
        what="migrate redis-to-pg",
        family=ShardFamily(
            f"esctl:migrate:{schema}:{app}",
            opts.shard,
            member_lock=lambda shard: lock_name(schema, app, str(shard)),
            held=overlap_words(
                f"migration of {app} into schema {schema}", "migrate", "run", opts.shard
            ),
            hint="wait for that run to finish, or stop it (a `migrate redis-to-pg --follow` "
            "run holds its lock for as long as it runs); runs whose shards share aggregates "
            "never run at once, so run one shard count at a time (docs/deploy/kubernetes.md); "
            "from cron, exit code 75 means the other run is still going",
        ),
        held=f"another migration of {app} into schema {schema} (shard {opts.shard}) is running",
        hint="a `migrate redis-to-pg --follow` run holds it for as long as it runs: stop that "
        "run first; any other run, until it finishes: wait for it (from cron, exit code 75 "
        "means the previous run is still going)",
    )


def prepare_target(control: psycopg.Connection, opts: MigrateOptions) -> bool:
    """Check (and with --init-schema create) the event tables and esctl's bookkeeping. Returns
    whether the event tables exist: a dry run creates nothing, so with --init-schema and no
    tables yet every event counts as one that would be migrated."""
    if opts.dry_run:
        target_exists = pg.check_event_store_schema(control, opts.pg_schema).tables_present
        if not target_exists and not opts.init_schema:
            pg.ensure_event_store_schema(control, opts.pg_schema, create=False)
    else:
        pg.ensure_event_store_schema(control, opts.pg_schema, create=opts.init_schema)
        pg.ensure_state_schema(control)
        target_exists = True
    control.commit()
    return target_exists


class WriterHooks(Protocol):
    """What a writer pool that keeps going (a follower's) asks of its owner."""

    def committed(self, batch: Batch, result: BatchResult) -> None:
        """Called in the writer's thread after each commit."""

    def lost(self, error: ConnectionFailed, attempt: int) -> bool:
        """The writer's connection was lost (``attempt`` times in a row): try again?"""
        ...

    def next_seq(self) -> int:
        """A fresh seq for a batch written again."""
        ...


class WriterPool:
    """Writer threads, each with its own :class:`BatchWriter`, fed through a queue that holds
    at most one batch per writer. A writer's error stops the pool and waits in ``failure`` for
    the reading thread, which re-raises it."""

    def __init__(
        self,
        opts: MigrateOptions,
        run_id: str,
        *,
        target_exists: bool,
        count: int,
        hooks: WriterHooks | None = None,
    ) -> None:
        self.hooks = hooks
        self.dsn = opts.pg_dsn
        self._new_writer = partial(BatchWriter, opts, run_id, target_exists=target_exists)
        self.work: queue.Queue[Batch | None] = queue.Queue(maxsize=count)
        # What the batches did, added up as they commit: nothing per batch or per problem
        # stays (the problems are in esctl.quarantine; the tally keeps the first few).
        self.totals = Progress()
        self.tally = ProblemTally()
        self.results_lock = threading.Lock()
        self.failure: list[BaseException] = []
        self.stop = threading.Event()
        self.writers = _open_writers(self._new_writer, count)
        self.toast_compression = self.writers[0].toast_compression
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"esctl-writer-{i}", daemon=True)
            for i in range(count)
        ]
        for t in self.threads:
            t.start()

    def _loop(self, index: int) -> None:
        try:
            while True:
                batch = self.work.get()
                if batch is None or self.stop.is_set():
                    return
                result = self._write(index, batch)
                if self.hooks is not None:
                    self.hooks.committed(batch, result)
                with self.results_lock:
                    self.totals.add_committed(result)
                    for q in result.quarantined:
                        for p in q.problems:
                            self.tally.add({"kind": p.kind, "key": q.key, "detail": p.detail})
        except BaseException as exc:  # handed to the reader thread, which re-raises it
            self.failure.append(exc)
            self.stop.set()

    def _write(self, index: int, batch: Batch) -> BatchResult:
        """Write a batch; with hooks that keep going (a follower), a lost connection is made
        again and the batch written again under a new seq (its first commit may have landed
        with the reply lost), until the hooks give up or the pool stops."""
        attempt = 0
        while True:
            try:
                with pg.translate_errors(self.dsn):
                    return self.writers[index].write(batch)
            except ConnectionFailed as exc:
                attempt += 1
                if self.hooks is None or self.stop.is_set() or not self.hooks.lost(exc, attempt):
                    raise
            self.writers[index].close()
            while not self.stop.is_set():
                time.sleep(min(2.0, 0.05 * 2**attempt))
                try:
                    self.writers[index] = self._new_writer()
                    break
                except ConnectionFailed as exc:
                    attempt += 1
                    if not self.hooks.lost(exc, attempt):
                        raise
            batch.seq = self.hooks.next_seq()

    def backend_pids(self) -> list[int]:
        """The PostgreSQL backends of the writers (to see what they wait for)."""
        pids = []
        for w in self.writers:
            with contextlib.suppress(Exception):
                pids.append(w.conn.info.backend_pid)
        return pids

    def cancel(self) -> None:
        """Cancel what the writers' connections run (a follower that stalled)."""
        self.stop.set()
        for w in self.writers:
            with contextlib.suppress(Exception):
                w.conn.cancel()

    def put(self, item: Batch | None) -> None:
        # Once a writer failed nobody may drain the queue: give up instead of blocking.
        while True:
            if self.stop.is_set():
                with contextlib.suppress(queue.Full):
                    self.work.put_nowait(item)
                return
            try:
                self.work.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def done(self) -> Progress:
        """The committed figures so far (a copy: the writers go on adding)."""
        with self.results_lock:
            return replace(self.totals)

    def close(self) -> None:
        """Let every writer finish what it took, then close their connections."""
        for _ in self.threads:
            self.put(None)
        for t in self.threads:
            t.join()
        for w in self.writers:
            w.close()

    def raise_failure(self) -> None:
        if self.failure:
            raise self.failure[0]


def _open_writers(new_writer: Callable[[], BatchWriter], count: int) -> list[BatchWriter]:
    """``count`` writers, connected and set up at once (each takes a few round trips, which
    add up when the server is at a distance); when one fails, the others are closed."""
    if count == 1:
        return [new_writer()]
    with ThreadPoolExecutor(count, thread_name_prefix="esctl-writer-setup") as pool:
        futures = [pool.submit(new_writer) for _ in range(count)]
    failed = [error for f in futures if (error := f.exception()) is not None]
    writers = [f.result() for f in futures if f.exception() is None]
    if failed:
        for writer in writers:
            writer.close()
        raise failed[0]
    return writers


class _Invocation:
    """One invocation of a run: the reader, in the calling thread, feeds the writer pool."""

    def __init__(
        self,
        client: redisio.RedisClient,
        opts: MigrateOptions,
        control: psycopg.Connection,
        run: RunStart,
        *,
        state_present: bool,
        target_exists: bool,
        on_progress: Callable[[Progress], None] | None,
        rules: Rules | None = None,
    ) -> None:
        self.opts = opts
        self.control = control
        self.run = run
        self.on_progress = on_progress
        writers = 1 if opts.dry_run else max(1, opts.writers)
        self.pool = WriterPool(opts, run.run_id, target_exists=target_exists, count=writers)
        self.reader = open_reader(client, opts, control, rules, state_present=state_present)
        self.aggregates = 0
        self.events_read = 0
        self.redis_problems = 0
        self.stopped_early: str | None = None

    def execute(self) -> None:
        """Read and write every batch (or until --max-problems), then record the run's
        status: interrupted, failed, stopped or finished."""
        try:
            try:
                # The run holds its lock: its progress may be drawn now. Inside the try: a
                # worker's report crosses to the parent, and a Ctrl-C there must still record
                # the run as interrupted (left 'running', it read as killed).
                self.report()
                with pg.translate_errors(self.opts.pg_dsn):
                    self._feed()
            finally:
                self.pool.close()
            self.pool.raise_failure()
        except KeyboardInterrupt as exc:
            self.pool.stop.set()
            self._set_status("interrupted")
            if self.opts.dry_run or isinstance(exc, Interrupted):
                raise
            raise self._interrupted() from exc
        except Exception:
            self._set_status("failed")
            raise
        self._set_status("finished" if self.stopped_early is None else "stopped")
        self.report()

    def _interrupted(self) -> Interrupted:
        """What Ctrl-C or SIGTERM left: the batches the writers had taken were finished, so
        what they committed is all there is (the reader's batch in hand was dropped)."""
        done = self.pool.done()
        return interrupted(
            {
                "events_migrated": done.events_migrated,
                "events_already_present": done.events_already_present,
                "aggregates_quarantined": done.aggregates_quarantined,
            }
        )

    def _feed(self) -> None:
        max_problems = self.opts.max_problems
        for batch in self.reader.batches(self.run.position, self.run.first_seq):
            if self.pool.stop.is_set():
                return
            self.aggregates += batch.aggregates
            self.events_read += batch.events
            self.redis_problems += len(batch.quarantined)
            self.pool.put(batch)
            self.report()
            if max_problems is not None and self.redis_problems > max_problems:
                self.stopped_early = (
                    f"more than {max_problems} aggregates with problems (--max-problems)"
                )
                return

    def _set_status(self, status: str) -> None:
        if not self.opts.dry_run:
            set_status(self.control, self.run.run_id, status)

    def report(self) -> None:
        if self.on_progress is None:
            return
        progress = self.pool.done()
        progress.aggregates = self.aggregates
        progress.events_read = self.events_read
        progress.commits_seen = self.reader.commits_seen
        self.on_progress(progress)

    def summary(self, started: float) -> MigrationSummary:
        """What this invocation did; for a resumed run, the counts and problems of the whole
        run (interrupted invocations included) and this invocation's apart."""
        elapsed = time.monotonic() - started
        done = self.pool.totals
        unchanged = self.reader.unchanged
        tally = self.pool.tally
        if not self.opts.dry_run:
            tally.where = quarantine_query([self.run.run_id])
        mine = RunTotals(
            done.events_migrated,
            done.events_already_present,
            done.aggregates_quarantined,
            done.events_quarantined,
            tally,
        )
        totals = mine
        if not self.opts.dry_run:
            # What esctl.quarantine holds, counted there: the same figures as the query in
            # problems_where lists (a resumed run's earlier invocations included).
            with pg.translate_errors(self.opts.pg_dsn):
                totals = run_totals(self.control, self.opts.app, self.run.run_id)
        return MigrationSummary(
            run_id=self.run.run_id,
            dry_run=self.opts.dry_run,
            resumed=self.run.resumed,
            aggregates=self.aggregates + unchanged,
            aggregates_unchanged=unchanged,
            events_migrated=totals.events_migrated,
            events_already_present=totals.events_already_present,
            aggregates_quarantined=totals.aggregates_quarantined,
            events_quarantined=totals.events_quarantined,
            problems=totals.problems.listed,
            problem_counts=totals.problems.counts,
            problems_total=totals.problems.total,
            problems_where=totals.problems.where,
            elapsed_s=elapsed,
            events_per_s=(mine.events_migrated / elapsed) if elapsed > 0 else 0.0,
            stopped_early=self.stopped_early,
            toast_compression=self.pool.toast_compression,
            this_invocation=Invocation(
                self.aggregates + unchanged,
                unchanged,
                mine.events_migrated,
                mine.events_already_present,
                mine.aggregates_quarantined,
                mine.events_quarantined,
            )
            if self.run.resumed
            else None,
        )


def interrupted(
    done: dict[str, int], recorded: str = "the run is recorded as interrupted"
) -> Interrupted:
    """The error of a run (or of ``--workers``' runs together) stopped by Ctrl-C or SIGTERM,
    saying what ``done`` counts: ``events_migrated``, ``events_already_present`` and
    ``aggregates_quarantined`` by this invocation, which stay committed, and then what
    ``recorded`` says of the run (or runs)."""
    migrated, quarantined = done["events_migrated"], done["aggregates_quarantined"]
    state = f"{units.counted(migrated, 'event')} migrated by this invocation"
    if done["events_already_present"]:
        state += f" ({done['events_already_present']:,} already there)"
    if quarantined:
        state += f" and {units.counted(quarantined, 'aggregate')} quarantined"
    verb = "stays" if migrated == 1 and not quarantined else "stay"
    return Interrupted(
        f"{state} {verb} committed; {recorded}",
        hint="rerun the same command to continue after them (`esctl migrate status` shows "
        "where the run stands)",
        done=done,
    )

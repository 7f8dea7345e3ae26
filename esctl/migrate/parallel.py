""":func:`migrate_parallel`: one migration in several local processes, one sub-shard each, with
one combined summary. Why the workers are forked: docs/design/migrate.md, "Several processes"."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, fields, replace
from typing import Any

from esctl import childstops, inflight, interrupts, redisio
from esctl.errors import EsctlError, Interrupted, UsageError
from esctl.locks import MAX_FAMILY_SHARD_COUNT
from esctl.migrate.options import Invocation, MigrateOptions, MigrationSummary, Progress
from esctl.migrate.run import interrupted, migrate_redis_to_pg
from esctl.migrate.runs import quarantine_query
from esctl.problems import DEFAULT_LISTED


@dataclass(frozen=True)
class _Stopped:
    """A worker's part stopped by Ctrl-C or SIGTERM: what it committed (its
    ``Interrupted.done``). Sent back as a result: an Interrupted does not cross the process
    boundary (it cannot be unpickled, which broke the pool and killed the other workers
    before they recorded their runs). ``cut_short``: it took a second stop, which did not wait
    for the batches its writers had under way (they may have committed after its count)."""

    done: dict[str, int]
    cut_short: bool = False


def _migrate_in_process(
    redis: redisio.RedisTarget, opts: MigrateOptions, index: int, progress: Any
) -> MigrationSummary | _Stopped:
    client = redis.connect()
    try:
        report = None if progress is None else lambda p: progress.put((index, p))
        return migrate_redis_to_pg(client, opts, on_progress=report)
    except Interrupted as stopped:
        return _Stopped(stopped.done or {}, cut_short=childstops.taken() > 1)
    finally:
        client.close()


def migrate_parallel(
    redis: redisio.RedisTarget,
    opts: MigrateOptions,
    *,
    workers: int,
    on_progress: Callable[[Progress], None] | None = None,
) -> MigrationSummary:
    """:func:`migrate_redis_to_pg` in ``workers`` local processes, one sub-shard of
    ``opts.shard`` each (``Shard.split``): each has its own lock, checkpoint and resume, so a
    rerun with the same ``workers`` continues every part. Together they own exactly the
    aggregates of ``opts.shard``. Counts add up, problems are concatenated; ``on_progress``
    gets the sum of every worker's latest figures. The first worker error is raised after the
    others have finished (their committed batches stay)."""
    if workers <= 1:
        client = redis.connect()
        try:
            return migrate_redis_to_pg(client, opts, on_progress=on_progress)
        finally:
            client.close()
    started = time.monotonic()
    _check_shard_count(opts, workers)
    parts = [replace(opts, shard=shard) for shard in opts.shard.split(workers)]
    try:
        return _in_workers(redis, opts, parts, on_progress, started)
    except KeyboardInterrupt as exc:
        said = interrupts.account(exc)
        if said is None or said is exc:
            raise
        raise said from None  # (another stop while the workers were shut down)


def _in_workers(
    redis: redisio.RedisTarget,
    opts: MigrateOptions,
    parts: list[MigrateOptions],
    on_progress: Callable[[Progress], None] | None,
    started: float,
) -> MigrationSummary:
    # Forked (docs/design/migrate.md): each worker opens its own connections.
    with contextlib.ExitStack() as stack:
        progress = None
        if on_progress is not None:
            progress = stack.enter_context(inflight.worker_manager()).Queue()
        pool = stack.enter_context(inflight.worker_processes(len(parts)))
        futures = [
            pool.submit(_migrate_in_process, redis, part, index, progress)
            for index, part in enumerate(parts)
        ]
        try:
            if progress is not None and on_progress is not None:
                _relay_progress(progress, futures, on_progress)
            inflight.wait_for_parts(futures)
        except KeyboardInterrupt:
            # The stop was passed on to every worker (as is each one after it, which only
            # makes them stop sooner): each finishes or rolls back its batches in hand,
            # records its run as interrupted and says what it committed.
            inflight.wait_through_stops(futures)
            raise _interrupted_together(parts, futures) from None
    if any(_stopped(f) for f in futures):
        raise _interrupted_together(parts, futures)
    failed = [(part, f.exception()) for part, f in zip(parts, futures, strict=True)]
    for part, error in failed:
        if error is not None:
            raise _with_the_others(error, part, parts, futures)
    results = [f.result() for f in futures]
    summaries = [r for r in results if isinstance(r, MigrationSummary)]
    return _combined(opts, parts, summaries, time.monotonic() - started)


def _stopped(future: Future[MigrationSummary | _Stopped]) -> bool:
    """Whether a worker's part was stopped: by Ctrl-C or SIGTERM mid-way (what it committed is
    its result), or before it began (a KeyboardInterrupt: it did nothing)."""
    error = future.exception()
    if error is not None:
        return isinstance(error, KeyboardInterrupt)
    return isinstance(future.result(), _Stopped)


def _interrupted_together(
    parts: list[MigrateOptions], futures: list[Future[MigrationSummary | _Stopped]]
) -> Interrupted:
    """One Interrupted for the workers stopped by Ctrl-C or SIGTERM, counting what each
    committed in this invocation (a worker that finished first: all it did), and saying which
    shards' runs it stopped and which had finished or failed before."""
    done = {"events_migrated": 0, "events_already_present": 0, "aggregates_quarantined": 0}
    shards: dict[str, list[str]] = {"stopped": [], "finished": [], "unbegun": [], "failed": []}
    cut_short = False
    for part, future in zip(parts, futures, strict=True):
        error = future.exception()
        if isinstance(error, KeyboardInterrupt):
            shards["unbegun"].append(str(part.shard))
            continue
        if error is not None:
            shards["failed"].append(f"shard {part.shard} failed ({_in_short(error)})")
            continue
        result = future.result()
        if isinstance(result, _Stopped):
            shards["stopped"].append(str(part.shard))
            counts = result.done
            cut_short = cut_short or result.cut_short
        else:
            shards["finished"].append(str(part.shard))
            invocation = result.invocation()
            counts = {
                "events_migrated": invocation.events_migrated,
                "events_already_present": invocation.events_already_present,
                "aggregates_quarantined": invocation.aggregates_quarantined,
            }
        for key in done:
            done[key] += counts.get(key, 0)
    more = (
        "; a second stop did not wait for the batches under way, which may have committed too"
        if cut_short
        else ""
    )
    if len(shards["stopped"]) == len(parts):
        return interrupted(done, "the run is recorded as interrupted" + more)
    said = [
        f"shard {', '.join(shards[kind])} {words}"
        for kind, words in (
            ("stopped", "recorded as interrupted"),
            ("unbegun", "stopped before it began"),
            ("finished", "had finished"),
        )
        if shards[kind]
    ]
    return interrupted(done, "; ".join(said + shards["failed"]) + more)


def _in_short(error: BaseException) -> str:
    return error.message if isinstance(error, EsctlError) else type(error).__name__


def _check_shard_count(opts: MigrateOptions, workers: int) -> None:
    """UsageError, before any worker starts, when the sub-shards of ``workers`` are more than
    the lock that keeps overlapping runs apart tells apart (each worker's would say it in terms
    of a sub-shard the user never named)."""
    count = opts.shard.count * workers
    if count > MAX_FAMILY_SHARD_COUNT and not opts.dry_run:
        raise UsageError(
            f"--shard {opts.shard} with --workers {workers} makes {count:,} shards (each worker "
            f"runs one of {opts.shard.count:,} x {workers}); at most "
            f"{MAX_FAMILY_SHARD_COUNT:,} can be told apart by the lock that keeps overlapping "
            "runs apart",
            hint="use fewer shards or fewer --workers (nothing was done)",
        )


def _with_the_others(
    error: BaseException,
    part: MigrateOptions,
    parts: list[MigrateOptions],
    futures: list[Future[MigrationSummary | _Stopped]],
) -> BaseException:
    """The first worker's error, saying what the other workers did: their batches are
    committed, and its "nothing was done" (a lock held, say) is only that worker's shard."""
    if not isinstance(error, EsctlError):
        return error
    done = []
    for other, future in zip(parts, futures, strict=True):
        if other is part:
            continue
        failure = future.exception()
        result = future.result() if failure is None else None
        if isinstance(result, MigrationSummary):
            done.append(f"shard {other.shard} migrated {result.events_migrated:,} events")
        else:
            done.append(f"shard {other.shard} stopped too")
    message = error.message
    if message.endswith("; nothing was done"):
        message = (
            message.removesuffix("; nothing was done") + f"; nothing was done in shard {part.shard}"
        )
    return error.reword(message).add(
        f"the other workers: {', '.join(done)} (committed; a rerun of the same command "
        "continues every shard)"
    )


def _relay_progress(
    progress: Any,
    futures: list[Future[MigrationSummary | _Stopped]],
    on_progress: Callable[[Progress], None],
) -> None:
    """Hand ``on_progress`` the sum of every worker's latest figures until all are done."""
    latest: dict[int, Progress] = {}
    while True:
        running = not all(f.done() for f in futures)
        try:
            index, figures = progress.get(timeout=0.2 if running else 0)
        except queue.Empty:
            if running:
                continue
            return
        latest[index] = figures
        total = Progress()
        for f in fields(Progress):
            setattr(total, f.name, sum(getattr(p, f.name) for p in latest.values()))
        on_progress(total)


def _added(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for kind, n in c.items():
            total[kind] = total.get(kind, 0) + n
    return total


def _combined(
    opts: MigrateOptions,
    parts: list[MigrateOptions],
    results: list[MigrationSummary],
    elapsed: float,
) -> MigrationSummary:
    """One summary of the workers' summaries."""
    resumed = any(r.resumed for r in results)
    invocation = sum((r.invocation() for r in results), start=Invocation(0, 0, 0, 0, 0, 0))
    # A worker that found the app unknown recorded no run (run_id None).
    run_ids = [r for s in results if s.run_id is not None for r in s.run_id.split(",")]
    return MigrationSummary(
        run_id=",".join(run_ids) or None,
        dry_run=opts.dry_run,
        resumed=resumed,
        aggregates=sum(r.aggregates for r in results),
        aggregates_unchanged=sum(r.aggregates_unchanged for r in results),
        events_migrated=sum(r.events_migrated for r in results),
        events_already_present=sum(r.events_already_present for r in results),
        aggregates_quarantined=sum(r.aggregates_quarantined for r in results),
        events_quarantined=sum(r.events_quarantined for r in results),
        problems=[p for r in results for p in r.problems][:DEFAULT_LISTED],
        problem_counts=_added([r.problem_counts for r in results]),
        problems_total=sum(r.problems_total for r in results),
        problems_where=None if opts.dry_run or not run_ids else quarantine_query(run_ids),
        elapsed_s=elapsed,
        events_per_s=invocation.events_migrated / elapsed if elapsed > 0 else 0.0,
        stopped_early="; ".join(
            f"shard {part.shard}: {r.stopped_early}"
            for part, r in zip(parts, results, strict=True)
            if r.stopped_early
        )
        or None,
        toast_compression=results[0].toast_compression,
        this_invocation=invocation if resumed else None,
        transforms=_transforms_added([r.transforms for r in results]),
    )


def _transforms_added(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The workers' transform figures added up (the fingerprint and file are the same)."""
    if not parts or parts[0] is None:
        return None
    total = dict(parts[0])
    for part in parts[1:]:
        assert part is not None
        for key, value in part.items():
            if isinstance(value, int):
                total[key] += value
    return total

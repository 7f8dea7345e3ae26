"""``--to queue``: republish the selected events to the subscribers' reliable queues: who gets
which type (routes), what a run would publish (the plan, asked about before a large run), and
the lock on every queue it publishes to (docs/design/replay.md, "The queue target")."""

from __future__ import annotations

import shlex
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.exceptions

from esctl import interrupts, layout, queues, redisio, units
from esctl.config import redact
from esctl.errors import Interrupted, LockLost, Refused, ServerError, UsageError
from esctl.locks import RedisLock, after_broken_wait, not_given_back
from esctl.projections import Event
from esctl.replay.options import ReplayOptions
from esctl.replay.pacing import Pacer
from esctl.replay.publisher import PUBLISH_BATCH, Publisher, PublishFailed
from esctl.replay.sources import Source, open_source
from esctl.replay.summary import ReplayProgress, ReplaySummary


@dataclass(frozen=True)
class PublishPlan:
    """What a ``--to queue`` replay is about to publish (the confirmation question)."""

    env: str
    events: int
    """Events that will be published (to at least one subscriber)."""
    messages: int
    """LPUSHes: events times their subscribers."""
    published: dict[str, dict[str, int]]
    """subscriber -> event type -> messages."""
    unpublished: dict[str, int]
    """event type -> selected events no chosen subscriber takes (not published)."""


Confirm = Callable[[PublishPlan], bool]


def replay_lock(client: redisio.RedisClient, refs: Sequence[queues.QueueRef]) -> RedisLock:
    """The lock a replay holds on the subscribers' queues it publishes to
    (:func:`esctl.layout.replay_lock_key`, in each queue's slot; LockHeld when one is held)."""
    return RedisLock(
        client,
        (layout.replay_lock_key(r.subscriber, r.env, r.event_type) for r in refs),
        name="replay lock",
        stopped="stopped (every event published so far was published whole, with its notification)",
        hint="make sure no other esctl replay publishes to this queue, then rerun",
    )


def discover_types(client: redisio.RedisClient, env: str) -> list[str]:
    """Event types of ``env`` that have a ``Subscribers:{ENV:TYPE}`` set (SCAN)."""
    prefix, suffix = f"Subscribers:{{{env}:", "}"
    found: set[str] = set()
    for _, keys in redisio.scan_pages(client, layout.subscribers_pattern(env)):
        for key in keys:
            if key.startswith(prefix) and key.endswith(suffix):
                found.add(key[len(prefix) : -len(suffix)])
    return sorted(found)


def resolve_routes(
    client: redisio.RedisClient,
    env: str,
    event_types: Sequence[str],
    subscribers: Sequence[str] = (),
    *,
    force: bool = False,
) -> dict[str, tuple[str, ...]]:
    """Event type -> the subscribers its events go to: the members of
    ``Subscribers:{ENV:TYPE}``, limited to ``subscribers`` when given. A named subscriber that
    is a member for none of ``event_types`` is a UsageError (a typo, usually), unless ``force``:
    then the named subscribers get every type, members or not."""
    types = sorted(set(event_types))
    members = _members(client, env, types)
    if not subscribers:
        return {t: tuple(sorted(m)) for t, m in members.items() if m}
    named = sorted(set(subscribers))
    if force:
        return {t: tuple(named) for t in types}
    if not types:  # the selection holds no event: nothing to route, no name to doubt
        return {}
    strangers = [s for s in named if not any(s in m for m in members.values())]
    if strangers:
        shown = ", ".join(types[:5]) + (f" … ({len(types)} types)" if len(types) > 5 else "")
        raise UsageError(
            f"{', '.join(strangers)} is not a member of Subscribers:{{{env}:TYPE}} for any "
            f"selected event type ({shown})",
            hint=f"check the name (`esctl queue list --env {shlex.quote(env)}` shows the "
            "subscribers), or pass --force to publish to it anyway",
        )
    routes = {t: tuple(s for s in named if s in m) for t, m in members.items()}
    return {t: subs for t, subs in routes.items() if subs}


def _members(client: redisio.RedisClient, env: str, types: list[str]) -> dict[str, set[str]]:
    """Event type -> the members of its ``Subscribers:{ENV:TYPE}`` set."""
    replies = redisio.pipelined(
        client, [("SMEMBERS", layout.subscribers_key(env, t)) for t in types]
    )
    members: dict[str, set[str]] = {}
    for event_type, reply in zip(types, replies, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(
                f"SMEMBERS {layout.subscribers_key(env, event_type)} failed: {reply}",
                hint="the key is expected to be a set of subscriber names (docs/layout.md §4)",
            )
        members[event_type] = {redisio.key_str(m) for m in reply}
    return members


def plan_publish(env: str, counts: Counter[str], routes: dict[str, tuple[str, ...]]) -> PublishPlan:
    published: dict[str, dict[str, int]] = {}
    unpublished: dict[str, int] = {}
    events = messages = 0
    for event_type, n in sorted(counts.items()):
        subs = routes.get(event_type, ())
        if not subs:
            unpublished[event_type] = n
            continue
        events += n
        for sub in subs:
            published.setdefault(sub, {})[event_type] = n
            messages += n
    return PublishPlan(env, events, messages, published, unpublished)


def _check_lists(client: redisio.RedisClient, keys: Sequence[str]) -> None:
    """Every target must be a list or absent: MULTI/EXEC does not roll back, so a WRONGTYPE
    half-way through a transaction would leave an event published to some subscribers only."""
    kinds = redisio.pipelined(client, [("TYPE", k) for k in keys])
    for key, kind in zip(keys, kinds, strict=True):
        if isinstance(kind, Exception):
            raise ServerError(f"TYPE {key} failed: {kind}")
        name = redisio.key_str(kind)
        if name not in ("list", "none"):
            raise ServerError(
                f"{key} is a {name}, not a list: cannot publish to it; nothing was published",
                hint="the key is expected to be a subscriber's PublishedEvents list (docs/layout.md §4)",
            )


def replay_to_queue(
    options: ReplayOptions,
    client: redisio.RedisClient,
    *,
    confirm: Confirm | None = None,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplaySummary:
    """Publish the selected events to the subscribers' queues, in replay order (the first is
    taken first), one transaction and one notification per event (:class:`Publisher`).

    Subscribers are the members of ``Subscribers:{ENV:TYPE}`` when the run starts (limited to
    ``options.subscribers``); events of a type none of them takes are counted in
    ``unpublished``. A planning pass counts the selection per subscriber and type first when
    it is needed: for a dry run, for ``confirm`` (asked when more than ``confirm_over`` events
    would be published) and for ``--force`` without ``--type``; the publishing pass reads the
    selection again (events saved in between are included). Holds a :func:`replay_lock` on
    every subscriber-and-type it may publish to (LockHeld when another replay has one)."""
    started = time.monotonic()
    summary = ReplaySummary.start(options)
    try:
        return _replay_to_queue(options, client, summary, started, confirm, on_progress, sleep)
    except KeyboardInterrupt as exc:
        said = interrupts.account(exc)
        if said is exc or (said is None and options.dry_run):
            raise
        if said is not None:
            raise said from None  # (a second signal while the lock was given back)
        raise _nothing_published() from exc  # before the publishing pass


def _nothing_published() -> Interrupted:
    """What Ctrl-C or SIGTERM left when it came before the publishing pass."""
    return Interrupted(
        "nothing was published",
        hint="rerun the same command",
        done={"events_published": 0, "messages": 0},
    )


def _replay_to_queue(
    options: ReplayOptions,
    client: redisio.RedisClient,
    summary: ReplaySummary,
    started: float,
    confirm: Confirm | None,
    on_progress: Callable[[ReplayProgress], None] | None,
    sleep: Callable[[float], None],
) -> ReplaySummary:
    env = options.env
    assert env is not None
    filters = options.selection.filters(options.now or datetime.now(UTC))
    source = open_source(options, filters, client, limit=options.selection.limit)
    needs_plan = options.dry_run or confirm is not None or (options.force and not filters.types)
    counts: Counter[str] | None = source.count_by_type() if needs_plan else None
    if counts is not None:
        event_types: Sequence[str] = sorted(counts)
    elif filters.types:
        event_types = filters.types
    else:
        event_types = discover_types(client, env)
    routes = resolve_routes(client, env, event_types, options.subscribers, force=options.force)
    progress = ReplayProgress()
    if counts is not None:
        plan = plan_publish(env, counts, routes)
        progress.total = sum(counts.values())
        if options.dry_run:
            summary.counted(counts)
            summary.published = plan.published
            summary.messages = plan.messages
            summary.notifications = plan.events
            summary.unpublished = plan.unpublished
            return summary.finish(started, source)
        if confirm is not None and plan.events > options.confirm_over and not confirm(plan):
            raise Refused("replay not confirmed; nothing was published")
    refs = [queues.QueueRef(s, env, t) for t, subs in sorted(routes.items()) for s in subs]
    _check_lists(client, [r.key("published") for r in refs])
    lock = replay_lock(client, refs)
    try:
        with lock:
            _publish(options, client, source, routes, summary, progress, lock, on_progress, sleep)
    except KeyboardInterrupt as exc:
        # What the run did (a signal, then maybe another one while the lock was given back),
        # and whether the lock is left: Redis did not answer its release (a second signal
        # stopped a wait on Redis: it was not waited for), or a signal stopped the release.
        said = interrupts.account(exc)
        before = said is None  # the publishing pass had not started
        if said is None:
            said = _nothing_published()
        said.hint += not_given_back(lock)
        if said is exc:
            raise
        raise said from exc if before else None
    return summary.finish(started, source)


def _publish(
    options: ReplayOptions,
    client: redisio.RedisClient,
    source: Source,
    routes: dict[str, tuple[str, ...]],
    summary: ReplaySummary,
    progress: ReplayProgress,
    lock: RedisLock,
    on_progress: Callable[[ReplayProgress], None] | None,
    sleep: Callable[[float], None],
) -> None:
    """The publishing pass (under the replay lock): a failed transaction or the lost lock
    stops it, and ``summary.stopped`` says where; Ctrl-C or SIGTERM, :func:`_interrupted`."""
    assert options.env is not None
    by_type: Counter[str] = Counter()
    pacer = Pacer(options.rate, sleep)
    publisher = Publisher(
        client,
        options.env,
        routes,
        summary,
        max_queue_length=options.max_queue_length,
        batch=pacer.batch(PUBLISH_BATCH),
        pacer=pacer,
        lock=lock,
        sleep=sleep,
        # paced: small batches on purpose; else they may grow with the distance to Redis
        round_trip_s=0.0 if options.rate else redisio.round_trip(client),
    )
    if on_progress is not None:  # holding the lock: the progress bar may be drawn now
        on_progress(progress)
    try:
        with publisher:
            for event in source:  # a second pass when the plan read it once
                by_type[event.event_type] += 1
                summary.events += 1
                publisher.add(event)
                if on_progress is not None and summary.events % PUBLISH_BATCH == 0:
                    progress.events, progress.messages = summary.events, summary.messages
                    on_progress(progress)
            publisher.flush()
    except PublishFailed as exc:
        _stopped(summary, exc)
    except KeyboardInterrupt as exc:
        if publisher.broke:  # Redis may not answer: the lock's release is waited for a moment only
            after_broken_wait(client, lock)
        raise _interrupted(summary, publisher) from exc
    except LockLost as exc:
        _lock_lost(summary, exc, publisher.unsent)
    except redis.exceptions.RedisError as exc:
        raise redisio.wrap_errors(client, exc) from exc
    summary.by_type = dict(by_type)


def _interrupted(summary: ReplaySummary, publisher: Publisher) -> Interrupted:
    """What Ctrl-C or SIGTERM left. Each batch's send and the reading and counting of its
    answers are steps a first signal waits for, and the answers in flight are read on the way
    out (:class:`Publisher`), so the events counted are what the lists hold: the first of the
    selection's routed events, in order, each whole with its notification. A second signal
    stops the wait for Redis: the events sent and not answered are then in doubt."""
    published, messages = summary.notifications, summary.messages
    doubt = publisher.in_doubt
    done = {"events_published": published, "messages": messages}
    if doubt:
        done["events_in_doubt"] = doubt
    rest = (
        "replay the rest (e.g. with --since or --aggregate, from the event after the last "
        "published): the same command publishes every event of the selection again, "
        "from its start"
    )
    unknown = (
        f"whether the {units.counted(doubt, 'event')} sent "
        f"{'after them ' if published else ''}{'was' if doubt == 1 else 'were'} published is "
        "not known (a second signal stopped the wait for Redis's answer)"
    )
    peek = "see what the lists hold (`esctl queue peek SUB TYPE`), then "
    if not published:
        if not doubt:
            return Interrupted("nothing was published", hint="rerun the same command", done=done)
        return Interrupted(
            f"nothing was published for certain: {unknown}", hint=peek + rest, done=done
        )
    lists = sum(len(per_type) for per_type in summary.published.values())
    state = (
        f"{units.counted(published, 'event')} published to "
        f"{units.counted(lists, 'subscriber queue')} before it stopped "
        f"({units.counted(messages, 'message')}, each event whole with its notification"
    )
    last = publisher.last
    if last is not None:
        state += f"; the last: {last.event_type} {last.aggregate_id} version {last.version}"
    state += ")"
    if not doubt:
        return Interrupted(
            f"{state}; every batch sent was answered and is counted, nothing more was sent",
            hint=rest,
            done=done,
        )
    return Interrupted(f"{state}; {unknown}", hint=peek + rest, done=done)


def _lock_lost(summary: ReplaySummary, exc: LockLost, unsent: Event | None) -> None:
    """The run stopped because its lock was lost: nothing more was sent, what was in flight
    was read and is counted; ``unsent``, the first event not published."""
    summary.events = summary.notifications + sum(summary.unpublished.values())
    summary.stopped = {
        "kind": "lock_lost",
        "key": exc.key,
        "error": redact(exc.why),
        "aggregate_id": None if unsent is None else unsent.aggregate_id,
        "version": None if unsent is None else unsent.version,
        "event_type": None if unsent is None else unsent.event_type,
    }


def _stopped(summary: ReplaySummary, exc: PublishFailed) -> None:
    event = exc.event
    # replayed: the events published and those no subscriber takes; not the rest
    summary.events = summary.notifications + sum(summary.unpublished.values())
    summary.stopped = {
        "kind": "publish_failed",
        "aggregate_id": event.aggregate_id,
        "version": event.version,
        "event_type": event.event_type,
        "error": redact(exc.detail),
        "failed": len(exc.failures),
        "published_after": exc.published_after,
    }
    for failed, key, detail in exc.failures:
        summary.add_problem(
            "publish_failed",
            key,
            f"publishing {failed.event_type} {failed.aggregate_id} version {failed.version} "
            f"failed: {redact(detail)}; it was not published",
        )

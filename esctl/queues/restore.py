"""Operations on the library's reliable queues (``docs/layout.md`` §4): list, peek, requeue,
drain to a backup file, restore from it.

Every queue of one subscriber and event type lives in one Redis Cluster hash slot
(``{ENV:TYPE}``), and so do its RetryData hashes. Every mutation here is a server-side script
over keys of that one slot, so each move is atomic: a message is removed from one list and, only
if it was there, pushed onto the other. A consumer that takes or finishes a message while esctl
works therefore never sees it duplicated by esctl, and never loses it.

Selections are snapshots taken when a command starts (``LRANGE``): a command only ever moves
messages that were in the list at that moment, so it always ends, even while handlers keep
failing and dead-lettering. Equal values in one list are counted: two equal messages selected
means at most two removed, one by one.

Mutating operations hold a Redis lock per queue (:func:`queue_lock`) and ask ``confirm`` before
changing anything. This module never prints, never exits, and never opens PostgreSQL.
"""

from __future__ import annotations

import base64
import contextlib
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
import redis
import redis.exceptions
import zstandard

from esctl import __version__, codec, layout, metrics, redisio
from esctl.backupfile import BackupWriter
from esctl.config import redact
from esctl.errors import EsctlError, NotFound, Refused, ServerError, UsageError
from esctl.locks import REDIS_LOCK_TTL_MS, RedisLock

QUEUE_LISTS = layout.QUEUE_LISTS
"""``published``, ``processing``, ``dead``."""

MOVE_BATCH = 1000
"""Messages per server-side script call: large enough that round trips do not dominate,
small enough that one call never blocks Redis for long (about a millisecond)."""
MOVE_BATCH_BYTES = 4 << 20
"""A batch is also cut when its values reach this many bytes."""

RESTORE_PROGRESS_TTL_MS = 30 * 24 * 3600 * 1000
"""How long Redis remembers how much of a backup file was restored (so a rerun does not
restore it twice)."""
OLDEST_SAMPLE = 1000
"""``queue list`` reads at most this many messages at the tail of a ProcessingEvents list (the
ones taken longest ago) to find the oldest TimeStamp."""

BACKUP_FORMAT = "esctl-queue-backup"
BACKUP_FORMAT_VERSION = 1


# --- queues -------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class QueueRef:
    """One subscriber's reliable queue for one event type in one environment."""

    subscriber: str
    env: str
    event_type: str

    def key(self, which: str) -> str:
        return layout.queue_key(self.subscriber, self.env, self.event_type, which)

    def retry_data_key(self, aggregate_id: str) -> str:
        return layout.retry_data_key(self.env, self.event_type, aggregate_id)

    @property
    def channel(self) -> str:
        return layout.notification_channel(self.env, self.event_type)

    @property
    def lock_key(self) -> str:
        """The queue commands' lock of this queue (:func:`queue_lock`)."""
        return layout.queue_lock_key(self.subscriber, self.env, self.event_type)

    def restore_progress_key(self, which: str, backup_id: str) -> str:
        return layout.restore_progress_key(
            self.subscriber, self.env, self.event_type, which, backup_id
        )


def check_list_name(which: str) -> str:
    if which not in QUEUE_LISTS:
        raise UsageError(
            f"unknown queue list {which!r}", hint=f"use one of {', '.join(QUEUE_LISTS)}"
        )
    return which


# --- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryInfo:
    """A dead letter's ``RetryData:{ENV:TYPE}:AGG`` hash (fields as stored; None when absent)."""

    retry_count: int | None
    last_retry_time: str | None
    last_exception: str | None

    @classmethod
    def from_hash(cls, fields: dict[bytes, bytes]) -> RetryInfo | None:
        if not fields:
            return None
        text = {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()
        }
        count_text = text.get("RetryCount")
        try:
            count = int(count_text) if count_text is not None else None
        except ValueError:
            count = None
        return cls(count, text.get("LastRetryTime"), text.get("LastException"))


@dataclass(slots=True)
class MessageInfo:
    """What esctl shows of one queued message. ``position`` counts in consumption order: 0 is
    the message RPOPLPUSH takes next (the tail of the list)."""

    position: int
    size: int
    aggregate_id: str | None
    event_type: str | None
    version: int | None
    timestamp: str | None
    age_s: float | None
    problems: list[dict[str, str]] = field(default_factory=list)
    retry: RetryInfo | None = None
    text: str | None = None
    """The message text (``peek`` only)."""


def describe_message(
    value: bytes, position: int, now: datetime, *, with_text: bool = False
) -> MessageInfo:
    decoded, event = codec.decode_event(value)
    age = (now - event.timestamp).total_seconds() if event.timestamp is not None else None
    return MessageInfo(
        position=position,
        size=len(value),
        aggregate_id=event.aggregate_id,
        event_type=event.event_type,
        version=event.version,
        timestamp=event.timestamp_text,
        age_s=age,
        problems=[{"kind": p.kind, "detail": p.detail} for p in event.problems],
        text=decoded.text if with_text else None,
    )


def _id_and_age(value: bytes, now: datetime) -> tuple[str | None, float | None]:
    """The payload's ``Id`` and the age of its ``TimeStamp`` (None when unreadable): the
    selection's hot path. Queued messages are plain JSON, read here in one orjson call; anything
    else (compressed, not UTF-8, odd timestamps) goes through the codec, which decides."""
    if not value.startswith((codec.GZIP_BASE64_PREFIX, codec.ZSTD_MAGIC)):
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            data = None
        if type(data) is dict:
            aggregate_id = data.get("Id")
            stamp = data.get("TimeStamp")
            if type(aggregate_id) is str and type(stamp) is str and codec.TIMESTAMP_RE.match(stamp):
                return aggregate_id, (now - datetime.fromisoformat(stamp)).total_seconds()
    _, event = codec.decode_event(value)
    age = (now - event.timestamp).total_seconds() if event.timestamp is not None else None
    return event.aggregate_id, age


def _problem(kind: str, key: str, detail: str) -> dict[str, str]:
    return {"kind": kind, "key": key, "detail": detail}


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


# --- server-side scripts -------------------------------------------------------------------

# Each script touches only keys of one {ENV:TYPE} slot. Values travel as ARGV; pushes are sent
# in chunks so Lua's unpack() never meets its stack limit.

_LUA_PUSH = """
local function push(cmd, key, seq)
  -- pushes seq[#seq] first and seq[1] last: RPUSH leaves seq[1] at the tail, LPUSH at the head
  local i = #seq
  while i >= 1 do
    local j = math.max(1, i - 999)
    local chunk = {}
    for x = i, j, -1 do chunk[#chunk + 1] = seq[x] end
    redis.call(cmd, key, unpack(chunk))
    i = j - 1
  end
end
"""

_LUA_GUARD = """
-- Scripts are not rolled back when a command fails half-way, so everything that could fail is
-- checked before the first change: the lock is still this run's (a fencing token), the lists
-- are lists, and Redis accepts writes (SET is refused when it is out of memory; a removal is
-- not, and a push after it would be).
local function guard(lock, token, ttl, lists)
  if redis.call('GET', lock) ~= token then
    return redis.error_reply('ESCTL_LOCK the lock ' .. lock .. ' is no longer held by this run')
  end
  for _, key in ipairs(lists) do
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'list' and kind ~= 'none' then
      return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. kind .. ', not a list')
    end
  end
  redis.call('SET', lock, token, 'PX', ttl)
  return false
end
"""

_LUA_TAKE = """
-- Removes ARGV[first .. first+n-1] (head-to-tail order) from `key`, one occurrence each, looking
-- from the head (dir 1) or the tail (dir -1); returns 1/0 per value (removed/not there). With
-- `edge`, the caller saw these values as the list's first (or last) n: when they still are,
-- one LTRIM takes them all, the same as n LREMs would.
local function take(key, dir, edge, first, n)
  local removed = {}
  if edge then
    local got
    if dir > 0 then got = redis.call('LRANGE', key, 0, n - 1)
    else got = redis.call('LRANGE', key, -n, -1) end
    local same = #got == n
    for i = 1, n do
      if not same then break end
      same = got[i] == ARGV[first + i - 1]
    end
    if same then
      if dir > 0 then redis.call('LTRIM', key, n, -1) else redis.call('LTRIM', key, 0, -n - 1) end
      for i = 1, n do removed[i] = 1 end
      return removed
    end
  end
  if dir > 0 then
    for i = 1, n do removed[i] = redis.call('LREM', key, 1, ARGV[first + i - 1]) end
  else
    for i = n, 1, -1 do removed[i] = redis.call('LREM', key, -1, ARGV[first + i - 1]) end
  end
  return removed
end
"""

MOVE_SCRIPT = (
    _LUA_PUSH
    + _LUA_GUARD
    + _LUA_TAKE
    + """
-- KEYS[1] lock, KEYS[2] source list, KEYS[3] destination list, KEYS[4..] RetryData hashes
-- ARGV[1] lock token, ARGV[2] lock TTL (ms)
-- ARGV[3] 1: look values up from the head, -1: from the tail; ARGV[4] 1: try the edge; ARGV[5] n
-- ARGV[6 .. 5+n] values in head-to-tail order of the source snapshot
-- ARGV[6+n .. 5+2n] index into KEYS of the value's RetryData hash to delete once moved (0: none)
local err = guard(KEYS[1], ARGV[1], ARGV[2], {KEYS[2], KEYS[3]})
if err then return err end
local n = tonumber(ARGV[5])
local removed = take(KEYS[2], tonumber(ARGV[3]), ARGV[4] == '1', 6, n)
local moved = {}
local cleared = 0
for i = 1, n do
  if removed[i] == 1 then
    moved[#moved + 1] = ARGV[5 + i]
    local k = tonumber(ARGV[5 + n + i])
    if k > 0 then cleared = cleared + redis.call('DEL', KEYS[k]) end
  end
end
-- the last value (the oldest) is pushed last: it is at the tail, taken next
local reversed = {}
for i = #moved, 1, -1 do reversed[#reversed + 1] = moved[i] end
push('RPUSH', KEYS[3], reversed)
return {removed, cleared}
"""
)

REMOVE_SCRIPT = (
    _LUA_GUARD
    + _LUA_TAKE
    + """
-- KEYS[1] lock, KEYS[2] list; ARGV[1] lock token, ARGV[2] lock TTL (ms)
-- ARGV[3] 1: look values up from the head, -1: from the tail; ARGV[4] 1: try the edge
-- ARGV[5..] values in head-to-tail order of the snapshot. Returns 1/0 per value (removed/gone).
local err = guard(KEYS[1], ARGV[1], ARGV[2], {KEYS[2]})
if err then return err end
return take(KEYS[2], tonumber(ARGV[3]), ARGV[4] == '1', 5, #ARGV - 4)
"""
)

RESTORE_SCRIPT = (
    _LUA_PUSH
    + _LUA_GUARD
    + """
-- KEYS[1] lock, KEYS[2] target list, KEYS[3] progress counter of this backup and target
-- ARGV[1] lock token, ARGV[2] lock TTL (ms), ARGV[3] records the caller believes restored,
-- ARGV[4] counter TTL (ms), ARGV[5] k, ARGV[6 .. 5+k] positions counted from the tail
-- (ascending), ARGV[6+k .. 5+2k] values.
-- Inserts each value so that it ends at its position from the tail (clamped to the list),
-- keeping the other messages in their order, and advances the counter, all at once.
local err = guard(KEYS[1], ARGV[1], ARGV[2], {KEYS[2]})
if err then return err end
local done = tonumber(redis.call('GET', KEYS[3]) or '0')
if done ~= tonumber(ARGV[3]) then
  return redis.error_reply('ESCTL_PROGRESS restore progress is ' .. done .. ', not ' .. ARGV[3])
end
local k = tonumber(ARGV[5])
local len = redis.call('LLEN', KEYS[2])
local first = tonumber(ARGV[6])
local last = tonumber(ARGV[5 + k])
local tail_cost = math.min(len, last + 1 - k)
local head_cost = math.max(0, len - first)
local seq = {}
if tail_cost <= head_cost then
  local popped = {}
  if tail_cost > 0 then popped = redis.call('RPOP', KEYS[2], tail_cost) or {} end
  local p, i, pos = 1, 1, 0
  while i <= k do
    if tonumber(ARGV[5 + i]) <= pos or p > #popped then
      seq[#seq + 1] = ARGV[5 + k + i]; i = i + 1
    else
      seq[#seq + 1] = popped[p]; p = p + 1
    end
    pos = pos + 1
  end
  while p <= #popped do seq[#seq + 1] = popped[p]; p = p + 1 end
  push('RPUSH', KEYS[2], seq)
else
  local popped = {}
  if head_cost > 0 then popped = redis.call('LPOP', KEYS[2], head_cost) or {} end
  local final = len + k
  local p, i, pos = 1, k, 0
  while i >= 1 do
    if final - 1 - tonumber(ARGV[5 + i]) <= pos or p > #popped then
      seq[#seq + 1] = ARGV[5 + k + i]; i = i - 1
    else
      seq[#seq + 1] = popped[p]; p = p + 1
    end
    pos = pos + 1
  end
  while p <= #popped do seq[#seq + 1] = popped[p]; p = p + 1 end
  push('LPUSH', KEYS[2], seq)
end
redis.call('SET', KEYS[3], done + k, 'PX', ARGV[4])
return done + k
"""
)

# --- the lock ------------------------------------------------------------------------------


def queue_lock(
    client: redisio.RedisClient, refs: Sequence[QueueRef], *, ttl_ms: int = REDIS_LOCK_TTL_MS
) -> RedisLock:
    """The queue commands' lock on every queue of ``refs`` (:class:`esctl.locks.RedisLock`;
    LockHeld when another run holds one of them). Its token fences every script's change."""
    return RedisLock(
        client,
        (r.lock_key for r in refs),
        name="queue lock",
        stopped="stopped (every move so far is complete)",
        hint="make sure no other esctl run works on this queue, then rerun",
        ttl_ms=ttl_ms,
    )


@contextlib.contextmanager
def _maybe_locked(
    client: redisio.RedisClient, refs: Sequence[QueueRef], dry_run: bool
) -> Iterator[RedisLock | None]:
    if dry_run:
        yield None
        return
    with queue_lock(client, refs) as lock:
        yield lock


def _check(lock: RedisLock | None) -> None:
    if lock is not None:
        lock.check()


# --- queue list ----------------------------------------------------------------------------


@dataclass(slots=True)
class QueueStatus:
    subscriber: str
    event_type: str
    subscribed: bool
    """The subscriber is a member of ``Subscribers:{ENV:TYPE}`` (False: only its lists exist)."""
    published: int
    processing: int
    dead: int
    oldest_processing_timestamp: str | None
    oldest_processing_age_s: float | None
    retry_data: int
    """RetryData hashes of the event type (shared by all its subscribers)."""


@dataclass(slots=True)
class QueueListing:
    env: str
    generated_at: str
    queues: list[QueueStatus]
    retry_data: dict[str, int]
    problems: list[dict[str, str]]
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["totals"] = {
            "queues": len(self.queues),
            "published": sum(q.published for q in self.queues),
            "processing": sum(q.processing for q in self.queues),
            "dead": sum(q.dead for q in self.queues),
            "retry_data": sum(self.retry_data.values()),
        }
        return document


def _env_key_patterns(env: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    e = re.escape(env)
    subscribers = re.compile(rf"Subscribers:\{{{e}:(?P<type>[^{{}}]+)\}}", re.DOTALL)
    retry = re.compile(rf"RetryData:\{{{e}:(?P<type>[^{{}}]+)\}}:(?P<agg>.*)", re.DOTALL)
    return subscribers, retry


def list_queues(
    client: redisio.RedisClient,
    env: str,
    *,
    event_types: Sequence[str] = (),
    subscribers: Sequence[str] = (),
    now: datetime | None = None,
    oldest_sample: int = OLDEST_SAMPLE,
) -> QueueListing:
    """Every subscriber x event type of ``env``: found by one SCAN over ``*:{ENV:*}*`` (queue
    lists, ``Subscribers:{ENV:TYPE}`` sets, RetryData hashes), so subscribers whose lists are
    empty are listed too. Lengths are read in pipelined round trips. The oldest processing
    message is the oldest TimeStamp among the ``oldest_sample`` messages at the tail of
    ProcessingEvents (the ones taken longest ago; exact when the list is no longer). Read-only."""
    started = time.perf_counter()
    moment = _now(now)
    type_filter = set(event_types)
    sub_filter = set(subscribers)
    subscribers_re, retry_re = _env_key_patterns(env)
    pattern = f"*:{{{layout.glob_escape(env)}:*}}*"

    queue_keys: set[tuple[str, str]] = set()
    subscriber_sets: list[str] = []
    retry_by_type: Counter[str] = Counter()
    ambiguous: list[tuple[str, tuple[str, str], str]] = []
    for _, keys in redisio.scan_pages(client, pattern):
        for key in keys:
            parsed = layout.parse_queue_key(key)
            queue = (parsed[0], parsed[2]) if parsed and parsed[1] == env else None
            m = subscribers_re.fullmatch(key)
            if m:
                subscriber_sets.append(m["type"])
                continue
            r = retry_re.fullmatch(key)
            if r and queue:
                ambiguous.append((key, queue, r["type"]))  # decided by the key's type below
            elif r:
                retry_by_type[r["type"]] += 1
            elif queue:
                queue_keys.add(queue)
    if ambiguous:
        kinds = redisio.pipelined(client, [("TYPE", k) for k, _, _ in ambiguous])
        for (_, queue, event_type), kind in zip(ambiguous, kinds, strict=True):
            if redisio.key_str(kind) == "list":
                queue_keys.add(queue)
            else:
                retry_by_type[event_type] += 1

    subscriber_sets = sorted({t for t in subscriber_sets if not type_filter or t in type_filter})
    members = redisio.pipelined(
        client, [("SMEMBERS", layout.subscribers_key(env, t)) for t in subscriber_sets]
    )
    subscribed: set[tuple[str, str]] = set()
    problems: list[dict[str, str]] = []
    for event_type, reply in zip(subscriber_sets, members, strict=True):
        if isinstance(reply, Exception):
            key = layout.subscribers_key(env, event_type)
            problems.append(_problem("wrong_type", key, f"SMEMBERS failed: {reply}"))
            continue
        subscribed.update((redisio.key_str(m), event_type) for m in reply)

    pairs = sorted(
        {
            (sub, t)
            for sub, t in queue_keys | subscribed
            if (not type_filter or t in type_filter) and (not sub_filter or sub in sub_filter)
        },
        key=lambda p: (p[1], p[0]),
    )
    refs = [QueueRef(sub, env, t) for sub, t in pairs]
    lengths = redisio.pipelined(client, [("LLEN", r.key(w)) for r in refs for w in QUEUE_LISTS])
    statuses: list[QueueStatus] = []
    tails: list[tuple[QueueStatus, str]] = []
    for index, ref in enumerate(refs):
        counts: list[int] = []
        for offset, which in enumerate(QUEUE_LISTS):
            reply = lengths[index * len(QUEUE_LISTS) + offset]
            if isinstance(reply, Exception):
                problems.append(_problem("wrong_type", ref.key(which), f"LLEN failed: {reply}"))
                counts.append(0)
            else:
                counts.append(int(reply))
        status = QueueStatus(
            subscriber=ref.subscriber,
            event_type=ref.event_type,
            subscribed=(ref.subscriber, ref.event_type) in subscribed,
            published=counts[0],
            processing=counts[1],
            dead=counts[2],
            oldest_processing_timestamp=None,
            oldest_processing_age_s=None,
            retry_data=retry_by_type.get(ref.event_type, 0),
        )
        statuses.append(status)
        if status.processing:
            tails.append((status, ref.key("processing")))

    samples = redisio.pipelined(client, [("LRANGE", k, -oldest_sample, -1) for _, k in tails])
    for (status, key), reply in zip(tails, samples, strict=True):
        if isinstance(reply, Exception):
            problems.append(_problem("wrong_type", key, f"LRANGE failed: {reply}"))
            continue
        oldest: tuple[datetime, str] | None = None
        for value in reply:
            _, event = codec.decode_event(value)
            stamp, text = event.timestamp, event.timestamp_text
            if stamp is not None and text is not None and (oldest is None or stamp < oldest[0]):
                oldest = (stamp, text)
        if oldest is not None:
            status.oldest_processing_timestamp = oldest[1]
            status.oldest_processing_age_s = (moment - oldest[0]).total_seconds()

    retry_data = {
        t: n for t, n in sorted(retry_by_type.items()) if not type_filter or t in type_filter
    }
    return QueueListing(
        env=env,
        generated_at=moment.isoformat(),
        queues=statuses,
        retry_data=retry_data,
        problems=problems,
        elapsed_s=time.perf_counter() - started,
    )


QUEUE_METRIC_HELP = {
    "esctl_queue_messages": "Messages in a subscriber's reliable queue list (LLEN).",
    "esctl_queue_oldest_processing_age_seconds": "Age, from its TimeStamp, of the oldest message"
    " in ProcessingEvents (absent when the list is empty).",
    "esctl_queue_subscribed": "1 when the subscriber is in Subscribers:{ENV:TYPE}, 0 when only"
    " its lists exist.",
    "esctl_queue_retry_data": "RetryData hashes of an event type.",
    "esctl_queue_list_timestamp_seconds": "When esctl queue list read these figures.",
}


def queue_metrics(listing: QueueListing) -> list[metrics.Metric]:
    """The listing as Prometheus samples (names and labels: :data:`QUEUE_METRIC_HELP`)."""
    env = listing.env
    out: list[metrics.Metric] = []
    for q in listing.queues:
        labels = {"env": env, "event_type": q.event_type, "subscriber": q.subscriber}
        for which, count in (
            ("published", q.published),
            ("processing", q.processing),
            ("dead", q.dead),
        ):
            out.append(metrics.Metric("esctl_queue_messages", count, labels | {"list": which}))
    for q in listing.queues:
        if q.oldest_processing_age_s is not None:
            labels = {"env": env, "event_type": q.event_type, "subscriber": q.subscriber}
            out.append(
                metrics.Metric(
                    "esctl_queue_oldest_processing_age_seconds",
                    round(q.oldest_processing_age_s, 3),
                    labels,
                )
            )
    for q in listing.queues:
        labels = {"env": env, "event_type": q.event_type, "subscriber": q.subscriber}
        out.append(metrics.Metric("esctl_queue_subscribed", int(q.subscribed), labels))
    for event_type, count in listing.retry_data.items():
        labels = {"env": env, "event_type": event_type}
        out.append(metrics.Metric("esctl_queue_retry_data", count, labels))
    generated = datetime.fromisoformat(listing.generated_at).timestamp()
    out.append(
        metrics.Metric("esctl_queue_list_timestamp_seconds", round(generated, 3), {"env": env})
    )
    return out


def render_prometheus(listing: QueueListing) -> str:
    """The listing in the Prometheus text exposition format (for node_exporter's textfile
    collector; write it with :func:`esctl.metrics.write_textfile`)."""
    return metrics.render(queue_metrics(listing), QUEUE_METRIC_HELP)


# --- peek ----------------------------------------------------------------------------------


@dataclass(slots=True)
class PeekResult:
    subscriber: str
    env: str
    event_type: str
    list_name: str
    key: str
    length: int
    messages: list[MessageInfo]

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["list"] = document.pop("list_name")
        return document


def _ensure_known(client: redisio.RedisClient, ref: QueueRef) -> None:
    """NotFound when the subscriber has no list of this type and is not subscribed to it
    (almost always a typo in a name)."""
    replies = redisio.pipelined(
        client,
        [("EXISTS", ref.key(w)) for w in QUEUE_LISTS]
        + [("SISMEMBER", layout.subscribers_key(ref.env, ref.event_type), ref.subscriber)],
    )
    for reply in replies:
        if isinstance(reply, Exception):
            raise ServerError(f"Redis {redisio.describe(client)} answered with an error: {reply}")
    if not any(int(r) for r in replies):
        raise NotFound(
            f"no queue of subscriber {ref.subscriber!r} for event type {ref.event_type!r} in "
            f"env {ref.env!r}: no {ref.key('published')} (nor processing/dead lists) and not a "
            f"member of {layout.subscribers_key(ref.env, ref.event_type)}",
            hint=f"esctl queue list --env {ref.env} shows the queues that exist",
        )


def _retry_infos(
    client: redisio.RedisClient, ref: QueueRef, aggregate_ids: Sequence[str]
) -> dict[str, RetryInfo | None]:
    distinct = sorted(set(aggregate_ids))
    replies = redisio.pipelined(client, [("HGETALL", ref.retry_data_key(a)) for a in distinct])
    found: dict[str, RetryInfo | None] = {}
    for aggregate_id, reply in zip(distinct, replies, strict=True):
        if isinstance(reply, Exception):
            found[aggregate_id] = None
        elif isinstance(reply, dict):
            found[aggregate_id] = RetryInfo.from_hash(reply)
        else:  # RESP2 without a callback: a flat list of field, value
            pairs = dict(zip(reply[::2], reply[1::2], strict=True))
            found[aggregate_id] = RetryInfo.from_hash(pairs)
    return found


def peek(
    client: redisio.RedisClient,
    ref: QueueRef,
    which: str = "published",
    count: int = 10,
    *,
    now: datetime | None = None,
) -> PeekResult:
    """The next ``count`` messages of a list in consumption order (the tail first), decoded,
    with their RetryData for dead letters. Read-only."""
    check_list_name(which)
    _ensure_known(client, ref)
    key = ref.key(which)
    moment = _now(now)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.llen(key)
        pipe.lrange(key, -count, -1)
        length, values = pipe.execute()
    except redisio.REDIS_ERRORS as exc:
        raise redisio.wrap_errors(client, exc) from exc
    messages = [
        describe_message(v, position, moment, with_text=True)
        for position, v in enumerate(reversed(values))
    ]
    if which == "dead":
        infos = _retry_infos(client, ref, [m.aggregate_id for m in messages if m.aggregate_id])
        for m in messages:
            if m.aggregate_id is not None:
                m.retry = infos.get(m.aggregate_id)
    return PeekResult(ref.subscriber, ref.env, ref.event_type, which, key, int(length), messages)


# --- selection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which messages of a list a requeue or drain takes. All criteria must hold."""

    older_than: timedelta | None = None
    """Payload TimeStamp older than this."""
    grace: timedelta | None = None
    """Two snapshots this far apart: only messages present in both, count-aware (a value seen
    twice, then once, is taken once). Equal values cannot be told apart: one taken and an equal
    one arriving during the grace period count as one still there."""
    aggregates: frozenset[str] = frozenset()
    exception_contains: str | None = None
    """Dead letters whose RetryData LastException contains this text (case-insensitive)."""
    min_retries: int | None = None
    """Dead letters whose RetryData RetryCount is at least this."""
    limit: int | None = None
    """At most this many, the next ones in consumption order first."""

    @property
    def needs_retry_data(self) -> bool:
        return self.exception_contains is not None or self.min_retries is not None

    @property
    def needs_decoding(self) -> bool:
        return self.older_than is not None or bool(self.aggregates) or self.needs_retry_data

    def check(self, which: str) -> None:
        if self.needs_retry_data and which != "dead":
            raise UsageError(
                "--exception-contains and --min-retries select dead letters by their RetryData",
                hint="use them with the dead list (--from dead / --list dead)",
            )
        if self.limit is not None and self.limit < 1:
            raise UsageError("--limit must be at least 1")

    def describe(self) -> dict[str, Any]:
        return {
            "older_than_s": self.older_than.total_seconds() if self.older_than else None,
            "grace_s": self.grace.total_seconds() if self.grace else None,
            "aggregates": sorted(self.aggregates),
            "exception_contains": self.exception_contains,
            "min_retries": self.min_retries,
            "limit": self.limit,
        }


@dataclass(slots=True)
class _Candidate:
    index: int
    """Head-to-tail index in the snapshot the selection was made on."""
    value: bytes
    aggregate_id: str | None
    """Decoded only when the selection or the RetryData needs it."""
    info: MessageInfo | None
    """Dry runs: what is shown of the message."""
    retry_key: str | None


@dataclass(slots=True)
class _Snapshot:
    key: str
    length: int
    selected: list[_Candidate]
    """In consumption order (the tail first)."""
    problems: list[dict[str, str]]


def _lrange_all(client: redisio.RedisClient, key: str) -> list[bytes]:
    try:
        values = cast(list[bytes], client.lrange(key, 0, -1))
    except redis.exceptions.ResponseError as exc:
        raise ServerError(
            f"cannot read {key}: {exc}", hint="the key is expected to be a list (docs/layout.md §4)"
        ) from None
    except redisio.REDIS_ERRORS as exc:
        raise redisio.wrap_errors(client, exc) from exc
    return values


def _select(
    client: redisio.RedisClient,
    ref: QueueRef,
    which: str,
    selection: Selection,
    now: datetime,
    *,
    describe: bool,
    retry_keys: bool,
    lock: RedisLock | None,
    sleep: Callable[[float], None],
) -> _Snapshot:
    """Snapshot the list (twice, ``grace`` apart, when asked) and pick the messages."""
    key = ref.key(which)
    values = _lrange_all(client, key)
    if selection.grace is not None:
        still_there: Counter[bytes] | None = Counter(values)
        sleep(selection.grace.total_seconds())
        _check(lock)
        values = _lrange_all(client, key)
    else:
        still_there = None
    decode = describe or retry_keys or selection.needs_decoding
    min_age = selection.older_than.total_seconds() if selection.older_than is not None else None
    # without RetryData filters, the first `limit` matches are the selection: stop there
    stop_at = selection.limit if not selection.needs_retry_data else None
    problems: list[dict[str, str]] = []
    picked: list[_Candidate] = []
    length = len(values)
    for index in range(length - 1, -1, -1):
        value = values[index]
        if still_there is not None:
            if still_there[value] <= 0:
                continue  # arrived after the first snapshot: not stuck by observation
            still_there[value] -= 1
        position = length - 1 - index
        info = describe_message(value, position, now) if describe else None
        aggregate_id: str | None = None
        if decode:
            if info is not None:
                aggregate_id, age = info.aggregate_id, info.age_s
            else:
                aggregate_id, age = _id_and_age(value, now)
            if min_age is not None:
                if age is None:
                    slow = info or describe_message(value, position, now)
                    why = "; ".join(p["detail"] for p in slow.problems) or "missing"
                    detail = f"message at position {position} has no readable TimeStamp ({why})"
                    problems.append(_problem("no_timestamp", key, f"{detail}; not selected"))
                    continue
                if age <= min_age:
                    continue
            if selection.aggregates and aggregate_id not in selection.aggregates:
                continue
        picked.append(_Candidate(index, value, aggregate_id, info, None))
        if stop_at is not None and len(picked) >= stop_at:
            break
    if which == "dead" and (selection.needs_retry_data or describe or retry_keys):
        ids = [c.aggregate_id for c in picked if c.aggregate_id is not None]
        infos = _retry_infos(client, ref, ids)
        needle = (selection.exception_contains or "").casefold()
        kept: list[_Candidate] = []
        for c in picked:
            retry = infos.get(c.aggregate_id) if c.aggregate_id is not None else None
            if c.info is not None:
                c.info.retry = retry
            if selection.exception_contains is not None and (
                retry is None or needle not in (retry.last_exception or "").casefold()
            ):
                continue
            if selection.min_retries is not None and (
                retry is None or (retry.retry_count or 0) < selection.min_retries
            ):
                continue
            if retry_keys and c.aggregate_id is not None:
                c.retry_key = ref.retry_data_key(c.aggregate_id)
            kept.append(c)
        picked = kept
    if selection.limit is not None:
        picked = picked[: selection.limit]
    return _Snapshot(key, length, picked, problems)


def _batches(candidates: Sequence[_Candidate]) -> Iterator[list[_Candidate]]:
    """Head-to-tail order (ascending index), cut by count and bytes."""
    batch: list[_Candidate] = []
    size = 0
    for c in candidates:
        batch.append(c)
        size += len(c.value)
        if len(batch) >= MOVE_BATCH or size >= MOVE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _direction(batch: Sequence[_Candidate], done_before: int, length: int) -> list[int]:
    """The script arguments that say where to look for the batch's values: from the head (1)
    or the tail (-1), whichever end has fewer messages in front of the batch (moves go
    head-to-tail, so what is left before it is unselected messages only; after it, everything
    further on); and 1 when, in the snapshot, the batch was exactly the run of messages at that
    end (then the script checks it still is and takes it with one LTRIM)."""
    from_head = batch[0].index - done_before
    from_tail = length - 1 - batch[-1].index
    contiguous = batch[-1].index - batch[0].index == len(batch) - 1
    if from_head <= from_tail:
        return [1, int(contiguous and from_head == 0)]
    return [-1, int(contiguous and from_tail == 0)]


# --- confirmation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a mutating command is about to do, for the confirmation question."""

    action: str
    """``requeue``, ``drain``, ``discard`` or ``restore``."""
    count: int
    source: str
    destination: str | None


Confirm = Callable[[Plan], bool]


def _confirm(confirm: Confirm | None, plan: Plan) -> None:
    if confirm is not None and not confirm(plan):
        raise Refused(f"{plan.action} not confirmed; nothing was changed")


# --- requeue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequeueOptions:
    source: str = "processing"
    """``processing`` (stuck messages) or ``dead`` (dead letters)."""
    selection: Selection = Selection()
    keep_retry_data: bool = False
    dry_run: bool = False
    now: datetime | None = None


@dataclass(slots=True)
class RequeueSummary:
    dry_run: bool
    subscriber: str
    env: str
    event_type: str
    source: str
    source_key: str
    destination_key: str
    examined: int
    """Messages in the source list when it was (last) snapshotted."""
    selected: int
    requeued: int
    gone: int
    """Selected, but no longer in the source when esctl came to it (a consumer took it, or the
    library's retry job moved it): not moved, never duplicated."""
    failed: int
    """Selected messages esctl could not move or cannot say whether it moved (a server error or
    a lost connection mid-batch): non-zero makes the command exit non-zero."""
    retry_data_cleared: int
    notified: bool
    problems: list[dict[str, str]]
    messages: list[MessageInfo]
    """Dry run: the selected messages."""
    selection: dict[str, Any]
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def requeue(
    client: redisio.RedisClient,
    ref: QueueRef,
    options: RequeueOptions,
    *,
    confirm: Confirm | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> RequeueSummary:
    """Move selected messages of ProcessingEvents (or DeadLetters) back to the tail of
    PublishedEvents, where RPOPLPUSH takes them next, oldest taken first; then PUBLISH one
    notification on ``ENV:TYPE`` so live subscribers drain them.

    Each move is atomic (LREM one occurrence; only if it was there, RPUSH): a message a
    consumer finished or took meanwhile is counted ``gone``, never duplicated, never lost.
    Requeued dead letters get their RetryData hash deleted in the same script unless
    ``keep_retry_data``. The selection is a snapshot: the run always ends. Holds the queue's
    lock (LockHeld when another run has it) unless ``dry_run``; asks ``confirm`` before the
    first move (Refused when it says no)."""
    started = time.perf_counter()
    if options.source not in ("processing", "dead"):
        raise UsageError(
            f"cannot requeue from {options.source!r}", hint="use --from processing or --from dead"
        )
    options.selection.check(options.source)
    moment = _now(options.now)
    _ensure_known(client, ref)
    clear = options.source == "dead" and not options.keep_retry_data
    with _maybe_locked(client, [ref], options.dry_run) as lock:
        snap = _select(
            client,
            ref,
            options.source,
            options.selection,
            moment,
            describe=options.dry_run,
            retry_keys=clear,
            lock=lock,
            sleep=sleep,
        )
        summary = RequeueSummary(
            dry_run=options.dry_run,
            subscriber=ref.subscriber,
            env=ref.env,
            event_type=ref.event_type,
            source=options.source,
            source_key=snap.key,
            destination_key=ref.key("published"),
            examined=snap.length,
            selected=len(snap.selected),
            requeued=0,
            gone=0,
            failed=0,
            retry_data_cleared=0,
            notified=False,
            problems=snap.problems,
            messages=[c.info for c in snap.selected if c.info] if options.dry_run else [],
            selection=options.selection.describe(),
            elapsed_s=0.0,
        )
        if options.dry_run or not snap.selected:
            summary.elapsed_s = time.perf_counter() - started
            return summary
        _confirm(confirm, Plan("requeue", len(snap.selected), snap.key, ref.key("published")))
        try:
            assert lock is not None  # held whenever not a dry run
            _move(client, ref, snap, summary, lock)
        finally:
            if summary.requeued:
                summary.notified = _notify(client, ref.channel, summary.problems)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _move(
    client: redisio.RedisClient,
    ref: QueueRef,
    snap: _Snapshot,
    summary: RequeueSummary,
    lock: RedisLock,
) -> None:
    ordered = snap.selected[::-1]  # head to tail: the oldest is pushed last, to the tail
    script = client.register_script(MOVE_SCRIPT)
    done = 0
    for batch in _batches(ordered):
        lock.check()
        keys: list[str] = [ref.lock_key, snap.key, summary.destination_key]
        slots: dict[str, int] = {}
        key_index: list[int] = []
        for c in batch:
            if c.retry_key is None:
                key_index.append(0)
                continue
            if c.retry_key not in slots:
                keys.append(c.retry_key)
                slots[c.retry_key] = len(keys)  # Lua's KEYS is 1-based
            key_index.append(slots[c.retry_key])
        args: list[Any] = [lock.token, lock.ttl_ms, *_direction(batch, done, snap.length)]
        args.append(len(batch))
        args += [c.value for c in batch]
        args += key_index
        try:
            flags, cleared = script(keys=keys, args=args)
        except redisio.REDIS_ERRORS as exc:
            summary.failed = len(ordered) - done
            unknown = isinstance(
                exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
            )
            summary.problems.append(
                _problem(
                    "move_failed",
                    snap.key,
                    f"{'lost the connection during' if unknown else 'Redis refused'} a batch of "
                    f"{len(batch)} moves to {summary.destination_key} ({redact(str(exc))}); "
                    f"{summary.failed} selected messages not requeued"
                    + (
                        " (the batch may have completed: every move in it is whole)"
                        if unknown
                        else ""
                    ),
                )
            )
            return
        moved = sum(1 for f in flags if int(f) == 1)
        summary.requeued += moved
        summary.gone += len(batch) - moved
        summary.retry_data_cleared += int(cleared)
        done += len(batch)


def _notify(client: redisio.RedisClient, channel: str, problems: list[dict[str, str]]) -> bool:
    """PUBLISH ``1`` on ``channel`` as the library does after a publish; a failure is a
    problem, not an error (the messages are in place either way)."""
    try:
        client.publish(channel, "1")
    except redisio.REDIS_ERRORS as exc:
        problems.append(
            _problem(
                "notify_failed",
                channel,
                f"PUBLISH failed ({redact(str(exc))}); subscribers pick the messages up "
                "on their next notification or restart",
            )
        )
        return False
    return True


# --- the backup file -----------------------------------------------------------------------
#
# A zstd file of JSON lines in several frames. Frame 1, written and fsynced before anything is
# removed: a header line, then one record per selected message in consumption order. Then one
# frame per removal batch, {"outcome": {"removed": [...], "gone": [...]}} (record numbers), and
# a last frame {"complete": {...}}. Each outcome frame is fsynced before the next batch, so a
# crash leaves at most one batch whose outcome the file does not know.


def _value_fields(value: bytes) -> dict[str, str]:
    try:
        return {"value": value.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode("ascii"), "encoding": "base64"}


def _value_bytes(record: dict[str, Any]) -> bytes:
    if record.get("encoding") == "base64":
        return base64.b64decode(record["value"], validate=True)
    return str(record["value"]).encode("utf-8")


@dataclass
class Backup:
    """A backup file as read back. ``outcomes``: record number -> ``removed`` / ``gone``
    (records without one: the drain stopped before it knew)."""

    path: Path
    header: dict[str, Any]
    records: list[dict[str, Any]]
    outcomes: dict[int, str]
    complete: bool
    truncated: bool

    @property
    def backup_id(self) -> str:
        return str(self.header["backup_id"])


def read_backup(path: str | Path) -> Backup:
    """Read a file written by :func:`drain`. A truncated last frame (a crash while appending an
    outcome) is ignored; a file whose first frame is incomplete was never used to drain."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read the backup file {source}: {exc.strerror}") from None
    lines: list[dict[str, Any]] = []
    frames = 0
    truncated = False
    decompressor = zstandard.ZstdDecompressor()
    while data:
        obj = decompressor.decompressobj()
        try:
            chunk = obj.decompress(data)
        except zstandard.ZstdError as exc:
            if frames == 0:
                raise UsageError(
                    f"{source} is not an esctl queue backup (zstd: {exc})",
                    hint="pass a file written by esctl queue drain --to-file",
                ) from None
            truncated = True
            break
        if not obj.eof:
            truncated = True
            break
        frames += 1
        try:
            lines.extend(orjson.loads(line) for line in chunk.splitlines() if line.strip())
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"{source} holds a line that is not JSON: {exc}") from None
        data = obj.unused_data
    if frames == 0 or not lines or lines[0].get("format") != BACKUP_FORMAT:
        raise UsageError(
            f"{source} is not a complete esctl queue backup"
            + (
                " (its first frame is cut short: the drain stopped before removing anything)"
                if truncated
                else ""
            ),
            hint="pass a file written by esctl queue drain --to-file",
        )
    header = lines[0]
    if int(header.get("version", 0)) > BACKUP_FORMAT_VERSION:
        raise UsageError(
            f"{source} was written by a newer esctl (backup format {header.get('version')})",
            hint="restore it with that esctl version or newer",
        )
    records = [line for line in lines[1:] if "value" in line]
    outcomes: dict[int, str] = {}
    complete = False
    for line in lines[1:]:
        if "outcome" in line:
            for which in ("removed", "gone"):
                for number in line["outcome"].get(which, []):
                    outcomes[int(number)] = which
        elif "complete" in line:
            complete = True
    return Backup(source, header, records, outcomes, complete, truncated)


# --- drain ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrainOptions:
    which: str = "dead"
    to_file: Path | None = None
    discard: bool = False
    """Remove without a backup (only when explicitly asked for)."""
    selection: Selection = Selection()
    dry_run: bool = False
    now: datetime | None = None


@dataclass(slots=True)
class DrainSummary:
    dry_run: bool
    subscriber: str
    env: str
    event_type: str
    list_name: str
    key: str
    examined: int
    selected: int
    drained: int
    gone: int
    """Selected and written to the backup, but gone from the list before esctl removed it (a
    consumer took it): marked so in the file, never restored."""
    failed: int
    backup_file: str | None
    backup_id: str | None
    problems: list[dict[str, str]]
    messages: list[MessageInfo]
    selection: dict[str, Any]
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["list"] = document.pop("list_name")
        return document


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, so a removal batch and the record of its
    outcome are never separated by an interrupt. Only in the main thread (elsewhere Python
    delivers no signals anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    if caught:
        raise KeyboardInterrupt


def drain(
    client: redisio.RedisClient,
    ref: QueueRef,
    options: DrainOptions,
    *,
    confirm: Confirm | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DrainSummary:
    """Back up, then remove, the selected messages of one list.

    The backup (``to_file``, created 0600, never overwritten) holds every selected message and
    is fsynced, with its folder, before the first removal. Removal is count-aware LREM in
    server-side scripts: exactly the backed-up values, so messages that arrive meanwhile stay.
    Each batch's outcome (removed, or gone because a consumer took it first) is appended to the
    file before the next batch. Without ``to_file`` it refuses unless ``discard``. Holds the
    queue's lock unless ``dry_run``; asks ``confirm`` before writing anything."""
    started = time.perf_counter()
    which = check_list_name(options.which)
    options.selection.check(which)
    if options.to_file is None and not options.discard and not options.dry_run:
        raise Refused(
            "drain removes messages: it needs a backup file (--to-file PATH.jsonl.zst)",
            hint="pass --to-file PATH.jsonl.zst, or --discard --yes to drop them without a backup",
        )
    if options.to_file is not None and options.to_file.exists():
        raise Refused(
            f"the backup file {options.to_file} already exists; esctl never overwrites a backup",
            hint="choose a new --to-file name",
        )
    moment = _now(options.now)
    _ensure_known(client, ref)
    with _maybe_locked(client, [ref], options.dry_run) as lock:
        snap = _select(
            client,
            ref,
            which,
            options.selection,
            moment,
            describe=options.dry_run,
            retry_keys=False,
            lock=lock,
            sleep=sleep,
        )
        summary = DrainSummary(
            dry_run=options.dry_run,
            subscriber=ref.subscriber,
            env=ref.env,
            event_type=ref.event_type,
            list_name=which,
            key=snap.key,
            examined=snap.length,
            selected=len(snap.selected),
            drained=0,
            gone=0,
            failed=0,
            backup_file=None,
            backup_id=None,
            problems=snap.problems,
            messages=[c.info for c in snap.selected if c.info] if options.dry_run else [],
            selection=options.selection.describe(),
            elapsed_s=0.0,
        )
        # Nothing selected still leaves the backup asked for (empty, complete): a script that
        # drains to a file and later restores it finds the file either way.
        if options.dry_run or (not snap.selected and options.to_file is None):
            summary.elapsed_s = time.perf_counter() - started
            return summary
        action = "drain" if options.to_file is not None else "discard"
        if snap.selected:
            _confirm(confirm, Plan(action, len(snap.selected), snap.key, _str(options.to_file)))
        writer = None
        if options.to_file is not None:
            writer, summary.backup_id = _write_backup(
                options.to_file, ref, which, snap, options, moment
            )
            summary.backup_file = str(options.to_file)
        try:
            assert lock is not None  # held whenever not a dry run
            _remove(client, snap, summary, writer, lock, ref)
        finally:
            if writer is not None:
                writer.close()
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _write_backup(
    path: Path,
    ref: QueueRef,
    which: str,
    snap: _Snapshot,
    options: DrainOptions,
    moment: datetime,
) -> tuple[BackupWriter, str]:
    """The backup file with its first frame on disk (the header and every selected message),
    and its backup id."""
    writer = BackupWriter(path, option="--to-file", nothing_done="nothing was drained")
    backup_id = uuid.uuid4().hex
    try:
        header = {
            "format": BACKUP_FORMAT,
            "version": BACKUP_FORMAT_VERSION,
            "backup_id": backup_id,
            "created_at": moment.isoformat(),
            "esctl_version": __version__,
            "subscriber": ref.subscriber,
            "env": ref.env,
            "event_type": ref.event_type,
            "list": which,
            "key": snap.key,
            "length": snap.length,
            "selected": len(snap.selected),
            "selection": options.selection.describe(),
        }
        records = [
            {
                "n": number,
                "key": snap.key,
                "subscriber": ref.subscriber,
                "env": ref.env,
                "event_type": ref.event_type,
                "list": which,
                "position": snap.length - 1 - c.index,
                **_value_fields(c.value),
            }
            for number, c in enumerate(snap.selected)
        ]
        writer.write_frame([header, *records])
    except OSError as exc:
        with contextlib.suppress(OSError):
            writer.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise EsctlError(
            f"cannot write the backup file {path}: {exc.strerror}; nothing was drained",
            hint="free some space or choose another folder, then rerun",
        ) from None
    return writer, backup_id


def _remove(
    client: redisio.RedisClient,
    snap: _Snapshot,
    summary: DrainSummary,
    writer: BackupWriter | None,
    lock: RedisLock,
    ref: QueueRef,
) -> None:
    numbered = list(enumerate(snap.selected))[::-1]  # head to tail
    by_index = {id(c): n for n, c in numbered}
    script = client.register_script(REMOVE_SCRIPT)
    done = 0
    for batch in _batches([c for _, c in numbered]):
        lock.check()
        args: list[Any] = [lock.token, lock.ttl_ms, *_direction(batch, done, snap.length)]
        args += [c.value for c in batch]
        with _interrupts_deferred():
            try:
                flags = script(keys=[ref.lock_key, snap.key], args=args)
            except redisio.REDIS_ERRORS as exc:
                summary.failed = len(numbered) - done
                summary.problems.append(
                    _problem(
                        "remove_failed",
                        snap.key,
                        f"a batch of {len(batch)} removals failed ({redact(str(exc))}); "
                        f"{summary.failed} selected messages may still be in the list "
                        "(the backup file does not mark them drained)",
                    )
                )
                return
            removed = [by_index[id(c)] for c, f in zip(batch, flags, strict=True) if int(f) == 1]
            gone = [by_index[id(c)] for c, f in zip(batch, flags, strict=True) if int(f) != 1]
            if writer is not None:
                _record_outcome(writer, {"outcome": {"removed": removed, "gone": gone}})
        summary.drained += len(removed)
        summary.gone += len(gone)
        done += len(batch)
    if writer is not None:
        finished = {"drained": summary.drained, "gone": summary.gone}
        _record_outcome(writer, {"complete": {**finished, "at": datetime.now(UTC).isoformat()}})


def _record_outcome(writer: BackupWriter, line: dict[str, Any]) -> None:
    try:
        writer.write_frame([line])
    except OSError as exc:
        raise EsctlError(
            f"stopped: cannot append to the backup file {writer.path}: {exc.strerror}. It holds "
            "every selected message; the last batch's removals are not marked in it",
            hint="free some space; esctl queue restore --include-unknown puts back the unmarked "
            "messages too (check the list first: some of them may still be there)",
        ) from None


# --- restore -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreOptions:
    target: QueueRef | None = None
    """Restore into this queue instead of where the messages came from."""
    target_list: str | None = None
    """With ``target``: which of its lists (default: the list they were drained from)."""
    include_unknown: bool = False
    """Also restore records whose removal the file does not confirm (a drain that crashed)."""
    dry_run: bool = False
    expect_env: str | None = None
    """Refuse a file drained from another environment (unless ``target`` is given)."""


@dataclass(slots=True)
class RestoreTarget:
    key: str
    records: int
    restored: int
    already_restored: int


@dataclass(slots=True)
class RestoreSummary:
    dry_run: bool
    backup_file: str
    backup_id: str
    records: int
    restorable: int
    restored: int
    already_restored: int
    """Restored by an earlier run of the same file into the same list (never twice)."""
    gone: int
    """Records a consumer took before the drain removed them: not restored."""
    unknown: int
    """Records whose removal the file does not confirm (the drain stopped mid-batch)."""
    failed: int
    targets: list[RestoreTarget]
    notified: bool
    problems: list[dict[str, str]]
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Group:
    ref: QueueRef
    which: str
    key: str
    progress_key: str
    positions: list[int]
    values: list[bytes]
    done: int = 0


def restore(
    client: redisio.RedisClient,
    path: str | Path,
    options: RestoreOptions,
    *,
    confirm: Confirm | None = None,
) -> RestoreSummary:
    """Put the messages of a drain's backup file back: into the list each came from, at the
    same distance from the tail (so a list drained and restored with nothing else happening
    is byte-identical to before, and messages that arrived meanwhile stay newer); or, with
    ``target``, at the tail of that list (taken next), in their original order. Then one
    notification per event type.

    Records the drain marked ``gone`` are skipped (a consumer had them). Progress is counted
    in Redis atomically with each batch, so rerunning after a failure, or restoring the same
    file again, never restores a message twice. Holds the target queues' locks unless
    ``dry_run``; asks ``confirm`` first."""
    started = time.perf_counter()
    backup = read_backup(path)
    header = backup.header
    if options.target is None and options.expect_env and header.get("env") != options.expect_env:
        raise UsageError(
            f"{backup.path} was drained from env {header.get('env')!r}, not {options.expect_env!r}",
            hint="drop --env to restore it where it came from, or pass --to SUB TYPE to move it",
        )
    if options.target_list is not None:
        check_list_name(options.target_list)
    problems: list[dict[str, str]] = []
    unknown = [r for r in backup.records if int(r["n"]) not in backup.outcomes]
    gone = sum(1 for r in backup.records if backup.outcomes.get(int(r["n"])) == "gone")
    if unknown:
        problems.append(
            _problem(
                "outcome_unknown",
                str(header.get("key")),
                f"the drain that wrote {backup.path} stopped before recording whether "
                f"{len(unknown)} messages were removed; "
                + (
                    "they are restored (--include-unknown)"
                    if options.include_unknown
                    else "they are not restored: check the list, and pass --include-unknown to "
                    "restore them too"
                ),
            )
        )
    take = {"removed"} | ({"unknown"} if options.include_unknown else set())
    chosen = [r for r in backup.records if backup.outcomes.get(int(r["n"]), "unknown") in take]
    groups = _restore_groups(backup, chosen, options)
    if options.target is not None:
        _ensure_known(client, options.target)
    progress = redisio.pipelined(client, [("GET", g.progress_key) for g in groups])
    for g, reply in zip(groups, progress, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(f"cannot read {g.progress_key}: {reply}")
        g.done = min(int(reply or 0), len(g.values))
    summary = RestoreSummary(
        dry_run=options.dry_run,
        backup_file=str(backup.path),
        backup_id=backup.backup_id,
        records=len(backup.records),
        restorable=len(chosen),
        restored=0,
        already_restored=sum(g.done for g in groups),
        gone=gone,
        unknown=len(unknown),
        failed=0,
        targets=[RestoreTarget(g.key, len(g.values), 0, g.done) for g in groups],
        notified=False,
        problems=problems,
        elapsed_s=0.0,
    )
    todo = sum(len(g.values) - g.done for g in groups)
    if options.dry_run or todo == 0:
        summary.elapsed_s = time.perf_counter() - started
        return summary
    refs = sorted({g.ref for g in groups})
    with queue_lock(client, refs) as lock:
        destination = ", ".join(g.key for g in groups)
        _confirm(confirm, Plan("restore", todo, str(backup.path), destination))
        channels: set[str] = set()
        try:
            for g, target in zip(groups, summary.targets, strict=True):
                restored = _restore_group(client, g, summary, lock)
                target.restored = restored
                summary.restored += restored
                if restored:
                    channels.add(g.ref.channel)
                if summary.failed:
                    break
        finally:
            notified = [_notify(client, c, summary.problems) for c in sorted(channels)]
            summary.notified = bool(notified) and all(notified)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _restore_groups(
    backup: Backup, chosen: list[dict[str, Any]], options: RestoreOptions
) -> list[_Group]:
    """Records per target list, by position from the tail. Positions are renumbered past the
    records that are not restored, so what comes back closes up as the list did."""
    all_by_key: dict[str, list[dict[str, Any]]] = {}
    for r in backup.records:
        all_by_key.setdefault(str(r["key"]), []).append(r)
    chosen_numbers = {int(r["n"]) for r in chosen}
    groups: dict[str, _Group] = {}
    for source_key, records in all_by_key.items():
        records.sort(key=lambda r: int(r["position"]))
        skipped = 0
        kept: list[tuple[int, bytes]] = []
        for r in records:
            if int(r["n"]) not in chosen_numbers:
                skipped += 1
                continue
            try:
                kept.append((int(r["position"]) - skipped, _value_bytes(r)))
            except (ValueError, TypeError) as exc:
                raise UsageError(
                    f"{backup.path}: record {r.get('n')} has an unreadable value: {exc}"
                ) from None
        if not kept:
            continue
        first = records[0]
        if options.target is not None:
            ref = options.target
            which = options.target_list or str(first["list"])
            positions = list(range(len(kept)))  # the tail: taken next, in their order
        else:
            ref = QueueRef(str(first["subscriber"]), str(first["env"]), str(first["event_type"]))
            which = str(first["list"])
            positions = [p for p, _ in kept]
            if ref.key(which) != source_key:
                raise UsageError(
                    f"{backup.path}: record key {source_key} does not match its fields"
                )
        key = ref.key(which)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(
                ref, which, key, ref.restore_progress_key(which, backup.backup_id), [], []
            )
        elif options.target is not None:
            offset = len(group.positions)
            positions = [p + offset for p in positions]
        group.positions += positions
        group.values += [v for _, v in kept]
    return list(groups.values())


def _restore_group(
    client: redisio.RedisClient, group: _Group, summary: RestoreSummary, lock: RedisLock
) -> int:
    script = client.register_script(RESTORE_SCRIPT)
    restored = 0
    start = group.done
    total = len(group.values)
    while start < total:
        lock.check()
        end = start + 1
        size = len(group.values[start])
        while end < total and end - start < MOVE_BATCH and size < MOVE_BATCH_BYTES:
            size += len(group.values[end])
            end += 1
        k = end - start
        args: list[Any] = [lock.token, lock.ttl_ms, start, RESTORE_PROGRESS_TTL_MS, k]
        args += group.positions[start:end]
        args += group.values[start:end]
        try:
            script(keys=[group.ref.lock_key, group.key, group.progress_key], args=args)
        except redisio.REDIS_ERRORS as exc:
            summary.failed += total - start
            summary.problems.append(
                _problem(
                    "restore_failed",
                    group.key,
                    f"a batch of {k} failed ({redact(str(exc))}); {total - start} "
                    "messages not restored; rerun the same restore to continue (progress is "
                    "kept in Redis, nothing is restored twice)",
                )
            )
            break
        restored += k
        start = end
    return restored

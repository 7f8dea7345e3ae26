"""The locks that keep two esctl runs off the same work: a Redis lock renewed while a run lasts
(queues, compress, replay into queues) and a PostgreSQL advisory lock held on its own connection
(migrate, prune, replay checkpoints). Both raise LockHeld on entry when another run holds them."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

from esctl import redisio
from esctl.config import redact
from esctl.errors import EsctlError, LockHeld, LockLost, UsageError
from esctl.shard import Shard
from esctl.units import format_duration

if TYPE_CHECKING:
    import psycopg

REDIS_LOCK_TTL_MS = 30_000
"""A Redis lock expires this long after its last renewal (a crashed run's lock frees itself)."""
HURRIED_RELEASE_S = 1.0
"""How long a run that found Redis not answering waits on its way out for its lock to be given
back (:meth:`RedisLock.hurry`)."""

_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _run_script(
    client: redisio.RedisClient, script: str, keys: Sequence[Any], args: Sequence[Any]
) -> Any:
    """EVALSHA with a fallback to EVAL the first time a server sees the script. Raises
    redis-py's exceptions (the callers decide what a failure means)."""
    return client.register_script(script)(keys=list(keys), args=list(args))


class RedisLock:
    """A lock on one or more Redis keys: ``SET key token NX PX ttl``, renewed by a thread while
    held, released with a compare-and-delete (never someone else's lock). Raises LockHeld on
    entry when any of the keys is held (having taken nothing). ``check()`` raises LockLost (a
    ServerError) ``lost the {name}: why; {stopped}`` (with ``hint``) once a renewal found the
    lock gone (taken or deleted by someone else, or not renewable for its TTL); ``lost`` and
    ``lost_key`` say so without raising. A run that catches it stops sending and reports what
    it did, the lost lock as the reason it stopped.

    ``token`` and ``ttl_ms`` are public so that a server-side script can check the lock is
    still this run's (a fencing token) and renew it in the same call.

    :meth:`hurry`: the run stops because Redis does not answer (a second Ctrl-C stopped a
    wait on it); the exit then waits a moment only, and a lock not given back by then
    (:attr:`given_back` False) expires on its own. A Ctrl-C (or SIGTERM) during the release
    stops it too (:attr:`cut_short`). Either way :attr:`left` says the lock may still be in
    Redis, for the run's message to say (:func:`not_given_back`)."""

    def __init__(
        self,
        client: redisio.RedisClient,
        keys: Iterable[str],
        *,
        name: str,
        stopped: str,
        hint: str,
        ttl_ms: int = REDIS_LOCK_TTL_MS,
    ) -> None:
        self.client = client
        self.keys = sorted(set(keys))  # one order for every run: two runs never deadlock
        self.name = name
        self.stopped = stopped
        self.hint = hint
        self.ttl_ms = ttl_ms
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.held: list[str] = []
        self.lost: str | None = None
        """Set (once, by the renewal thread) when the lock was found gone: why, naming its key."""
        self.lost_key: str | None = None
        """The key of the lock that was found gone (set before ``lost``)."""
        self.given_back = False
        """Redis answered the release of every key held (set on exit)."""
        self.cut_short = False
        """A signal (Ctrl-C, SIGTERM) stopped the exit before the release was answered."""
        self._entered = False
        self._hurry_s: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RedisLock:
        self._entered = True
        key = self.keys[0] if self.keys else ""
        try:
            for key in self.keys:
                if not self.client.set(key, self.token, nx=True, px=self.ttl_ms):
                    holder = self.client.get(key)
                    ttl = self.client.pttl(key)
                    self._release()
                    who = redisio.key_str(holder) if holder else "another run"
                    raise LockHeld(
                        f"another esctl run ({who}) holds the lock {key}; nothing was done",
                        hint=f"wait for it to finish (its lock expires {max(ttl, 0) / 1000:.0f} s "
                        "after its last renewal if it died); from cron, exit code 75 means "
                        "the previous run is still going",
                    )
                self.held.append(key)
        except redisio.REDIS_ERRORS as exc:
            self._release()
            error = redisio.wrap_errors(self.client, exc)
            if isinstance(error, EsctlError):
                error.add(f"esctl could not take its lock {key}, so nothing was done")
            raise error from exc
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM while a SET was with Redis, or just after its answer: what it
            # may have set is given back (by its token, so never another run's), or a rerun
            # would find the lock taken until it expired.
            if key and key not in self.held:
                self.held.append(key)
            self._release()
            raise
        self._thread = threading.Thread(target=self._renew, name="esctl-redis-lock", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._hurry_s is None:
            try:
                if self._thread is not None:
                    self._thread.join(timeout=5)
                self._release()
            except BaseException:
                # a signal (a second Ctrl-C, say) while the renewal under way or the release
                # was waited for: what is held may still be, until it expires
                self.cut_short = True
                raise
            return
        # Redis may be hung: the renewal and the release are waited for a moment only (the
        # release goes on in the background while the run ends; by its token it is never
        # another run's lock it deletes, whenever Redis runs it)
        deadline = time.monotonic() + self._hurry_s
        if self._thread is not None:
            self._thread.join(timeout=self._hurry_s)
        releasing = threading.Thread(target=self._release, name="esctl-lock-release", daemon=True)
        releasing.start()
        releasing.join(timeout=max(0.0, deadline - time.monotonic()))

    def hurry(self, seconds: float = HURRIED_RELEASE_S) -> None:
        """On exit, wait at most ``seconds`` for Redis (the renewal under way, the release):
        the run stops because Redis did not answer. A lock not given back in that time
        (:attr:`given_back`) expires on its own, its TTL after its last renewal."""
        self._hurry_s = seconds

    @property
    def hurried(self) -> bool:
        """:meth:`hurry` was called: the run stops because Redis did not answer."""
        return self._hurry_s is not None

    @property
    def left(self) -> bool:
        """The lock may still be in Redis after its block: taken (or being taken), and its
        release not answered (:meth:`hurry`, a signal during the release, Redis failing)."""
        return self._entered and not self.given_back

    def check(self) -> None:
        """LockLost when a renewal found the lock gone."""
        lost = self.lost
        if lost:
            raise LockLost(
                f"lost the {self.name}: {lost}; {self.stopped}",
                key=self.lost_key or "",
                why=lost,
                hint=self.hint,
            )

    def _renew(self) -> None:
        interval = self.ttl_ms / 3000
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            key = self.held[0] if self.held else ""
            try:
                for key in self.held:
                    if not _run_script(
                        self.client, _RENEW_SCRIPT, [key], [self.token, self.ttl_ms]
                    ):
                        self._found_lost(key, f"{key} was taken or deleted by someone else")
                        return
                last_ok = time.monotonic()
            except redisio.REDIS_ERRORS as exc:
                if time.monotonic() - last_ok > self.ttl_ms / 1000:
                    why = f"could not renew {key} for {self.ttl_ms / 1000:.0f} s"
                    self._found_lost(key, f"{why}: {redact(str(exc))}")
                    return

    def _found_lost(self, key: str, why: str) -> None:
        self.lost_key = key
        self.lost = why

    def _release(self) -> None:
        answered = True
        try:
            for key in self.held:
                try:
                    _run_script(self.client, _RELEASE_SCRIPT, [key], [self.token])
                except redisio.REDIS_ERRORS:
                    answered = False
        except BaseException:
            self.cut_short = True  # a signal: what is held may still be (given_back False)
            raise
        self.held = []
        self.given_back = answered


def after_broken_wait(client: redisio.RedisClient, lock: RedisLock | None) -> None:
    """A second Ctrl-C (or SIGTERM) stopped a run's wait on Redis, which may not answer: no
    connection with a reply still due is used again, and the lock is given back only if Redis
    answers at once (else it expires on its own: :meth:`RedisLock.hurry`)."""
    redisio.drop_idle_connections(client)
    if lock is not None:
        lock.hurry()


def not_given_back(lock: RedisLock | None) -> str:
    """What an interrupted run's hint adds when its lock may still be in Redis
    (:attr:`RedisLock.left`): Redis did not answer its release (after
    :func:`after_broken_wait`), or a signal stopped the release (a second one, wherever the
    first came). Nothing when it was given back, or never taken. Called once the lock's
    block is over."""
    if lock is None or not lock.left:
        return ""
    keys = ", ".join(lock.keys)
    if lock.cut_short and not lock.hurried:
        what = f"a signal stopped the release of the {lock.name} {keys}, which may still be held"
    else:
        what = f"Redis did not answer the release of the {lock.name} {keys}"
    return (
        f"; {what}: it expires {lock.ttl_ms / 1000:.0f} s after its last renewal, and a rerun "
        "before then exits 75"
    )


# pg_advisory_lock(bigint) shows in pg_locks as classid = the key's high 32 bits, objid = its
# low 32 bits, objsubid = 1, in the database of the session that holds it. pg_locks is readable
# by every user; pg_stat_activity hides the address, start and state of other users' sessions
# (NULL) unless the reader is a superuser or has pg_read_all_stats.
HOLDERS_SQL = """
SELECT n.name, l.pid, a.application_name, host(a.client_addr), a.backend_start, a.state,
       a.usename, now()
  FROM unnest(%s::text[]) AS n(name)
  JOIN pg_locks l
    ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid::bigint = (hashtextextended(n.name, 0) >> 32) & 4294967295
   AND l.objid::bigint = hashtextextended(n.name, 0) & 4294967295
  LEFT JOIN pg_stat_activity a ON a.pid = l.pid
"""


def describe_holder(row: Sequence[Any]) -> str:
    """A row of HOLDERS_SQL as words: ``PostgreSQL session pid 4242 (user esctl, application
    'esctl migrate prune (pid 977 on web1)', from 10.1.2.3, started 2024-05-01 03:12:09 UTC, 2h5m ago, idle)``; what
    pg_stat_activity hides from this user is said to be hidden."""
    _, pid, application, addr, started, state, user, now = row
    parts = []
    if user is not None:
        parts.append(f"user {user}")
    if application:
        parts.append(f"application {application!r}")
    if started is None:
        parts.append(
            "its address, start and state are hidden from this user: pg_stat_activity shows "
            "them to the session's own user, a superuser or a member of pg_read_all_stats"
        )
    else:
        parts.append(f"from {addr}" if addr is not None else "from a local socket")
        age = format_duration(max(0.0, (now - started).total_seconds())).replace(" ", "")
        parts.append(f"started {started.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, {age} ago")
        if state is not None:
            parts.append(f"state {state}")
    return f"PostgreSQL session pid {pid}" + (f" ({', '.join(parts)})" if parts else "")


def _holder(conn: psycopg.Connection, name: str) -> tuple[int | None, str | None]:
    """The pid holding advisory lock ``name`` and its description (None, None when it cannot
    be read: gone in between, or the query refused)."""
    import psycopg

    try:
        rows = conn.execute(HOLDERS_SQL, ([name],)).fetchall()
    except psycopg.Error:
        return None, None
    if not rows:
        return None, None
    return int(rows[0][1]), describe_holder(rows[0])


def held_error(conn: psycopg.Connection, name: str, held: str, hint: str) -> LockHeld:
    """The LockHeld for advisory lock ``name`` found held (read on ``conn``): ``held``, the
    holding session when it can be read, ``; nothing was done``; as hint ``hint``, then how
    to end the holding session if it is a dead run's."""
    pid, who = _holder(conn, name)
    if pid is None:
        return LockHeld(f"{held}; nothing was done", hint=hint)
    return LockHeld(
        f"{held}: the lock {name!r} is held by {who}; nothing was done",
        hint=f"{hint}; if that session is a dead run's (its machine or network lost: "
        "PostgreSQL keeps the session until TCP keepalive notices), end it with "
        f"`SELECT pg_terminate_backend({pid})` (as its user, a superuser or a member of "
        "pg_signal_backend), then rerun",
    )


def prune_lock_name(pg_schema: str, app: str) -> str:
    """The advisory lock an unsharded ``migrate prune`` of ``app`` and ``migrate
    restore-pruned`` hold; a sharded prune holds it shared (``within``) beside its shard's own
    (:func:`prune_shard_lock_name`). So none of them runs beside another, but shards do (those
    that share no aggregate: :func:`prune_lock`)."""
    return f"esctl:prune:{pg_schema}:{app}"


def prune_shard_lock_name(pg_schema: str, app: str, shard: Shard) -> str:
    """The advisory lock a prune of ``shard`` holds exclusively: :func:`prune_lock_name`,
    and for a sharded prune ``:`` and the shard."""
    whole = prune_lock_name(pg_schema, app)
    return whole if shard.count == 1 else f"{whole}:{shard}"


def session_name(what: str) -> str:
    """The application_name of the session that holds a run's advisory lock: what runs, and
    the esctl process and machine it runs in (``esctl migrate prune (pid 4242 on web1)``), so
    that whoever finds the lock held knows which process to look at. PostgreSQL keeps 63
    bytes of it: a long host name is what gets cut."""
    name = f"esctl {what} (pid {os.getpid()} on {socket.gethostname()})"
    return name.encode("ascii", "replace")[:63].decode("ascii")


MAX_FAMILY_SHARD_COUNT = 0xFFFF
"""The largest shard count a :class:`ShardFamily` lock can carry (its index and count share
the 32 bits of the lock's second key)."""
FAMILY_GATE_WAIT_S = 10.0
"""How long a run joining a :class:`ShardFamily` waits for another run's check to end."""

# The members of one family: pg_advisory_lock_shared(int4, int4) shows in pg_locks as
# classid = the first key, objid = the second (both as unsigned 32-bit oids), objsubid = 2.
_FAMILY_SQL = """
SELECT DISTINCT l.objid::bigint
  FROM pg_locks l
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid::bigint = %s AND l.pid <> pg_backend_pid()
"""


# The members of one family (their shards) whose sessions hold the advisory lock of a name.
_HOLDER_SHARDS_SQL = """
SELECT DISTINCT f.objid::bigint
  FROM pg_locks l
  JOIN pg_locks f
    ON f.pid = l.pid AND f.locktype = 'advisory' AND f.granted AND f.objsubid = 2
   AND f.database = l.database AND f.classid::bigint = %s
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid::bigint = (hashtextextended(%s, 0) >> 32) & 4294967295
   AND l.objid::bigint = hashtextextended(%s, 0) & 4294967295
   AND l.pid <> pg_backend_pid()
"""


def _int4(value: int) -> int:
    """An unsigned 32-bit value as the signed int4 PostgreSQL takes."""
    return value - (1 << 32) if value >= 1 << 31 else value


@dataclass(frozen=True)
class ShardFamily:
    """The runs of one job split with ``--shard I/N`` (of every count, and the unsharded run,
    ``0/1``): runs whose shards share an aggregate (:meth:`Shard.overlaps`) must not run at
    once, runs of disjoint shards may. Each run holds, beside its own lock, a shared advisory
    lock on two keys (the CRC-32 of ``name``; its shard as ``count << 16 | index``), which
    ``pg_locks`` lists for every member; a run joining checks them under the family's gate (a
    transaction lock: two runs starting at once are checked one after the other, so one of
    them starts).

    ``shard``: this run's; None for a run that is none of the family's but that its members'
    locks keep out (``migrate restore-pruned`` beside the prunes of its app): it joins
    nothing, and a lock it finds held by a member is said to be that member's
    (:meth:`holder_error`). ``member_lock``: the name of the lock a run of a shard holds on
    the same session (the error names its holder); ``held``: what the error says of a run of
    that shard found running; ``hint``: what to do then."""

    name: str
    shard: Shard | None
    member_lock: Callable[[Shard], str]
    held: Callable[[Shard], str]
    hint: str

    @property
    def key(self) -> int:
        return zlib.crc32(self.name.encode("utf-8"))

    @staticmethod
    def code(shard: Shard) -> int:
        return shard.count << 16 | shard.index

    @staticmethod
    def decode(code: int) -> Shard:
        return Shard(code & 0xFFFF, code >> 16)

    def check_count(self) -> None:
        if self.shard is not None and self.shard.count > MAX_FAMILY_SHARD_COUNT:
            raise UsageError(
                f"shard {self.shard}: at most {MAX_FAMILY_SHARD_COUNT:,} shards can be told "
                "apart by the lock that keeps overlapping runs apart",
                hint="use fewer shards (nothing was done)",
            )

    def join(self, conn: psycopg.Connection) -> None:
        """Take this run's member lock on ``conn`` (autocommit, holding the run's own lock);
        LockHeld, having let it go again, when a run of an overlapping shard holds one. A run
        that is none of the family's (``shard`` None) joins nothing."""
        if self.shard is None:
            return
        shard = self.shard
        key, code = _int4(self.key), _int4(self.code(shard))
        gate = f"{self.name}:gate"
        with conn.transaction():
            deadline = time.monotonic() + FAMILY_GATE_WAIT_S
            while True:
                row = conn.execute(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (gate,)
                ).fetchone()
                if row and row[0]:
                    break
                if time.monotonic() > deadline:
                    raise held_error(
                        conn,
                        gate,
                        f"another esctl run has been checking for {FAMILY_GATE_WAIT_S:.0f} s "
                        f"which runs of {self.name!r} are going on",
                        self.hint,
                    )
                time.sleep(0.02)
            conn.execute("SELECT pg_advisory_lock_shared(%s::int4, %s::int4)", (key, code))
            members = {self.decode(r[0]) for r in conn.execute(_FAMILY_SQL, (self.key,))}
            clash = sorted(
                (s for s in members if s.overlaps(shard)), key=lambda s: (s.count, s.index)
            )
            if clash:
                conn.execute("SELECT pg_advisory_unlock_shared(%s::int4, %s::int4)", (key, code))
                other = clash[0]
                raise held_error(conn, self.member_lock(other), self.held(other), self.hint)

    def holder_error(self, conn: psycopg.Connection, name: str) -> LockHeld | None:
        """The LockHeld that names the member of this family whose session holds advisory
        lock ``name`` (found held by this run) as a run of its shard (``held``, ``hint``,
        naming the holder of its member lock); None when no session of another shard than
        this run's holds it (a run of this run's shard, one that is none of the family's, or
        one that has not joined yet: the caller's own words say it)."""
        import psycopg

        try:
            codes = [r[0] for r in conn.execute(_HOLDER_SHARDS_SQL, (self.key, name, name))]
        except psycopg.Error:
            return None
        others = sorted(
            (s for s in map(self.decode, codes) if s != self.shard),
            key=lambda s: (s.count, s.index),
        )
        if not others:
            return None
        other = others[0]
        return held_error(conn, self.member_lock(other), self.held(other), self.hint)


def overlap_words(job: str, verb: str, this: str, mine: Shard) -> Callable[[Shard], str]:
    """A :class:`ShardFamily`'s ``held`` for runs of one job: what the error of a run of shard
    ``mine`` says of a run of shard ``other`` found running, e.g. ``job`` "migration of A into
    schema S", ``verb`` "migrate", ``this`` (what the refused run calls itself) "run"."""

    def held(other: Shard) -> str:
        if other.count == 1:
            return (
                f"an unsharded {job} is running, and it {verb}s every aggregate, those of "
                f"shard {mine} too"
            )
        ours = (
            f"this unsharded {this} would {verb} its aggregates too"
            if mine.count == 1
            else f"shard {mine} of this {this} would {verb} some of its aggregates too"
        )
        return f"a {job}, shard {other}, is running, and {ours}"

    return held


class AdvisoryLock:
    """A session-level PostgreSQL advisory lock on ``name``, held on its own connection for as
    long as the ``with`` block runs: released when the process dies (kill -9 included), so a
    crashed cron run never blocks the next one. Raises LockHeld on entry when another session
    holds it: ``held``, the holding session (:func:`describe_holder`), ``; nothing was
    done``; as hint ``hint``, then how to end the holding session if it is a dead one (a lost
    node's session lives on until TCP keepalive notices).

    ``within``: the lock of the whole that ``name`` is a part of (a shard's run: the lock of
    every shard's), taken first in shared mode. The runs of the parts then go on side by
    side; a run that takes the whole's lock itself (exclusive) is refused while any of them
    runs, and they while it runs.

    ``family``: the runs of the same job with other shards (:class:`ShardFamily`); once
    ``name`` is taken, a run of an overlapping shard found running refuses this one
    (LockHeld naming it). A lock (``within`` or ``name``) found held by a run of another
    shard of the family is said to be that run's (:meth:`ShardFamily.holder_error`)."""

    def __init__(
        self,
        dsn: str,
        name: str,
        *,
        what: str,
        within: str | None = None,
        family: ShardFamily | None = None,
        held: str | None = None,
        hint: str = "wait for it to finish; from cron, exit code 75 means the previous run is "
        "still going",
    ) -> None:
        self.dsn = dsn
        self.name = name
        self.what = what
        self.within = within
        self.family = family
        self.held = held if held is not None else f"another esctl run holds the lock {name!r}"
        self.hint = hint
        self.conn: psycopg.Connection | None = None

    def __enter__(self) -> AdvisoryLock:
        # Imported here: the queue commands use this module and never load the driver.
        import psycopg

        from esctl import pg

        if self.family is not None:
            self.family.check_count()
        conn = pg.connect(self.dsn, autocommit=True, application_name=session_name(self.what))
        try:
            for name, mode in ((self.within, "_shared"), (self.name, "")):
                if name is None:
                    continue
                row = conn.execute(
                    f"SELECT pg_try_advisory_lock{mode}(hashtextextended(%s, 0))", (name,)
                ).fetchone()
                if not row or not row[0]:
                    theirs = self.family.holder_error(conn, name) if self.family else None
                    raise theirs or held_error(conn, name, self.held, self.hint)
            if self.family is not None:
                self.family.join(conn)
        except BaseException:
            # As on exit: unlocked before the close, so that a rerun finds them free at once.
            try:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock_all()")
            finally:
                conn.close()
            raise
        self.conn = conn
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.conn is None:
            return
        import psycopg

        try:
            # Unlock before closing: the server frees a closed session's locks a moment
            # later, and an immediate rerun would find the lock still held (exit 75).
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("SELECT pg_advisory_unlock_all()")
            self.conn.close()
        finally:
            self.conn = None


def prune_lock(dsn: str, pg_schema: str, app: str, shard: Shard) -> AdvisoryLock:
    """The lock a ``migrate prune`` of ``shard`` holds: unsharded, the app's prune lock
    (:func:`prune_lock_name`); sharded, that lock shared and its shard's own. Every prune also
    joins the app's :class:`ShardFamily`, so that two whose shards share aggregates (``0/2``
    and ``0/4``: their shard locks differ) never run at once, while disjoint shards do. A
    restore-pruned takes the app's lock alone (:func:`restore_pruned_lock`)."""

    whole = prune_lock_name(pg_schema, app)
    return AdvisoryLock(
        dsn,
        prune_shard_lock_name(pg_schema, app, shard),
        what="migrate prune",
        within=whole if shard.count > 1 else None,
        family=ShardFamily(
            whole,
            shard,
            member_lock=lambda other: prune_shard_lock_name(pg_schema, app, other),
            held=overlap_words(f"prune of {app} (schema {pg_schema})", "prune", "prune", shard),
            hint="wait for that run to finish, or stop it; prunes whose shards share "
            "aggregates never run at once, so prune with one shard count at a time "
            "(docs/deploy/kubernetes.md); from cron, exit code 75 means the other run is "
            "still going",
        ),
        held=f"another prune of {app} (schema {pg_schema}, shard {shard}), or a "
        "restore-pruned of it, is running",
    )


def restore_pruned_lock(dsn: str, pg_schema: str, app: str) -> AdvisoryLock:
    """The lock a ``migrate restore-pruned`` holds: the app's prune lock, alone (so no prune of
    the app, of any shard, runs beside it, nor another restore). A prune found running is
    named with its shard."""

    def prune_running(other: Shard) -> str:
        which = "an unsharded prune" if other.count == 1 else "a prune"
        shard = f", shard {other}," if other.count > 1 else ""
        return (
            f"{which} of {app} (schema {pg_schema}){shard} is running; a restore runs only "
            "while no prune of the app does"
        )

    return AdvisoryLock(
        dsn,
        prune_lock_name(pg_schema, app),
        what="migrate restore-pruned",
        family=ShardFamily(
            prune_lock_name(pg_schema, app),
            None,
            member_lock=lambda other: prune_shard_lock_name(pg_schema, app, other),
            held=prune_running,
            hint="wait for it to finish; from cron, exit code 75 means the other run is still "
            "going",
        ),
        held=f"a prune or restore-pruned of {app} (schema {pg_schema}) is running",
    )

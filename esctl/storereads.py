"""Reads of the event store's keys over the transport."""

from __future__ import annotations

import difflib
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from esctl import layout, redisio
from esctl.config import APP_SETTING
from esctl.errors import ServerError


@dataclass(frozen=True, slots=True)
class StoredPayload:
    commit_id: str
    value: bytes | None
    hash_key: str | None
    """The hash the value was found in (None when missing in both)."""


def fetch_values(
    client: redisio.RedisClient,
    app: str,
    commit_ids: Sequence[str],
    *,
    wrong_types: dict[str, str] | None = None,
) -> tuple[list[bytes | None], list[str | None]]:
    """Look each commit id up as the library does (partitioned hash, then legacy hash), with
    pipelined round trips: one pass for the likely hash, one more only for the misses.
    Returns the values (None when in neither hash) and the hash each was found in. On a
    cluster a failover is waited out (reads only: see :func:`esctl.redisio.pipelined`).

    A hash key that holds another Redis type (WRONGTYPE) raises ServerError naming it
    (:func:`wrong_type_error`); with ``wrong_types`` it is recorded there instead (key -> its
    type) and the commit ids the library would fail on there get no value but that key as
    their hash (:func:`unreadable_in`): the partitioned hash, or the legacy hash when the
    partitioned one does not have the id."""
    orders = layout.event_hash_lookup_orders(app, commit_ids)
    values: list[bytes | None] = redisio.pipelined(
        client,
        [("HGET", o[0], c) for o, c in zip(orders, commit_ids, strict=True)],
        retry_reads=True,
    )
    where: list[str | None] = [o[0] for o in orders]
    legacy = layout.legacy_event_hash_key(app)
    misses: list[int] = []
    failed: dict[int, str] = {}  # index -> the key the library fails on (WRONGTYPE)
    for i, reply in enumerate(values):
        if reply is None:
            misses.append(i)
        elif isinstance(reply, Exception):
            _refused(client, app, orders[i][0], commit_ids[i], reply, wrong_types)
            failed[i] = orders[i][0]
            values[i] = None
            # The library fails on the partitioned hash, asked first; but a digit id is
            # asked in the legacy hash first here, and the partitioned one may hold it.
            if orders[i][0] == legacy:
                misses.append(i)
    if misses:
        second = redisio.pipelined(
            client, [("HGET", orders[i][1], commit_ids[i]) for i in misses], retry_reads=True
        )
        for i, reply in zip(misses, second, strict=True):
            if isinstance(reply, Exception):
                _refused(client, app, orders[i][1], commit_ids[i], reply, wrong_types)
                failed[i] = orders[i][1]
                reply = None
            elif reply is not None:
                failed.pop(i, None)
            values[i] = reply
            where[i] = orders[i][1] if reply is not None else None
    if failed and wrong_types is not None:
        keys = sorted(set(failed.values()) - set(wrong_types))
        wrong_types.update(zip(keys, key_types(client, keys), strict=True))
        for i, key in failed.items():
            where[i] = key
    return values, where


def fetch_payloads(
    client: redisio.RedisClient, app: str, commit_ids: Sequence[str]
) -> list[StoredPayload]:
    """:func:`fetch_values` as one record per commit id."""
    values, where = fetch_values(client, app, commit_ids)
    return [StoredPayload(c, v, w) for c, v, w in zip(commit_ids, values, where, strict=True)]


def commit_lists(
    client: redisio.RedisClient,
    keys: Sequence[str],
    starts: Sequence[int] | None = None,
    *,
    wrong_types: dict[str, str] | None = None,
) -> list[list[str]]:
    """LRANGE each commit list (from ``starts[i]``, default 0) in pipelined round trips; on a
    cluster a failover is waited out (reads only: see :func:`esctl.redisio.pipelined`).

    A key that holds another Redis type (WRONGTYPE) raises ServerError naming it
    (:func:`commit_list_error`); with ``wrong_types`` it is recorded there instead (key -> its
    type, asked in one more round trip) and its list is empty. One that is a list again, or
    gone, by the time its type is asked is not recorded: empty, as a list deleted since SCAN
    named it."""
    begin = starts or [0] * len(keys)
    commands = [("LRANGE", k, s, -1) for k, s in zip(keys, begin, strict=True)]
    replies = redisio.pipelined(client, commands, retry_reads=True)
    empty = [i for i, reply in enumerate(replies) if type(reply) is list and not reply]
    if empty:
        # A list is never empty in Redis: deleted since it was named, or (a cluster's slot
        # moving meanwhile) read where it no longer was. Asked again, routed anew, it tells.
        again = redisio.pipelined(client, [commands[i] for i in empty], retry_reads=True)
        for i, reply in zip(empty, again, strict=True):
            replies[i] = reply
    refused: list[str] = []
    out: list[list[str]] = []
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, Exception):
            if wrong_types is None or not is_wrong_type(reply):
                raise commit_list_error(client, key, reply)
            refused.append(key)
            out.append([])
            continue
        if reply and type(reply[0]) is bytes:  # redisio.key_str inlined: a call less per id
            out.append([c.decode("utf-8", "surrogateescape") for c in reply])
        else:
            out.append([redisio.key_str(c) for c in reply])
    if refused and wrong_types is not None:
        for key, kind in zip(refused, key_types(client, refused), strict=True):
            if kind not in ("list", "none"):  # else changed since: not there as read
                wrong_types[key] = kind
    return out


def list_lengths_or_types(client: redisio.RedisClient, keys: Sequence[str]) -> list[int | str]:
    """LLEN of each commit list, pipelined (:func:`esctl.redisio.list_lengths`); for a key
    that holds another Redis type (WRONGTYPE), its type instead (one more round trip, only
    then). A key that is a list again, or gone, by then is measured again (gone: 0)."""
    replies = redisio.pipelined(client, [("LLEN", k) for k in keys], retry_reads=True)
    out: list[int | str] = []
    refused: list[int] = []
    for i, (key, reply) in enumerate(zip(keys, replies, strict=True)):
        if not isinstance(reply, Exception):
            out.append(int(reply))
            continue
        if not is_wrong_type(reply):
            raise ServerError(f"LLEN {key} failed: {reply}")
        refused.append(i)
        out.append(0)
    if refused:
        kinds = key_types(client, [keys[i] for i in refused])
        again = [i for i, kind in zip(refused, kinds, strict=True) if kind in ("list", "none")]
        for i, kind in zip(refused, kinds, strict=True):
            out[i] = kind
        lengths = redisio.list_lengths(client, [keys[i] for i in again]) if again else []
        for i, length in zip(again, lengths, strict=True):
            out[i] = length
    return out


# --- keys of another Redis type than the library's ---------------------------------------

KEY_TYPES = {
    layout.COMMIT_LIST: ("list", "the library keeps an aggregate's commit ids in a list"),
    layout.EVENT_HASH: ("hash", "the library keeps event payloads in a hash"),
    layout.LEGACY_HASH: ("hash", "the library keeps pre-2017 event payloads in a hash"),
}
"""Per key family (:data:`layout.STORE_KEY_FAMILIES`): the Redis type the library reads and
writes there, and what it keeps in it (docs/layout.md §1)."""

WRONG_TYPE_ACTION = (
    "see what it holds (redis-cli TYPE, DUMP) and who wrote it, then rename it out of the "
    "way (RENAME) or restore the key from a backup"
)
"""What an operator does about a store key of another Redis type than the library's."""


def is_wrong_type(reply: object) -> bool:
    """Whether a reply is Redis's WRONGTYPE error (a command for another type of key)."""
    return isinstance(reply, Exception) and str(reply).startswith("WRONGTYPE")


def key_types(client: redisio.RedisClient, keys: Sequence[str]) -> list[str]:
    """Each key's Redis type (``none`` when it does not exist), in one pipelined round trip."""
    replies = redisio.pipelined(client, [("TYPE", k) for k in keys], retry_reads=True)
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, Exception):
            raise ServerError(f"TYPE {key} failed: {reply}")
    return [redisio.key_str(r) for r in replies]


def wrong_type_text(key: str, actual: str, family: str) -> str:
    """``{key} is a string, not a list: the library keeps … under this name (WRONGTYPE)``."""
    expected, keeps = KEY_TYPES[family]
    return (
        f"{redisio.printable(key)} is a {actual}, not a {expected}: {keeps} under this name "
        "and fails (WRONGTYPE) on every read and write of it"
    )


def wrong_type_detail(key: str, actual: str, family: str) -> str:
    """A problem's detail about a store key of another type: :func:`wrong_type_text` and what
    to do (the ``detail`` of a ``wrong_key_type`` problem)."""
    return f"{wrong_type_text(key, actual, family)}; {WRONG_TYPE_ACTION}"


def wrong_type_error(key: str, actual: str, family: str, what: str) -> ServerError:
    """The error of a read that met a store key of another type than the library's:
    ``what`` failed (``cannot read commit list …``), the key's type, what to do."""
    return ServerError(
        f"{what}: {wrong_type_text(key, actual, family)}",
        hint=f"{WRONG_TYPE_ACTION} (docs/layout.md §1); `esctl inspect integrity` lists every "
        "such key and the aggregates it keeps from loading",
    )


def commit_list_error(client: redisio.RedisClient, key: str, reply: Exception) -> ServerError:
    """The error of an LRANGE of commit list ``key`` that Redis refused."""
    if is_wrong_type(reply):
        (actual,) = key_types(client, [key])
        return wrong_type_error(key, actual, layout.COMMIT_LIST, "cannot read commit list")
    return ServerError(
        f"cannot read commit list {key}: {reply}",
        hint="the key is expected to be a Redis list (docs/layout.md §1)",
    )


def _refused(
    client: redisio.RedisClient,
    app: str,
    key: str,
    commit_id: str,
    reply: Exception,
    wrong_types: dict[str, str] | None,
) -> None:
    """An HGET of ``commit_id`` in ``key`` that Redis refused: ServerError, unless it is a
    WRONGTYPE and ``wrong_types`` records such keys (:func:`fetch_values`)."""
    if not is_wrong_type(reply):
        raise ServerError(f"HGET {key} {commit_id} failed: {reply}")
    if wrong_types is None:
        (actual,) = key_types(client, [key])
        legacy = key == layout.legacy_event_hash_key(app)
        family = layout.LEGACY_HASH if legacy else layout.EVENT_HASH
        raise wrong_type_error(
            key, actual, family, f"cannot read the payload of commit {commit_id}"
        )


# --- which apps have keys here -------------------------------------------------------------


SEARCH_CUT = "(search cut short)"
"""What :func:`find_store_key` returns when its time ran out before it found a key or went
through the keyspace: whether the app has keys of those families is not known."""


def find_store_key(
    client: redisio.RedisClient,
    app: str,
    families: Collection[str] = layout.STORE_KEY_FAMILIES,
    *,
    max_seconds: float | None = None,
) -> str | None:
    """A key of ``app``'s event store of one of ``families`` (:data:`layout.STORE_KEY_FAMILIES`:
    what the caller has not looked at itself), or None when there is none. The legacy hash is
    asked for by EXISTS; the others are found by one SCAN that stops at the first (through the
    whole keyspace when the app has none: only for a caller that found nothing of the app),
    or after ``max_seconds``: then :data:`SEARCH_CUT` (a large keyspace)."""
    if layout.LEGACY_HASH in families:
        legacy = layout.legacy_event_hash_key(app)
        (exists,) = redisio.pipelined(client, [("EXISTS", legacy)])
        if isinstance(exists, Exception):
            raise ServerError(f"EXISTS {legacy} failed: {exists}")
        if int(exists):
            return legacy
    scanned = {f for f in families if f != layout.LEGACY_HASH}
    if not scanned:
        return None
    # Commit lists alone: their pattern names one hash slot (one node of a cluster).
    only_lists = scanned == {layout.COMMIT_LIST}
    pattern = layout.commit_list_pattern(app) if only_lists else layout.app_store_keys_pattern(app)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    for _, keys in redisio.scan_pages(client, pattern, count=1000):
        for key in keys:
            found = layout.store_key_app(key)
            if found is not None and found[1] == app and found[0] in scanned:
                return key
        if deadline is not None and time.monotonic() > deadline:
            return SEARCH_CUT
    return None


APPS_LISTED = 5
"""Names a :class:`NamesHere` lists at most (:meth:`NamesHere.listed`)."""


@dataclass(frozen=True)
class NameKind:
    """What a :class:`NamesHere` lists, in the words of its text."""

    listed: str
    """Heading of the names found (``apps with keys here``)."""
    none: str
    """When a whole keyspace has none."""
    none_seen: str
    """When the part scanned had none."""
    check: str
    """The setting that names one, to check (``--app / ESCTL_APP``)."""
    server: str = "--redis-url (and its database number)"
    """The settings that name where the names were looked for, to check when there are none."""


APPS = NameKind(
    "apps with keys here",
    "no app has event store keys in this database",
    "no app's keys were found in the part scanned",
    APP_SETTING,
)
ENVS = NameKind(
    "environments with queues here",
    "no environment has a Subscribers:{ENV:TYPE} set in this database",
    "no environment's Subscribers:{ENV:TYPE} set was found in the part scanned",
    "--env / ESCTL_ENV",
)


@dataclass(frozen=True)
class NamesHere:
    """The names with keys in a Redis database, from a bounded SCAN: ApplicationNames with
    event store keys (:func:`apps_with_keys`), environments with queues
    (:func:`esctl.queues.envs_with_queues`); or ApplicationNames with rows in a PostgreSQL
    schema (:func:`esctl.pgevents.apps_with_aggregates`)."""

    keys: dict[str, int]
    """Name -> its keys seen (an app's commit lists, event and snapshot hashes)."""
    examined: int
    """About how many keys the SCAN went over."""
    total: int | None
    """Keys in the database (None: unknown, INFO refused)."""
    complete: bool
    """The whole keyspace was scanned: ``keys`` names every one that has keys."""
    kind: NameKind = APPS
    partial: str | None = None
    """How much was looked at when not ``complete`` (default: the SCAN's keys, ``a partial
    scan: ~4,000 of 2,500,000 keys``)."""

    def has(self, name: str) -> bool:
        return name in self.keys

    def listed(self, near: str, limit: int = APPS_LISTED) -> list[str]:
        """At most ``limit`` names other than ``near``: those most like it first (a typo's
        likely meaning), then those with the most keys seen."""
        others = [a for a in self.keys if a != near]
        return sorted(
            others,
            key=lambda a: (-difflib.SequenceMatcher(None, near, a).ratio(), -self.keys[a], a),
        )[:limit]

    def text(self, name: str, check: str | None = None) -> str:
        """For an operator who asked for ``name``: the others found here (:meth:`listed`), or
        that none were, and in how much of the keyspace; then what to check (``check``: where
        the name was set, :meth:`esctl.config.Settings.where_set`; default the kind's)."""
        check = check or self.kind.check
        listed = self.listed(name)
        scope = ""
        if not self.complete:
            of = f" of {self.total:,}" if self.total is not None else ""
            scope = f" ({self.partial or f'a partial scan: ~{self.examined:,}{of} keys'})"
        if listed:
            more = len([a for a in self.keys if a != name]) - len(listed)
            names = ", ".join(redisio.printable(a) for a in listed)
            names += f" and {more:,} more" if more > 0 else ""
            return f"{self.kind.listed}{scope}: {names}; check {check}"
        if self.complete:
            return f"{self.kind.none}; check {self.kind.server} and {check}"
        return f"{self.kind.none_seen}{scope}; check {check}"


def apps_with_keys(
    client: redisio.RedisClient,
    *,
    max_keys: int | None = None,
    max_seconds: float | None = None,
) -> NamesHere:
    """The apps that have event store keys in the database ``client`` reads, from a SCAN
    bounded per primary by ``max_keys`` keys examined and ``max_seconds``
    (:func:`esctl.redisio.sample_keys`, which has the defaults): in a large keyspace, those whose keys it met (an app
    with few keys among many may be missed; ``complete`` says whether any could be)."""
    sample = redisio.sample_keys(
        client, layout.STORE_KEYS_PATTERN, max_keys=max_keys, max_seconds=max_seconds
    )
    counts: Counter[str] = Counter()
    for key in set(sample.keys):
        found = layout.store_key_app(key)
        if found is not None:
            counts[found[1]] += 1
    return NamesHere(dict(counts), sample.examined, sample.total, sample.complete)

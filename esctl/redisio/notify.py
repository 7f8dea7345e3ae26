"""Keyspace notifications of the keys matching a glob, from one server or every primary of a
cluster (Redis publishes them on the node that holds the key, so a cluster needs one
subscription per primary). Pure transport: what the keys mean is the caller's business.

Notifications are fire-and-forget: whatever a server publishes while a subscription is down is
lost. :class:`KeyspaceFeed` therefore records the moment a subscription was lost
(:attr:`KeyspaceFeed.blind_since`); the caller sweeps after :meth:`KeyspaceFeed.take_resync`.

What the server must publish (``notify-keyspace-events``): ``K`` (keyspace channels) or ``E``
(keyevent channels), and ``l`` (list commands) or ``A`` (every class). :func:`missing_flags`
checks that, :func:`enable_notifications` adds ``Kl`` with CONFIG SET.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster

from esctl.redisio.client import REDIS_ERRORS, RedisClient, describe, is_denied, permission_denied
from esctl.redisio.scan import glob_matcher

RECONNECT_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0)
"""Seconds between attempts to subscribe again (the last one repeats)."""
NEEDED_FLAGS = "Kl"
"""What :func:`enable_notifications` adds to ``notify-keyspace-events``."""


def _primaries(client: RedisClient, *, replicas: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(name, connection settings) of every primary (the server itself when not a cluster;
    with ``replicas`` every node of a cluster). The settings are a connection pool's
    (``connection_class`` included)."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = client.get_nodes() if replicas else client.get_primaries()
        return [
            (f"{n.host}:{n.port}", _settings(n.redis_connection.connection_pool))
            for n in nodes
            if n.redis_connection is not None
        ]
    return [(describe(client), _settings(client.connection_pool))]


def _settings(pool: Any) -> dict[str, Any]:
    return {**pool.connection_kwargs, "connection_class": pool.connection_class}


def _node(settings: dict[str, Any], **overrides: Any) -> redis.Redis:
    """A client of its own (one connection) for one primary."""
    pool = redis.ConnectionPool(**{**settings, "socket_timeout": 10, **overrides})
    return redis.Redis(connection_pool=pool)


def notification_flags(client: RedisClient) -> dict[str, str | None]:
    """Each primary's ``notify-keyspace-events`` (None where CONFIG GET is refused)."""
    flags: dict[str, str | None] = {}
    for name, kwargs in _primaries(client):
        node = _node(kwargs)
        try:
            value = node.config_get("notify-keyspace-events").get("notify-keyspace-events")
            flags[name] = value if isinstance(value, str) else None
        except REDIS_ERRORS:
            flags[name] = None
        finally:
            node.close()
    return flags


def missing_flags(flags: str) -> bool:
    """Whether ``notify-keyspace-events`` set to ``flags`` publishes no list commands."""
    return not (("K" in flags or "E" in flags) and ("l" in flags or "A" in flags))


def enable_notifications(client: RedisClient) -> None:
    """Add ``K`` and ``l`` to ``notify-keyspace-events`` (CONFIG SET) on every node, replicas
    included (a replica promoted by a failover then publishes at once). Raises
    PermissionDenied when the server or its ACL refuses CONFIG."""
    for name, kwargs in _primaries(client, replicas=True):
        node = _node(kwargs)
        try:
            current = node.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
            wanted = "".join(sorted(set(str(current)) | set(NEEDED_FLAGS)))
            node.config_set("notify-keyspace-events", wanted)
        except REDIS_ERRORS as exc:
            if is_denied(exc) or "unknown command" in str(exc).lower():
                raise permission_denied(
                    name, exc, command="CONFIG SET", key="notify-keyspace-events"
                ) from None
            raise
        finally:
            node.close()


@dataclass
class Seen:
    """A key named by notifications since it was last taken: when first, and how often."""

    first: float
    count: int = 1


@dataclass
class _Subscription:
    name: str
    kwargs: dict[str, Any]
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    pubsub: Any = None


class KeyspaceFeed:
    """Subscribes to the keyspace notifications of the keys matching ``pattern`` (a SCAN
    glob) on every primary and collects the keys named, each with the wall-clock time it was
    first seen (:meth:`take`). A subscription that drops is made again in the background; the
    moment it dropped stays in :attr:`blind_since` until :meth:`take_resync`."""

    def __init__(self, client: RedisClient, pattern: str, *, flags: str = "Kl") -> None:
        self.client = client
        self.pattern = pattern
        self.keyspace = "K" in flags
        self.matches = glob_matcher(pattern)
        self.cond = threading.Condition()
        self.keys: dict[str, Seen] = {}
        self.blind_since: float | None = None
        self.resync = False
        self.resync_taken_at: float | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.subscriptions: dict[str, _Subscription] = {}
        self.failing: dict[str, str] = {}

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe on every primary (raises what the first subscription raises)."""
        for name, kwargs in _primaries(self.client):
            self._add(name, kwargs, first=True)

    def _add(self, name: str, kwargs: dict[str, Any], *, first: bool) -> None:
        sub = _Subscription(name, kwargs)
        if first:
            sub.pubsub = self._subscribe(kwargs)
        sub.thread = threading.Thread(
            target=self._listen, args=(sub,), name=f"esctl-notify-{name}", daemon=True
        )
        self.subscriptions[name] = sub
        sub.thread.start()

    def close(self) -> None:
        for sub in self.subscriptions.values():
            sub.stop.set()
        for sub in self.subscriptions.values():
            if sub.thread is not None:
                sub.thread.join(timeout=2)
        self.subscriptions.clear()

    def refresh_topology(self) -> list[str]:
        """On a cluster: subscribe on primaries that appeared and drop the ones that are gone
        (a failover, a node added). Returns the new ones; a new primary may have published
        before it was subscribed, so any change also asks for a sweep."""
        if not isinstance(self.client, redis.cluster.RedisCluster):
            return []
        self.client.nodes_manager.initialize()
        now = dict(_primaries(self.client))
        gone = [n for n in self.subscriptions if n not in now]
        new = [n for n in now if n not in self.subscriptions]
        for name in gone:
            self.subscriptions.pop(name).stop.set()
        for name in new:
            self._add(name, now[name], first=False)
        if gone or new:
            self._lost(f"the cluster's primaries changed ({', '.join(gone + new)})")
        return new

    # --- what the caller reads -------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Until a key is named or a subscription dropped, at most ``timeout`` seconds."""
        with self.cond:
            if not self.keys and not self.resync:
                self.cond.wait(timeout)

    def take(self, keep: Callable[[str], bool] | None = None) -> dict[str, Seen]:
        """The keys named since the last take (those ``keep`` refuses stay for later)."""
        with self.cond:
            if keep is None:
                taken, self.keys = self.keys, {}
                return taken
            taken = {k: s for k, s in self.keys.items() if keep(k)}
            for k in taken:
                del self.keys[k]
            return taken

    def pending(self) -> dict[str, Seen]:
        with self.cond:
            return dict(self.keys)

    def take_resync(self) -> float | None:
        """The moment notifications may have been lost from, once per loss (None when every
        subscription held since the last call). Call it once subscribed again: the sweep that
        follows covers everything published before."""
        with self.cond:
            if not self.resync or not self._all_subscribed():
                return None
            self.resync = False
            self.resync_taken_at = time.time()
            return self.blind_since

    def sweep_done(self, started: float) -> None:
        """A sweep that started at ``started`` (wall clock) has finished: if that was after
        the last :meth:`take_resync` and nothing was lost since, nothing is missing."""
        with self.cond:
            taken = self.resync_taken_at
            if not self.resync and taken is not None and started >= taken:
                self.blind_since = None

    def down(self) -> dict[str, str]:
        """The primaries whose subscription is down now, with the last error of each."""
        with self.cond:
            return dict(self.failing)

    def _all_subscribed(self) -> bool:
        return all(s.pubsub is not None for s in self.subscriptions.values())

    # --- the listening threads -------------------------------------------------------------

    def _subscribe(self, kwargs: dict[str, Any]) -> Any:
        # retry_on_error off: a dropped connection must raise here, never be silently
        # re-subscribed (what was published meanwhile is lost, and the caller must know).
        node = _node(kwargs, socket_timeout=None, retry_on_error=[])
        pubsub = node.pubsub(ignore_subscribe_messages=True)
        db = int(kwargs.get("db", 0) or 0)
        if self.keyspace:
            pubsub.psubscribe(f"__keyspace@{db}__:{self.pattern}")
        else:
            pubsub.subscribe(f"__keyevent@{db}__:rpush")
        return pubsub

    def _listen(self, sub: _Subscription) -> None:
        attempt = 0
        while not sub.stop.is_set():
            if sub.pubsub is None:
                try:
                    sub.pubsub = self._subscribe(sub.kwargs)
                    attempt = 0
                    with self.cond:
                        self.failing.pop(sub.name, None)
                        self.cond.notify_all()
                except (*REDIS_ERRORS, OSError) as exc:
                    self._failed(sub, exc)
                    sub.stop.wait(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
                    attempt += 1
                    continue
            try:
                message = sub.pubsub.get_message(timeout=0.5)
            except (*REDIS_ERRORS, OSError, ValueError, AttributeError) as exc:
                self._failed(sub, exc)
                continue
            if message is not None:
                self._note(message)
        if sub.pubsub is not None:
            _close(sub.pubsub)

    def _failed(self, sub: _Subscription, exc: BaseException) -> None:
        if sub.pubsub is not None:
            _close(sub.pubsub)
            sub.pubsub = None
        self.errors += 1
        with self.cond:
            self.failing[sub.name] = str(exc)
        self._lost(f"the subscription on {sub.name} dropped: {exc}")

    def _lost(self, why: str) -> None:
        with self.cond:
            if self.blind_since is None:
                self.blind_since = time.time()
            self.resync = True
            self.last_error = why
            self.cond.notify_all()

    def _note(self, message: dict[str, Any]) -> None:
        if message.get("type") not in ("pmessage", "message"):
            return
        if self.keyspace:
            channel = message["channel"]
            raw = channel[channel.index(b":") + 1 :] if isinstance(channel, bytes) else b""
        else:
            raw = message["data"] if isinstance(message["data"], bytes) else b""
            if not self.matches(raw):
                return
        key = raw.decode("utf-8", "surrogateescape")
        now = time.time()
        with self.cond:
            seen = self.keys.get(key)
            if seen is None:
                self.keys[key] = Seen(now)
            else:
                seen.count += 1
            self.cond.notify_all()


def _close(pubsub: Any) -> None:
    try:
        pubsub.close()
    except (*REDIS_ERRORS, OSError):
        pass

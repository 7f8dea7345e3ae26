"""What doctor reads from each Redis server (:class:`ServerFacts`): PING times, INFO, the
settings (CONFIG GET, else INFO), TIME, LATENCY, SLOWLOG, CLUSTER INFO and whether its replicas
persist. Read once per server, then judged by the Redis checks, which never talk to Redis."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import redis.cluster
import redis.connection
import redis.exceptions

from esctl import redisio
from esctl.config import redact
from esctl.doctor.report import Unjudgeable
from esctl.errors import EsctlError

PING_COUNT = 5
SLOWLOG_LENGTH = 128
CONFIG_PARAMETERS = (
    "maxmemory",
    "maxmemory-policy",
    "appendonly",
    "appendfsync",
    "no-appendfsync-on-rewrite",
    "save",
    "latency-monitor-threshold",
    "slowlog-log-slower-than",
)
REPLICA_TIMEOUT_S = 2.0

_T = TypeVar("_T")


@dataclass
class ReplicaFacts:
    address: str
    reachable: bool
    aof: bool | None = None
    rdb: bool | None = None
    error: str | None = None

    @property
    def persists(self) -> bool | None:
        if self.aof:
            return True
        if self.aof is None or self.rdb is None:
            return None
        return self.rdb


@dataclass
class SlowEntry:
    command: str
    duration_us: int
    started_at: int


@dataclass
class ServerFacts:
    """What doctor read from one server; each ``*_error`` says why a part is missing."""

    name: str
    ping_ms: list[float]
    info: dict[str, Any]
    info_error: str | None = None
    config: dict[str, str] = field(default_factory=dict)
    config_error: str | None = None
    server_time: float | None = None
    latency_latest: list[tuple[str, int, int, int]] | None = None
    latency_doctor: str | None = None
    latency_error: str | None = None
    slowlog: list[SlowEntry] | None = None
    slowlog_error: str | None = None
    replicas: list[ReplicaFacts] = field(default_factory=list)
    cluster_info: dict[str, str] | None = None
    """CLUSTER INFO of a cluster node (None on a standalone server, or when refused)."""
    cluster_error: str | None = None
    tls: str | None = None
    """How the connection is secured (``TLS, CA verified, hostname checked``), None: plain."""

    @property
    def in_cluster(self) -> bool:
        """INFO says cluster mode is on (the server is a Redis Cluster node)."""
        return self.info_int("cluster_enabled") == 1

    def info_int(self, name: str) -> int | None:
        value = self.info.get(name)
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    @property
    def is_primary(self) -> bool:
        return self.info.get("role", "master") == "master"

    @property
    def now(self) -> float:
        return self.server_time if self.server_time is not None else time.time()

    def setting(self, name: str) -> str | None:
        """A setting from CONFIG GET, else from INFO where INFO carries it."""
        if name in self.config:
            return self.config[name]
        fallback = {"maxmemory": "maxmemory", "maxmemory-policy": "maxmemory_policy"}.get(name)
        if fallback and fallback in self.info:
            return str(self.info[fallback])
        if name == "appendonly" and "aof_enabled" in self.info:
            return "yes" if self.info_int("aof_enabled") else "no"
        return None

    def config_unavailable(self, name: str) -> str:
        why = self.config_error or "the server did not return it"
        return f"cannot read {name}: {why}"

    # What a check cannot judge without: when it is missing, Unjudgeable makes the check
    # unavailable (report.guarded), with what to grant.

    def needed_info(self, name: str) -> Any:
        """INFO's field ``name``."""
        return self._info_needed(self.info.get(name))

    def needed_info_int(self, name: str) -> int:
        """INFO's field ``name``, a number (:meth:`info_int`)."""
        return self._info_needed(self.info_int(name))

    def needed_setting(self, name: str) -> str:
        """The setting ``name`` (:meth:`setting`)."""
        return self._setting_needed(name, self.setting(name))

    def needed_setting_int(self, name: str) -> int:
        """The setting ``name``, a number."""
        return self._setting_needed(name, as_int(self.setting(name)))

    def _info_needed(self, value: _T | None) -> _T:
        if value is None:
            raise Unjudgeable(
                f"INFO unavailable: {self.info_error or 'the field is missing'}",
                grant("INFO", "+info"),
            )
        return value

    def _setting_needed(self, name: str, value: _T | None) -> _T:
        if value is None:
            raise Unjudgeable(
                self.config_unavailable(name),
                "check the setting in your provider's console, or "
                + grant("CONFIG GET", "+config|get"),
            )
        return value


def grant(what: str, rules: str) -> str:
    """The action of a check the Redis user may not run: the ACL rules to add, ready to paste
    (README "Credentials and least privilege" gives the same ones for esctl-read)."""
    return f"grant {what} (read-only) to the user in --redis-url: `ACL SETUSER USER {rules}`"


def as_int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _reply_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def error_text(exc: Any) -> str:
    text = redact(str(exc)).strip()
    lowered = text.lower()
    if "unknown command" in lowered:
        text = text.split(", with args beginning with")[0]
        return f"{text} (renamed or disabled, as on managed Redis)"
    if "noperm" in lowered:
        return f"{text} (the user's ACL does not allow it)"
    return text


def _server_nodes(client: redisio.RedisClient) -> list[tuple[str, redis.Redis]]:
    if isinstance(client, redis.cluster.RedisCluster):
        return [
            (f"{node.host}:{node.port}", client.get_redis_connection(node))
            for node in client.get_primaries()
        ]
    return [(redisio.describe(client), client)]


def read_servers(client: redisio.RedisClient) -> dict[str, ServerFacts | str]:
    """Per server (a cluster's primaries, or the one server): what was read from it, or why it
    could not be read."""
    facts: dict[str, ServerFacts | str] = {}
    for name, node in _server_nodes(client):
        try:
            facts[name] = gather_facts(name, node)
        except (redis.exceptions.RedisError, EsctlError) as exc:  # pipelined() wraps errors
            facts[name] = error_text(exc)
    return facts


def gather_facts(name: str, node: redis.Redis, *, probe_replicas: bool = True) -> ServerFacts:
    """Read everything the Redis checks need from one server. Commands the server refuses
    (renamed away, denied by an ACL) leave their part empty with the reason; connection errors
    raise (the caller marks the server unreachable)."""
    pings: list[float] = []
    for _ in range(PING_COUNT):
        started = time.perf_counter()
        node.ping()
        pings.append((time.perf_counter() - started) * 1000)
    facts = ServerFacts(name, pings, {}, tls=tls_description(node))
    try:
        facts.info = dict(node.info())
    except redis.exceptions.ResponseError as exc:
        facts.info_error = error_text(exc)
    _read_settings_and_logs(facts, node)
    if facts.in_cluster:
        (cluster_info,) = redisio.pipelined(node, [("CLUSTER", "INFO")])
        if isinstance(cluster_info, Exception):
            facts.cluster_error = error_text(cluster_info)
        else:
            facts.cluster_info = _parse_cluster_info(_reply_text(cluster_info))
    if probe_replicas and facts.is_primary:
        facts.replicas = [_probe_replica(node, r) for r in replica_addresses(facts.info)]
    return facts


def _read_settings_and_logs(facts: ServerFacts, node: redis.Redis) -> None:
    """In one pipeline: CONFIG GET of each of :data:`CONFIG_PARAMETERS`, TIME, LATENCY LATEST
    and DOCTOR, SLOWLOG GET. A refused command leaves its part empty with the reason."""
    commands: list[tuple[Any, ...]] = [("CONFIG", "GET", p) for p in CONFIG_PARAMETERS]
    commands += [
        ("TIME",),
        ("LATENCY", "LATEST"),
        ("LATENCY", "DOCTOR"),
        ("SLOWLOG", "GET", SLOWLOG_LENGTH),
    ]
    replies = redisio.pipelined(node, commands)
    for parameter, reply in zip(CONFIG_PARAMETERS, replies, strict=False):
        if isinstance(reply, Exception):
            facts.config_error = facts.config_error or error_text(reply)
        elif isinstance(reply, list) and len(reply) >= 2:
            facts.config[parameter] = _reply_text(reply[1])
    time_reply, latest, doctor_text, slowlog = replies[len(CONFIG_PARAMETERS) :]
    if isinstance(time_reply, list) and len(time_reply) == 2:
        facts.server_time = int(time_reply[0]) + int(time_reply[1]) / 1e6
    if isinstance(latest, Exception):
        facts.latency_error = error_text(latest)
    else:
        facts.latency_latest = [
            (_reply_text(e[0]), int(e[1]), int(e[2]), int(e[3])) for e in latest
        ]
        if not isinstance(doctor_text, Exception):
            facts.latency_doctor = _reply_text(doctor_text)
    if isinstance(slowlog, Exception):
        facts.slowlog_error = error_text(slowlog)
    else:
        facts.slowlog = [
            SlowEntry(_reply_text(e[3][0]).upper() if e[3] else "", int(e[2]), int(e[1]))
            for e in slowlog
        ]


def tls_description(node: redis.Redis) -> str | None:
    """How redis-py secures connections to ``node`` (from its ``rediss://`` URL's ``ssl_*``
    parameters), None when it does not."""
    pool = node.connection_pool
    if not issubclass(pool.connection_class, redis.connection.SSLConnection):
        return None
    kw = pool.connection_kwargs
    reqs = str(kw.get("ssl_cert_reqs", "required")).lower()
    if reqs in ("none", "0", "verifymode.cert_none"):
        parts = ["TLS, server certificate NOT verified (ssl_cert_reqs=none)"]
    else:
        parts = ["TLS, CA verified"]
        if str(kw.get("ssl_check_hostname", True)).lower() in ("false", "0"):
            parts.append("hostname NOT checked (ssl_check_hostname=false)")
        else:
            parts.append("hostname checked")
    if kw.get("ssl_certfile"):
        parts.append("client certificate given")
    return ", ".join(parts)


def _parse_cluster_info(text: str) -> dict[str, str]:
    """CLUSTER INFO's ``field:value`` lines."""
    pairs = (line.partition(":") for line in text.splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, _, value in pairs}


def replica_addresses(info: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        v
        for k, v in sorted(info.items())
        if k.startswith("slave") and k[5:].isdigit() and isinstance(v, dict)
    ]


def _probe_replica(primary: redis.Redis, entry: dict[str, Any]) -> ReplicaFacts:
    """Ask a replica (with the primary's credentials, a short timeout) whether it persists."""
    host, port = str(entry.get("ip")), int(entry.get("port", 0))
    address = f"{host}:{port}"
    pool = primary.connection_pool
    kwargs = {
        k: v for k, v in pool.connection_kwargs.items() if k not in ("path", "host", "port", "db")
    }
    connection_class = pool.connection_class
    if connection_class is redis.connection.UnixDomainSocketConnection:
        connection_class = redis.connection.Connection
    kwargs.update(
        host=host,
        port=port,
        socket_timeout=REPLICA_TIMEOUT_S,
        socket_connect_timeout=REPLICA_TIMEOUT_S,
    )
    replica = redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=connection_class, **kwargs)
    )
    try:
        facts = ReplicaFacts(address, True)
        info = replica.info("persistence")
        facts.aof = bool(int(info.get("aof_enabled", 0)))
        try:
            save = replica.config_get("save").get("save")
            facts.rdb = bool(save and str(save).strip())
        except redis.exceptions.ResponseError as exc:
            facts.error = f"CONFIG GET save: {error_text(exc)}"
        return facts
    except redis.exceptions.RedisError as exc:
        return ReplicaFacts(address, False, error=error_text(exc))
    finally:
        replica.close()


def memory_limit(facts: Sequence[ServerFacts]) -> int | None:
    """What the servers can hold together: the sum of their ``maxmemory``; a server without
    one is bounded by its host's memory, counted once per host (cluster nodes often share a
    host, and then share its memory). None when a server's limit is unknown."""
    total = 0
    hosts: dict[str, int] = {}
    for f in facts:
        maxmemory = as_int(f.setting("maxmemory"))
        if maxmemory:
            total += maxmemory
            continue
        system = f.info_int("total_system_memory")
        if not system:
            return None
        hosts[f.name.rpartition(":")[0] or f.name] = system
    return total + sum(hosts.values())

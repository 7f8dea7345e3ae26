"""PostgreSQL side: connections, the library's event-store schema (docs/layout.md §5) and esctl's own
bookkeeping schema. An existing event-store schema is checked, never altered."""

from __future__ import annotations

import os
import shlex
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from esctl import inflight, privileges
from esctl.config import redact, redact_error, refuse_unencoded_password
from esctl.errors import ConnectionFailed, PermissionDenied, SchemaIncompatible, ServerError

GRANTS_DOCS = privileges.DOCS
"""Where the grants each command family needs are documented."""
_REFUSED_CREDENTIALS = (
    "password authentication failed",
    "no password supplied",
    "scram",
    "pg_hba.conf",
    "role ",
)
STATE_SCHEMA = "esctl"
"""Where esctl keeps its own tables (runs, checkpoints, quarantine)."""


@dataclass(frozen=True)
class PgTarget:
    """The PostgreSQL side of an operation on an app's migrated events (the base of the
    migrate, plan and prune options): the app, the database, the schema of its event tables."""

    app: str
    pg_dsn: str
    pg_schema: str = "public"


def int_array(values: list[int]) -> str:
    """An ``int[]`` parameter as its array literal, made in one C-level join (psycopg dumps a
    list element by element in Python: ~0.5 ms per 1,000 ints, measured)."""
    return "{" + ",".join(map(str, values)) + "}"


def text_array(values: list[str]) -> str:
    """A ``text[]`` parameter as its array literal, made in C-level joins (psycopg dumps a list
    element by element in Python: ~0.7 ms per 1,000 ids, measured). Every element is quoted, so
    braces, commas, spaces and ``NULL`` stay text; only ``\\`` and ``"`` need escaping there."""
    if not values:
        return "{}"
    if '"' in (joined := "".join(values)) or "\\" in joined:
        values = [v.replace("\\", "\\\\").replace('"', '\\"') for v in values]
    return '{"' + '","'.join(values) + '"}'


def describe_dsn(dsn: str) -> str:
    return redact(dsn)


def connect(
    dsn: str, *, autocommit: bool = False, application_name: str = "esctl"
) -> psycopg.Connection:
    """Open a connection; failures become ConnectionFailed with the password hidden (also a
    piece of it that libpq, misreading a URL whose password holds an unencoded ``@`` or ``/``,
    took for the host: :func:`esctl.config.redact_error`)."""
    refuse_unencoded_password("PostgreSQL URL", dsn, describe_dsn(dsn))
    try:
        conn = psycopg.connect(
            dsn, autocommit=autocommit, application_name=application_name, connect_timeout=10
        )
    except psycopg.OperationalError as exc:
        shown = describe_dsn(dsn)
        text = redact_error(str(exc), dsn).strip()
        # An SSL reason first: a server that takes SSL only answers a plain connection with
        # "no pg_hba.conf entry ... no encryption", which is not about the credentials.
        tls = ssl_hint(str(exc))
        if "certificate verify failed" in str(exc):
            why = certificate_problem(dsn)
            if why is not None:
                text = f"{text} ({why})"
                if "expired" in why or "not yet valid" in why:  # else: the CA's
                    tls = ssl_hint(why)
        if tls is None and any(sign in text for sign in _REFUSED_CREDENTIALS):
            raise ConnectionFailed(
                f"PostgreSQL {shown} refused the credentials: {text}",
                server=shown,
                hint="check the user and password in --pg-dsn / ESCTL_PG_DSN or the profile "
                "(postgresql://USER:PASSWORD@host:port/db, a % in the password written %25), "
                "PGPASSWORD, or the .pgpass file (PGPASSFILE; it must be mode 0600; a : or \\ "
                "in a field written \\: or \\\\), and the server's pg_hba.conf",
            ) from None
        raise ConnectionFailed(
            f"cannot connect to PostgreSQL {shown}: {text}",
            server=shown,
            hint=tls or "check that PostgreSQL is running and --pg-dsn / ESCTL_PG_DSN is right",
        ) from None
    except psycopg.ProgrammingError as exc:
        shown = describe_dsn(dsn)
        raise ConnectionFailed(
            f"bad PostgreSQL DSN {shown}: {redact_error(str(exc), dsn)}",
            server=shown,
            hint="use postgresql://user:password@host:port/dbname or libpq key=value form "
            "(host=… dbname=… user=… password=…: a value that holds spaces, ' or \\ goes in "
            "single quotes, ' and \\ in it written \\' and \\\\)",
        ) from None
    return conn


@contextmanager
def pipelined(conn: psycopg.Connection) -> Iterator[Callable[[], None]]:
    """Statements executed in the block go in one round trip (psycopg's pipeline mode), the
    results due at the ``sync`` it yields or at the block's end. Where libpq cannot (before
    14: psycopg without its binary package, on an old system libpq) each statement takes its
    own round trip as before, and ``sync`` does nothing."""
    if not psycopg.Pipeline.is_supported():
        yield lambda: None
        return
    with conn.pipeline() as pipeline:
        yield pipeline.sync


def read_ended(
    conn: psycopg.Connection, query: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    """The rows of one read, its transaction ended at once: a command that runs for hours
    between its reads holds no snapshot (which would hold back VACUUM) and sees what was
    committed meanwhile at its next read."""
    rows = conn.execute(query, params).fetchall()
    conn.commit()
    return rows


def round_trip(conn: psycopg.Connection) -> float:
    """The shortest of three ``SELECT 1``, seconds: the network's share of every statement.
    (Outside a transaction it starts one, which the caller's next statements then use.)"""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        conn.execute("SELECT 1")
        best = min(best, time.perf_counter() - started)
    return best


PAGE_ROWS = 2000
"""Rows a server-side cursor fetches at a time (:func:`pages_ahead`)."""


def pages_ahead(cursor: psycopg.Cursor[Any], rows: int = PAGE_ROWS) -> Iterator[list[Any]]:
    """The rows of an executed (server-side) cursor, ``rows`` at a time, the next FETCH asked
    for by a thread of its own while the caller uses a page (its round trip hidden when the
    server is at a distance: docs/design/distance.md). The caller must not use the
    connection until this is exhausted or closed."""

    def pages() -> Iterator[list[Any]]:
        while page := cursor.fetchmany(rows):
            yield page

    yield from inflight.prefetched(pages(), size=2)


_SSL_HINTS = (
    (
        "does not match host name",
        "the server's certificate does not name the host in the DSN: connect by a name the "
        "certificate lists, or (with hostaddr=IP) give that name as host; sslmode=verify-ca "
        "skips the name check",
    ),
    (
        "root certificate file",
        "libpq found no CA file: give it with sslrootcert=/path/ca.pem in the DSN (or "
        "PGSSLROOTCERT), or sslrootcert=system for the system's CAs",
    ),
    (
        "certificate has expired",
        "the server's certificate has expired: renew it on the server (its ssl_cert_file and "
        "ssl_key_file; `SELECT pg_reload_conf()` loads a new pair without a restart), or, if "
        "it should still be valid, check this machine's clock",
    ),
    (
        "certificate is not yet valid",
        "the server's certificate is not valid yet: check this machine's clock (and the "
        "server's), or the certificate's notBefore date",
    ),
    (
        "certificate verify failed",
        "the server's certificate is not signed by the CA in sslrootcert (DSN key, or "
        "PGSSLROOTCERT; default ~/.postgresql/root.crt): point it at the CA that signed it",
    ),
    (
        "server does not support SSL",
        "the server does not accept SSL connections (its ssl setting is off): turn ssl on on "
        "the server (ssl = on, ssl_cert_file, ssl_key_file), or, only on a network you trust, "
        "connect without it (sslmode=prefer or disable)",
    ),
    (
        "no encryption",
        "the server accepts SSL connections only: use sslmode=verify-full with "
        "sslrootcert=/path/ca.pem (or at least sslmode=require)",
    ),
    (
        "certificate",
        "check the SSL settings of the DSN: sslmode, sslrootcert, and sslcert / sslkey when "
        "the server asks for a client certificate",
    ),
)


def ssl_hint(error: str) -> str | None:
    """What to check when a connection failed with ``error`` for an SSL reason (libpq's own
    DSN keys), or None."""
    return next((hint for mark, hint in _SSL_HINTS if mark in error), None)


_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
"""The message that asks a PostgreSQL server to go on in SSL (it answers S or N)."""


def certificate_problem(dsn: str, timeout: float = 5.0) -> str | None:
    """Why the certificate of ``dsn``'s server fails verification, in OpenSSL's words
    ("certificate has expired", "unable to get local issuer certificate"): libpq says only
    "certificate verify failed". Found by a handshake of Python's own with the CA libpq uses
    (``sslrootcert``, ``PGSSLROOTCERT``, ``~/.postgresql/root.crt``, ``system``), to the first
    host (``hostaddr`` first) and port; the name is not checked (libpq says when that fails).
    None when that cannot tell (a socket directory, a server gone, no SSL offered)."""
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.Error:
        return None
    env = os.environ

    def setting(key: str, variable: str, default: str) -> str:
        value = given.get(key) or env.get(variable) or default
        return str(value).split(",")[0].strip()

    host = setting("hostaddr", "PGHOSTADDR", "") or setting("host", "PGHOST", "localhost")
    root = setting("sslrootcert", "PGSSLROOTCERT", str(Path.home() / ".postgresql/root.crt"))
    if host.startswith("/") or host.startswith("@"):
        return None
    try:
        port = int(setting("port", "PGPORT", "5432"))
        context = ssl.create_default_context(cafile=None if root == "system" else root)
        context.check_hostname = False
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_SSL_REQUEST)
            if sock.recv(1) != b"S":
                return None
            context.wrap_socket(sock).close()
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message or "") or None
    except (OSError, ValueError):
        return None
    return None


def lost_connection(dsn: str, exc: Exception) -> ConnectionFailed:
    shown = describe_dsn(dsn)
    return ConnectionFailed(
        f"lost the connection to PostgreSQL {shown}: {redact(str(exc)).strip()}",
        server=shown,
        hint="the last batch was rolled back; rerun the same command to continue from the "
        "last committed batch",
    )


def permission_denied(dsn: str, exc: Exception) -> PermissionDenied:
    """The error for PostgreSQL's insufficient_privilege: the server, what it refused (its
    message names the table, schema or function) and where the grants are documented."""
    try:
        dbname = conninfo_to_dict(dsn).get("dbname") or os.environ.get("PGDATABASE")
    except psycopg.Error:
        dbname = None
    return PermissionDenied(
        f"PostgreSQL {describe_dsn(dsn)} refused: {redact(str(exc)).strip()}",
        hint=privileges.pg_hint(str(dbname) if dbname else None),
    )


@contextmanager
def translate_errors(dsn: str) -> Iterator[None]:
    """Map psycopg's errors to esctl's: a broken connection is ConnectionFailed (safe to rerun),
    anything else a ServerError naming the server."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise lost_connection(dsn, exc) from exc
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CrashShutdown):
            raise lost_connection(dsn, exc) from exc
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            raise permission_denied(dsn, exc) from exc
        raise ServerError(
            f"PostgreSQL {describe_dsn(dsn)} answered with an error: {redact(str(exc)).strip()}"
        ) from exc


# --- the library's event store ------------------------------------------------------------

EVENT_STORE_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.aggregate (
    aggregate_key bigserial PRIMARY KEY,
    aggregate_id varchar NOT NULL,
    aggregate_type varchar(255) NOT NULL,
    application_name varchar(255) NOT NULL,
    audit_create_date timestamptz DEFAULT current_timestamp,
    UNIQUE (aggregate_id, application_name, aggregate_type)
);
CREATE TABLE IF NOT EXISTS {schema}.event (
    event_id bigserial PRIMARY KEY,
    aggregate_key bigint REFERENCES {schema}.aggregate,
    time_stamp timestamptz NOT NULL,
    version int NOT NULL,
    event_type varchar(255) NOT NULL,
    event_data jsonb NOT NULL,
    audit_create_date timestamptz DEFAULT current_timestamp,
    UNIQUE (aggregate_key, version)
);
"""

SAVE_FUNCTION = """
CREATE FUNCTION {schema}.save_event_for_aggregate(
    "AggregateId" varchar, "AggregateType" varchar, "ApplicationName" varchar,
    "Version" int, "TimeStamp" timestamptz, "EventType" varchar, "EventData" text
) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    key bigint;
BEGIN
    SELECT a.aggregate_key INTO key FROM {schema}.aggregate a
     WHERE a.aggregate_id = "AggregateId" AND a.aggregate_type = "AggregateType"
       AND a.application_name = "ApplicationName";
    IF key IS NULL THEN
        INSERT INTO {schema}.aggregate (aggregate_id, aggregate_type, application_name)
        VALUES ("AggregateId", "AggregateType", "ApplicationName")
        RETURNING aggregate_key INTO key;
    END IF;
    INSERT INTO {schema}.event (aggregate_key, time_stamp, version, event_type, event_data)
    VALUES (key, "TimeStamp", "Version", "EventType", "EventData"::jsonb);
END;
$fn$;
"""

GET_FUNCTION = """
CREATE FUNCTION {schema}.get_events_for_aggregate(
    "AggregateId" varchar, "ApplicationName" varchar, "AggregateType" varchar,
    "FromVersion" int = 1
) RETURNS SETOF text LANGUAGE sql STABLE AS $fn$
    SELECT e.event_data #>> '{{}}'
      FROM {schema}.event e
      JOIN {schema}.aggregate a ON a.aggregate_key = e.aggregate_key
     WHERE a.aggregate_id = "AggregateId"
       AND a.application_name = "ApplicationName"
       AND e.version > "FromVersion"
     ORDER BY e.version
$fn$;
"""
# The library's read function filters on id and application only (not AggregateType); esctl's
# copy keeps that contract so a service sees the same rows it would through the library.

# (table, column) -> accepted data types (information_schema.columns.data_type)
REQUIRED_COLUMNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("aggregate", "aggregate_key"): ("bigint",),
    ("aggregate", "aggregate_id"): ("character varying", "text"),
    ("aggregate", "aggregate_type"): ("character varying", "text"),
    ("aggregate", "application_name"): ("character varying", "text"),
    ("event", "aggregate_key"): ("bigint",),
    ("event", "time_stamp"): ("timestamp with time zone",),
    ("event", "version"): ("integer", "bigint"),
    ("event", "event_type"): ("character varying", "text"),
    ("event", "event_data"): ("jsonb",),
}
REQUIRED_UNIQUE: dict[str, tuple[str, ...]] = {
    "aggregate": ("aggregate_id", "application_name", "aggregate_type"),
    "event": ("aggregate_key", "version"),
}


@dataclass(frozen=True)
class SchemaState:
    tables_present: bool
    functions_present: tuple[str, ...]


def _format(template: str, schema: str) -> str:
    return template.format(schema=sql.Identifier(schema).as_string(None))


_COLUMNS_SQL = (
    "SELECT table_name, column_name, data_type, character_maximum_length"
    " FROM information_schema.columns"
    " WHERE table_schema = %s AND table_name IN ('aggregate', 'event')"
)
_FUNCTIONS_SQL = (
    "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = %s AND p.proname IN"
    " ('save_event_for_aggregate', 'get_events_for_aggregate')"
)
# The columns of each unique index (without a predicate) of the named tables.
_UNIQUE_SQL = """
    SELECT c.relname, array_agg(a.attname ORDER BY a.attname)
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
     WHERE n.nspname = %s AND c.relname = ANY(%s) AND i.indisunique AND i.indpred IS NULL
     GROUP BY i.indexrelid, c.relname
"""


def check_event_store_schema(conn: psycopg.Connection, schema: str) -> SchemaState:
    """Check that ``schema.aggregate`` / ``schema.event`` are usable by esctl. Missing tables
    are reported (``tables_present=False``); tables that exist but differ raise
    SchemaIncompatible naming the table and column. (The catalog is read in one round trip.)"""
    with (
        pipelined(conn) as sync,
        conn.cursor() as columns_read,
        conn.cursor() as unique_read,
        conn.cursor() as functions_read,
    ):
        columns_read.execute(_COLUMNS_SQL, (schema,))
        unique_read.execute(_UNIQUE_SQL, (schema, list(REQUIRED_UNIQUE)))
        functions_read.execute(_FUNCTIONS_SQL, (schema,))
        sync()
        rows = columns_read.fetchall()
        unique_keys = [(r[0], sorted(r[1])) for r in unique_read.fetchall()]
        functions = tuple(sorted({r[0] for r in functions_read.fetchall()}))
    columns = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    tables = {r[0] for r in rows}
    if not tables:
        return SchemaState(False, functions)
    for table in ("aggregate", "event"):
        if table not in tables:
            raise SchemaIncompatible(
                f"table {schema}.{table} is missing while {schema}.{next(iter(tables))} exists",
                hint="create it as in docs/layout.md §5, or drop the partial schema and use "
                "--init-schema",
            )
    for (table, column), accepted in REQUIRED_COLUMNS.items():
        found = columns.get((table, column))
        if found is None:
            raise SchemaIncompatible(
                f"table {schema}.{table} has no column {column}",
                hint="esctl never alters an existing schema; fix it to match docs/layout.md §5",
            )
        if found[0] not in accepted:
            raise SchemaIncompatible(
                f"column {schema}.{table}.{column} is {found[0]}, expected {' or '.join(accepted)}",
                hint="esctl never alters an existing schema; fix it to match docs/layout.md §5",
            )
    for table, wanted in REQUIRED_UNIQUE.items():
        if (table, sorted(wanted)) not in unique_keys:
            raise SchemaIncompatible(
                f"table {schema}.{table} has no UNIQUE constraint or index on "
                f"({', '.join(wanted)})",
                hint="idempotent loading relies on it; add it as in docs/layout.md §5",
            )
    return SchemaState(True, functions)


def _has_unique(conn: psycopg.Connection, schema: str, table: str, cols: tuple[str, ...]) -> bool:
    rows = conn.execute(_UNIQUE_SQL, (schema, [table])).fetchall()
    return any(sorted(r[1]) == sorted(cols) for r in rows)


def require_event_tables(conn: psycopg.Connection, schema: str, app: str | None = None) -> None:
    """The event tables a migration wrote, checked as :func:`check_event_store_schema` checks
    them, for the commands that read them (verify, prune, events query, replay: they take no
    ``--init-schema``). Missing, the hint names the schema option and the command that creates
    them (for ``app`` when given)."""
    if not check_event_store_schema(conn, schema).tables_present:
        command = "esctl migrate redis-to-pg" + (f" --app {shlex.quote(app)}" if app else "")
        raise SchemaIncompatible(
            f"the event tables {schema}.aggregate and {schema}.event do not exist",
            hint=f"nothing was migrated into schema {schema}: check --pg-schema / "
            f"ESCTL_PG_SCHEMA, or migrate first with `{command} --init-schema` "
            "(docs/layout.md §5)",
        )


def ensure_event_store_schema(conn: psycopg.Connection, schema: str, *, create: bool) -> None:
    """Check the event-store schema; with ``create``, create what is missing (tables,
    constraints, the two functions). Without it, missing tables are an error."""
    if create:
        # Two first runs with --init-schema at once: CREATE ... IF NOT EXISTS alone still
        # races (a duplicate pg_type row); the second waits here, then finds the tables.
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"esctl:ddl:{schema}",)
        )
    state = check_event_store_schema(conn, schema)
    created = False
    if not state.tables_present:
        if not create:
            raise SchemaIncompatible(
                f"the event tables {schema}.aggregate and {schema}.event do not exist",
                hint="run with --init-schema to create them (docs/layout.md §5)",
            )
        conn.execute(_format(EVENT_STORE_DDL, schema))
        created = True
    if create:
        for name, ddl in (
            ("save_event_for_aggregate", SAVE_FUNCTION),
            ("get_events_for_aggregate", GET_FUNCTION),
        ):
            if name not in state.functions_present:
                conn.execute(_format(ddl, schema))
                created = True
    if created:  # what was just made must pass the same check
        check_event_store_schema(conn, schema)


# --- esctl's bookkeeping -------------------------------------------------------------------

STATE_DDL = """
CREATE SCHEMA IF NOT EXISTS esctl;
CREATE TABLE IF NOT EXISTS esctl.migration_run (
    run_id text PRIMARY KEY,
    target_schema text NOT NULL,
    application_name text NOT NULL,
    shard text NOT NULL,
    status text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    options jsonb
);
CREATE INDEX IF NOT EXISTS migration_run_job
    ON esctl.migration_run (target_schema, application_name, shard, started_at);
CREATE TABLE IF NOT EXISTS esctl.migration_batch (
    run_id text NOT NULL REFERENCES esctl.migration_run ON DELETE CASCADE,
    seq int NOT NULL,
    scan_position text NOT NULL,
    aggregates int NOT NULL,
    events_migrated int NOT NULL,
    events_already_present int NOT NULL,
    aggregates_quarantined int NOT NULL,
    events_quarantined int NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS esctl.migrated_stream (
    target_schema text NOT NULL,
    application_name text NOT NULL,
    aggregate_id text NOT NULL,
    aggregate_type text NOT NULL,
    commits int NOT NULL,
    last_commit_id text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, application_name, aggregate_id)
);
CREATE TABLE IF NOT EXISTS esctl.quarantine (
    quarantine_id bigserial PRIMARY KEY,
    run_id text NOT NULL,
    target_schema text NOT NULL,
    application_name text NOT NULL,
    aggregate_id text NOT NULL,
    commit_id text,
    kind text NOT NULL,
    detail text NOT NULL,
    stored_value bytea,
    events int NOT NULL DEFAULT 0,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS quarantine_aggregate
    ON esctl.quarantine (target_schema, application_name, aggregate_id);
-- A run's summary and `migrate status` count its problems by run_id: without this, every
-- run scans the problems of all earlier runs (a year of nightly runs quarantining 2,000
-- aggregates each: 117 ms a query, 2.4 ms with it).
CREATE INDEX IF NOT EXISTS quarantine_run ON esctl.quarantine (run_id);
-- migrate prune: the hash fields an aggregate's delete is about to remove, kept until they are
-- removed, so a prune killed between deleting a list and its fields is finished by the next.
-- Keys are bytes: any Redis key round-trips.
CREATE TABLE IF NOT EXISTS esctl.prune_pending (
    target_schema text NOT NULL,
    application_name text NOT NULL,
    aggregate_id text NOT NULL,
    first_commit_id bytea NOT NULL,
    hash_keys bytea[] NOT NULL,
    commit_ids bytea[] NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_schema, application_name, aggregate_id)
);
-- replay --to projection --checkpoint NAME [--shard I/N]: where the replay (of that shard)
-- stands, updated in the same transaction as each batch's projection writes (esctl.replay
-- documents the positions). Unsharded runs are shard '0/1'.
CREATE TABLE IF NOT EXISTS esctl.projection_checkpoint (
    name text NOT NULL,
    shard text NOT NULL DEFAULT '0/1',
    projection text NOT NULL,
    application_name text NOT NULL,
    source text NOT NULL,
    replay_order text NOT NULL,
    selection jsonb NOT NULL,
    selection_now timestamptz NOT NULL,
    position jsonb,
    events bigint NOT NULL DEFAULT 0,
    dead_lettered bigint NOT NULL DEFAULT 0,
    batches bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (name, shard)
);
-- Made by esctl before --shard: keyed by name alone. Rekeyed once, its rows becoming shard
-- '0/1'; the catalog is asked first, so once done this takes no lock on the table (an ALTER
-- would wait for, and hold up, the batches of replays running meanwhile).
DO $$
DECLARE
    old_key text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'esctl.projection_checkpoint'::regclass
                   AND attname = 'shard' AND NOT attisdropped) THEN
        SELECT conname INTO old_key FROM pg_constraint
         WHERE conrelid = 'esctl.projection_checkpoint'::regclass AND contype = 'p';
        ALTER TABLE esctl.projection_checkpoint ADD COLUMN shard text NOT NULL DEFAULT '0/1';
        IF old_key IS NOT NULL THEN
            EXECUTE format('ALTER TABLE esctl.projection_checkpoint DROP CONSTRAINT %I', old_key);
        END IF;
        ALTER TABLE esctl.projection_checkpoint ADD PRIMARY KEY (name, shard);
    END IF;
END
$$;
-- replay --skip-errors: events a projection failed on.
CREATE TABLE IF NOT EXISTS esctl.projection_dead_letter (
    dead_letter_id bigserial PRIMARY KEY,
    checkpoint_name text,
    projection text NOT NULL,
    application_name text NOT NULL,
    source text NOT NULL,
    aggregate_id text NOT NULL,
    aggregate_type text NOT NULL,
    version int NOT NULL,
    event_type text NOT NULL,
    commit_id text,
    position jsonb NOT NULL,
    error text NOT NULL,
    payload text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS projection_dead_letter_checkpoint
    ON esctl.projection_dead_letter (checkpoint_name, recorded_at);
"""


def ensure_state_schema(conn: psycopg.Connection) -> None:
    """Create esctl's bookkeeping tables when missing (idempotent, concurrency-safe)."""
    # CREATE ... IF NOT EXISTS can still race between two first runs: serialise on a lock
    # (taken by the first statement of the same script: one round trip).
    conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('esctl:state-ddl', 0));" + STATE_DDL
    )
    _upgrade_state_schema(conn)


STATE_COLUMNS = {
    # Added with migrate --transforms; NULL means "migrated without transforms", which is what
    # every row of an install from before holds.
    ("migration_run", "transforms"): "text",
    ("migration_run", "transforms_file"): "text",
    ("migrated_stream", "transforms"): "text",
    ("migrated_stream", "last_source_version"): "int",
    ("migrated_stream", "last_version"): "int",
    # Added with replay --transforms: the rules' fingerprint a checkpoint was made with (NULL:
    # without rules).
    ("projection_checkpoint", "transforms"): "text",
}


def _upgrade_state_schema(conn: psycopg.Connection) -> None:
    """Add the bookkeeping columns an install from an earlier esctl lacks (ALTER only when one
    is missing: it takes a table lock)."""
    present = set(
        conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'esctl'"
        ).fetchall()
    )
    for (table, column), kind in STATE_COLUMNS.items():
        if (table, column) not in present:
            conn.execute(
                sql.SQL("ALTER TABLE esctl.{} ADD COLUMN IF NOT EXISTS {} " + kind).format(
                    sql.Identifier(table), sql.Identifier(column)
                )
            )


def state_schema_present(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('esctl.migrated_stream') IS NOT NULL").fetchone()
    return bool(row and row[0])

"""The note that ``--app`` names an app with no keys in the Redis database a command read.

A typo in ``--app`` / ``ESCTL_APP`` otherwise gives an empty, successful answer (integrity
"no problems", a migration of 0 events, every night). A command that found nothing of its
app calls :func:`note_if_no_keys` after its result: when the app has no commit list, event
hash or snapshot there at all, a ``note:`` on stderr says so, names the server and the apps
that do have keys (a bounded SCAN: :func:`esctl.storereads.apps_with_keys`). It is a note:
the exit code and stdout (``--json`` too) stay what they were, and a store emptied by a full
prune is not a failure. A command that found something of its app pays nothing.

The commands that read the migrated events in PostgreSQL instead (``events query --source pg``,
``replay --from pg``) call :func:`note_if_no_aggregates`: the same note when the app has no row in
the schema's ``aggregate`` table, naming the apps that have (a bounded read:
:func:`esctl.pgevents.apps_with_aggregates`).

``queue list`` has the same kind of note for an ``--env``, ``--subscriber`` or ``--type`` that
matches no queue (:func:`note_if_no_queues`), and ``queue list --watch`` the same words in a line
under its table (:func:`no_queue_texts`).
"""

from __future__ import annotations

import sys
import traceback
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from esctl import errors, layout
from esctl.cli.context import Context
from esctl.cli.errors import EXIT_INTERRUPTED
from esctl.config import APP_SETTING

if TYPE_CHECKING:  # the drivers load when a command runs, not at startup
    from esctl import pgevents, queues, storereads

EVERY_FAMILY = frozenset(layout.STORE_KEY_FAMILIES)
"""What a command that scanned commit lists, event hashes (partitioned and legacy) and
snapshots whole has looked at (``inspect stats``)."""
EVENT_KEYS = frozenset({layout.COMMIT_LIST, layout.EVENT_HASH, layout.LEGACY_HASH})
PAYLOAD_HASHES = frozenset({layout.EVENT_HASH, layout.LEGACY_HASH, layout.SNAPSHOT_HASH})
COMMIT_LISTS = frozenset({layout.COMMIT_LIST})


def note_if_no_keys(ctx: Context, *, seen: bool, looked_at: Collection[str] = ()) -> None:
    """After a command that read ``ctx.app``'s event store in Redis and ``seen`` nothing of
    it: when the app has no key there at all, a note on stderr naming the app, the server and
    the apps that have keys there. ``looked_at``: the families (:data:`layout.
    STORE_KEY_FAMILIES`) the command scanned whole, finding none; the others are looked for
    now (one SCAN that stops at the first key). Never fails the command (:func:`_after_result`)."""
    if seen:
        return
    from esctl import redisio, storereads

    with _after_result(ctx, "the app's keys"):
        client = ctx.redis
        app = ctx.app
        unseen = [f for f in layout.STORE_KEY_FAMILIES if f not in looked_at]
        found = None
        if unseen:
            found = storereads.find_store_key(client, app, unseen, max_seconds=SEARCH_SECONDS)
            if found is not None and found != storereads.SEARCH_CUT:
                return
        here = storereads.apps_with_keys(client)
        if here.has(app):  # written meanwhile
            return
        server = redisio.describe(client)
        check = ctx.settings.where_set("app")
        if found == storereads.SEARCH_CUT:  # a large keyspace: what the command saw is sure
            ctx.out.note(no_commits_text(app, server, looked_at, here, check))
        else:
            ctx.out.note(no_keys_text(app, server, here, check))


def note_if_no_aggregates(ctx: Context, *, seen: bool) -> None:
    """After a command that read ``ctx.app``'s migrated events in PostgreSQL and ``seen`` none:
    when the app has no row in ``ctx.pg_schema``'s ``aggregate`` table, a note on stderr naming
    the app, the database and schema, and apps that have rows there. Nothing when the tables are
    missing (the command said so) or the look-up outlasts :data:`SEARCH_SECONDS`. Never fails
    the command (:func:`_after_result`)."""
    if seen:
        return
    from esctl import pg, pgevents

    with _after_result(ctx, "the app's aggregates"):
        app = ctx.app
        found = pgevents.apps_with_aggregates(
            ctx.pg_dsn, ctx.pg_schema, app, max_seconds=SEARCH_SECONDS
        )
        if found is None or found.has_app:
            return
        server = pg.describe_dsn(ctx.pg_dsn)
        check = ctx.settings.where_set("app")
        ctx.out.note(no_aggregates_text(app, server, ctx.pg_schema, found, check))


def note_if_no_queues(
    ctx: Context,
    listing: queues.QueueListing,
    *,
    event_types: Collection[str] = (),
    subscribers: Collection[str] = (),
) -> None:
    """After ``queue list``: a note on stderr for each name it was given that matches no queue
    (a typo that would list nothing, in a cron job's metrics file too): the texts of
    :func:`no_queue_texts`. Never fails the command (:func:`_after_result`)."""
    with _after_result(ctx, "the environment's queues"):
        for text in no_queue_texts(ctx, listing, event_types=event_types, subscribers=subscribers):
            ctx.out.note(text)


def no_queue_texts(
    ctx: Context,
    listing: queues.QueueListing,
    *,
    event_types: Collection[str] = (),
    subscribers: Collection[str] = (),
) -> list[str]:
    """What to say of each name ``listing`` was asked for that matches no queue in it: an
    environment with no queue list, Subscribers set or RetryData hash here, naming the
    environments that have Subscribers sets; a ``--subscriber`` or ``--type`` with no queue in
    the environment, naming those that have. For ``queue list``'s notes on stderr and the lines
    under ``queue list --watch``'s table. A listing that shows each name pays nothing (no
    text); otherwise one more SCAN of the environment's keys (and, for an empty one, the
    bounded SCAN of the Subscribers sets)."""
    shown_subscribers = {q.subscriber for q in listing.queues}
    shown_types = {q.event_type for q in listing.queues} | set(listing.retry_data)
    unknown_subscribers = [s for s in subscribers if s not in shown_subscribers]
    unknown_types = [t for t in event_types if t not in shown_types]
    empty = not listing.queues and not listing.retry_data
    if not (unknown_subscribers or unknown_types or empty):
        return []
    from esctl import queues, redisio, storereads

    client = ctx.redis
    env = listing.env
    pairs = [(q.subscriber, q.event_type) for q in listing.queues]
    retry_data = listing.retry_data
    if event_types or subscribers:  # what the filters left out
        found = queues.find_queues(client, env)
        pairs = [(r.subscriber, r.event_type) for r in found.refs]
        retry_data = found.retry_data
    if not pairs and not retry_data:
        here = queues.envs_with_queues(client)
        if here.has(env):  # written meanwhile
            return []
        return [
            f"env {redisio.printable(env)} has no queues in Redis "
            f"{redisio.describe(client)} (no Subscribers:{{{env}:TYPE}} set, queue list "
            f"or RetryData hash); {here.text(env, ctx.settings.where_set('env'))}"
        ]
    texts = []
    for what, names, given, check in (
        ("subscriber", Counter(sub for sub, _ in pairs), unknown_subscribers, "--subscriber"),
        (
            "event type",
            Counter(t for _, t in pairs) + Counter(retry_data),
            unknown_types,
            "--type",
        ),
    ):
        kind = storereads.NameKind(f"{what}s with queues in this environment", "", "", check)
        here = storereads.NamesHere(dict(names), 0, None, True, kind)
        texts += [
            f"{what} {redisio.printable(name)} has no queue in env "
            f"{redisio.printable(env)}; {here.text(name)}"
            for name in given
            if not here.has(name)
        ]
    return texts


@contextmanager
def _after_result(ctx: Context, looking_for: str) -> Iterator[None]:
    """Around a note's look-up, after the command's result: an error on the way leaves the
    note out (its traceback with --debug); Ctrl-C exits 130 without a second document on
    stdout."""
    from esctl import redisio

    try:
        yield
    except (errors.EsctlError, *redisio.REDIS_ERRORS):
        if ctx.debug:
            traceback.print_exc(file=sys.stderr)
    except KeyboardInterrupt:
        # The result is out (with --json, stdout's one document): no error document after it.
        ctx.out.error(f"interrupted while looking for {looking_for}, after the command completed")
        raise typer.Exit(EXIT_INTERRUPTED) from None


@contextmanager
def apps_hint_on_not_found(ctx: Context) -> Iterator[None]:
    """Around a command that looks up one key of ``ctx.app`` (an aggregate, a commit id): when
    it raises NotFound, first a note on the apps with keys here, from the bounded SCAN alone
    (no full scan for a lookup that took one round trip): that the app has no keys when the
    SCAN saw the whole keyspace, else that none of the keys it saw are the app's (said only
    when it saw other apps' keys)."""
    try:
        yield
    except errors.NotFound:
        _hint_unknown_app(ctx)
        raise


def _hint_unknown_app(ctx: Context) -> None:
    from esctl import redisio, storereads

    try:
        client = ctx.redis
        app = ctx.app
        here = storereads.apps_with_keys(client)
        if here.has(app):
            return
        server = redisio.describe(client)
        check = ctx.settings.where_set("app")
        if here.complete:
            ctx.out.note(no_keys_text(app, server, here, check))
        elif here.listed(app):
            ctx.out.note(
                f"none of the keys seen in Redis {server} is app {_name(app)}'s; "
                f"{here.text(app, check)}"
            )
    except (errors.EsctlError, *redisio.REDIS_ERRORS):
        if ctx.debug:
            traceback.print_exc(file=sys.stderr)


def no_keys_text(
    app: str, server: str, here: storereads.NamesHere, check: str = APP_SETTING
) -> str:
    """The note: ``app`` has no keys on ``server``, and what ``here`` found instead; ``check``:
    where the app name was set (:meth:`esctl.config.Settings.where_set`)."""
    return (
        f"app {_name(app)} has no keys in Redis {server} (no commit list, event hash or "
        f"snapshot); {here.text(app, check)}"
    )


def no_aggregates_text(
    app: str,
    server: str,
    schema: str,
    found: pgevents.AppsWithAggregates,
    check: str = APP_SETTING,
) -> str:
    """The note: ``app`` has no aggregates in ``schema`` of PostgreSQL ``server`` (its DSN,
    redacted), and the apps ``found`` instead; ``check``: as :func:`no_keys_text`'s."""
    from esctl import storereads

    kind = storereads.NameKind(
        "apps with aggregates here",
        "no app has aggregates in this schema",
        "no app's aggregates were in the rows sampled",
        APP_SETTING,
        "--pg-dsn (and its database name), --pg-schema",
    )
    if found.sampled:
        of = f" of ~{found.total:,}" if found.total else ""  # 0: not counted yet
        partial = f"a sample: ~{found.sampled:,}{of} rows"
    else:  # from an index: the names either side of the app's
        partial = "the nearest by name"
    here = storereads.NamesHere(
        found.names, found.sampled, found.total, found.complete, kind, partial
    )
    return (
        f"app {_name(app)} has no aggregates in PostgreSQL {server} schema {schema} (no row "
        f"in {schema}.aggregate); {here.text(app, check)}"
    )


def no_commits_text(
    app: str,
    server: str,
    looked_at: Collection[str],
    here: storereads.NamesHere,
    check: str = APP_SETTING,
) -> str:
    """The note when the search for the families the command did not scan was cut short: what
    the command's own scan found none of (``looked_at``), and what ``here`` found."""
    kinds = [name for family, name in _KINDS if family in looked_at] or ["commit list"]
    return (
        f"app {_name(app)} has no {' or '.join(kinds)} in Redis {server} (a large database: "
        f"its other keys were not all looked for); {here.text(app, check)}"
    )


_KINDS = (
    (layout.COMMIT_LIST, "commit list"),
    (layout.EVENT_HASH, "event hash"),
    (layout.LEGACY_HASH, "legacy event hash"),
    (layout.SNAPSHOT_HASH, "snapshot"),
)

SEARCH_SECONDS = 2.0
"""How long the note looks for the app's keys the command did not scan itself before it says
only what the command's scan found (a SCAN of a large keyspace takes a minute or more)."""


def _name(app: str) -> str:
    from esctl import redisio

    return redisio.printable(app)

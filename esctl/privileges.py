"""Which of the README's Redis users and PostgreSQL roles a command runs as, for the hint of a
refusal (a Redis NOPERM, PostgreSQL's insufficient_privilege): the README ("Running esctl in
production", "Credentials and least privilege") gives one user (one role) per command family,
with its rules. The CLI says which command runs (:func:`running`); a refusal's hint then names
the user or role whose rules to give, with the app, env or database they are made for."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from esctl.errors import EsctlError

DOCS = 'README "Running esctl in production", "Credentials and least privilege"'
"""Where the ACL rules and grants of each command family are documented."""

QUEUE_COMMANDS = ("queue requeue", "queue drain", "queue restore")
PRUNE_COMMANDS = ("migrate prune", "migrate restore-pruned")
MIGRATE_ROLE_COMMANDS = ("migrate redis-to-pg", *PRUNE_COMMANDS)


class _Running:
    command: str | None = None
    """The command's words after ``esctl`` (``queue requeue``), None outside the CLI."""
    redis_user: str | None = None
    pg_role: str | None = None
    setting: Callable[[str], str | None] = staticmethod(lambda name: None)


@contextmanager
def running(
    command: str, params: Mapping[str, object], setting: Callable[[str], str | None]
) -> Iterator[None]:
    """Say which command runs, for the block: its words after ``esctl``, its parameters as the
    CLI parsed them (``target`` of replay, ``delete_source`` of migrate redis-to-pg), and how
    to read a setting (``app``, ``env``)."""
    target = params.get("target")
    to = str(getattr(target, "value", target or ""))
    if command in QUEUE_COMMANDS or (command == "replay" and to == "queue"):
        user = "esctl-queues"
    elif command == "compress":
        user = "esctl-compress"
    elif command in PRUNE_COMMANDS or (
        command == "migrate redis-to-pg" and bool(params.get("delete_source"))
    ):
        user = "esctl-prune"
    else:
        user = "esctl-read"
    role = (
        "esctl_migrate"
        if command in MIGRATE_ROLE_COMMANDS or (command == "replay" and to == "projection")
        else "esctl_read"
    )
    before = (_Running.command, _Running.redis_user, _Running.pg_role, _Running.setting)
    _Running.command, _Running.redis_user, _Running.pg_role = command, user, role
    _Running.setting = staticmethod(setting)
    try:
        yield
    finally:
        _Running.command, _Running.redis_user, _Running.pg_role = before[:3]
        _Running.setting = staticmethod(before[3])


def _value(name: str) -> str | None:
    try:
        return _Running.setting(name)
    except EsctlError:  # a setting that cannot be resolved: the hint goes without it
        return None


def redis_hint() -> str:
    """What to grant after Redis refused a command or key to the user in --redis-url."""
    user, command = _Running.redis_user, _Running.command
    if user is None or command is None:
        return (
            f"grant this command family's ACL rules ({DOCS}) to the user in --redis-url, then rerun"
        )
    made_for = {"esctl-queues": "ENV", "esctl-compress": "APP", "esctl-prune": "APP"}.get(user)
    value = _value(made_for.lower()) if made_for else None
    scope = f", made for {made_for} = {value}" if made_for and value else ""
    return (
        f"`esctl {command}` needs the ACL rules of the README's {user} user ({DOCS}{scope}): "
        "give them to the user in --redis-url (ACL SETUSER), then rerun"
    )


def pg_hint(dbname: str | None) -> str:
    """What to grant after PostgreSQL refused a statement to the role in --pg-dsn (its
    database ``dbname``, when known)."""
    role, command = _Running.pg_role, _Running.command
    if role is None or command is None:
        return (
            f"grant this command family's privileges ({DOCS}) to the role in --pg-dsn, then rerun"
        )
    scope = f", with DBNAME = {dbname}" if dbname else ""
    return (
        f"`esctl {command}` needs the grants of the README's {role} role ({DOCS}{scope}): give "
        "them to the role in --pg-dsn, then rerun"
    )

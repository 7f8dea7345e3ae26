"""The typed errors the core raises. The CLI maps each class to a message and an exit code
(see ``esctl.cli.errors``); the core never decides exit codes or prints."""

from __future__ import annotations

from typing import Any, Self


class EsctlError(Exception):
    """Base of every error esctl reports to the user. ``hint`` says what to do next."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def reword(self, message: str) -> Self:
        """This error with ``message`` in place of its own (for what a caller knows better:
        what the run had done before it stopped)."""
        self.message = message
        self.args = (message,)
        return self

    def add(self, text: str) -> Self:
        """This error with ``; text`` added to its message."""
        return self.reword(f"{self.message}; {text}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (--workers); the default pickling would call
        # cls(message) and lose the keyword-only fields (or fail for ConnectionFailed).
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[EsctlError], message: str, state: dict[str, Any]) -> EsctlError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConfigError(EsctlError):
    """Bad configuration: a malformed config file, an unknown profile, a missing --app."""


class UsageError(EsctlError):
    """A bad option value found after parsing (a malformed --where, --shard 5/4, ...)."""


class ConnectionFailed(EsctlError):
    """A server could not be reached or went away. ``server`` is printable (password hidden)."""

    def __init__(self, message: str, *, server: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.server = server


class ServerError(EsctlError):
    """A server answered with an error esctl cannot work around."""


class PermissionDenied(ServerError):
    """A server refused a command or a table because the user esctl logs in as lacks the right
    (a Redis ACL's NOPERM, PostgreSQL's insufficient_privilege). The message names the server
    and what was refused; the hint points at the README's rules per command family."""


class LockLost(ServerError):
    """A run's Redis lock was found gone while the run went on (:meth:`esctl.locks.RedisLock.check`):
    taken or deleted by someone else, or not renewable for its time to live. ``key``: the lock
    key; ``why``: what the renewal found, naming the key. A command that catches it stops
    sending, counts what it did, and reports the lost lock as the reason it stopped."""

    def __init__(self, message: str, *, key: str, why: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key
        self.why = why


class NotFound(EsctlError):
    """A key, aggregate or row the user named does not exist."""


class SchemaIncompatible(EsctlError):
    """An existing PostgreSQL schema differs from the one esctl writes; it is never altered."""


class LockHeld(EsctlError):
    """Another run holds this job's lock (cron overlap)."""


class Refused(EsctlError):
    """esctl declined to start a destructive action: not confirmed (no --yes and no terminal to
    ask on, or answered no), no backup file to keep what it removes, or a backup file that
    exists. Nothing was done."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run that can say more than "the state was left consistent":
    ``state``, what it left (where a checkpoint stands), and ``hint``, how to go on. A
    KeyboardInterrupt, so that whatever catches Ctrl-C catches it (exit 130). ``done``: the
    counts of what the run had done for good (committed, moved) when it stopped, for scripts
    (``"done"`` in the ``--json`` error document); ``state`` says them in words."""

    def __init__(self, state: str, *, hint: str, done: dict[str, int] | None = None) -> None:
        super().__init__(state)
        self.state = state
        self.hint = hint
        self.done = done


class LocalServerError(EsctlError):
    """A throwaway local server (demo, tests) could not be started."""

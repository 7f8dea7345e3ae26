"""The one CLI context: the connection and scope options, declared once, given to each command
as one object that resolves its settings and opens Redis only when the command asks.

``@with_context(scope)`` under ``@app.command(...)`` adds the scope's shared options to the
command's signature and runs it inside the one error wrapper. Design: docs/design/cli.md.
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

from esctl.cli import options
from esctl.cli.errors import reporting
from esctl.cli.output import Output
from esctl.config import Settings, resolve_settings

if TYPE_CHECKING:
    from esctl import redisio


class Scope(enum.Flag):
    """The shared options a command takes (``--profile`` and ``--config`` come with any
    setting; ``--debug`` always; ``--json`` unless the command declares its own)."""

    NONE = 0
    REDIS_URL = enum.auto()
    CLUSTER = enum.auto()
    REPLICAS = enum.auto()
    """--read-from-replicas"""
    PG = enum.auto()
    """--pg-dsn and --pg-schema"""
    APP = enum.auto()
    ENV = enum.auto()
    REDIS = REDIS_URL | CLUSTER
    SETTINGS = REDIS_URL | PG | APP | ENV
    """The options that resolve settings (and bring --profile and --config)."""


class _Shared(NamedTuple):
    name: str
    """The parameter's name (Click's name of the option)."""
    annotation: Any
    default: Any
    scope: Scope | None
    """Taken by a command whose scope shares a flag with this; None: --json and --debug."""
    setting: str | None = None
    """The setting it gives a value to (``config.SETTINGS``), if any."""


# In the order --help lists them.
_SHARED: tuple[_Shared, ...] = (
    _Shared("redis_url", options.RedisUrlOpt, None, Scope.REDIS_URL, "redis_url"),
    _Shared("cluster", options.ClusterOpt, False, Scope.CLUSTER),
    _Shared("read_from_replicas", options.ReadFromReplicasOpt, False, Scope.REPLICAS),
    _Shared("pg_dsn", options.PgDsnOpt, None, Scope.PG, "pg_dsn"),
    _Shared("pg_schema", options.PgSchemaOpt, None, Scope.PG, "pg_schema"),
    _Shared("app_name", options.AppOpt, None, Scope.APP, "app"),
    _Shared("env", options.EnvOpt, None, Scope.ENV, "env"),
    _Shared("profile", options.ProfileOpt, None, Scope.SETTINGS),
    _Shared("config", options.ConfigOpt, None, Scope.SETTINGS),
    _Shared("json_", options.JsonOpt, False, None),
    _Shared("debug", options.DebugOpt, False, None),
)


def _shared_options(uses: Scope, *, json: bool) -> list[_Shared]:
    def takes(option: _Shared) -> bool:
        if option.scope is not None:
            return bool(option.scope & uses)
        return json or option.name == "debug"

    return [option for option in _SHARED if takes(option)]


class Context:
    """One invocation's connection and scope options, resolved on first use, and its
    :class:`Output`."""

    def __init__(
        self,
        *,
        values: Mapping[str, str | None] | None = None,
        profile: str | None = None,
        config: str | None = None,
        cluster: bool = False,
        read_from_replicas: bool = False,
        out: Output | None = None,
        debug: bool = False,
    ) -> None:
        self._values = dict(values or {})
        self._profile = profile
        self._config = config
        self.cluster = cluster
        self.read_from_replicas = read_from_replicas
        self.out = out if out is not None else Output()
        self.debug = debug

    @classmethod
    def from_options(cls, given: Mapping[str, Any]) -> Context:
        """The Context of the shared options' values as Typer passes them (by name)."""
        return cls(
            values={o.setting: given.get(o.name) for o in _SHARED if o.setting is not None},
            profile=given.get("profile"),
            config=given.get("config"),
            cluster=bool(given.get("cluster")),
            read_from_replicas=bool(given.get("read_from_replicas")),
            out=Output(json=bool(given.get("json_")), debug=bool(given.get("debug"))),
            debug=bool(given.get("debug")),
        )

    @cached_property
    def settings(self) -> Settings:
        """Every setting, resolved once: option > environment variable > profile > default."""
        return resolve_settings(self._values, config=self._config, profile=self._profile)

    def get(self, name: str) -> str | None:
        """A setting that may be unset (None)."""
        return self.settings.get(name)

    @property
    def app(self) -> str:
        """--app / ESCTL_APP / the profile's app; ConfigError saying how to set it."""
        return self.settings.require("app")

    @property
    def env(self) -> str:
        """--env / ESCTL_ENV / the profile's env; ConfigError saying how to set it."""
        return self.settings.require("env")

    @property
    def redis_url(self) -> str:
        return self.settings.redis_url

    @property
    def pg_dsn(self) -> str:
        return self.settings.pg_dsn

    @property
    def pg_schema(self) -> str:
        return self.settings.pg_schema

    @property
    def redis_target(self) -> redisio.RedisTarget:
        """--redis-url with --cluster and --read-from-replicas, for worker processes. Sets how
        long a Redis loading its data set is waited for (:func:`set_loading_wait`)."""
        from esctl import redisio

        set_loading_wait()
        return redisio.RedisTarget(self.redis_url, self.cluster, self.read_from_replicas)

    @cached_property
    def redis(self) -> redisio.RedisClient:
        """A client of :attr:`redis_target`, connected on first use (ConnectionFailed when it
        does not answer)."""
        return self.redis_target.connect()


LOADING_WAIT_VAR = "ESCTL_REDIS_LOADING_WAIT"


def set_loading_wait(environ: Mapping[str, str] | None = None) -> None:
    """How a command meets a Redis that is loading its data set (restarted): waited for up
    to ``$ESCTL_REDIS_LOADING_WAIT`` (a duration; 60 s when unset, 0: not at all), each wait
    said on stderr. UsageError naming the variable for a value that is no duration."""
    import os

    from esctl.cli import messages
    from esctl.durations import parse_duration
    from esctl.errors import UsageError
    from esctl.redisio import retry

    text = (os.environ if environ is None else environ).get(LOADING_WAIT_VAR, "").strip()
    if text:
        try:
            retry.LOADING_WAIT_SECONDS = parse_duration(text).total_seconds()
        except UsageError as exc:
            raise UsageError(f"{LOADING_WAIT_VAR}={text}: {exc.message}", hint=exc.hint) from None
    retry.loading_notice = messages.info


def _words(func: Callable[..., None]) -> str:
    """The running command's words after ``esctl`` (``queue requeue``), from Click's context
    (Typer's own getter; the function's name outside a command line)."""
    from typer.main import get_current_context

    level: Any = get_current_context(silent=True)
    if level is None:
        return func.__name__
    words: list[str] = []
    while level.parent is not None:
        words.append(level.info_name or "")
        level = level.parent
    return " ".join(reversed(words))


def with_context(
    uses: Scope, *, json: bool = True
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Make ``func(ctx, …)`` a Typer command function taking the shared options of ``uses``
    (and ``--json`` unless ``json`` is False: a command with its own). Put it under
    ``@app.command(name)``. See the module docstring."""

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        shared = _shared_options(uses, json=json)
        signature = inspect.signature(func, eval_str=True)
        own = list(signature.parameters.values())[1:]  # the first is the Context
        clash = {p.name for p in own} & {o.name for o in shared}
        if clash:
            raise TypeError(f"{func.__name__} declares shared options itself: {sorted(clash)}")
        parameters = own + [
            inspect.Parameter(
                o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default, annotation=o.annotation
            )
            for o in shared
        ]
        names = [o.name for o in shared]

        @functools.wraps(func)
        def command(**kwargs: Any) -> None:
            from esctl import privileges  # (not at startup: tests/test_cli_basics.py)

            ctx = Context.from_options({name: kwargs.pop(name) for name in names})
            with (
                privileges.running(_words(func), kwargs, ctx.get),
                reporting(out=ctx.out, debug=ctx.debug),
            ):
                func(ctx, **kwargs)

        return with_parameters(command, parameters)

    return decorate


def with_parameters(
    command: Callable[..., None], parameters: Sequence[inspect.Parameter]
) -> Callable[..., None]:
    """``command`` (a wrapper made with ``functools.wraps``) as Typer reads a command taking
    ``parameters``: a real ``__signature__`` and real ``__annotations__``, Typer's public API."""
    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        list(parameters), return_annotation=None
    )
    command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return command

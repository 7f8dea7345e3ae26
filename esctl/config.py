"""Settings resolution: option > environment variable > profile in the config file > default.

Every resolved value remembers where it came from, so ``esctl config show`` can say so.
Passwords never leave this module in clear: use :func:`redact` for anything printable.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esctl.errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_PG_DSN = "postgresql://localhost/postgres"


@dataclass(frozen=True)
class SettingSpec:
    name: str
    env_var: str
    default: str | None
    secret_bearing: bool = False
    help: str = ""


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("redis_url", "ESCTL_REDIS_URL", DEFAULT_REDIS_URL, True, "Redis URL"),
    SettingSpec("pg_dsn", "ESCTL_PG_DSN", DEFAULT_PG_DSN, True, "PostgreSQL DSN or URL"),
    SettingSpec("pg_schema", "ESCTL_PG_SCHEMA", "public", False, "schema of the event tables"),
    SettingSpec("app", "ESCTL_APP", None, False, "ApplicationName"),
    SettingSpec("env", "ESCTL_ENV", None, False, "environment name"),
)
SETTING_NAMES = tuple(s.name for s in SETTINGS)
APP_SETTING = "--app / ESCTL_APP"
"""Where the app name is set, in a message asking to check it, unless it came from the config
file (:meth:`Settings.where_set`)."""


@dataclass(frozen=True)
class Resolved:
    value: str | None
    source: str  # "option", "env:ESCTL_X", "config:PATH[profile]", "default"


@dataclass(frozen=True)
class Settings:
    """The resolved connection and scope settings of one command invocation."""

    values: Mapping[str, Resolved]
    profile: str
    config_path: Path | None

    def get(self, name: str) -> str | None:
        return self.values[name].value

    @property
    def redis_url(self) -> str:
        return self.values["redis_url"].value or DEFAULT_REDIS_URL

    @property
    def pg_dsn(self) -> str:
        return self.values["pg_dsn"].value or DEFAULT_PG_DSN

    @property
    def pg_schema(self) -> str:
        return self.values["pg_schema"].value or "public"

    def where_set(self, name: str) -> str:
        """Where an operator fixes setting ``name``'s value, for a message that asks them to
        check it: the config file's profile when the value came from there (a cron job's
        usual case), else the option and its environment variable (``--app / ESCTL_APP``)."""
        spec = next(s for s in SETTINGS if s.name == name)
        flags = f"--{name.replace('_', '-')} / {spec.env_var}"  # APP_SETTING for app
        if self.values[name].source.startswith("config:"):
            return f"{name} in profile [{self.profile}] of {self.config_path} (or {flags})"
        return flags

    def require(self, name: str) -> str:
        value = self.values[name].value
        if not value:
            spec = next(s for s in SETTINGS if s.name == name)
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{spec.help} is not set",
                hint=f'pass {flag}, set {spec.env_var}, or add `{name} = "…"` to the config file',
            )
        return value


def default_config_paths(cwd: Path | None = None) -> list[Path]:
    """``./esctl.toml``, else the user config dir's ``esctl/config.toml``."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [(cwd or Path.cwd()) / "esctl.toml", base / "esctl" / "config.toml"]


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}",
            hint="fix the line named above (see https://toml.io for the syntax)",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def resolve_settings(
    options: Mapping[str, str | None],
    *,
    environ: Mapping[str, str] | None = None,
    config: str | None = None,
    profile: str | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve every setting. ``options`` holds command-line values (None when not given);
    ``config``/``profile`` are the --config/--profile options (None when not given)."""
    env = os.environ if environ is None else environ
    profile_name = profile or env.get("ESCTL_PROFILE") or "default"
    profile_explicit = bool(profile or env.get("ESCTL_PROFILE"))

    config_path = _config_path(config or env.get("ESCTL_CONFIG"), cwd)
    section = _profile_section(config_path, profile_name, profile_explicit)

    values: dict[str, Resolved] = {}
    for spec in SETTINGS:
        opt = options.get(spec.name)
        if opt is not None:
            values[spec.name] = Resolved(opt, "option")
        elif env.get(spec.env_var):
            values[spec.name] = Resolved(env[spec.env_var], f"env:{spec.env_var}")
        elif spec.name in section:
            raw = section[spec.name]
            if not isinstance(raw, str):
                raise ConfigError(
                    f"config file {config_path} [{profile_name}]: {spec.name} must be a string"
                )
            values[spec.name] = Resolved(raw, f"config:{config_path}[{profile_name}]")
        else:
            values[spec.name] = Resolved(spec.default, "default")
    return Settings(values, profile_name, config_path)


def _config_path(explicit_path: str | None, cwd: Path | None) -> Path | None:
    """The config file: ``explicit_path`` (--config / ESCTL_CONFIG), which must be a file, or
    the first default location that holds one (None: none does)."""
    if explicit_path:
        config_path = Path(explicit_path)
        if not config_path.is_file():
            what = (
                "is a directory, not a file"
                if config_path.is_dir()
                else "exists but is not a regular file"
                if config_path.exists()
                else "does not exist"
            )
            raise ConfigError(
                f"config file {config_path} {what}",
                hint="point --config / ESCTL_CONFIG at a TOML file (for example "
                f"{config_path / 'esctl.toml'}), or unset it to use ./esctl.toml"
                if config_path.is_dir()
                else "fix --config / ESCTL_CONFIG, or unset it to use ./esctl.toml",
            )
        return config_path
    return next((p for p in default_config_paths(cwd) if p.is_file()), None)


def _profile_section(
    config_path: Path | None, profile_name: str, profile_explicit: bool
) -> dict[str, Any]:
    """The settings of ``profile_name`` in the config file (empty: no file, or no such profile
    when the profile was not asked for explicitly); every key a known setting."""
    section: dict[str, Any] = {}
    if config_path is not None:
        document = load_config_file(config_path)
        loose = [k for k, v in document.items() if not isinstance(v, dict)]
        if loose:  # above every [profile] header: TOML puts them in no profile
            raise ConfigError(
                f"config file {config_path}: {', '.join(loose)} "
                f"{'is' if len(loose) == 1 else 'are'} outside a profile, where no command "
                "reads settings",
                hint="put settings under a profile's header: [default] (read when no profile "
                "is named), or [NAME], read with --profile NAME / ESCTL_PROFILE",
            )
        if profile_name in document:
            section = document[profile_name]
            if not isinstance(section, dict):
                raise ConfigError(
                    f"config file {config_path}: [{profile_name}] must be a table of settings"
                )
        elif profile_explicit:
            known = ", ".join(k for k, v in document.items() if isinstance(v, dict)) or "none"
            raise ConfigError(
                f"profile {profile_name!r} is not in config file {config_path}",
                hint=f"profiles found: {known}",
            )
        unknown = [k for k in section if k not in SETTING_NAMES]
        if unknown:
            raise ConfigError(
                f"config file {config_path} [{profile_name}]: unknown setting "
                f"{', '.join(sorted(unknown))}",
                hint=f"known settings: {', '.join(SETTING_NAMES)}",
            )
    elif profile_explicit:
        raise ConfigError(
            f"profile {profile_name!r} was asked for but no config file was found",
            hint="create ./esctl.toml or pass `--config PATH`",
        )
    return section


# The password runs to the last "@" before the path: an unencoded "@" in it stays hidden.
_URL_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]*:)[^\s/]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide passwords anywhere in ``text``: a URL's ``user:***@host`` (multi-host URLs and
    URLs inside longer messages included), and ``password=***`` in libpq key=value DSNs and
    URL query strings."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def redact_everywhere(message: str, secrets: list[str]) -> str:
    """Replace every occurrence of a known secret-bearing string by its redacted form."""
    for secret in secrets:
        if secret and secret in message:
            message = message.replace(secret, redact(secret))
    return message

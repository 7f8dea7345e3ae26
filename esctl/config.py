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
from urllib.parse import unquote

from esctl.errors import ConfigError, ConnectionFailed

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


# A URL's password runs from the first ":" after the user name to the last "@" before the
# path ("redis://u:p@ss@host/0": an unencoded "@" in it stays hidden). A URL whose parser would
# cut the password short (:func:`unencoded_in_password`: an unencoded "/", "?", "#", a space)
# is hidden up to its last "@", wherever that is. In a message a URL ends at the first space;
# a setting's value (:func:`redact` of a URL alone) runs to its end, spaces and all.
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S*")
_URL_PASSWORD = re.compile(r"\A([a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:]*:)[^\s/]*@")
_CUT_URL_PASSWORD = re.compile(r"\A([a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:]*:).*@", re.DOTALL)
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
# In a whole key=value DSN an unquoted password runs on over spaces to the next ``key=``
# (libpq refuses it, and its message would quote the words after the first).
_WHOLE_KV_PASSWORD = re.compile(
    r"((?:^|\s)password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+(?:\s+(?![A-Za-z_]+\s*=)[^\s=]+)*)",
    re.IGNORECASE,
)
_KV_DSN = re.compile(r"\A\s*[A-Za-z_]+\s*=")
_URL_WITH_SPACES = re.compile(
    r"\A\s*[a-zA-Z][a-zA-Z0-9+.-]*://[^\s@]*:[^\s@]*\s[^\n]*@[^\s@]*\s*\Z"
)
"""A URL by itself whose user:password part holds a space (before its first "@"), and nothing
after the host, port and path: not a message that begins with a URL."""


def _url_password(url: str) -> re.Match[str] | None:
    """The match of ``url``'s ``scheme://user:`` (group 1) through the ``@`` that ends its
    password, or None when it has none."""
    pattern = _CUT_URL_PASSWORD if unencoded_in_password(url) else _URL_PASSWORD
    return pattern.match(url)


def _redact_url(url: str) -> str:
    found = _url_password(url)
    return url if found is None else f"{found.group(1)}***@{url[found.end() :]}"


def redact(text: str) -> str:
    """Hide passwords anywhere in ``text``: a URL's ``user:***@host`` (multi-host URLs and
    URLs inside longer messages included), and ``password=***`` in libpq key=value DSNs and
    URL query strings. ``text`` that is a URL or a key=value DSN by itself (a setting's value)
    is hidden as a whole: a password that holds spaces, unquoted or unencoded, too."""
    if _KV_DSN.match(text):
        text = _WHOLE_KV_PASSWORD.sub(r"\1***", text)
    elif _URL_WITH_SPACES.match(text):  # a setting: its password holds a space
        text = _redact_url(text.strip())
    text = _URL.sub(lambda url: _redact_url(url.group(0)), text)
    return _KV_PASSWORD.sub(r"\1***", text)


def passwords_in(setting: str) -> list[str]:
    """The password of a Redis URL or PostgreSQL DSN/URL as written in it (for a URL: from the
    first ":" after the user name to the ``@`` that ends it; for a key=value DSN: the
    ``password``'s value, unquoted, up to the next ``key=``) and percent-decoded: what must not
    appear in a message, even in part (:func:`redact_error`). Empty when it holds none."""
    found: list[str] = []
    url = _url_password(setting.strip())
    if url is not None:
        found.append(url.group(0)[len(url.group(1)) : -1])
    for match in (_WHOLE_KV_PASSWORD if _KV_DSN.match(setting) else _KV_PASSWORD).finditer(setting):
        value = match.group(2)
        if value.startswith("'") and value.endswith("'") and len(value) > 1:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found.append(value)
    decoded = [unquote(p) for p in found]
    return [p for p in dict.fromkeys(found + decoded) if p]


_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")


def redact_error(message: str, setting: str) -> str:
    """:func:`redact` of a client library's error ``message`` about connecting with
    ``setting`` (a Redis URL, a PostgreSQL DSN), and more: a URL whose password holds a
    character its parser takes as the end of the password (an unencoded ``/``, ``#``, ``@``) is
    read with a piece of the password as the host, the port or a query parameter, and the
    library's message quotes that piece (``Port could not be cast to integer value as 'w'``,
    ``invalid percent-encoded token: "pa%zz"``, ``failed to resolve host 'ss@db'``). Every
    quoted text that is part of the password (before an ``@``) is hidden, and the password
    itself wherever it appears."""
    secrets = passwords_in(setting)
    message = redact(message)
    if not secrets:
        return message

    def hide(match: re.Match[str]) -> str:
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        before_at = inner.rsplit("@", 1)[0]
        if inner and any(inner in s or (before_at and before_at in s) for s in secrets):
            quote = match.group(0)[0]
            return f"{quote}***{quote}"
        return match.group(0)

    message = _QUOTED.sub(hide, message)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


_CUT_BY_URLLIB = "/?#"
"""What ends a URL's user:password part for Python's URL parser (redis-py's)."""


def unencoded_in_password(url: str) -> str:
    """The characters of ``url``'s password (or user name) that its parser does not take as
    part of it, so that it reads a piece of the password as the host, the port, the path or a
    query: '' when none, or when ``url`` is no URL. For ``redis://`` (Python's parser) an
    unencoded ``/``, ``?`` or ``#``; for ``postgresql://`` (libpq's) an unencoded ``@`` or
    ``/``, a space, and a ``%`` not followed by two hex digits. A URL that parses to a host and
    a port of digits is taken as written (``redis://host:6379/0?ssl_ca_certs=/a@b.pem`` has an
    ``@`` in its query, not in a password)."""
    match = re.match(r"\A([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)\Z", url, re.DOTALL)
    if match is None or "@" not in match.group(2):
        return ""
    scheme, rest = match.group(1).lower(), match.group(2)
    userinfo = rest[: rest.rindex("@")]
    if scheme.startswith("postgres"):
        return _unencoded_for_libpq(rest, userinfo)
    if not scheme.startswith("redis"):
        return ""
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    after = rest[len(netloc) :]
    if "@" not in after:
        return ""
    path = re.split(r"[?#]", after, maxsplit=1)[0]
    misread = (
        "@" in after.partition("#")[2]
        or not re.fullmatch(r"(/\d*)?", path)
        or not _host_and_port(netloc.rpartition("@")[2])
    )
    return _chars(userinfo, _CUT_BY_URLLIB) if misread else ""


def _unencoded_for_libpq(rest: str, userinfo: str) -> str:
    """:func:`unencoded_in_password` for a libpq URL (after ``scheme://``); ``userinfo``: up
    to its last ``@``. libpq takes the user:password part up to the first ``@`` before any
    ``/``, and refuses spaces and a ``%`` that is no percent-encoding there."""
    head = rest.split("/", 1)[0]
    bad = "".join(c for c in " \t" if c in userinfo)
    if re.search(r"%(?![0-9A-Fa-f]{2})", userinfo):
        bad += "%"
    in_path = "@" in rest.split("?", 1)[0][len(head) :]
    after_head = "@" in rest[len(head) :]
    if "@" in head:
        host_part = re.split(r"[/?]", head.split("@", 1)[1], maxsplit=1)[0]
        if "@" in host_part or in_path or (after_head and not _host_and_port(host_part)):
            # libpq's password ends at the first "@": the rest of it is the host and port (or
            # the database name)
            bad += _chars(userinfo, "@/")
    elif ":" in head and (in_path or (after_head and not _host_and_port(head.split("?")[0]))):
        # no user:password part for libpq: a piece of the password is the host or the port,
        # or the database name holds an "@"
        bad += _chars(userinfo, "@/")
    return bad


PERCENT_ENCODING = (
    "percent-encode these characters of a password (or user name) in a URL: @ as %40, : as "
    '%3A, / as %2F, ? as %3F, # as %23, % as %25, a space as %20 (README "Running esctl in '
    'production", "Credentials and least privilege")'
)
"""How to write a password in a URL, for the messages about one written wrong."""


def refuse_unencoded_password(what: str, url: str, server: str) -> None:
    """ConnectionFailed, before anything is sent, when ``url`` (``what``: "Redis URL",
    "PostgreSQL URL"; ``server``: how the error names it) holds a password (or user name) its
    parser would cut short (:func:`unencoded_in_password`): it would read the rest as the host,
    the port or the path, and its message would quote that piece. Nothing of it is shown."""
    chars = unencoded_in_password(url)
    if not chars:
        return
    named = ", ".join("a space" if c == " " else f"'{c}'" for c in chars)
    raise ConnectionFailed(
        f"bad {what} {redact(url)}: the password (or user name) in it holds {named} not "
        "percent-encoded, which cuts it short there: the rest would be read as the host, the "
        "port or the path; nothing was sent",
        server=server,
        hint=PERCENT_ENCODING,
    )


def _host_and_port(netloc: str) -> bool:
    """Whether ``netloc`` is ``host``, ``host:PORT`` or ``[v6]:PORT`` (a port of digits),
    host not empty; several hosts, comma-separated, each so."""
    return all(
        re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+)(:\d*)?", part) is not None
        for part in netloc.split(",")
    )


def _chars(text: str, wanted: str) -> str:
    return "".join(c for c in wanted if c in text)


def redact_everywhere(message: str, secrets: list[str]) -> str:
    """Replace every occurrence of a known secret-bearing string by its redacted form."""
    for secret in secrets:
        if secret and secret in message:
            message = message.replace(secret, redact(secret))
    return message

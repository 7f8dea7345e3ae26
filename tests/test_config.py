"""esctl.config: option > environment variable > profile in the config file > default, and
passwords never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from esctl.config import (
    DEFAULT_PG_DSN,
    DEFAULT_REDIS_URL,
    SETTING_NAMES,
    default_config_paths,
    redact,
    redact_error,
    redact_everywhere,
    resolve_settings,
    unencoded_in_password,
)
from esctl.errors import ConfigError

NO_OPTIONS: dict[str, str | None] = dict.fromkeys(SETTING_NAMES)

CONFIG = """\
[default]
redis_url = "redis://file-default:6379/0"
app = "FileApp"

[staging]
redis_url = "redis://file-staging:6379/1"
pg_dsn = "postgresql://stage@db/stage"
env = "staging"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "esctl.toml"
    path.write_text(CONFIG)
    return path


def options(**given: str) -> dict[str, str | None]:
    return {**NO_OPTIONS, **given}


# --- precedence ----------------------------------------------------------------------------


def test_defaults_without_anything(tmp_path: Path) -> None:
    settings = resolve_settings(NO_OPTIONS, environ={}, cwd=tmp_path)
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.pg_dsn == DEFAULT_PG_DSN
    assert settings.pg_schema == "public"
    assert settings.get("app") is None
    assert {r.source for r in settings.values.values()} == {"default"}
    assert settings.profile == "default"


def test_option_beats_env_beats_file_beats_default(config_file: Path) -> None:
    environ = {"ESCTL_REDIS_URL": "redis://from-env/0", "ESCTL_APP": "EnvApp"}
    settings = resolve_settings(
        options(redis_url="redis://from-option/0"),
        environ=environ,
        config=str(config_file),
    )
    assert settings.values["redis_url"].value == "redis://from-option/0"
    assert settings.values["redis_url"].source == "option"
    assert settings.values["app"].value == "EnvApp"
    assert settings.values["app"].source == "env:ESCTL_APP"
    assert settings.values["pg_dsn"].source == "default"

    settings = resolve_settings(NO_OPTIONS, environ={}, config=str(config_file))
    assert settings.values["redis_url"].value == "redis://file-default:6379/0"
    assert settings.values["redis_url"].source == f"config:{config_file}[default]"
    assert settings.values["app"].value == "FileApp"


def test_empty_env_var_counts_as_unset(config_file: Path) -> None:
    settings = resolve_settings(NO_OPTIONS, environ={"ESCTL_APP": ""}, config=str(config_file))
    assert settings.values["app"].value == "FileApp"


def test_config_file_found_in_the_working_directory_then_the_user_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    xdg = tmp_path / "xdg"
    (xdg / "esctl").mkdir(parents=True)
    (xdg / "esctl" / "config.toml").write_text('[default]\napp = "UserApp"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert default_config_paths(cwd) == [cwd / "esctl.toml", xdg / "esctl" / "config.toml"]
    assert resolve_settings(NO_OPTIONS, environ={}, cwd=cwd).get("app") == "UserApp"
    (cwd / "esctl.toml").write_text('[default]\napp = "LocalApp"\n')
    settings = resolve_settings(NO_OPTIONS, environ={}, cwd=cwd)
    assert settings.get("app") == "LocalApp"
    assert settings.config_path == cwd / "esctl.toml"


def test_config_path_from_env(config_file: Path, tmp_path: Path) -> None:
    settings = resolve_settings(
        NO_OPTIONS, environ={"ESCTL_CONFIG": str(config_file)}, cwd=tmp_path / "elsewhere"
    )
    assert settings.config_path == config_file
    assert settings.get("app") == "FileApp"


# --- profiles ------------------------------------------------------------------------------


def test_profile_option_selects_a_section(config_file: Path) -> None:
    settings = resolve_settings(NO_OPTIONS, environ={}, config=str(config_file), profile="staging")
    assert settings.profile == "staging"
    assert settings.redis_url == "redis://file-staging:6379/1"
    assert settings.get("env") == "staging"
    assert settings.get("app") is None  # profiles do not inherit from [default]
    assert settings.values["pg_dsn"].source == f"config:{config_file}[staging]"


def test_profile_from_env_and_option_beats_env(config_file: Path) -> None:
    environ = {"ESCTL_PROFILE": "staging"}
    assert resolve_settings(NO_OPTIONS, environ=environ, config=str(config_file)).profile == (
        "staging"
    )
    settings = resolve_settings(
        NO_OPTIONS, environ=environ, config=str(config_file), profile="default"
    )
    assert settings.get("app") == "FileApp"


def test_unknown_profile_names_the_profiles_found(config_file: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_settings(NO_OPTIONS, environ={}, config=str(config_file), profile="prod")
    assert "'prod'" in caught.value.message
    assert str(config_file) in caught.value.message
    assert caught.value.hint is not None
    assert "default" in caught.value.hint and "staging" in caught.value.hint


def test_profile_without_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file"):
        resolve_settings(NO_OPTIONS, environ={}, cwd=tmp_path, profile="staging")


def test_missing_default_section_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "esctl.toml"
    path.write_text('[staging]\napp = "S"\n')
    settings = resolve_settings(NO_OPTIONS, environ={}, config=str(path))
    assert settings.get("app") is None


# --- bad files -----------------------------------------------------------------------------


def test_bad_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "esctl.toml"
    path.write_text('[default]\napp = "ok"\nredis_url = redis://unquoted\n')
    with pytest.raises(ConfigError) as caught:
        resolve_settings(NO_OPTIONS, environ={}, config=str(path))
    assert str(path) in caught.value.message
    assert "line 3" in caught.value.message


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_settings(NO_OPTIONS, environ={}, config=str(tmp_path / "nope.toml"))


def test_a_directory_given_as_config_file_is_named_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory, not a file") as caught:
        resolve_settings(NO_OPTIONS, environ={}, config=str(tmp_path))
    assert caught.value.hint is not None and "esctl.toml" in caught.value.hint


def test_unknown_setting_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "esctl.toml"
    path.write_text('[default]\nredis_uri = "redis://typo/0"\n')
    with pytest.raises(ConfigError) as caught:
        resolve_settings(NO_OPTIONS, environ={}, config=str(path))
    assert "redis_uri" in caught.value.message
    assert caught.value.hint is not None and "redis_url" in caught.value.hint


def test_settings_above_every_profile_are_an_error_not_ignored(tmp_path: Path) -> None:
    """Keys above the first [profile] header are in no profile: they were read by nothing, so
    a file starting with `redis_url = …` gave the default Redis without a word."""
    path = tmp_path / "esctl.toml"
    path.write_text('redis_url = "redis://elsewhere:6379/0"\napp = "A"\n\n[default]\nenv = "e"\n')
    with pytest.raises(ConfigError) as caught:
        resolve_settings(NO_OPTIONS, environ={}, config=str(path))
    assert caught.value.message == (
        f"config file {path}: redis_url, app are outside a profile, where no command reads settings"
    )
    assert caught.value.hint is not None and "[default]" in caught.value.hint


@pytest.mark.parametrize("body", ['default = "x"\n', "[default]\napp = 3\n"])
def test_wrongly_typed_config_is_an_error(tmp_path: Path, body: str) -> None:
    path = tmp_path / "esctl.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=str(path)):
        resolve_settings(NO_OPTIONS, environ={}, config=str(path))


def test_require_says_how_to_set_a_missing_setting(tmp_path: Path) -> None:
    settings = resolve_settings(NO_OPTIONS, environ={}, cwd=tmp_path)
    with pytest.raises(ConfigError) as caught:
        settings.require("app")
    assert caught.value.hint is not None
    assert "--app" in caught.value.hint and "ESCTL_APP" in caught.value.hint
    assert resolve_settings(options(app="A"), environ={}, cwd=tmp_path).require("app") == "A"


# --- redaction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:s3cret@host/0", "redis://user:***@host/0"),
        ("rediss://default:s3%2Fcret@host:6380", "rediss://default:***@host:6380"),
        ("redis+cluster://u:s3cret@h:7000", "redis+cluster://u:***@h:7000"),
        ("redis://u:p@ss@host/0", "redis://u:***@host/0"),
        ("postgresql://u:s3cret@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://u:s3cret@/db?host=/var/run", "postgresql://u:***@/db?host=/var/run"),
        (
            "postgresql://u@h/db?sslmode=require&password=s3cret",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("host=h password=s3cret dbname=x", "host=h password=*** dbname=x"),
        ("host=h PASSWORD = s3cret dbname=x", "host=h PASSWORD = *** dbname=x"),
        ("host=h password='s3 cr\\'et' dbname=x", "host=h password=*** dbname=x"),
        ("host=h dbname=x", "host=h dbname=x"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert "s3" not in redact(text)


def test_redact_multi_host_url() -> None:
    assert redact("postgresql://u:s3cret@h1:5432,h2:5433/db") == (
        "postgresql://u:***@h1:5432,h2:5433/db"
    )


@pytest.mark.parametrize(
    ("url", "unencoded", "shown"),
    [
        ("redis://u:s3/cr?et#x@h:6379/0", "/?#", "redis://u:***@h:6379/0"),
        ("redis://:s3cr#et@h:6379/0", "#", "redis://:***@h:6379/0"),
        ("redis://u:1234/s3@h/0", "/", "redis://u:***@h/0"),
        ("rediss+cluster://u:s3/x@h:7000", "/", "rediss+cluster://u:***@h:7000"),
        ("postgresql://u:s3/cret@h:5432/db", "/", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:s3@cr/et@h:5432/db", "@/", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:s3%zzcret@h/db", "%", "postgresql://u:***@h/db"),
        ("postgresql://u:s3 cret@h/db", " ", "postgresql://u:***@h/db"),
        # parsed as written: an "@" that is in the password, or in the query
        ("redis://u:s3@cret@h/0", "", "redis://u:***@h/0"),
        ("postgresql://u:s3?cret@h/db", "", "postgresql://u:***@h/db"),
        ("redis://h:6379/0?ssl_ca_certs=/a@b.pem", "", "redis://h:6379/0?ssl_ca_certs=/a@b.pem"),
        (
            "rediss://u:s3cret@h:6380/0?ssl_ca_certs=/a@b.pem",
            "",
            "rediss://u:***@h:6380/0?ssl_ca_certs=/a@b.pem",
        ),
        ("postgresql://h:5432/db?options=a@b", "", "postgresql://h:5432/db?options=a@b"),
        ("redis://localhost:6379/0", "", "redis://localhost:6379/0"),
    ],
)
def test_a_password_its_url_parser_would_cut_short(url: str, unencoded: str, shown: str) -> None:
    """An unencoded character that ends the password for redis-py's (or libpq's) URL parser
    is named, and the URL is hidden up to its last "@"; a URL that parses as written is shown
    as it is (an "@" in its query is no password's)."""
    assert unencoded_in_password(url) == unencoded
    assert redact(url) == shown
    if " " not in url:  # in a message a URL ends at a space (esctl shows it redacted)
        assert "s3" not in redact(f"bad URL {url}: no")


def test_a_message_that_begins_with_a_url_is_redacted_as_a_message() -> None:
    """Only a URL by itself (a setting) is hidden up to its last "@" across spaces."""
    message = "redis://u:s3cret@h:1/0 is down, see ops@example.com"
    assert redact(message) == "redis://u:***@h:1/0 is down, see ops@example.com"
    assert redact("postgresql://u:s3 cr/et@h/db") == "postgresql://u:***@h/db"


def test_redact_error_hides_pieces_of_the_password_a_library_quotes() -> None:
    url = "redis://u:Kx7:Wm3/Rt5#Jh2@h:6379/0"
    for message in (
        "Port could not be cast to integer value as 'Wm3'",
        "failed to resolve host 'Rt5@h': Name or service not known",
        'invalid percent-encoded token: "Kx7:Wm3/Rt5#Jh2"',
    ):
        hidden = redact_error(message, url)
        assert not any(piece in hidden for piece in ("Kx7", "Wm3", "Rt5", "Jh2")), hidden
    kv = "host=h password=Kx7 Wm3 dbname=x"
    assert redact(kv) == "host=h password=*** dbname=x"
    assert redact_error('missing "=" after "Wm3" in connection info string', kv) == (
        'missing "=" after "***" in connection info string'
    )
    assert redact_error("could not translate host name 'h'", kv) == (
        "could not translate host name 'h'"
    )


def test_redact_everywhere_replaces_every_occurrence() -> None:
    url = "redis://u:s3cret@host/0"
    message = f"cannot connect to {url}; tried {url} twice"
    assert redact_everywhere(message, [url, ""]) == (
        "cannot connect to redis://u:***@host/0; tried redis://u:***@host/0 twice"
    )

"""Servers that ask for credentials, and the README's rules for them.

A Redis of the test's own (its default user stays password-less, for the test's setup; esctl
logs in as ACL users made from the README), and a PostgreSQL whose every role but the
superuser authenticates with scram-sha-256 over TCP. The ACL rules and GRANT statements are
read from the README's "Credentials and least privilege" section, so what the tests grant is
exactly what the documentation says.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

PASSWORD = "S3cr3t-pa55-XYZ"
"""Distinctive enough that finding it anywhere in output means it leaked."""

SCRAM_HBA = (
    "host all postgres 127.0.0.1/32 trust",
    "host all all 127.0.0.1/32 scram-sha-256",
)
"""pg_hba.conf lines: the superuser (the tests' admin connection) trusted, every other role
must give its password (scram-sha-256)."""

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### Credentials and least privilege"

DOCTOR_PROBES = {"config|get", "latency|latest", "latency|doctor", "slowlog|get"}
"""Admin commands doctor tries and degrades without (the README says so)."""


def readme_section() -> str:
    text = README.read_text("utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    return text[start:end]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", readme_section(), re.DOTALL)


def acl_users(app: str, env: str, password: str = PASSWORD) -> dict[str, list[str]]:
    """User name -> its ACL SETUSER rules, as the README's block gives them."""
    users: dict[str, list[str]] = {}
    for line in _blocks("text")[0].splitlines():
        words = line.split()
        assert words[:2] == ["ACL", "SETUSER"], line
        users[words[2]] = [
            w.replace(">PASSWORD", f">{password}").replace("APP", app).replace("ENV", env)
            for w in words[3:]
        ]
    return users


def doctor_extras() -> list[str]:
    """The README's optional rules that give doctor CONFIG GET, LATENCY and SLOWLOG."""
    found = re.search(r"`ACL SETUSER esctl-read ([^`]+)`", readme_section())
    assert found, "the README gives doctor's extra rules"
    return found[1].split()


def cluster_extras() -> list[str]:
    """The README's rules a user needs beside its family's on a Redis Cluster."""
    found = re.search(r"add `(\+command\s[^`]+)` to each user", readme_section())
    assert found, "the README gives the rules a cluster needs"
    return found[1].split()


def pg_statements(role: str, dbname: str, password: str = PASSWORD) -> list[str]:
    """The README's SQL statements for ``role`` (esctl_migrate or esctl_read)."""
    statements = []
    for line in _blocks("sql")[0].splitlines():
        if line.startswith("--") or not line.strip():
            continue
        if re.search(rf"\b{role}\b", line):
            line = line.replace("'PASSWORD'", f"'{password}'")
            statements.append(line.replace("DBNAME", dbname))
    assert statements, f"the README has no statement for {role}"
    return statements


def set_user(admin: redis.Redis, name: str, rules: list[str]) -> None:
    admin.execute_command("ACL", "SETUSER", name, "reset", *rules)


def user_url(port: int, user: str, password: str = PASSWORD, db: int = 0) -> str:
    return f"redis://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}/{db}"


def pg_url(port: int, role: str, dbname: str, password: str | None = PASSWORD) -> str:
    secret = f":{quote(password, safe='')}" if password is not None else ""
    return f"postgresql://{role}{secret}@127.0.0.1:{port}/{dbname}"


def acl_denials(admin: redis.Redis) -> list[tuple[str, str]]:
    """``(reason, object)`` of each ACL LOG entry (what the server refused), then reset."""
    entries: list[Any] = admin.execute_command("ACL", "LOG")
    admin.execute_command("ACL", "LOG", "RESET")
    found = []
    for entry in entries:
        if isinstance(entry, list):
            entry = dict(zip(entry[::2], entry[1::2], strict=False))
        get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
        found.append(
            tuple(
                v.decode() if isinstance(v, bytes) else str(v)
                for v in (get["reason"], get["object"])
            )
        )
    return found  # type: ignore[return-value]

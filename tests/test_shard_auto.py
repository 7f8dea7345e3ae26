"""``--shard auto``: shard I/N from a Kubernetes Indexed Job's environment (I from
``JOB_COMPLETION_INDEX``, N from ``ESCTL_SHARD_COUNT``), and a clear usage error (exit 2)
naming the variable when one is missing, not a whole number, or out of range. (A pod's run of
each manifest in docs/deploy/k8s/ with --shard auto: tests/test_deploy_recipes.py.)"""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from esctl.errors import UsageError
from esctl.shard import COUNT_VAR, INDEX_VAR, Shard


def env(index: str | None, count: str | None) -> dict[str, str]:
    values = {INDEX_VAR: index, COUNT_VAR: count, "UNRELATED": "x"}
    return {k: v for k, v in values.items() if v is not None}


@pytest.mark.parametrize(("index", "count"), [(0, 1), (0, 4), (3, 4), (17, 32)])
def test_auto_takes_the_index_and_the_count_from_the_environment(index: int, count: int) -> None:
    assert Shard.from_option("auto", env(str(index), str(count))) == Shard(index, count)


def test_auto_is_case_and_space_insensitive_and_tolerates_spaces_in_the_values() -> None:
    assert Shard.from_option(" AUTO ", env(" 2", "5\n")) == Shard(2, 5)


def test_other_values_are_parsed_as_i_of_n_and_ignore_the_environment() -> None:
    assert Shard.from_option("1/3", env("0", "4")) == Shard(1, 3)
    assert Shard.from_option(None, env("0", "4")) == Shard()


def test_auto_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INDEX_VAR, "1")
    monkeypatch.setenv(COUNT_VAR, "2")
    assert Shard.from_option("auto") == Shard(1, 2)


@pytest.mark.parametrize(
    ("index", "count", "message", "hint"),
    [
        (None, "4", f"{INDEX_VAR} is not set", "Indexed Job"),
        ("", "4", f"{INDEX_VAR} is not set", "--shard I/N"),
        ("1", None, f"{COUNT_VAR} is not set", "spec.completions"),
        ("1", " ", f"{COUNT_VAR} is not set", "spec.completions"),
        ("one", "4", f"{INDEX_VAR} is 'one', not a whole number", INDEX_VAR),
        ("-1", "4", f"{INDEX_VAR} is '-1', not a whole number", INDEX_VAR),
        ("1", "4.0", f"{COUNT_VAR} is '4.0', not a whole number", COUNT_VAR),
        ("0", "0", f"{COUNT_VAR} is 0; the shard count must be at least 1", "spec.completions"),
        ("4", "4", f"{INDEX_VAR} is 4 but {COUNT_VAR} is 4", "spec.completions"),
        ("9", "3", "must be below the count (0 to 2)", "completions - 1"),
    ],
)
def test_bad_environments_are_usage_errors_naming_the_variable(
    index: str | None, count: str | None, message: str, hint: str
) -> None:
    with pytest.raises(UsageError) as caught:
        Shard.from_option("auto", env(index, count))
    assert caught.value.message.startswith("--shard auto: ")
    assert message in caught.value.message
    assert caught.value.hint is not None and hint in caught.value.hint


def test_a_malformed_shard_names_both_forms() -> None:
    with pytest.raises(UsageError, match=r"I/N \(for example 0/4\) or auto") as caught:
        Shard.from_option("automatic", env("0", "4"))
    assert caught.value.hint is not None and COUNT_VAR in caught.value.hint


def test_cli_refuses_a_missing_variable_with_exit_2_before_connecting() -> None:
    # Port 1 on loopback: nothing listens there, so reaching for a server would be exit 1.
    unreachable = {
        "ESCTL_REDIS_URL": "redis://127.0.0.1:1/0",
        "ESCTL_PG_DSN": "postgresql://127.0.0.1:1/x",
        COUNT_VAR: "4",
    }
    result = run_cli(
        *("migrate", "verify", "--app", "X", "--shard", "auto", "--json"), env=unreachable
    )
    assert result.returncode == 2, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["exit_code"] == 2
    assert document["error"]["kind"] == "usage"
    assert (
        document["error"]["message"]
        == f"--shard auto: the environment variable {INDEX_VAR} is not set"
    )
    assert "docs/deploy/kubernetes.md" in document["error"]["hint"]

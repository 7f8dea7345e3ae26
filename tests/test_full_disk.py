"""Output that cannot be written because its disk is full (``> FILE`` on a full filesystem, a
``--problems-file`` there), as ``/dev/full`` answers every write: exit 1 with one line that says
so and what to do, never a Python traceback or "a bug in esctl"; with ``--json`` the error
document cannot reach stdout either, so stderr carries it as text. Help and ``--version`` too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env, run_cli

from esctl.demo import DemoSummary

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")

FULL_STDOUT = "error: cannot write to standard output: No space left on device"


def to_full(
    *args: str, tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``esctl ARGS > /dev/full``."""
    with open("/dev/full", "w") as full:
        return subprocess.run(
            [sys.executable, "-m", "esctl", *args], stdout=full, stderr=subprocess.PIPE,
            env=cli_env(env), cwd=tmp_path, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ("events", "query", "--type", "ItemScoreUpdated"),  # a stream of JSON lines
        ("events", "query", "--type", "ItemScoreUpdated", "--json"),
        ("replay", "--from", "redis", "--all", "--to", "stdout"),
        ("inspect", "stats", "--json"),  # one document
        ("inspect", "stats"),  # a table (rich)
    ],
    ids=lambda args: " ".join(args),
)
def test_stdout_on_a_full_disk_is_one_error_line(
    args: tuple[str, ...], demo_store: DemoSummary, redis_test_url: str, tmp_path: Path
) -> None:
    result = to_full(*args, "--redis-url", redis_test_url, "--app", demo_store.app,
                     tmp_path=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(FULL_STDOUT), result.stderr
    assert "Traceback" not in result.stderr and "bug in esctl" not in result.stderr
    assert "free space where standard output goes" in result.stderr


@pytest.mark.parametrize(
    "args",
    [("--help",), ("--version",), ("queue", "list", "--help"), ("migrate", "redis-to-pg", "-h")],
    ids=lambda args: " ".join(args),
)
@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
def test_help_and_version_on_a_full_disk_are_one_error_line(
    args: tuple[str, ...], unbuffered: str, tmp_path: Path
) -> None:
    """Click prints help and the version before any command body runs: the failed write is
    the same error as a command's (before: Python's traceback), whether Python buffers stdout
    (the write fails at echo's flush) or not (at its write)."""
    result = to_full(*args, tmp_path=tmp_path, env={"PYTHONUNBUFFERED": unbuffered})
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(FULL_STDOUT), result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert result.stderr.splitlines()[1:] == [
        "  what to do: free space where standard output goes (or send it elsewhere), then rerun"
    ]


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("queue", "list", "--help")])
def test_help_and_version_to_a_closed_pipe_stay_quiet(args: tuple[str, ...]) -> None:
    """A reader that went away before esctl wrote (``esctl --help | true``): nothing on
    stderr, exit 1, as Click does it."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "esctl", *args], stdout=write_end, stderr=subprocess.PIPE,
            env=cli_env(), text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (1, "")


def test_a_problems_file_on_a_full_disk_is_named(
    demo_store: DemoSummary, redis_test_url: str, tmp_path: Path
) -> None:
    """The demo store has defects: the first one written to the file fails."""
    args = ["--redis-url", redis_test_url, "--app", demo_store.app, "--json"]
    full = run_cli("inspect", "integrity", *args, "--problems-file", "/dev/full")
    assert full.returncode == 1, full.stderr
    error = json.loads(full.stdout)["error"]
    assert error["message"] == "cannot write the problems file /dev/full: No space left on device"
    assert error["hint"].startswith("free space there")
    missing = run_cli(
        "inspect", "integrity", *args, "--problems-file", str(tmp_path / "no" / "p.jsonl")
    )
    assert missing.returncode == 1
    assert "check that its folder exists" in missing.stderr and "Traceback" not in missing.stderr

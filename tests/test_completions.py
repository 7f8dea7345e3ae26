"""completions/: generated from esctl, current, and answering in a real shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "gen_completions.py"
COMPLETIONS = ROOT / "completions"
SCRIPTS = {"bash": "esctl.bash", "zsh": "_esctl", "fish": "esctl.fish"}


def shell_env() -> dict[str, str]:
    """No ESCTL_* settings, and the ``esctl`` console script of this interpreter on PATH."""
    env = cli_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def test_completion_scripts_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"],
        capture_output=True,
        text=True,
        env=shell_env(),
        timeout=120,
    )
    assert result.returncode == 0, (
        result.stderr + "\n(regenerate with: python scripts/gen_completions.py)"
    )


@pytest.mark.parametrize("shell", list(SCRIPTS))
def test_each_script_calls_back_into_esctl(shell: str) -> None:
    text = (COMPLETIONS / SCRIPTS[shell]).read_text()
    assert "esctl" in text
    assert "_ESCTL_COMPLETE=complete_" + shell in text
    if shell == "zsh":
        assert text.startswith("#compdef esctl\n")  # required to autoload from $fpath


def test_bash_completes_from_the_script() -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = (
        f"source {COMPLETIONS / 'esctl.bash'}\n"
        "COMP_WORDS=(esctl ev); COMP_CWORD=1; _esctl_completion esctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
        "COMP_WORDS=(esctl config show --js); COMP_CWORD=3; _esctl_completion esctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", script],
        capture_output=True,
        text=True,
        env=shell_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["events", "--json"], result.stderr


def test_fish_completes_from_the_script() -> None:
    if shutil.which("fish") is None:
        pytest.skip("no fish shell on this machine")
    result = subprocess.run(
        [
            "fish",
            "--no-config",
            "-c",
            f"source {COMPLETIONS / 'esctl.fish'}; complete -C 'esctl ev'",
        ],
        capture_output=True,
        text=True,
        env=shell_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\t")[0] == "events"


def test_zsh_script_parses() -> None:
    if shutil.which("zsh") is None:
        pytest.skip("no zsh on this machine")
    result = subprocess.run(
        ["zsh", "-n", str(COMPLETIONS / "_esctl")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr

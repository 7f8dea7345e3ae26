"""completions/: generated from esctl, current, and answering in a real shell."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env
from terminal import TerminalSession

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


# --- on a terminal, installed as the README says ---------------------------------------------

# What each shell is started as, and the README's install step (run in the shell, or done to
# the new HOME before it starts), for an operator typing `esctl ev<Tab>` and `--js<Tab>`.
TERMINAL_SHELLS = {
    "bash": (["bash", "--noprofile", "--norc"], f"PS1='$ '; source {COMPLETIONS / 'esctl.bash'}"),
    "zsh": (
        ["zsh", "-f"],
        "PS1='$ '; fpath=(~/.zfunc $fpath); autoload -U compinit && compinit -u",
    ),
    # fish loads ~/.config/fish/completions/esctl.fish itself, at the first Tab after "esctl"
    "fish": (["fish"], "function fish_prompt; echo '$ '; end"),
}


def _installed_home(tmp_path: Path) -> Path:
    """A HOME with the README's zsh and fish installs done: ~/.zfunc/_esctl and
    ~/.config/fish/completions/esctl.fish."""
    home = tmp_path / "home"
    (home / ".zfunc").mkdir(parents=True)
    shutil.copy(COMPLETIONS / "_esctl", home / ".zfunc")
    fish = home / ".config" / "fish" / "completions"
    fish.mkdir(parents=True)
    shutil.copy(COMPLETIONS / "esctl.fish", fish)
    return home


@pytest.mark.parametrize("shell", list(TERMINAL_SHELLS))
def test_tab_completes_in_an_interactive_shell_installed_as_the_readme_says(
    shell: str, tmp_path: Path
) -> None:
    """On a real terminal: a command group, then an option of a nested command, each by Tab."""
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} on this machine")
    argv, setup = TERMINAL_SHELLS[shell]
    home = _installed_home(tmp_path)
    env = shell_env() | {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    env.pop("XDG_DATA_HOME", None)
    with TerminalSession(argv, env=env) as session:
        if setup:
            session.type(setup + "\n")
        session.type("esctl ev\t")
        session.wait_for(
            lambda s: s.rows[-1:] != [] and s.rows[-1].endswith(" esctl events"), timeout=30
        )
        session.type("\x15esctl config show --js\t")  # Ctrl-U: a new line
        session.wait_for(
            lambda s: s.rows[-1:] != [] and s.rows[-1].endswith(" esctl config show --json"),
            timeout=30,
        )

"""Run a command on a real pseudo-terminal and read the screen as a person sees it.

``run_on_terminal`` gives the command a pty of COLS x ROWS (``TIOCSWINSZ``) as its stdin,
stderr and, unless ``pipe_stdout``, stdout, and feeds everything it draws into pyte, a VT100
emulator: colours, cursor moves and the carriage-return redraws of progress bars end up as the
final picture, long lines wrap at the right margin. The :class:`Screen` holds the rows that
scrolled off the top followed by the rows still shown. Nothing here needs a terminal of its own
(CI runs with no stdin).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyte
from helpers import cli_env
from wcwidth import wcswidth, wcwidth

SIZES = {"80x24": (80, 24), "120x40": (120, 40)}
"""The usual terminal (most terminals' and tmux's default) and a large one."""


def size_of(size: str) -> tuple[int, int]:
    """(columns, rows) of ``size``: a key of SIZES, or any ``COLSxROWS`` (``40x24``: a
    terminal split in two)."""
    if size in SIZES:
        return SIZES[size]
    cols, _, rows = size.partition("x")
    return int(cols), int(rows)


TIMEOUT = 120.0
BIN_DIR = Path(sys.executable).parent
ESCTL = (
    [str(BIN_DIR / "esctl")] if (BIN_DIR / "esctl").exists() else [sys.executable, "-m", "esctl"]
)
"""The installed console script, as an operator types it (``python -m esctl`` without one)."""

# The working directory of a run unless told: an empty folder (no ./esctl.toml leaks in).
_EMPTY_DIR = Path(tempfile.mkdtemp(prefix="esctl-terminal-test-"))
atexit.register(shutil.rmtree, _EMPTY_DIR, ignore_errors=True)


@dataclass(frozen=True)
class Screen:
    """What a command left on the terminal, and its exit code."""

    command: str
    cols: int
    lines: int
    exit_code: int
    rows: list[str]
    """Every row, scrollback first, trailing spaces cut; the blank rows at the end dropped."""
    stdout: str | None
    """What went to stdout when it was a pipe (``pipe_stdout``), else None."""
    written: tuple[str, ...] = ()
    """The lines the command wrote to the terminal, as written (:func:`written_lines`)."""

    @property
    def folded(self) -> list[str]:
        """The lines written wider than the terminal, which it folded onto the next row
        wherever the margin fell (``"…is r"`` / ``"ight"``)."""
        return [line for line in self.written if wcswidth(line) > self.cols]

    @property
    def text(self) -> str:
        return "\n".join(self.rows)

    def describe(self) -> str:
        """The screen for an assertion message."""
        framed = "\n".join(f"|{row}" for row in self.rows)
        piped = "" if self.stdout is None else f"\n--- stdout (a pipe) ---\n{self.stdout}"
        return (
            f"$ {self.command}   ({self.cols}x{self.lines}, exit {self.exit_code})\n{framed}{piped}"
        )

    def logical_line_at(self, index: int, length: int) -> str:
        """The line of ``length`` characters that starts on row ``index`` and, being longer than
        the terminal is wide, continues on the rows below (the terminal wrapped it)."""
        parts = []
        remaining = length
        row = index
        while remaining > 0 and row < len(self.rows):
            parts.append(self.rows[row].ljust(self.cols)[: min(remaining, self.cols)])
            remaining -= self.cols
            row += 1
        return "".join(parts)


# A control sequence (CSI: colours, cursor moves, erasing), an OSC (a title, a link), a
# character set choice or a keypad mode: none takes a cell.
_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]"
)


def written_lines(raw: bytes) -> tuple[str, ...]:
    """The lines in ``raw`` (what a command wrote to its terminal) as it wrote them, before
    the terminal folded any: escape sequences dropped, and a line redrawn after a carriage
    return (a progress bar) taken as its last picture."""
    text = _ESCAPE.sub("", raw.decode("utf-8", "replace"))
    return tuple(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def terminal_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a run: ``helpers.cli_env`` (no ``ESCTL_*``, an empty config folder)
    made into a colour terminal's: TERM=xterm-256color, no NO_COLOR, and no COLUMNS/LINES, so
    programs ask the terminal for its size as they do for a person."""
    clean = cli_env()
    for name in ("NO_COLOR", "COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE"):
        clean.pop(name, None)
    clean.update(TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    clean.update(env or {})
    return clean


def run_on_terminal(
    args: Sequence[str],
    *,
    size: str = "80x24",
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    pipe_stdout: bool = False,
    timeout: float = TIMEOUT,
) -> Screen:
    """Run ``args`` on a fresh pty of ``size`` (:func:`size_of`) and return its screen once it
    has exited and closed the terminal. ``env`` goes on top of :func:`terminal_env`. On a
    time-out the command's process group is killed and AssertionError shows the screen so far.
    """
    cols, lines = size_of(size)
    screen = pyte.HistoryScreen(cols, lines, history=100_000)
    stream = pyte.ByteStream(screen)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, cols, 0, 0))
    try:
        process = subprocess.Popen(
            list(args),
            stdin=slave,
            stdout=subprocess.PIPE if pipe_stdout else slave,
            stderr=slave,
            env=terminal_env(env),
            cwd=str(cwd if cwd is not None else _EMPTY_DIR),
            start_new_session=True,  # its own process group, to end it whole on a time-out
        )
    finally:
        os.close(slave)
    piped = bytearray()
    drawn = bytearray()
    open_fds = {master}
    if process.stdout is not None:
        open_fds.add(process.stdout.fileno())
    deadline = time.monotonic() + timeout
    command = " ".join(args)
    try:
        # Until the terminal is closed by every process holding it (EIO on Linux) and stdout's
        # pipe is at its end.
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                partial = Screen(command, cols, lines, -9, _rows(screen), piped.decode())
                raise AssertionError(f"timed out after {timeout:.0f} s\n{partial.describe()}")
            ready, _, _ = select.select(list(open_fds), [], [], left)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    open_fds.discard(fd)
                elif fd == master:
                    stream.feed(data)
                    drawn += data
                else:
                    piped += data
        exit_code = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        os.close(master)
        if process.stdout is not None:
            process.stdout.close()
    return Screen(
        command,
        cols,
        lines,
        exit_code,
        _rows(screen),
        piped.decode("utf-8", "replace") if pipe_stdout else None,
        written_lines(bytes(drawn)),
    )


def _rows(screen: pyte.HistoryScreen) -> list[str]:
    def render(line: Mapping[int, pyte.screens.Char]) -> str:
        chars = []
        skip = False
        for x in range(screen.columns):
            if skip:  # the right half of a double-width character
                skip = False
                continue
            data = line[x].data
            chars.append(data)
            skip = bool(data) and wcwidth(data[0]) == 2
        return "".join(chars).rstrip()

    rows = [render(line) for line in screen.history.top]
    rows += [render(screen.buffer[y]) for y in range(screen.lines)]
    while rows and not rows[-1]:
        rows.pop()
    return rows


# --- what a person would call broken --------------------------------------------------------

_CUT_OPTION = re.compile(r"--[\w-]*…")
_ERROR_LINE = re.compile(r"^\s*(error|Error):", re.MULTILINE)
# A progress bar's last picture ("… [00:01, 20.2k events/s, matched=5]") with a table's rule
# after it on the same row: the table started before the bar had ended its line.
_BAR_THEN_TABLE = re.compile(r"\[\d\d:\d\d[^\]\n]*/s[^\]\n]*\][^\n]*[┃│━]")


def problems_on(screen: Screen, *, exit_code: int = 0, error_expected: bool = False) -> list[str]:
    """What is wrong with ``screen``: a traceback, an ``error:`` line where none is expected
    (or none where one is), a table on a progress bar's row, an option name cut short
    (``--max-redis-late…``), another exit code than ``exit_code``."""
    found = []
    text = screen.text + ("\n" + screen.stdout if screen.stdout else "")
    if "Traceback (most recent call last)" in text:
        found.append("a Python traceback")
    errors = _ERROR_LINE.findall(screen.text)
    if errors and not error_expected:
        found.append("an error line")
    if error_expected and not errors:
        found.append("no error line, though one was expected")
    glued = _BAR_THEN_TABLE.findall(screen.text)
    if glued:
        found.append(f"a table drawn on a progress bar's row {glued}")
    cut = _CUT_OPTION.findall(text)
    if cut:
        found.append(f"cut option names {cut}")
    if screen.exit_code != exit_code:
        found.append(f"exit code {screen.exit_code}, expected {exit_code}")
    return found


def assert_reads_well(screen: Screen, *, exit_code: int = 0, error_expected: bool = False) -> None:
    found = problems_on(screen, exit_code=exit_code, error_expected=error_expected)
    assert not found, f"{'; '.join(found)}:\n{screen.describe()}"


# --- a command that keeps running: read its screen while it does -----------------------------


class TerminalSession:
    """A command running on a fresh pty of ``size`` (as :func:`run_on_terminal`), whose screen
    a test reads while it runs (:meth:`wait_for`) and types into (:meth:`type`: ``"\\x03"`` is
    Ctrl-C, which the terminal turns into SIGINT for the command, the pty being its
    controlling terminal). Use it as a context manager: leaving kills what is still running."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        size: str = "80x24",
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        stdout: int | None = None,
    ) -> None:
        """``stdout``: a file descriptor for stdout (``> FILE``) in place of the terminal."""
        self.command = " ".join(args)
        self.cols, self.lines = size_of(size)
        self._screen = pyte.HistoryScreen(self.cols, self.lines, history=100_000)
        self._stream = pyte.ByteStream(self._screen)
        self._master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.lines, self.cols, 0, 0))
        try:
            self.process = subprocess.Popen(
                list(args),
                stdin=slave,
                stdout=slave if stdout is None else stdout,
                stderr=slave,
                env=terminal_env(env),
                cwd=str(cwd if cwd is not None else _EMPTY_DIR),
                start_new_session=True,
                # The pty becomes the new session's controlling terminal, so Ctrl-C typed on
                # it is a SIGINT, as in a shell.
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            )
        finally:
            os.close(slave)
        self._open = True
        self.raw = bytearray()
        """Every byte the command drew so far (escape sequences included)."""

    def __enter__(self) -> TerminalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1

    def screen(self) -> Screen:
        """What the terminal shows now (exit code -1 while the command runs)."""
        code = self.process.poll()
        return Screen(
            self.command,
            self.cols,
            self.lines,
            -1 if code is None else code,
            _rows(self._screen),
            None,
            written_lines(bytes(self.raw)),
        )

    def _read(self, timeout: float) -> None:
        """Feed what the command drew within ``timeout`` seconds to the emulator."""
        if not self._open:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self._master, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        if data:
            self.raw += data
            self._stream.feed(data)
        else:
            self._open = False  # every process holding the terminal has closed it

    def wait_for(self, predicate: Callable[[Screen], bool], *, timeout: float = 10.0) -> Screen:
        """The screen once ``predicate`` holds for it; AssertionError (showing the screen)
        when it does not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"the screen did not show what was awaited in {timeout:.0f} s\n"
                    + screen.describe()
                )
            self._read(min(left, 0.5))

    def type(self, text: str) -> None:
        os.write(self._master, text.encode())

    def hang_up(self) -> None:
        """Close the terminal, as an ssh session that drops or a terminal window closed does:
        the kernel sends SIGHUP to the command (the session's leader), and its reads and
        writes on the terminal fail from then on."""
        os.close(self._master)
        self._master = -1
        self._open = False

    def wait_exit(self, *, timeout: float = 10.0) -> Screen:
        """The last screen once the command has exited and closed the terminal."""
        return self.wait_for(lambda s: s.exit_code != -1 and not self._open, timeout=timeout)

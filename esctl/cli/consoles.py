"""stdout and stderr as esctl writes to them: the two rich consoles (data, never markup),
whether stdin, stdout and stderr are terminals, and what to do when the reader of stdout has
gone away (``| head``)."""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import termios
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

from esctl.errors import EsctlError


class _StdoutConsole(Console):
    def on_broken_pipe(self) -> None:
        # Not rich's exit 1: the error wrapper stops the command quietly, exit 0, as it does
        # for every other write to stdout whose reader went away.
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away")


class _Stdout:
    """sys.stdout as the stdout console writes to it (looked up at each write, as rich does
    without a file), with a failed write (a full disk under a redirect) an EsctlError."""

    def write(self, text: str) -> int:
        with writing_stdout():
            return sys.stdout.write(text)

    def flush(self) -> None:
        with writing_stdout():
            sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()

    def fileno(self) -> int:
        return sys.stdout.fileno()

    @property
    def encoding(self) -> str:
        return sys.stdout.encoding


@contextmanager
def writing_stdout() -> Iterator[None]:
    """Around a write to stdout: a failure other than a reader gone (whose BrokenPipeError
    the error wrapper handles) becomes :func:`stdout_failed`'s error."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise stdout_failed(exc) from None


def stdout_failed(exc: OSError) -> EsctlError:
    """A write to stdout that failed (not a reader gone: a full disk, a quota, a file size
    limit under ``> FILE``): stdout is given up (nothing more is written there, the error
    document included) and the error says so, on stderr."""
    stop_writing_stdout()
    return EsctlError(
        f"cannot write to standard output: {exc.strerror or exc}; what was written before "
        "is incomplete",
        hint="free space where standard output goes (or send it elsewhere), then rerun",
    )


# What esctl prints is data (key names, payload text, .NET type names), never rich markup:
# emoji=False, or ":lock:" in esctl:lock:{…} and ":1234:" in host:1234:run become emoji; and
# every string goes out as Text (tables) or with markup=False, or "[[System.String, …]]" in a
# type name is eaten and a "[/x]" in a payload raises MarkupError.
stdout_console = _StdoutConsole(file=_Stdout(), highlight=False, soft_wrap=True, emoji=False)  # type: ignore[arg-type]
stderr_console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def writes_to_terminal(console: Console) -> bool:
    isatty = getattr(console.file, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed file
        return False


def terminal_width(console: Console) -> int | None:
    """The width of the terminal ``console`` writes to; None when it is not one."""
    return console.width if writes_to_terminal(console) else None


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def stdout_on_stderr_terminal() -> bool:
    """stdout and stderr write to the same terminal (a command typed in a shell, nothing
    redirected): what goes to either lands on the same rows."""
    if not (stdout_is_terminal() and stderr_is_terminal()):
        return False
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno()))
    except (OSError, ValueError, AttributeError):
        return True  # two terminals that cannot be told apart: take them for one


# --- the reader of stdout went away --------------------------------------------------------


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone away (``| head`` read
    enough): a BrokenPipeError from anything else (a server's socket) is a real error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def stop_writing_stdout() -> None:
    """Point stdout at /dev/null, so that nothing written later (Python's last flush
    included) fails again on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# --- the terminal hung up ------------------------------------------------------------------


def let_go_of_hung_up_terminal() -> bool:
    """Point stdin, stdout and stderr at /dev/null where they are a terminal that hung up (its
    ssh session dropped, its window closed, tmux killed: each read and write fails with EIO),
    so that what esctl writes on its way out (a bar's last picture, the error, Python's last
    flush) goes nowhere instead of failing. Where they lead elsewhere (``> out.json``, a log
    file) they are left as they are. True when one was let go of."""
    let_go = False
    for fd in (0, 1, 2):
        try:
            termios.tcgetattr(fd)
            continue  # a terminal that is still there
        except termios.error as exc:
            if exc.args[0] != errno.EIO:  # not a terminal, or closed
                continue
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        let_go = True
    return let_go


def stop_if_hung_up() -> bool:
    """After a read or write on the terminal failed (a question's answer, the end of input
    found instead): when it was because the terminal hung up, let go of it and stop as the
    hangup's SIGHUP does, here and now, by raising SIGHUP (esctl's handler raises
    KeyboardInterrupt). The hangup's own SIGHUP may come later (passed on by the shell; it is
    then the same hangup told again), or may have come already, its handler waiting for
    Python's next call, which on the way out of the question could be a lock's release.
    False when no terminal hung up; True when one did and SIGHUP is ignored (``nohup``): the
    command goes on without its terminal."""
    if not let_go_of_hung_up_terminal():
        return False
    signal.raise_signal(signal.SIGHUP)
    return True

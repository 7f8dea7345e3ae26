"""One table from esctl's typed errors to messages and exit codes (the README's exit-code
table), and the wrapper every command runs inside (applied once, by ``esctl.cli.context``)."""

from __future__ import annotations

import errno
import io
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

from esctl import errors
from esctl.cli import consoles, jsonout, messages, output

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PROBLEMS = 3
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130

# (error class, exit code, kind in --json output); the first matching row wins.
# A refusal (not confirmed, no --yes without a terminal, no backup file, a backup file that
# exists) is a usage error: nothing was done, and the same command would be refused again.
ERROR_TABLE: tuple[tuple[type[errors.EsctlError], int, str], ...] = (
    (errors.Refused, EXIT_USAGE, "refused"),
    (errors.UsageError, EXIT_USAGE, "usage"),
    (errors.LockHeld, EXIT_LOCKED, "locked"),
    (errors.ConfigError, EXIT_FAILED, "config"),
    (errors.ConnectionFailed, EXIT_FAILED, "connection"),
    (errors.SchemaIncompatible, EXIT_FAILED, "schema"),
    (errors.NotFound, EXIT_FAILED, "not_found"),
    (errors.PermissionDenied, EXIT_FAILED, "permission"),
    (errors.ServerError, EXIT_FAILED, "server"),
    (errors.LocalServerError, EXIT_FAILED, "local_server"),
    (errors.EsctlError, EXIT_FAILED, "error"),
)


def classify(exc: errors.EsctlError) -> tuple[int, str]:
    """Exit code and kind of an error (first matching row of ERROR_TABLE)."""
    for cls, code, kind in ERROR_TABLE:
        if isinstance(exc, cls):
            return code, kind
    return EXIT_FAILED, "error"


def render_error(
    kind: str,
    message: str,
    hint: str | None,
    code: int,
    json_mode: bool,
    *,
    stream: jsonout.JsonStream | None = None,
    debug: bool = False,
    done: dict[str, int] | None = None,
) -> None:
    """The message on stderr; with ``json_mode`` also the error document on stdout (with a
    ``stream``: as the stream's end), its hint as it is, and ``done`` (what an interrupted run
    had done, :class:`esctl.errors.Interrupted`) when given; ``debug``: see
    :func:`~esctl.cli.messages.print_error`. A terminal that hung up, on which every write
    fails, is let go of first: the error goes where stdout and stderr lead elsewhere
    (``--json > out.json``), and nowhere on the terminal."""
    consoles.let_go_of_hung_up_terminal()  # after a hangup: written nowhere, not failing
    error: dict[str, Any] = {"kind": kind, "message": message, "hint": hint}
    if done is not None:
        error["done"] = done
    document = {"error": error, "exit_code": code}
    if stream is not None:
        stream.fail(document)
    elif json_mode:
        jsonout.emit_json(document)
    messages.print_error(message, hint, debug=debug)


@contextmanager
def reporting(
    *,
    json_mode: bool = False,
    debug: bool = False,
    stream: jsonout.JsonStream | None = None,
    out: output.Output | None = None,
) -> Iterator[None]:
    """Run a command body: typed errors become a message and their exit code; Ctrl-C exits
    130; a reader of stdout that went away (``| head``) stops it quietly, exit 0; anything
    unexpected exits 1 with a one-line message (the traceback only with --debug).
    With ``json_mode`` the error is also a JSON document on stdout; when stdout carries a
    ``stream`` of results, the error document ends that stream. ``out``: a command's
    :class:`~esctl.cli.output.Output` (the CLI context wraps every command in this), whose
    JSON mode and stream are read when the error comes, in place of ``json_mode`` and
    ``stream``.
    """
    to = out if out is not None else output.Output(json=json_mode, stream=stream)
    _command_began()
    try:
        yield
    except typer.Exit:
        raise
    except errors.EsctlError as exc:
        if debug:
            traceback.print_exc(file=sys.stderr)
        code, kind = classify(exc)
        render_error(kind, exc.message, exc.hint, code, to.json, stream=to.stream, debug=debug)
        raise typer.Exit(code) from None
    except KeyboardInterrupt as exc:
        said = exc if isinstance(exc, errors.Interrupted) else None
        render_error(
            "interrupted",
            f"{_stopped_by or 'interrupted'}; "
            + (said.state if said else "the state was left consistent"),
            # A run that can resume says so itself (Interrupted): a reading command starts over.
            said.hint if said else "rerun the same command",
            EXIT_INTERRUPTED,
            to.json,
            stream=to.stream,
            done=said.done if said else None,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError as exc:
        if not consoles.stdout_reader_gone():  # not stdout's reader: a real error
            _unexpected(exc, to, debug)
        consoles.stop_writing_stdout()
        raise typer.Exit(EXIT_OK) from None
    except Exception as exc:
        _unexpected(exc, to, debug)


def _unexpected(exc: Exception, to: output.Output, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    from esctl.config import redact

    render_error(
        "internal",
        f"unexpected {type(exc).__name__}: {redact(str(exc))}",
        "this is a bug in esctl; rerun with --debug and report the traceback",
        EXIT_FAILED,
        to.json,
        stream=to.stream,
    )
    raise typer.Exit(EXIT_FAILED) from None


def exit_for(*, failed: bool | int = False, problems: object = False) -> None:
    """End a command that completed: exit 1 when some items ``failed``, 3 when ``problems``
    were found and reported, else return (exit 0)."""
    if failed:
        raise typer.Exit(EXIT_FAILED)
    if problems:
        raise typer.Exit(EXIT_PROBLEMS)


# --- the whole command line ------------------------------------------------------------------

HELP_WORDS = frozenset({"-h", "--help"})


STOP_SIGNALS = {
    signal.SIGTERM: "stopped by SIGTERM",
    signal.SIGHUP: "stopped by SIGHUP (the terminal hung up)",
}
"""The signals that stop a command as Ctrl-C does (:func:`stop_on_signals`), each with how the
interruption's message begins (after Ctrl-C: "interrupted")."""

_stopped_by: str | None = None
"""The words of the first of STOP_SIGNALS that came (the interruption's message says them)."""
_hung_up = False
"""A SIGHUP came: the ones after it are the same hangup told again."""
_began = True
"""A command's body has begun (:func:`reporting`): a stop is the body's to handle. False from
:func:`run_command_line`'s start until then, while esctl builds its commands and Click parses
the words (half a second)."""


class _StoppedBeforeTheCommand(BaseException):
    """A stop (Ctrl-C, SIGTERM, SIGHUP) before the command's body began: nothing was done.
    Not a KeyboardInterrupt, which Click's parsing would turn into its 'Aborted!' (exit 1) and
    Typer's building of the commands would let out as a traceback."""


def _ctrl_c_before_the_command(signum: int, frame: Any) -> None:
    raise _StoppedBeforeTheCommand


def _command_began() -> None:
    """The body runs: Ctrl-C is Python's KeyboardInterrupt again, for the body to handle."""
    global _began
    if not _began:
        _began = True
        if signal.getsignal(signal.SIGINT) is _ctrl_c_before_the_command:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def stop_on_signals() -> dict[int, Any]:
    """Make SIGTERM (``systemctl stop``, a Kubernetes pod stopped, ``timeout``) and SIGHUP (the
    terminal hung up: an ssh session dropped, a terminal window closed, tmux killed) stop a
    command as Ctrl-C does: the work in hand ends consistently, locks are given back at once,
    the summary or error says so, exit 130. Without it Python dies on the spot (a Redis lock
    then stays until it expires), and as a container's PID 1 it ignores SIGTERM until the
    SIGKILL that follows. A SIGHUP ignored when esctl starts (``nohup``, a parent's SIG_IGN)
    stays ignored: the command was meant to outlive its terminal. A command's own Ctrl-C
    handling, when it has one, takes them (a follower handles them itself). Returns the
    handlers it replaced."""
    replaced: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():  # (only there can it)
        return replaced
    for signum in STOP_SIGNALS:
        if signum != signal.SIGHUP or signal.getsignal(signum) != signal.SIG_IGN:
            replaced[signum] = signal.signal(signum, _on_stop)
    return replaced


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """:func:`stop_on_signals` for a block (the demo's: its servers are stopped however esctl
    was started), the handlers there were back after it."""
    replaced = stop_on_signals()
    try:
        yield
    finally:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)


def _on_stop(signum: int, frame: Any) -> None:
    """SIGTERM or SIGHUP: noted for the message, then delivered as Ctrl-C, to the SIGINT
    handler there is now (one that holds Ctrl-C across a round trip holds it too). After a
    hangup the terminal is let go of first, so that nothing written on the way out fails; a
    second SIGHUP (the shell's, then the kernel's as the shell exits) changes nothing."""
    global _stopped_by, _hung_up
    if signum == signal.SIGHUP:
        consoles.let_go_of_hung_up_terminal()
        if _hung_up:
            return
        _hung_up = True
    if _stopped_by is None:
        _stopped_by = STOP_SIGNALS[signal.Signals(signum)]
    if not _began:
        raise _StoppedBeforeTheCommand
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
    else:  # the default, or SIGINT ignored (started in the background): stop all the same
        raise KeyboardInterrupt


def run_command_line(app: typer.Typer, args: Sequence[str] | None = None) -> None:
    """Run esctl's command line (``args``: ``sys.argv[1:]``) and exit with its code.

    Click finds a bad option or argument before any command body, so before ``reporting``:
    when the words ask a command that prints JSON for JSON (``--json``, ``--format json`` or
    ``jsonl``), that usage error, too, is an error document on stdout (exit 2), so that
    ``esctl … --json | jq`` always has one document to read. Every other run (help, version,
    shell completion, which runs without words, no --json) is Typer's usual one.

    A stop before the command's body begins (a SIGTERM half a second after the start) ends
    the run there: nothing was done, exit 130, the same message and JSON document as a stop
    in the body, not a traceback."""
    global _began
    _began = False
    stop_on_signals()
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _ctrl_c_before_the_command)
    words = list(sys.argv[1:] if args is None else args)
    try:
        if _may_ask_for_json(words):
            import typer.main

            command = typer.main.get_command(app)
            if asks_for_json(command, words):
                sys.exit(_run_json(command, words))
        with _clicks_own_output():
            app(args=args)
    except _StoppedBeforeTheCommand:
        json_mode = _may_ask_for_json(words)
        render_error(
            "interrupted",
            f"{_stopped_by or 'interrupted'} before the command began; nothing was done",
            "rerun the same command",
            EXIT_INTERRUPTED,
            json_mode,
            # one line, as a usage error's document (a JSON-lines stream stays one)
            stream=jsonout.JsonStream() if json_mode else None,
        )
        sys.exit(EXIT_INTERRUPTED)
    finally:
        _command_began()  # (a run that ended before its body: SIGINT as it was)


@contextmanager
def _clicks_own_output() -> Iterator[None]:
    """Around Click's run of the command line, for what Click prints itself before any command
    body, so outside :func:`reporting` (help, ``--version``): on a stdout that cannot take it
    (a full disk under ``> FILE``) it ends as every other failed write to stdout does, with
    :func:`consoles.stdout_failed`'s one line, exit 1, not Python's traceback. A reader gone
    (``--help | head -1``) Click handles itself: quietly, exit 1."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EPIPE or not _raised_writing_stdout(exc):
            raise
        failed = consoles.stdout_failed(exc)
        render_error("error", failed.message, failed.hint, EXIT_FAILED, False)
        sys.exit(EXIT_FAILED)


def _raised_writing_stdout(exc: BaseException) -> bool:
    """Whether ``exc`` came from a write to stdout: the frame it was raised in (Click's
    ``echo``) writes to a stream on stdout's file descriptor. A write to stderr (a usage error
    on a full stderr) or a file a callback opened is not one."""
    traceback_ = exc.__traceback__
    if traceback_ is None:
        return False
    while traceback_.tb_next is not None:
        traceback_ = traceback_.tb_next
    try:
        stdout_fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    return any(_writes_to(value, stdout_fd) for value in traceback_.tb_frame.f_locals.values())


def _writes_to(value: object, fd: int) -> bool:
    """Whether ``value`` is an open stream on file descriptor ``fd``."""
    if not isinstance(value, io.IOBase):
        return False
    try:
        return value.fileno() == fd
    except (OSError, ValueError):
        return False


def _may_ask_for_json(words: Sequence[str]) -> bool:
    """A quick look (most runs): no word could ask for JSON, or help was asked for."""
    return not HELP_WORDS.intersection(words) and any(
        w == "--json" or w.startswith("--format") for w in words
    )


def asks_for_json(root: Any, words: Sequence[str]) -> bool:
    """Whether ``words`` name a command that takes ``--json`` (or ``--format``) and ask it for
    JSON, or mistype a command name and ask for JSON. ``root``: the Click command tree Typer
    builds (duck-typed: Typer vendors Click)."""
    command, _, complete = _named_command(root, words)
    if not complete:
        return command is not None and _json_words(None, words)
    return takes_json(command) and _json_words(command, words)


def _named_command(root: Any, words: Sequence[str]) -> tuple[Any, list[str], bool]:
    """The command ``words`` name, the names that lead to it, and whether they reach a command
    (not a group). A mistyped name gives the group it was looked for in; no name, ``None``."""
    command = root
    names: list[str] = []
    position = 0
    while hasattr(command, "commands"):  # a group: find the command the words name
        if position >= len(words) or words[position] == "--":
            return None, names, False  # no command named: Click shows the group's usage
        word = words[position]
        if word.startswith("-"):
            position += 2 if _takes_value(command, word) else 1
            continue
        named = command.get_command(None, word)  # (esctl's root builds it only now)
        if named is None:  # a mistyped command name
            return command, names, False
        command = named
        names.append(word)
        position += 1
    return command, names, True


def takes_json(command: Any) -> bool:
    """Whether a command has ``--json`` or ``--format`` (which, where esctl has it, offers
    json; asking a --format without json for json is answered in JSON too)."""
    return any("--json" in p.opts or "--format" in p.opts for p in command.params)


def _json_words(command: Any, words: Sequence[str]) -> bool:
    """Whether the words hold ``--json``, ``--format json|jsonl`` or ``--format=json|jsonl``,
    not counting values of ``command``'s options (``--where --json`` is a value)."""
    position = 0
    while position < len(words):
        word = words[position]
        if word == "--":
            return False
        if word == "--json" or word in ("--format=json", "--format=jsonl"):
            return True
        if word == "--format":
            if position + 1 < len(words) and words[position + 1] in ("json", "jsonl"):
                return True
            position += 2
            continue
        takes_value = command is not None and _takes_value(command, word)
        position += 2 if takes_value else 1
    return False


def _takes_value(command: Any, word: str) -> bool:
    """Whether ``word`` is one of ``command``'s options that takes the next word as its value."""
    if "=" in word:
        return False
    for param in command.params:
        if word in param.opts or word in param.secondary_opts:
            is_option = param.param_type_name == "option"
            return is_option and not (param.is_flag or param.count)
    return False


def _run_json(command: Any, words: list[str]) -> int:
    """Parse and run ``words`` as Click would, but with every error, a usage error too, as
    a JSON document on stdout (one line, so a JSON-lines stream stays one); the exit code."""
    prog = "esctl"
    # Nothing is on stdout yet: the error, whatever it is, is a one-line document.
    stream = jsonout.JsonStream()
    try:
        with reporting(json_mode=True, debug="--debug" in words, stream=stream):
            try:
                with command.make_context(prog, words) as ctx:
                    command.invoke(ctx)
            except typer.TyperException as exc:  # Click's usage errors (exit 2), file errors
                code = int(getattr(exc, "exit_code", EXIT_FAILED))
                context = getattr(exc, "ctx", None)
                if context is not None:
                    path = context.command_path
                else:  # Click gives none for a missing option value: the words name it
                    path = " ".join([prog, *_named_command(command, words)[1]])
                render_error(
                    "usage" if code == EXIT_USAGE else "error",
                    exc.format_message(),
                    f"see `{path} --help` for its options and arguments",
                    code,
                    True,
                    stream=stream,
                )
                raise typer.Exit(code) from None
            except (typer.Abort, EOFError):
                render_error("aborted", "aborted", None, EXIT_FAILED, True, stream=stream)
                raise typer.Exit(EXIT_FAILED) from None
            except BrokenPipeError:
                # The reader went away (`| head`): stop quietly, as Click does.
                consoles.stop_writing_stdout()
                raise typer.Exit(EXIT_FAILED) from None
    except typer.Exit as exc:
        return exc.exit_code
    return EXIT_OK

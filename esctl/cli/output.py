"""The one renderer: results to stdout (tables, JSON), messages, questions and progress bars to
stderr. A command talks through its :class:`Output` (``ctx.out``), which decides table or JSON
once; what it is made of is in :mod:`esctl.cli.tables`, :mod:`esctl.cli.jsonout`,
:mod:`esctl.cli.messages`, :mod:`esctl.cli.progress` and :mod:`esctl.cli.consoles`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import typer

from esctl import errors
from esctl.cli.consoles import (
    stderr_console,
    stderr_is_terminal,
    stdin_is_terminal,
    stdout_console,
    stdout_on_stderr_terminal,
    stop_if_hung_up,
    terminal_width,
)
from esctl.cli.jsonout import JsonStream, emit_json
from esctl.cli.messages import info, info_command, note, print_error, warn
from esctl.cli.progress import Progress, counting_bar
from esctl.cli.tables import emit_mapping, emit_table, print_title
from esctl.cli.wrapping import break_command, hang, label_and_command, question_lines
from esctl.units import counted, format_bytes, format_duration


class Output:
    """How one command talks to the operator, decided once per invocation.

    - Results go to stdout: one JSON document with ``--json`` (:meth:`result`), else tables;
      a stream of results is a :class:`JsonStream` (:meth:`open_stream`), which an error
      ends. The error wrapper (``esctl.cli.errors.reporting``) reads ``json`` and ``stream``
      when an error comes.
    - Bytes and durations are written one way (:func:`format_bytes`, IEC units;
      :func:`format_duration`); JSON keeps raw numbers.
    - A progress bar is drawn only when asked (``--progress``, the default), stderr is a
      terminal and the result is not JSON (:meth:`progress`).
    - A question needs a terminal on stdin (the answer) and stderr (the question); without
      one a command refuses (``errors.Refused``, exit 2) naming ``--yes`` and ``--dry-run``
      (:meth:`confirm`), never waits. ``--json`` does not change that: the question is on
      stderr, the document alone on stdout.
    - A reader of stdout that goes away (``| head``) stops the command quietly, exit 0 (in
      the error wrapper, see :func:`~esctl.cli.consoles.stdout_reader_gone`).
    """

    format_bytes = staticmethod(format_bytes)
    format_duration = staticmethod(format_duration)

    def __init__(
        self, *, json: bool = False, stream: JsonStream | None = None, debug: bool = False
    ) -> None:
        self.json = json
        self.stream = stream
        self.debug = debug  # --debug: tracebacks are printed, hints need not offer them

    # --- results ---

    def result(self, document: Any, render: Callable[[], object]) -> None:
        """The command's result: ``document`` as one JSON document with --json, else
        ``render()`` (tables)."""
        if self.json:
            emit_json(document)
        else:
            render()

    def document(self, document: Any) -> None:
        """Exactly one JSON document on stdout."""
        emit_json(document)

    def open_stream(self, *, array: bool = False) -> JsonStream:
        """A stream of JSON results on stdout (lines, or one array) that an error ends."""
        self.stream = JsonStream(array=array)
        return self.stream

    table = staticmethod(emit_table)
    """A table (:func:`emit_table`: its options, and how it fits a terminal)."""

    def mapping(self, mapping: Mapping[str, Any], *, title: str | None = None) -> None:
        """A two-column key/value table (summaries)."""
        emit_mapping(mapping, title=title)

    def problems(
        self, problems: Sequence[Mapping[str, str]], *, title: str, limit: int | None = 50
    ) -> None:
        """The ``{"kind", "key", "detail"}`` problems of a summary (the first ``limit``), if
        any; on a terminal too narrow for their keys, as records."""
        if problems:
            shown = problems if limit is None else problems[:limit]
            emit_table(
                ["kind", "key", "detail"],
                [(p["kind"], p["key"], p["detail"]) for p in shown],
                title=title,
                records=True,
            )

    def problem_summary(
        self,
        problems: Sequence[Mapping[str, str]],
        counts: Mapping[str, int],
        total: int,
        where: str | None,
        *,
        title: str = "problems",
        one: str = "problem",
        unrecorded: str | None = None,
    ) -> None:
        """A summary's bounded problems (esctl.problems): the counts by kind, the first ones
        listed, and where all of them are (``where``; else ``unrecorded`` says how to get
        them). ``title`` names them (a plural), ``one`` one of them."""
        if not total:
            return
        emit_table(["kind", "count"], sorted(counts.items()), title=f"{title} by kind ({total})")
        listed = f"first {len(problems)} of {total}" if len(problems) < total else f"all {total}"
        self.problems(problems, title=f"{title} ({listed})", limit=None)
        if where is not None:
            # a query or a file: whole
            self.command(f"All {counted(total, one, title, separators=False)}:", where)
        elif len(problems) < total and unrecorded:
            self.wrapped(f"{total - len(problems)} more not listed: {unrecorded}")

    def print(self, text: str = "") -> None:
        """A line of text on stdout, as it is (never markup)."""
        stdout_console.print(text, markup=False)

    def prose(self, label: str, text: str, *, indent: int = 2) -> None:
        """``label: text`` on stdout, indented. On a terminal the text is wrapped at words to
        its width, continued under its first word (the terminal itself would break words);
        to a pipe or a file it is one line. A command to copy in it must be quoted in
        backticks, which keeps it whole on a row (:func:`break_line`): a line break inside one
        would run half of it when pasted."""
        self.hanging(f"{' ' * indent}{label}: ", text)

    def hanging(self, head: str, text: str, *, continued: str | None = None) -> None:
        """``head`` then ``text`` on stdout. On a terminal the text is wrapped to its width
        (a Redis key too long for a line broken after a ":", see :func:`break_line`),
        continued under its first word (after ``continued`` when given: ``"  # "`` for a
        comment); to a pipe or a file it is one line."""
        for line in hang(head, text, terminal_width(stdout_console), continued=continued):
            self.print(line)

    def wrapped(self, text: str) -> None:
        """A line of prose on stdout (a summary's note): on a terminal wrapped at words
        (:func:`break_line`); to a pipe or a file one line."""
        self.hanging("", text)

    def title(self, text: str) -> None:
        """A title on stdout, as a table's title is printed (wrapped at words on a
        terminal), for a summary that has no table to head."""
        print_title(stdout_console, text)

    def shell_comment(self, text: str, indent: str = "  ") -> None:
        """A shell comment (``# text``) on stdout: on a terminal wrapped at words with every
        row a comment, so that pasting it with the commands around it runs nothing."""
        self.hanging(f"{indent}# ", text, continued=f"{indent}# ")

    def shell_command(self, command: str, indent: str = "  ") -> None:
        """A command to copy and run, on stdout: on a terminal too narrow for it, continued
        over lines with `` \\`` at its spaces outside quotes (see :func:`break_command`), so a
        paste runs the same command; to a pipe or a file it is one line."""
        width = terminal_width(stdout_console)
        if width is None or len(indent) + len(command) <= width:
            self.print(indent + command)
            return
        for line in break_command(command, max(width - len(indent), 20)):
            self.print(indent + line)

    def command(self, label: str, command: str) -> None:
        """``label`` and a command (or query) to copy on stdout: on a terminal the command on
        a line of its own when the two do not fit one, never broken
        (:func:`label_and_command`)."""
        for line in label_and_command(label, command, terminal_width(stdout_console)):
            self.print(line)

    @property
    def width(self) -> int:
        """The width of the terminal stdout writes to (80 when it is not one)."""
        return stdout_console.width

    # --- messages (stderr) ---

    def info(self, message: str, *, head: str = "") -> None:
        info(message, head=head)

    def wrote(self, path: object | None) -> None:
        """``wrote PATH`` on stderr for a file a command wrote besides its result (a
        ``--metrics-file``), when stderr is a terminal: from cron (README "Cron") any stderr is
        a mail, every minute. Nothing when ``path`` is None."""
        if path is not None and stderr_is_terminal():
            info(f"wrote {path}")

    def info_command(self, label: str, command: str) -> None:
        """``label`` and a command to copy on stderr (:func:`info_command`)."""
        info_command(label, command)

    def warn(self, message: str) -> None:
        warn(message)

    def note(self, message: str) -> None:
        note(message)

    def error(self, message: str, hint: str | None = None) -> None:
        """An error message on stderr only (the exit code says the rest)."""
        print_error(message, hint, debug=self.debug)

    # --- progress ---

    def progress(
        self,
        enabled: bool,
        *,
        desc: str,
        unit: str,
        streaming: bool = False,
        at_first_update: bool = False,
    ) -> Progress:
        """The one progress bar (tqdm on stderr): drawn when ``enabled`` (--progress), stderr
        is a terminal and the result is not JSON; else a :class:`Progress` that draws
        nothing. Counts are whole numbers (``1,234/5,678 events``), rates scaled
        (``16.7k events/s``): :func:`counting_bar`.

        ``streaming``: the command writes its results to stdout while the bar runs (JSON
        lines). Then no bar when stdout is the terminal the bar would be drawn on: its
        redraws (a carriage return, then the bar) would land on the rows of the lines, gluing
        a bar's picture to the start of a line. The lines scrolling by show the progress
        there; a bar is drawn when stdout goes to a file or a pipe (``| jq``), where a long
        run needs one (as curl leaves out its progress meter when the data goes to the
        terminal).

        ``at_first_update``: the bar is drawn at its first update, not now. For a command that
        takes a lock: its core reports progress only once it holds the lock, so a run that
        exits 75 (another run holds it) shows its error with no bar drawn before."""
        if not (enabled and not self.json and stderr_is_terminal()):
            return Progress()
        if streaming and stdout_on_stderr_terminal():
            return Progress()

        def make(first: str = desc) -> Any:
            return counting_bar()(desc=first, unit=unit, dynamic_ncols=True)

        return Progress(make=make) if at_first_update else Progress(make())

    # --- questions ---

    def can_ask(self) -> bool:
        """Someone can read a question (stderr) and answer it (stdin)."""
        return stdin_is_terminal() and stderr_is_terminal()

    def require_terminal(self, action: str, *, dry_run: bool = True) -> None:
        """Refuse at once (before any work) when a question will be needed and there is no
        terminal to ask it on. ``action``: what the command does ("compress rewrites
        payloads in Redis"); ``dry_run``: the command has --dry-run."""
        if not self.can_ask():
            raise errors.Refused(
                f"{action} and asks first, but there is no terminal to ask on; nothing was done",
                hint="pass --yes to run it unattended"
                + (", or --dry-run to see what it would do" if dry_run else ""),
            )

    def ask(self, question: str, *, action: str, dry_run: bool = True) -> bool:
        """The answer to a yes/no ``question`` (default no), asked on the terminal (stderr):
        wrapped at words to its width as messages are, ``[y/N]:`` on its last row
        (:func:`~esctl.cli.wrapping.question_lines`); refused without one
        (:meth:`require_terminal`). Ctrl-C at the question raises KeyboardInterrupt (the
        command is interrupted, nothing done), the end of input (Ctrl-D) is no answer: no.
        The terminal hanging up under the question stops the command as its SIGHUP does, here
        (:func:`~esctl.cli.consoles.stop_if_hung_up`)."""
        self.require_terminal(action, dry_run=dry_run)
        lines = question_lines(question, "[y/N]", terminal_width(stderr_console))
        try:
            while True:
                typer.echo("\n".join(lines) + ": ", nl=False, err=True)
                # input() with no prompt: Click's confirm writes the prompt's last space with
                # input(" "), to stdout, which then began with it (a --json document too)
                answer = input().strip().lower()
                if answer in ("y", "yes"):
                    return True
                if answer in ("", "n", "no"):
                    return False
                typer.echo("Error: invalid input", err=True)
        except KeyboardInterrupt:  # Ctrl-C: interrupted (exit 130), as elsewhere
            typer.echo("", err=True)  # the message below the question, not on its row
            raise
        except EOFError:  # the end of input (Ctrl-D), or the terminal hung up
            if not stop_if_hung_up():
                typer.echo("", err=True)
            return False  # no answer: not confirmed
        except OSError:  # the terminal's read or write failed: it hung up, as a rule
            if stop_if_hung_up():
                return False  # (SIGHUP ignored: the command outlives its terminal) no answer
            raise

    def confirm(self, question: str, *, action: str, dry_run: bool = True) -> None:
        """:meth:`ask`, and a refusal (nothing was done) unless the answer is yes."""
        if not self.ask(question, action=action, dry_run=dry_run):
            raise errors.Refused(
                "not confirmed; nothing was done", hint="add --yes to skip the question"
            )

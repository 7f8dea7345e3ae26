"""Text laid out for a terminal's width: prose wrapped at words without parting a number from
its unit or breaking a command quoted in backticks, Redis keys broken after a ":", a message
continued under its first word, a shell command continued with `` \\`` (see the README's
"On a terminal"). Pure functions of text and width: :mod:`esctl.cli.output` prints."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

from rich.cells import cell_len


def break_cell(cell: str, width: int) -> str:
    """``cell`` with its lines wider than ``width`` broken as :func:`break_line` does; the
    rest as it is (rich wraps prose at words)."""
    if all(cell_len(line) <= width for line in cell.splitlines()):
        return cell
    return "\n".join(broken for line in cell.splitlines() for broken in break_line(line, width))


def break_line(line: str, width: int, *, whole_up_to: int | None = None) -> list[str]:
    """``line`` in lines of at most ``width`` cells where it can be: wrapped at spaces (but
    not between a number and its unit, see :class:`_Wrapper`, nor inside a command quoted in
    backticks: ```esctl inspect integrity```), and a word too long for that (a Redis key)
    broken after a ":" outside braces, then after any ":", so that the names and ids between
    stay whole; but a word at most ``whole_up_to`` cells wide is left whole, on a line of its
    own (:func:`hang` puts it at the margin). What is still too long is left to fold."""
    kept = QUOTED_COMMAND.sub(lambda m: m[0].replace(" ", _KEPT_SPACE), line)
    words = _Wrapper(width=width, break_long_words=False, break_on_hyphens=False).wrap(kept)
    lines: list[str] = []
    for word in words or [kept]:
        if (
            cell_len(word) <= width
            or _KEPT_SPACE in word
            or (whole_up_to is not None and cell_len(word) <= whole_up_to)
        ):
            lines.append(word)
            continue
        for piece in _pack(_split_after_colons(word, outside_braces=True), width):
            if cell_len(piece) <= width:
                lines.append(piece)
            else:
                lines.extend(_pack(_split_after_colons(piece, outside_braces=False), width))
    return [piece.replace(_KEPT_SPACE, " ") for piece in lines]


# A command quoted in backticks ("`esctl inspect integrity` lists them", "(`CONFIG SET …`)"):
# one word to the wrapper. A backtick before a letter or digit inside a word is a generic type
# name's ("Envelope`1"), neither an opening quote nor a closing one, so a quoted command may
# hold one (`esctl queue peek SUB 'Envelope`1' --list dead`).
QUOTED_COMMAND = re.compile(r"(?<![^\s(\[])`[^`\s](?:[^`]|`(?=\w))*`(?!\w)")
_KEPT_SPACE = "\x00"


def hang(head: str, text: str, width: int | None, *, continued: str | None = None) -> list[str]:
    """``head`` then ``text`` as lines of at most ``width`` cells where they can be (one line
    when ``width`` is None: not a terminal): the text broken as :func:`break_line` does,
    its later lines after ``continued`` (as many spaces as ``head`` is wide unless given), so
    they start under its first word. A name (a path, a key) too wide for that indent but not
    for the terminal is put whole on a row of its own at the margin (unless ``continued``
    is more than spaces: a comment's ``#`` must start every row). The lines of a text of
    several (a server's message) are wrapped each, all continued so."""
    if width is None:
        return [head + text]
    text = text.replace("\t", "    ")  # a server's indented detail: the terminal's tab is wider
    after = " " * cell_len(head) if continued is None else continued
    if "\n" in text:
        first, *others = text.split("\n")
        every = hang(head, first, width, continued=after)
        for other in others:
            every += hang(after, other, width, continued=after)
        return every
    if cell_len(head) + cell_len(text) <= width:
        return [head + text]
    text_width = max(width - max(cell_len(head), cell_len(after)), 20)
    at_margin = not after.strip()
    lines: list[str] = []
    for i, line in enumerate(
        break_line(text, text_width, whole_up_to=width if at_margin else None)
    ):
        if at_margin and cell_len(line) > text_width:
            if i == 0 and head.strip():
                lines.append(head.rstrip())
            lines.append(line)
        else:
            lines.append((head if i == 0 else after) + line)
    return lines


def question_lines(text: str, answer: str, width: int | None) -> list[str]:
    """A question ``text`` and its ``answer`` prompt (``"[y/N]"``, to which the asker adds
    ``": "``) as lines of at most ``width`` cells where they can be (one line when ``width``
    is None: not a terminal): the question wrapped as :func:`hang` wraps a message, the
    prompt at the end of its last line when the answer typed after it (a cell) still fits
    the row, else on a line of its own."""
    lines = hang("", text, width)
    if width is None or cell_len(lines[-1]) + cell_len(f" {answer}: ") + 1 <= width:
        lines[-1] += f" {answer}"
    else:
        lines.append(answer)
    return lines


def break_command(command: str, width: int) -> list[str]:
    """A shell command in lines of at most ``width`` cells where it can be, each but the last
    ending in `` \\`` (a shell joins them back into the same command), broken only at spaces
    outside quotes, where it can be not between an option and its value nor after a pipe or
    a redirection; continuation lines are indented by four spaces. A word longer than a line
    stays whole (the terminal folds it)."""
    lines: list[str] = []

    def add(piece: str) -> None:
        if not lines:
            lines.append(piece)
        elif cell_len(lines[-1]) + 1 + cell_len(piece) + 2 <= width:
            lines[-1] += " " + piece
        else:
            lines.append("    " + piece)

    for unit in _shell_units(_shell_words(command)):
        joined = " ".join(unit)
        if cell_len(joined) + 6 <= width:
            add(joined)
        else:
            for word in unit:
                add(word)
    return [line + " \\" for line in lines[:-1]] + lines[-1:]


_OPERATORS = frozenset({"|", "||", "&&", ";", ">", ">>", "<", "2>", "2>&1"})


def _shell_units(words: Sequence[str]) -> list[list[str]]:
    """``words`` grouped into what reads as one: an option with the value after it, an
    operator with the word after it."""
    units: list[list[str]] = []
    glue = False
    for word in words:
        if glue and word not in _OPERATORS and not (word.startswith("-") and len(word) > 1):
            units[-1].append(word)
            glue = False
            continue
        units.append([word])
        glue = word in _OPERATORS or (word.startswith("-") and len(word) > 1)
    return units


def _shell_words(command: str) -> list[str]:
    """``command`` split at its unquoted spaces, each word as written (quotes and escapes
    kept), so that joining them with spaces gives the same command."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    escaped = False
    for ch in command:
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == " ":
            if word:
                words.append("".join(word))
                word = []
            continue
        word.append(ch)
    if word:
        words.append("".join(word))
    return words


def label_and_command(label: str, command: str, width: int | None) -> list[str]:
    """``label`` then a ``command`` to copy: on one line when they fit (or ``width`` is None:
    not a terminal), else the command on a line of its own, never broken (a line break in
    it would run half of it when pasted; a terminal that folds it keeps it one line to
    select)."""
    if width is None or cell_len(label) + 1 + cell_len(command) <= width:
        return [f"{label} {command}"]
    return [label, command]


# A number and the unit after it: "24 h", "16.8 KiB", "~30 s", "(0.4 s", "1,000 bytes"
# (format_bytes, format_duration and the doctor's prose); and the two parts of a duration as
# format_duration writes it: "1h 0m", "5m 6s".
_NUMBER = re.compile(r"[(~+-]*\d[\d,.]*")
_UNIT = re.compile(
    r"(?:ms|s|m|min|h|d|B|KiB|MiB|GiB|TiB|(?:byte|second|minute|hour|day)s?)[).,;:]*"
)
_DURATION_PART = re.compile(r"[(~-]*\d+[dhms]")
_DURATION_REST = re.compile(r"\d+[dhms][).,;:]*")


class _Wrapper(textwrap.TextWrapper):
    """textwrap's wrapping at spaces, but never at the space between a number and its unit
    (nor between the two parts of a duration): "in the last 24 h" is not left as "24" at the
    end of one line and "h" at the start of the next."""

    def _split(self, text: str) -> list[str]:
        chunks: list[str] = []
        for chunk in super()._split(text):
            if len(chunks) >= 2 and chunks[-1] == " " and _one_quantity(chunks[-2], chunk):
                space = chunks.pop()
                chunks[-1] += space + chunk
            else:
                chunks.append(chunk)
        return chunks


def _one_quantity(before: str, after: str) -> bool:
    """Whether the words ``before`` and ``after`` (a space between them) are one quantity."""
    return bool(
        (_NUMBER.fullmatch(before) and _UNIT.fullmatch(after))
        or (_DURATION_PART.fullmatch(before) and _DURATION_REST.fullmatch(after))
    )


def _split_after_colons(word: str, *, outside_braces: bool) -> list[str]:
    """``word`` cut after each ":" (outside ``{…}`` when ``outside_braces``), but not a URL's
    scheme from its "//" (``postgresql://…`` stays whole up to its next ":")."""
    pieces = []
    start = depth = 0
    for i, ch in enumerate(word):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == ":" and word.startswith("//", i + 1):
            continue
        if ch == ":" and (depth == 0 or not outside_braces):
            pieces.append(word[start : i + 1])
            start = i + 1
    if start < len(word):
        pieces.append(word[start:])
    return pieces


def _pack(pieces: Sequence[str], width: int) -> list[str]:
    """``pieces`` joined into as few lines of at most ``width`` cells as they go, in order."""
    lines: list[str] = []
    for piece in pieces:
        if lines and cell_len(lines[-1]) + cell_len(piece) <= width:
            lines[-1] += piece
        else:
            lines.append(piece)
    return lines

"""A strict reader of the Prometheus text exposition format (version 0.0.4, what
node_exporter's textfile collector reads), for the tests of the textfiles esctl writes:
prometheus_client is not a dependency, so the format is checked here by its rules.

:func:`parse` refuses what the format (or the collector) refuses: a HELP or TYPE line twice
for one name, a TYPE after the name's first sample, a family's samples split by another's, a
bad name, label or escape, a label named twice, an unparsable value, a line without its
newline, and a series (name and label set) twice in one file. :func:`merge` then puts the files
of one textfile folder together as the collector does, refusing a series found in two files
(the collector fills the labels a series lacks with empty values before comparing) and a
metric whose HELP or TYPE differs between files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
BLANK = " \t"


class FormatError(ValueError):
    """The text breaks a rule of the format (the message names the line)."""


@dataclass
class Family:
    """One metric name's HELP, TYPE and samples (label set -> value)."""

    name: str
    help: str | None = None
    type: str | None = None
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


def parse(text: str, source: str = "text") -> dict[str, Family]:
    """The families of one textfile, in order of appearance; FormatError when it breaks a
    rule (see the module's docstring)."""
    if text and not text.endswith("\n"):
        raise FormatError(f"{source}: the last line has no newline")
    families: dict[str, Family] = {}
    current: str | None = None
    closed: set[str] = set()  # names whose lines ended: seeing them again splits the family

    def family(name: str, where: str) -> Family:
        nonlocal current
        if name != current:
            if name in closed:
                raise FormatError(f"{where}: {name}'s lines are not together")
            if current is not None:
                closed.add(current)
            current = name
        return families.setdefault(name, Family(name))

    for number, line in enumerate(text.split("\n")[:-1] if text else [], start=1):
        where = f"{source} line {number}"
        if not line.strip(BLANK):
            continue
        if line.lstrip(BLANK).startswith("#"):
            words = line.lstrip(BLANK)[1:].lstrip(BLANK).split(None, 2)
            if len(words) < 2 or words[0] not in ("HELP", "TYPE"):
                continue  # a comment
            keyword, name = words[0], words[1]
            if not NAME.fullmatch(name):
                raise FormatError(f"{where}: bad metric name {name!r}")
            found = family(name, where)
            rest = words[2] if len(words) > 2 else ""
            if keyword == "HELP":
                if found.help is not None:
                    raise FormatError(f"{where}: a second HELP line for {name}")
                found.help = _unescape(rest, where)
            else:
                if found.type is not None:
                    raise FormatError(f"{where}: a second TYPE line for {name}")
                if found.samples:
                    raise FormatError(f"{where}: TYPE of {name} after its samples")
                if rest.strip(BLANK) not in TYPES:
                    raise FormatError(f"{where}: unknown type {rest!r}")
                found.type = rest.strip(BLANK)
            continue
        name, labels, value = _sample(line, where)
        found = family(name, where)
        if labels in found.samples:
            raise FormatError(f"{where}: the series {name}{dict(labels)} a second time")
        found.samples[labels] = value
    return families


def merge(files: Iterable[tuple[str, str]]) -> dict[str, Family]:
    """The families of several textfiles (``(source, text)`` pairs) as one textfile folder:
    each parsed by :func:`parse`, then put together as node_exporter's collector does, which
    refuses a series found in two files: series compared with the labels any series of the
    family has, those a series lacks counted as empty. FormatError names the series and both
    files; also for a metric whose HELP or TYPE differs between files."""
    parts: dict[str, list[tuple[str, Family]]] = {}
    for source, text in files:
        for name, family in parse(text, source).items():
            parts.setdefault(name, []).append((source, family))
    merged: dict[str, Family] = {}
    for name, found in parts.items():
        first = found[0][1]
        into = merged[name] = Family(name, first.help, first.type)
        label_names = sorted({k for _, f in found for labels in f.samples for k, _ in labels})
        owner: dict[tuple[str, ...], str] = {}
        for source, family in found:
            if (family.help, family.type) != (first.help, first.type):
                raise FormatError(f"{source}: {name}'s HELP or TYPE differs from another file's")
            for labels, value in family.samples.items():
                values = dict(labels)
                key = tuple(values.get(k, "") for k in label_names)
                if key in owner:
                    series = dict(zip(label_names, key, strict=True))
                    raise FormatError(
                        f"{name}{series} is in {owner[key]} and in {source}: a duplicate series"
                    )
                owner[key] = source
                into.samples[labels] = value
    return merged


def _sample(line: str, where: str) -> tuple[str, tuple[tuple[str, str], ...], float]:
    """A sample line's name, its labels (sorted by name) and value."""
    text = line.lstrip(BLANK)
    found = NAME.match(text)
    if found is None:
        raise FormatError(f"{where}: no metric name in {line!r}")
    name, at = found.group(), found.end()
    labels: dict[str, str] = {}
    if text[_skip_blanks(text, at) : _skip_blanks(text, at) + 1] == "{":
        at = _skip_blanks(text, _skip_blanks(text, at) + 1)
        while at < len(text) and text[at] != "}":
            label = LABEL_NAME.match(text, at)
            if label is None:
                raise FormatError(f"{where}: bad label name at {text[at:]!r}")
            at = _skip_blanks(text, label.end())
            if text[at : at + 1] != "=":
                raise FormatError(f"{where}: no '=' after label {label.group()}")
            at = _skip_blanks(text, at + 1)
            if text[at : at + 1] != '"':
                raise FormatError(f"{where}: label {label.group()}'s value is not quoted")
            label_value, at = _quoted(text, at + 1, where)
            if label.group() in labels:
                raise FormatError(f"{where}: label {label.group()} twice")
            labels[label.group()] = label_value
            at = _skip_blanks(text, at)
            if text[at : at + 1] == ",":
                at = _skip_blanks(text, at + 1)
            elif text[at : at + 1] != "}":
                raise FormatError(f"{where}: expected ',' or '}}' at {text[at:]!r}")
        if at >= len(text):
            raise FormatError(f"{where}: unclosed label set")
        at += 1
    if at >= len(text) or text[at] not in BLANK:
        raise FormatError(f"{where}: no blank before the value")
    words = text[at:].split()
    if not 1 <= len(words) <= 2:
        raise FormatError(f"{where}: expected a value and an optional timestamp: {words}")
    value = _float(words[0], where)
    if len(words) == 2 and not re.fullmatch(r"-?[0-9]+", words[1]):
        raise FormatError(f"{where}: bad timestamp {words[1]!r}")
    return name, tuple(sorted(labels.items())), value


def _skip_blanks(text: str, at: int) -> int:
    while at < len(text) and text[at] in BLANK:
        at += 1
    return at


def _quoted(text: str, at: int, where: str) -> tuple[str, int]:
    """The label value starting at ``at`` (after its opening quote), and the index after its
    closing quote; the escapes are backslash, double quote and n."""
    out: list[str] = []
    while at < len(text):
        char = text[at]
        if char == '"':
            return "".join(out), at + 1
        if char == "\\":
            follower = text[at + 1 : at + 2]
            if follower not in ("\\", '"', "n"):
                raise FormatError(f"{where}: bad escape \\{follower} in a label value")
            out.append("\n" if follower == "n" else follower)
            at += 2
            continue
        out.append(char)
        at += 1
    raise FormatError(f"{where}: unterminated label value")


def _unescape(text: str, where: str) -> str:
    """A HELP text: backslash escapes backslash and n, nothing else."""
    out: list[str] = []
    at = 0
    while at < len(text):
        if text[at] == "\\":
            follower = text[at + 1 : at + 2]
            if follower not in ("\\", "n"):
                raise FormatError(f"{where}: bad escape \\{follower} in HELP")
            out.append("\n" if follower == "n" else "\\")
            at += 2
            continue
        out.append(text[at])
        at += 1
    return "".join(out)


def _float(word: str, where: str) -> float:
    """A value as Go's ParseFloat reads it (what the collector uses): NaN and the infinities
    spelled as the format spells them."""
    if word in ("NaN", "+Inf", "-Inf", "Inf"):
        return float(word.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", word):
        raise FormatError(f"{where}: bad value {word!r}")
    return float(word)

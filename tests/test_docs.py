"""The documents the product cites exist: every ``*.md`` file named in user-facing text (the
README, ``docs/``, the code's messages and help) is in the repository, and every relative link
in the README and ``docs/`` points at a file that exists (and, with ``#anchor``, at a heading
of it); and the code the README and ``docs/`` cite (files, modules and their names, tests,
doctor checks, tables, commands' and benchmarks' options) is there (rules below)."""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SOURCES = sorted((ROOT / "esctl").rglob("*.py"))

MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {
        _slug(line.lstrip("#"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


def _exists(name: str, relative_to: Path) -> bool:
    return (relative_to / name).exists() or (ROOT / name).exists()


@pytest.mark.parametrize("path", DOCUMENTS + SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_document_exists(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    missing = sorted({name for name in MD_NAME.findall(text) if not _exists(name, path.parent)})
    assert not missing, f"{path.relative_to(ROOT)} names documents the repository lacks: {missing}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists() or (
            anchor and linked.suffix == ".md" and anchor not in _anchors(linked)
        ):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_layout_document_has_the_sections_the_messages_cite() -> None:
    cited = set()
    for path in SOURCES:
        cited |= set(re.findall(r"docs/layout\.md §(\d+)", path.read_text(encoding="utf-8")))
    assert cited, "no message cites docs/layout.md: this test has nothing to check"
    headings = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    for number in cited:
        assert re.search(rf"^## {number}\. ", headings, re.M), f"docs/layout.md has no § {number}"


# --- the code the documents cite -----------------------------------------------------------
#
# A code reference is a backticked span (outside fenced blocks) that names esctl's code. What
# counts, and what it must name:
# - a file or folder (`esctl/migrate/reader.py`, `tests/test_tls.py`, `bench/`, a bare
#   `reader.py`: some file of that name under esctl/, tests/, bench/, scripts/ or
#   completions/); `test_doctor_<group>.py` is a pattern of files, `test_hash_pages_*` one of
#   test names: at least one must match;
# - a dotted name whose first part is a module of esctl (`esctl.streams.clean_payloads`,
#   `inflight.BatchGrowth`, `report.SPECS`), a helper module of tests/ or bench/
#   (`faultrelay.signalled_twice`), a class of esctl (`Reader.held`), a doctor check group
#   (`pg.migration`) or a table of esctl's schema (`esctl.migrated_stream.transforms`): an
#   attribute of it (the module imported, then getattr; an instance's attribute; a name the
#   helper's file defines), a doctor check id, or a table or column of the schema;
# - a call (`migrate_parallel()`, `RedisQuery(unpack_ahead=True)`): its callee as the other
#   rules say (a bare lower-case one only with an underscore), and each keyword a parameter;
# - a name that is CamelCase (`BatchWriter`), UPPER_SNAKE (`IN_FLIGHT`) or snake_case with an
#   underscore (`resume_point`): a name the code uses outside comments and docstrings, in its
#   code (classes, functions, variables) or in its string literals and data files (payload
#   fields like `TimeStamp`, JSON keys, settings of the unit files and manifests);
# - an environment variable `ESCTL_…`: in the code;
# - an esctl command line (`esctl migrate status --lag`, `replay --dry-run`): each option one
#   of that command's (`migrate --shard`: of one of the group's commands);
# - a benchmark command (`bench/bench_cluster.py --what scan`, also on fenced lines): each
#   option one its argparse parser declares;
# - in a design note's module table (`| `reader.py` | `Reader`: … |`), each name of the row:
#   an attribute of that module (of the package the note is named after, when it has one).
# Anything else backticked (Redis commands, JSON paths like `error.done`, prose) is not code.
# NOT_ESCTL lists the spans these rules would take for esctl's code that are not.

CODE_DIRS = ("esctl", "tests", "bench", "scripts")
CODE_FILES = sorted(
    [
        *(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if p != Path(__file__).resolve()),
        ROOT / "setup.py",
    ]
)
# Files the code reads or installs: deploy recipes and completion scripts.
DATA_FILES = sorted(
    p
    for d in ("docs/deploy", "completions")
    for p in (ROOT / d).rglob("*")
    if p.is_file() and p.suffix != ".md"
)

NOT_ESCTL = {
    "transforms.rules": "a key of migrate plan --json (its transforms document)",
    "transforms.events_after_estimate": "a key of migrate plan --json",
    "status.failedIndexes": "a Kubernetes Job's status field",
    "CliConfig": "rq's class, named as the pattern esctl follows",
    "EventsOutOfOrderException": "the .NET library's exception",
    "AggregateRoot.LoadFromHistory": "the .NET library's method",
    "myprojections.py": "the projection guide's example file",
    "mytransforms.py": "the README's example file of a transform",
    "LessonsAdded": "an event type of the README's example of a transform",
    "ESCTL_SHARD": "named as the variable esctl does not have",
    "tcp_keepalives_idle": "a PostgreSQL setting",
    "tcp_keepalives_interval": "a PostgreSQL setting",
    "tcp_keepalives_count": "a PostgreSQL setting",
    "idle_session_timeout": "a PostgreSQL setting",
    "json_agg": "a PostgreSQL function",
    "float_hook": "msgspec's option",
    "path/to/file.py": "a placeholder of a projection's file",
    "path/to/file.py:CALLABLE": "a placeholder of a projection's file and callable",
}

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
FILE_REF = re.compile(
    r"(?:(?:esctl|tests|bench|scripts|completions)/[\w/.*<>-]*|[\w*<>-]+\.(?:py|bash|fish))"
    r"(?::\w+)?"
)
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
CALL = re.compile(r"([A-Za-z_][\w.]*)\((.*)\)")
NAME = re.compile(r"_?[A-Z](?=\w*[a-z])\w*|_?[A-Z][A-Z0-9]*_[A-Z0-9_]+")
TEST_NAMES = re.compile(r"test_\w*\*[\w*]*")
SNAKE = re.compile(r"_?[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
MISSING = object()
BENCH = re.compile(r"((?:bench|scripts)/\w+\.py|bench_\w+\.py|relay\.py)((?: +[^ `]+)*)")
# A Python file's definitions, comments and string literals (good enough for esctl's code).
DEFINES = re.compile(
    r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+(\w+)"
    r"|^[ \t]*(?:self\.)?(\w+)[ \t]*(?::[^=\n]*)?=(?!=)",
    re.M,
)
LITERAL = re.compile(r"(#[^\n]*)|(\"\"\"|'''|\"|')((?:\\.|(?!\2).)*?)\2", re.S)
DOCSTRING = re.compile(r"(?:\A|:[ \t]*(?:#[^\n]*)?\n)[ \t]*[rRuU]?(?=\"\"\"|''')")


def cited_spans(path: Path) -> list[tuple[int, str]]:
    """(line number, span) of every backticked span of ``path`` outside fenced blocks."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text(encoding="utf-8"))
    return [
        (number, span)
        for number, line in enumerate(text.splitlines(), start=1)
        for span in SPAN.findall(line)
    ]


def defined_names(source: str) -> set[str]:
    """The classes, functions and assigned names ``source`` defines."""
    return {m.group(1) or m.group(2) for m in DEFINES.finditer(source)}


def code_and_data(source: str) -> tuple[str, str]:
    """``source`` without its comments and string literals; the text of its string literals
    (docstrings aside)."""
    docstrings = {m.end() for m in DOCSTRING.finditer(source)}
    data = [
        m.group(3)
        for m in LITERAL.finditer(source)
        if not m.group(1) and m.start() not in docstrings
    ]
    return LITERAL.sub(" ", source), "\n".join(data)


def _options(command: Any) -> set[str]:
    """The options of a Click command; of a group: of all its commands."""
    found = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for sub in getattr(command, "commands", {}).values():
        found |= _options(sub)
    return found


def instance_attributes(cls: Any) -> set[str]:
    """The attributes the instances of ``cls`` (if a class of esctl's) get: annotated (a
    dataclass's fields) or assigned to ``self.…`` in its methods (or its bases')."""
    found: set[str] = set()
    for base in getattr(cls, "__mro__", ()):
        if base.__module__.startswith("esctl"):
            found |= set(getattr(base, "__annotations__", {}))
            found |= set(re.findall(r"self\.(\w+)\s*(?::[^=\n]*)?=", inspect.getsource(base)))
    return found


def bench_options(script: Path) -> set[str]:
    """The options ``script``'s argparse parser declares: its own ``add_argument`` calls' and
    those of the bench/_common.py helpers it calls."""
    declared = re.compile(r"add_argument\(\s*((?:\"-[\w-]+\",\s*)+)")

    def options(text: str) -> set[str]:
        return {o for m in declared.finditer(text) for o in re.findall(r"-[\w-]+", m.group(1))}

    text = script.read_text(encoding="utf-8")
    found = options(text)
    common = (ROOT / "bench" / "_common.py").read_text(encoding="utf-8")
    for name, body in re.findall(r"^def (\w+)\(.*?\n((?:[ \n].*\n)*)", common, re.M):
        if re.search(rf"\b{name}\(", text):
            found |= options(body)
    return found


def bench_command(script: str, arguments: str) -> str | None:
    """What is wrong with running ``script`` (a path or a name under bench/) with
    ``arguments``, or None."""
    found = files(script if "/" in script else f"bench/{script}")
    if not found:
        return "no such script"
    given = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", arguments))
    unknown = given - bench_options(found[0])
    return f"the script has no option {sorted(unknown)}" if unknown else None


def files(pattern: str) -> list[Path]:
    """The files or folders ``pattern`` names: a path from the repository's root, a bare file
    name under the code's folders, or a test's name; ``<group>`` and ``*`` match any name."""
    glob = re.sub(r"<\w+>", "*", pattern)
    if "/" in glob:
        return sorted(ROOT.glob(glob.rstrip("/")))
    if glob.startswith("test_") and not glob.endswith(".py"):
        return [p for p, tests in _test_names().items() if fnmatch.filter(tests, glob)]
    return [p for p in CODE_FILES + DATA_FILES if fnmatch.fnmatch(p.name, glob)]


@functools.cache
def _test_names() -> dict[Path, list[str]]:
    return {
        p: re.findall(r"^\s*def (test_\w+)", p.read_text("utf-8"), re.M)
        for p in CODE_FILES
        if p.parent.name == "tests"
    }


@functools.cache
def _submodules(package: types.ModuleType) -> set[str]:
    return {info.name for info in pkgutil.iter_modules(getattr(package, "__path__", []))}


class CodeIndex:
    """What the documents' code references are resolved against."""

    def __init__(self) -> None:

        import esctl
        from esctl import pg
        from esctl.cli.app import every_command
        from esctl.doctor import report

        self.modules: dict[str, list[types.ModuleType]] = {"esctl": [esctl]}
        for info in pkgutil.walk_packages(esctl.__path__, "esctl."):
            if not info.name.endswith("__main__"):
                module = importlib.import_module(info.name)
                self.modules.setdefault(info.name.rsplit(".", 1)[1], []).append(module)
        # Every module is imported: every doctor check is declared.
        self.checks = set(report.SPECS)
        self.cli = every_command()
        self.groups = set(report.GROUPS)
        sources = {p: p.read_text(encoding="utf-8") for p in CODE_FILES}
        self.helpers = {  # the modules of tests/ and bench/: what each defines
            p.stem: defined_names(text)
            for p, text in sources.items()
            if p.parent.name in ("tests", "bench") and not p.stem.startswith("test_")
        }
        # What the code names (outside comments and docstrings): its identifiers, and the
        # words of its string literals and data files (payload fields, Lua, unit settings).
        code, data = zip(*map(code_and_data, sources.values()), strict=True)
        text = "\n".join([*code, *data, *(p.read_text(encoding="utf-8") for p in DATA_FILES)])
        self.words = set(re.findall(r"\w+", text))
        self.dotted = {  # `inspect.signature` in `inspect.signature(f).parameters`
            ".".join(parts[:end])
            for name in re.findall(r"(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", text)
            for parts in [name.split(".")]
            for end in range(2, len(parts) + 1)
        }
        self.tables: dict[str, set[str]] = {}
        for ddl in (pg.EVENT_STORE_DDL, pg.STATE_DDL):
            for table, body in re.findall(
                r"CREATE TABLE IF NOT EXISTS (?:esctl|\{schema\})\.(\w+) \((.*?)\n\);", ddl, re.S
            ):
                self.tables[table] = {line.split()[0] for line in body.splitlines() if line}
        for table, column in pg.STATE_COLUMNS:
            self.tables[table].add(column)

    def lookup(self, dotted: str) -> Any:
        """The object ``dotted`` names, or ``MISSING``: ``module.attr[.attr…]`` of some module
        of that last name, or a bare name (``Reader``, ``Reader._add_read_page``) that is an
        attribute of one of esctl's modules, and its attributes. A name a helper module of
        tests/ or bench/ defines (those are not imported): ``True``."""
        first, *rest = dotted.split(".")
        if first in self.helpers:
            return True if len(rest) == 1 and rest[0] in self.helpers[first] else MISSING
        starts = self.modules.get(first) or [
            getattr(m, first) for ms in self.modules.values() for m in ms if hasattr(m, first)
        ]
        for obj in starts:
            for number, part in enumerate(rest, start=1):
                if hasattr(obj, part):
                    obj = getattr(obj, part)
                elif number == len(rest) and part in instance_attributes(obj):
                    return True
                elif isinstance(obj, types.ModuleType) and part in _submodules(obj):
                    obj = importlib.import_module(f"{obj.__name__}.{part}")
                else:
                    break
            else:
                return obj
        return MISSING

    def table(self, dotted: str) -> bool:
        """``dotted`` is ``[esctl.]table[.column]`` of esctl's schema."""
        parts = dotted.split(".")
        if parts[0] == "esctl":
            parts = parts[1:]
        if not parts or parts[0] not in self.tables:
            return False
        return len(parts) == 1 or (len(parts) == 2 and parts[1] in self.tables[parts[0]])

    def unresolved(self, span: str) -> str | None:
        """Why ``span``, a code reference, names nothing there is; None when it resolves or
        is no code reference."""
        if span in NOT_ESCTL:
            return None
        if " " in span and (why := self.unknown_options(span)):
            return why
        if bench := BENCH.fullmatch(span.removeprefix("python ")):
            return bench_command(*bench.groups())
        if FILE_REF.fullmatch(span) or TEST_NAMES.fullmatch(span):
            return None if files(span.split(":")[0]) else "no such file"
        if call := CALL.fullmatch(span):
            return self.unresolved_call(*call.groups())
        if DOTTED.fullmatch(span):
            first = span.split(".")[0]
            known = {*self.modules, *self.helpers, *self.groups}
            if first[0].isupper() and isinstance(self.lookup(first), type):
                known.add(first)  # a class of esctl's: `Reader._add_read_page`
            if first not in known and not self.table(first):
                return None  # not esctl's: `bytes.join`, `ctx.app`, `error.done`
            if self.lookup(span) is not MISSING or span in self.checks or self.table(span):
                return None
            if span in self.dotted:
                return None  # another library's, as the code uses it (`inspect.signature`)
            return "no such attribute, doctor check or table"
        if re.fullmatch(r"ESCTL_\w+", span):
            return None if span in self.words else "the code never reads it"
        if NAME.fullmatch(span) or SNAKE.fullmatch(span):
            return None if span in self.words else "the code neither defines nor uses it"
        return None

    def unresolved_call(self, callee: str, arguments: str) -> str | None:
        """A call ``callee(arguments)``: the callee as above (a bare one when it has a
        capital or an underscore); each ``keyword=`` a parameter of it."""
        checked = "." in callee or "_" in callee or callee[0].isupper()
        if checked and (why := self.unresolved(callee)):
            return why
        while inner := re.search(r"([A-Za-z_][\w.]*)?\(([^()]*)\)", arguments):
            if inner.group(1) and (why := self.unresolved_call(*inner.groups())):
                return why
            arguments = arguments[: inner.start()] + arguments[inner.end() :]
        target = self.lookup(callee)
        if target is MISSING or target is True or not callable(target):
            return None
        parameters = inspect.signature(target).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return None
        unknown = set(re.findall(r"(?<![\w.])(\w+)=(?!=)", arguments)) - set(parameters)
        return f"{callee} takes no {sorted(unknown)}" if unknown else None

    def not_in_module(self, document: Path, files_: list[str], name: str) -> str | None:
        """Why ``name``, listed in a module table's row of ``files_`` (``reader.py``: of the
        package the design note is named after, esctl/migrate/ for migrate.md), is not an
        attribute of any of them; None when it is."""
        modules = []
        for file in files_:
            package = ROOT / "esctl" / document.stem
            if "/" in file:
                modules.append(file.removesuffix(".py").replace("/", "."))
            elif (package / file).exists():
                modules.append(f"esctl.{document.stem}.{file.removesuffix('.py')}")
            else:
                modules.append(file.removesuffix(".py"))
        if any(self.lookup(f"{module}.{name}") is not MISSING for module in modules):
            return None
        return f"not defined in {', '.join(modules)}"

    def unknown_options(self, span: str) -> str | None:
        """A span that runs an esctl command (`esctl migrate status --lag`, `replay --dry-run`):
        the options it gives that the command lacks (a group's: all of its commands lack)."""
        words = span.split()
        words = words[1:] if words[:1] == ["esctl"] else words
        command: Any = self.cli
        path: list[str] = []
        while words and words[0] in getattr(command, "commands", {}):
            command = command.commands[words.pop(0)]
            path.append(command.name)
        if not path:
            return None
        given = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", " ".join(words))
        unknown = sorted(set(given) - _options(command) - _options(self.cli) - {"--help"})
        return f"esctl {' '.join(path)} has no {unknown}" if unknown else None


def module_rows(path: Path) -> list[tuple[int, list[str], list[str]]]:
    """The rows of ``path``'s module tables (``| `reader.py` | `Reader`: … |``): line number,
    the row's files, and the Python names its other cells cite (``migrate_parallel()``)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.startswith("| `"):
            continue
        first, _, rest = line[1:].partition("|")
        named = SPAN.findall(first)
        if named and all(FILE_REF.fullmatch(n) and n.endswith(".py") for n in named):
            cited = [s.removesuffix("()") for s in SPAN.findall(rest)]
            rows.append((number, named, [s for s in cited if s.isidentifier()]))
    return rows


def design_package(path: Path) -> Path | None:
    """The package a design note is about: docs/design/migrate.md, esctl/migrate/."""
    package = ROOT / "esctl" / path.stem
    return package if path.parent.name == "design" and package.is_dir() else None


def maps_its_package(path: Path) -> bool:
    """A design note that says what each module of its package holds: in a module table, or
    in a paragraph that starts "The modules:"."""
    return design_package(path) is not None and (
        bool(module_rows(path)) or "The modules:" in path.read_text(encoding="utf-8")
    )


@pytest.mark.parametrize(
    "path", [p for p in DOCUMENTS if maps_its_package(p)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_a_packages_module_map_names_each_of_its_modules(path: Path) -> None:
    """A module added to the package gets its line in the map."""
    package = design_package(path)
    assert package is not None
    text = path.read_text(encoding="utf-8")
    named = {Path(s).name for s in SPAN.findall(text) if s.endswith(".py")}
    unnamed = sorted(
        p.name for p in package.glob("*.py") if p.name != "__init__.py" and p.name not in named
    )
    assert not unnamed, f"{path.relative_to(ROOT)} does not say what these hold: {unnamed}"


@pytest.fixture(scope="module")
def code_index() -> CodeIndex:
    return CodeIndex()


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_code_a_document_cites_exists(path: Path, code_index: CodeIndex) -> None:
    stale = [
        f"line {number}: `{span}`: {why}"
        for number, span in cited_spans(path)
        if (why := code_index.unresolved(span))
    ]
    stale += [
        f"line {number}: `{name}`: {why}"
        for number, files_, names in module_rows(path)
        for name in names
        if (why := code_index.not_in_module(path, files_, name))
    ]
    if (package := design_package(path)) is not None:
        stale += [
            f"line {number}: `{file}`: not a module of esctl/{package.name}/ (give its path)"
            for number, files_, _ in module_rows(path)
            for file in files_
            if "/" not in file and not (package / file).exists()
        ]
    assert not stale, f"{path.relative_to(ROOT)} cites code that is not there:\n" + "\n".join(stale)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_benchmark_commands_a_document_shows_take_their_options(path: Path) -> None:
    """The benchmark command lines of fenced blocks (`python bench/bench_x.py --events N`)."""
    wrong = [
        f"{line.strip()}: {why}"
        for block in FENCE.findall(path.read_text(encoding="utf-8"))
        for line in block.splitlines()
        if (bench := BENCH.search(line)) and (why := bench_command(*bench.groups()))
    ]
    assert not wrong, f"{path.relative_to(ROOT)}:\n" + "\n".join(wrong)


def test_what_is_not_esctls_code_is_still_cited() -> None:
    cited = {span for path in DOCUMENTS for _, span in cited_spans(path)}
    assert set(NOT_ESCTL) <= cited, sorted(set(NOT_ESCTL) - cited)

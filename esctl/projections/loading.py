"""How ``--projection SPEC`` becomes a projection: the module or file imported, the attribute
found, the protocol's form checked (:class:`ProjectionAdapter`); and where in the projection's
own code an exception came from, for the one-line error that names it.

A mistake in SPEC or in the projection's code is a UsageError (exit 2) that names what is wrong
(the module, the file and line, the attribute, the method) and what to do; the projection's own
exception stays chained to it, so ``--debug`` shows its traceback."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from esctl.errors import UsageError

if TYPE_CHECKING:
    from esctl.projections import Event, ProjectionContext

PROTOCOL_HINT = "see the protocol in `esctl replay --help` and docs/projections.md"


def _noop(ctx: ProjectionContext) -> None:
    return None


class ProjectionAdapter:
    """Any of the protocol's forms seen as one object with all four methods; refuses (UsageError)
    a target whose ``handle`` or optional methods could not be called as the replay calls them."""

    def __init__(self, target: Any, name: str) -> None:
        self.name = name
        if isinstance(target, type):
            try:
                target = target()
            except Exception as exc:
                raise UsageError(
                    f"projection {name}: cannot create the {target.__name__} object: "
                    f"{describe(exc, _home(target))}",
                    hint="a projection class is instantiated without arguments",
                ) from exc
        self.target = target
        self.home = _home(target)
        """Directories of the projection's own code (where its errors are looked for)."""
        handle = getattr(target, "handle", None)
        if callable(handle):
            self.handle: Callable[[Event], Any] = handle
        elif callable(target):
            self.handle = target
        else:
            raise UsageError(
                f"projection {name} is {_a(type(target).__name__)}: neither a function taking an "
                f"event nor an object with handle(event){_did_you_mean('handle', dir(target))}",
                hint=PROTOCOL_HINT,
            )
        _check_arguments(name, "handle", self.handle, "event")
        self.setup: Callable[[ProjectionContext], Any] = _method(name, target, "setup")
        self.flush: Callable[[ProjectionContext], Any] = _method(name, target, "flush")
        self.teardown: Callable[[ProjectionContext], Any] = _method(name, target, "teardown")

    def describe(self, exc: BaseException) -> str:
        """``exc`` in one line, with the place in the projection's code it came from:
        ``KeyError: 'Total' (orders.py:12, in handle)``."""
        return describe(exc, self.home)

    def where(self, exc: BaseException) -> str | None:
        """The place in the projection's code ``exc`` came from (``orders.py:12, in handle``),
        None when no frame of the traceback is the projection's."""
        return where(exc, self.home)


def _method(name: str, target: Any, method_name: str) -> Callable[[ProjectionContext], Any]:
    method = getattr(target, method_name, None)
    if method is None:
        return _noop
    if not callable(method):
        raise UsageError(
            f"projection {name}: its {method_name} is {_a(type(method).__name__)}, not a method",
            hint=f"define {method_name}(self, ctx), or leave it out ({PROTOCOL_HINT})",
        )
    _check_arguments(name, method_name, method, "ctx")
    return method


def _check_arguments(name: str, method_name: str, method: Any, argument: str) -> None:
    """Refuse a method the replay could not call with its one argument (``handle(self)``, say)
    before any event is read, rather than on the first."""
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):  # a builtin without a signature: it is tried as it is
        return
    try:
        signature.bind(None)
    except TypeError:
        if inspect.ismethod(method) or method_name != "handle":
            what, fix = f"its {method_name}{signature}", f"define {method_name}(self, {argument})"
        else:  # the function form
            function = getattr(method, "__name__", "the function")
            what, fix = f"{function}{signature}", f"define {function}({argument})"
        raise UsageError(
            f"projection {name}: {what} cannot be called with one argument, the {argument}",
            hint=f"{fix} ({PROTOCOL_HINT})",
        ) from None


# --- loading -----------------------------------------------------------------------------------


def load_projection(spec: str) -> ProjectionAdapter:
    """The projection ``spec`` names: ``MODULE[:ATTR]`` or ``path/to/file.py[:ATTR]`` (ATTR
    defaults to ``projection``; dotted ATTRs reach into classes or objects).

    A MODULE is imported from ``sys.path`` and then from the current directory (as ``python -m``
    would find it; the ``esctl`` script does not look there by itself). A file's directory goes
    on ``sys.path`` too, after the installed packages, so that it imports its neighbours as
    ``python path/to/file.py`` would. Raises UsageError naming what could not be found,
    imported or called."""
    location, colon, attribute = spec.rpartition(":")
    if not colon:
        location, attribute = spec, ""
    attribute = attribute or "projection"
    if location.endswith(".py") or "/" in location or os.sep in location:
        module = _load_file(location)
    else:
        module = _import_module(location)
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UsageError(
                f"{location} has no {attribute!r}{_what_it_has(part, target)}",
                hint="name the projection as MODULE:CALLABLE (a module without :CALLABLE must "
                "define 'projection')",
            )
        target = getattr(target, part)
    return ProjectionAdapter(target, spec)


def _import_module(location: str) -> ModuleType:
    _search_last(os.getcwd())
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        missing = exc.name or location
        if location == missing or location.startswith(missing + "."):
            raise UsageError(
                f"cannot import the projection module {location!r}: {exc}"
                f"{_did_you_mean(location, _modules_here())}",
                hint="give MODULE:CALLABLE of a module on PYTHONPATH or in the current "
                "directory, or path/to/file.py:CALLABLE",
            ) from None
        raise _import_failed(f"the projection module {location!r}", exc) from exc
    except Exception as exc:
        raise _import_failed(f"the projection module {location!r}", exc) from exc


def _load_file(location: str) -> ModuleType:
    path = Path(location).expanduser()
    if not path.is_file():
        near = _closest(path.name, [p.name for p in path.parent.glob("*.py")])
        raise UsageError(
            f"projection file {location} does not exist"
            + (f" (did you mean {str(path.parent / near)!r}?)" if near else ""),
            hint=f"give the file's path from the current directory ({os.getcwd()}) or an "
            "absolute one",
        )
    resolved = path.resolve()
    name = f"esctl_projection_{abs(hash(str(resolved))):x}"
    loader_spec = importlib.util.spec_from_file_location(name, resolved)
    if loader_spec is None or loader_spec.loader is None:
        raise UsageError(f"cannot load {location} as a Python module")
    _search_last(str(resolved.parent))
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise _import_failed(f"the projection file {location}", exc, resolved.parent) from exc
    return module


def _import_failed(what: str, exc: BaseException, home: Path | None = None) -> UsageError:
    """A projection module that raised while it was imported: a syntax error, a module it
    imports that is not installed where esctl runs, any exception of its top level."""
    homes = (home,) if home is not None else ()
    if isinstance(exc, ModuleNotFoundError):
        return UsageError(
            f"{what} failed to load: it imports {exc.name!r}, which the Python esctl runs on "
            f"({sys.executable}) cannot find{_place(exc, homes)}",
            hint="install it there (with pipx: `pipx inject esctl PACKAGE`), or add its "
            "directory to PYTHONPATH",
        )
    return UsageError(
        f"{what} failed to load: {describe(exc, homes)}",
        hint="fix it and rerun; --debug shows its traceback",
    )


def _search_last(directory: str) -> None:
    """Let imports find modules in ``directory``, after everything installed (a projection's
    ``redis.py`` must not hide the driver esctl uses)."""
    if directory not in sys.path:
        sys.path.append(directory)


def _modules_here() -> list[str]:
    return [p.stem for p in Path.cwd().glob("*.py")] + [
        p.parent.name for p in Path.cwd().glob("*/__init__.py")
    ]


def _what_it_has(name: str, target: Any) -> str:
    """`` (did you mean 'OrdersPerDay'?)``, else the classes and functions a module defines
    itself (not those it imports)."""
    public = [n for n in dir(target) if not n.startswith("_")]
    near = _did_you_mean(name, public)
    if near or not isinstance(target, ModuleType):
        return near
    own = [
        n
        for n in public
        if (inspect.isclass(v := getattr(target, n)) or inspect.isfunction(v))
        and v.__module__ == target.__name__
    ]
    return f" (it defines {', '.join(own)})" if 0 < len(own) <= 8 else ""


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _closest(word: str, candidates: Iterable[str]) -> str | None:
    near = difflib.get_close_matches(word, sorted(set(candidates) - {word}), n=1, cutoff=0.6)
    return near[0] if near else None


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    near = _closest(word, candidates)
    return f" (did you mean {near!r}?)" if near else ""


# --- where in the projection's code ------------------------------------------------------------


def describe(exc: BaseException, home: Iterable[Path] = ()) -> str:
    """``Type: first line of the message (file:line, in function)``: the first line only (a
    PostgreSQL error goes on with the statement and a caret), the place the innermost frame
    of the projection's own code (under ``home``; else the innermost outside esctl and the
    installed libraries)."""
    message = exc.msg if isinstance(exc, SyntaxError) else str(exc)  # (its own place aside)
    text = message.strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line + _place(exc, home)


def _place(exc: BaseException, home: Iterable[Path]) -> str:
    place = where(exc, home)
    return f" ({place})" if place else ""


def where(exc: BaseException, home: Iterable[Path] = ()) -> str | None:
    """``file:line, in function`` of the innermost frame of ``exc``'s traceback in the
    projection's own code (under ``home``; else the innermost outside esctl and the installed
    libraries), or None. A syntax error's place is in its file's text."""
    frames = [
        (os.path.realpath(f.filename), f)
        for f in _frames(exc)
        # Not <frozen os>, nor a compiled library's source path (psycopg_binary/pq/....pyx).
        if os.path.isfile(f.filename)
    ]
    homes = tuple(str(h) + os.sep for h in home)
    # A library is not the projection's own code even under its directory (a .venv there),
    # unless the projection is installed in it.
    libraries = tuple(lib for lib in _LIBRARIES if not any(h.startswith(lib) for h in homes))
    mine = [f for real, f in frames if real.startswith(homes) and not real.startswith(libraries)]
    others = mine or [f for real, f in frames if not real.startswith(_LIBRARIES)]
    if not others:
        return None
    frame = others[-1]
    place = f"{_shown_path(frame.filename)}:{frame.lineno}"
    return place if isinstance(exc, SyntaxError) else f"{place}, in {frame.name}"


def _frames(exc: BaseException) -> list[traceback.FrameSummary]:
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        # The error is in the file's text, not in a frame that ran.
        return [traceback.FrameSummary(exc.filename, exc.lineno, "<module>")]
    return list(traceback.extract_tb(exc.__traceback__))


def _shown_path(filename: str) -> str:
    relative = os.path.relpath(filename)
    return filename if relative.startswith("..") else relative


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.add(str(Path(__file__).resolve().parent.parent))  # esctl itself
    return tuple(str(Path(d).resolve()) + os.sep for d in dirs)


_LIBRARIES = _library_dirs()


def _home(target: Any) -> tuple[Path, ...]:
    """The directory of the projection's top-level module or package (where its own frames
    are): ``mypkg`` for ``mypkg.read_models:ScoreBoard``, a file's directory for a file."""
    module_name = getattr(target, "__module__", None) or type(target).__module__
    if isinstance(target, ModuleType):
        module_name = target.__name__
    top = sys.modules.get(module_name.split(".")[0])
    filename = getattr(top, "__file__", None)
    if not filename:
        return ()
    return (Path(filename).resolve().parent,)

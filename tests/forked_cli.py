"""Run several esctl command lines at once, each in a process of its own, paying Python's and
esctl's imports once: ``python tests/forked_cli.py FOLDER`` reads a JSON list of argument
lists on stdin, imports every esctl module, then forks a child per command line that runs
esctl's entry point (``esctl.cli.app.main``, as the ``esctl`` script does) with that line as
its ``sys.argv``, stdin empty, stdout and stderr to ``FOLDER/N.out`` / ``FOLDER/N.err``. It
prints the children's exit codes, a JSON list in command order, once all have ended.

Each child is a real esctl process (its own file descriptors, signals, exit code): only the
imports happened before the fork. ``helpers.run_cli_together`` runs it."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys


def _child(args: list[str], folder: str, number: int) -> int:
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    for fd, suffix in ((1, "out"), (2, "err")):
        path = os.path.join(folder, f"{number}.{suffix}")
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    sys.argv = ["esctl", *args]
    from esctl.cli.app import main

    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def run(commands: list[list[str]], folder: str) -> list[int]:
    import esctl

    for info in pkgutil.walk_packages(esctl.__path__, "esctl."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    children: dict[int, int] = {}
    for number, args in enumerate(commands):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(args, folder, number)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = number
    codes: dict[int, int] = {}
    while children:
        pid, status = os.wait()
        codes[children.pop(pid)] = os.waitstatus_to_exitcode(status)
    return [codes[number] for number in range(len(commands))]


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin), sys.argv[1])))

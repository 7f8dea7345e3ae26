"""esctl's structure, drawn from its imports: the CLI on top of the operations, on top of the
shared parts, on top of the transports, on top of the codec and basics; no arrow back up and no
cycle. Every import counts, also those inside functions (the CLI imports its operations lazily).

A new module must be placed in ``LAYERS``: the test fails for one it does not know."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "esctl"

LAYERS: dict[str, tuple[str, ...]] = {
    # pure: no I/O of their own (config reads its file)
    "basics": (
        "esctl",
        "esctl.errors",
        "esctl.defaults",
        "esctl.units",
        "esctl.config",
        "esctl.layout",
        "esctl.codec",
        "esctl.shard",
        "esctl.durations",
        "esctl.documents",
        "esctl.sampling",
        "esctl.where",
        "esctl.privileges",
        "esctl._fastrows",
    ),
    # talking to servers and processes, knowing nothing of operations
    "transport": (
        "esctl.redisio",
        "esctl.pg",
        "esctl.servers",
        "esctl.readahead",
        "esctl.childstops",
        "esctl.inflight",
    ),
    # what several operations share
    "shared": (
        "esctl.locks",
        "esctl.metrics",
        "esctl.backupfile",
        "esctl.scratch",
        "esctl.streams",
        "esctl.storereads",
        "esctl.transforms",
        "esctl.problems",
        "esctl.jsoncompare",
        "esctl.pgevents",
        "esctl.interrupts",
        "esctl.fastpath",
    ),
    "operations": (
        "esctl.compress",
        "esctl.demo",
        "esctl.doctor",
        "esctl.inspect",
        "esctl.migrate",
        "esctl.plan",
        "esctl.projections",
        "esctl.prune",
        "esctl.query",
        "esctl.queues",
        "esctl.replay",
        "esctl.restore_pruned",
        "esctl.verify",
    ),
    "cli": ("esctl.cli", "esctl.__main__"),
}
RANK = {component: rank for rank, names in enumerate(LAYERS.values()) for component in names}


def _component(module: str) -> str:
    """The unit the layers speak of: ``esctl.queues.requeue`` -> ``esctl.queues``."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """component -> the esctl components it imports (itself left out)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        source = _component(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # from esctl import queues: the names are modules
                targets = [f"esctl.{a.name}" for a in node.names] if base == "esctl" else [base]
            for target in targets:
                if target.split(".")[0] != "esctl":
                    continue
                component = _component(target)
                if component == "esctl.__version__":
                    component = "esctl"
                if component != source:
                    edges[source].add(component)
        edges.setdefault(source, set())
    return edges


def test_every_module_has_a_layer() -> None:
    unknown = sorted(set(import_graph()) - set(RANK))
    assert not unknown, f"place these in LAYERS: {unknown}"


def test_no_import_points_up() -> None:
    upward = sorted(
        f"{source} ({_layer(source)}) imports {target} ({_layer(target)})"
        for source, targets in import_graph().items()
        for target in targets
        if RANK[target] > RANK[source]
    )
    assert not upward, "\n".join(upward)


def test_no_cycle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_graph_is_not_empty() -> None:
    graph = import_graph()
    assert "esctl.queues" in graph["esctl.cli"] and "esctl.redisio" in graph["esctl.queues"]


def test_the_redis_transport_knows_no_event_store() -> None:
    """The key layout and the payload codec belong to the store reads (esctl.storereads), not
    to the transport."""
    assert not {"esctl.layout", "esctl.codec"} & import_graph()["esctl.redisio"]


def _layer(component: str) -> str:
    return next(name for name, members in LAYERS.items() if component in members)


def test_the_readme_places_each_component_in_its_layer() -> None:
    """README, "Source layout", lists each layer below the CLI with exactly its components
    (``redisio/`` for a package): a component added to LAYERS is added there too."""
    readme = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    section = readme.partition("\n## Source layout\n")[2].partition("\n## ")[0]
    bullets = dict(re.findall(r"^  - ([\w ,]+): (.*?)(?=^  - |^- |\Z)", section, re.M | re.S))
    names = {"basics": "basics", "transport": "transports", "shared": "shared parts"}
    names["operations"] = "operations, one package or module each"
    for layer, bullet in names.items():
        listed = {f"esctl.{n.rstrip('/')}" for n in re.findall(r"`(\w+/?)`", bullets[bullet])}
        expected = set(LAYERS[layer]) - {"esctl"}
        assert listed == expected, (layer, sorted(listed ^ expected))

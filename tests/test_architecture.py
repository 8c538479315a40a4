"""The import graph of tracekit/ and trainer/ (every import, function-level ones included): no
circles, and layers only point down: commands -> pipeline -> compare/report/timeline ->
detectors -> accounting -> link -> source/load -> base modules."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tracekit", "trainer")

# Higher layers may import lower ones; within a layer, only modules of the same package
# (the base modules import none of each other but errors).
LAYERS: list[tuple[str, ...]] = [
    ("tracekit.commands", "trainer.commands"),
    ("tracekit.pipeline",),
    ("tracekit.compare", "tracekit.report", "tracekit.timeline", "tracekit.hta"),
    ("tracekit.detectors",),
    ("tracekit.accounting",),
    ("tracekit.link",),
    ("tracekit.source", "tracekit.load"),
    ("tracekit.trace", "tracekit.finding", "tracekit.names", "tracekit.intervals",
     "tracekit.durations", "tracekit"),
    ("tracekit.errors",),
]
TRAINER_MAY_USE = {"trainer.commands": ("tracekit.pipeline",)}
"""The only trainer module that uses tracekit (to analyse a run it profiled)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a.b import c` counts as a.b.c when
    that is a module, else a.b)."""
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files
                           else node.module for alias in node.names]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the layer entry it falls under: its package)."""
    best: tuple[int, str] | None = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    assert best is not None, f"{module} is in no layer"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circles() -> None:
    graph = import_graph()
    # A package's __init__ importing its own submodules re-exports them; drop those edges so a
    # submodule importing a sibling through the package is not counted as a circle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    assert cycles(graph) == []


def test_layers_only_point_down() -> None:
    upward = []
    for module, targets in import_graph().items():
        if module.startswith("trainer"):
            allowed = TRAINER_MAY_USE.get(module, ())
            upward += [(module, t) for t in targets
                       if t.startswith("tracekit") and not t.startswith(allowed or ("-",))]
            continue
        level, package = layer_of(module)
        for target in targets:
            assert not target.startswith("trainer"), f"{module} imports {target}"
            target_level, target_package = layer_of(target)
            if target_level < level or (target_level == level and target_package != package):
                upward.append((module, target))
    assert upward == []


def test_trainer_has_its_own_errors() -> None:
    graph = import_graph()
    assert not [m for m, targets in graph.items()
                if m.startswith("trainer") and "tracekit.errors" in targets]

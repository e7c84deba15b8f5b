"""The import graph of the product packages, read statically (ast): no cycle, and arrows only
point down the floors server -> engine -> scheduler (inside the engine: executors -> device).

Every import counts: module level, inside functions, under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"scheduler": 0, "engine": 1, "server": 2}  # a module may import its floor and below
# (importer prefix, forbidden prefix): back-arrows inside a floor
INNER_RULES = [("engine.device", "engine.executors")]


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package's __init__) for every module of the floors."""
    out: dict[str, tuple[Path, bool]] = {}
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _resolve(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The module of ours that `name` (a module or a name inside one) lives in, if any."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """Absolute dotted names an import statement can load (its module and module.name)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module
                                                                 else []))
    else:
        base = node.module or ""
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (anywhere in its body)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, package):
                    found = _resolve(target, modules)
                    if found is not None and found != name:
                        edges.add(found)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def back_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower floor to a higher one, and the inner-floor back-arrows."""
    out = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            if FLOORS[target.split(".")[0]] > FLOORS[importer.split(".")[0]]:
                out.append(f"{importer} -> {target}")
            for low_prefix, high_prefix in INNER_RULES:
                if importer.startswith(low_prefix) and target.startswith(high_prefix):
                    out.append(f"{importer} -> {target}")
    return out


def test_no_import_cycle() -> None:
    assert find_cycles(import_graph()) == []


def test_arrows_only_point_down() -> None:
    assert back_arrows(import_graph()) == []


def test_the_walk_sees_every_kind_of_import() -> None:
    """The graph holds imports made inside functions and under TYPE_CHECKING, relative ones too,
    and the checks report a cycle and a back-arrow when there is one."""
    graph = import_graph()
    assert "engine.engine_dir_here" in graph["engine.runtime"]  # inside load_model
    assert "engine.options" in graph["engine.kv_sizing"]  # under TYPE_CHECKING
    assert "scheduler.plan" in graph["engine.step_inputs"]
    assert len(graph) > 100
    graph["scheduler.plan"].add("engine.step_inputs")
    assert find_cycles(graph) == [["engine.step_inputs", "scheduler.plan"]]
    assert back_arrows(graph) == ["scheduler.plan -> engine.step_inputs"]


def test_relative_imports_resolve() -> None:
    node = ast.parse("from ..device import cuda\nfrom . import memory").body
    assert _imported(node[0], "engine.executors") == ["engine.device", "engine.device.cuda"]
    assert _imported(node[1], "engine.device") == ["engine.device", "engine.device.memory"]

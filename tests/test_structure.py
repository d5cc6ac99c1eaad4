"""The package's structure: no import cycles between autoprune's modules, and functions short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "autoprune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every autoprune module imported anywhere in ``tree``: function bodies and ``if TYPE_CHECKING:`` blocks
    too (an import deferred into a function, or made for types only, is still a dependency)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("autoprune"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("autoprune"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        imported = _imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_count_deferred_and_type_checking_imports() -> None:
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from autoprune.config import Study\n"
           "def f():\n    from autoprune.pruning.structural import prune\n")
    assert _imports(ast.parse(src), "autoprune.x", False) == {"autoprune.pruning.structural",
                                                              "autoprune.pruning.structural.prune",
                                                              "autoprune.config", "autoprune.config.Study"}


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "autoprune.pruning.prunability" in graph and "autoprune.pruning.structural" in graph["autoprune.pruning.prunability"]
    assert cycles(graph) == []


def _long_functions(limit: int) -> list[str]:
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)")
    return long


def test_no_function_in_the_package_is_longer_than_60_lines() -> None:
    assert _long_functions(60) == []


# The wings, lowest first: a module may import its own wing and the wings below it, never one above.
WINGS = ["ground", "models", "data", "metrics", "pruning", "train", "config", "engine", "deliver", "api", "cli"]


def wing(module: str) -> str:
    """``autoprune.engine.trial`` -> ``engine``; a module directly in the package is on the ground floor."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in WINGS) else "ground"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs against the wings' order (the public ``autoprune`` package itself excepted)."""
    return sorted(f"{a} -> {b}" for a, deps in graph.items() if a != "autoprune" for b in deps
                  if WINGS.index(wing(b)) > WINGS.index(wing(a)))


def test_wing_of_a_module() -> None:
    assert [wing(m) for m in ("autoprune.errors", "autoprune.engine", "autoprune.engine.backends.workers",
                              "autoprune.cli.app")] == ["ground", "engine", "engine", "cli"]
    assert upward_imports({"autoprune.data.splits": {"autoprune.engine.trial", "autoprune.errors"},
                           "autoprune.cli.app": {"autoprune.engine.trial"}}) == [
        "autoprune.data.splits -> autoprune.engine.trial"]


def test_every_module_sits_in_a_wing_and_imports_only_its_own_and_lower_wings() -> None:
    graph = import_graph()
    ground = sorted(m for m in graph if m != "autoprune" and wing(m) == "ground")
    assert ground == ["autoprune.device", "autoprune.errors", "autoprune.files", "autoprune.optional",
                      "autoprune.pareto", "autoprune.registry"]
    assert upward_imports(graph) == []

"""The house's import rules: the harness (``bench``) never imports a method (``methods``), a method
imports the harness only through :mod:`bench.api`, no method imports another method (what several
need lives in ``methods.shared``, which imports no method), and there is no import cycle among the
modules of ``bench`` and ``methods``.

Imports are read with :mod:`ast`, all of them: inside functions and under ``if TYPE_CHECKING:``
too (a typing-only cycle is still a cycle to a reader, and a type checker follows it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods")
# methods/ modules that are building blocks rather than methods: anyone in methods/ may import them
SHARED = "methods.shared"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imported(node: ast.AST, name: str, is_package: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{module}.{alias.name}"
        out.append(sub if sub in known else module)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ``bench`` and ``methods`` it imports."""
    modules = all_modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        stack: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(node, name, is_package, known):
                    # the nearest module of ours that the import names (a name inside a module: that module)
                    while target and target not in known:
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        edges.add(target)
            stack.extend(ast.iter_child_nodes(node))
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _method_of(module: str) -> str | None:
    """The method a ``methods`` module belongs to (``methods.legcf.stages`` -> ``methods.legcf``);
    None for the package itself and the shared building blocks."""
    parts = module.split(".")
    if parts[0] != "methods" or len(parts) < 2 or module.startswith(SHARED):
        return None
    return ".".join(parts[:2])


def test_graph_sees_the_packages():
    graph = import_graph()
    assert "bench.api" in graph and "bench.context" in graph
    assert "bench.contract" in graph["bench.api"]


def test_bench_never_imports_methods():
    graph = import_graph()
    bad = sorted(f"{a} -> {b}" for a, edges in graph.items() if a.startswith("bench")
                 for b in edges if b.split(".")[0] == "methods")
    assert not bad, "the harness imports methods:\n" + "\n".join(bad)


def test_methods_import_the_harness_only_through_its_api():
    graph = import_graph()
    bad = sorted(f"{a} -> {b}" for a, edges in graph.items() if a.startswith("methods")
                 for b in edges if b.split(".")[0] == "bench" and b != "bench.api")
    assert not bad, "methods import deep harness modules (use bench.api):\n" + "\n".join(bad)


def test_no_method_imports_another_method():
    graph = import_graph()
    bad = sorted(f"{a} -> {b}" for a, edges in graph.items() for b in edges
                 if a.startswith("methods") and _method_of(b) and _method_of(a) != _method_of(b))
    assert not bad, "methods import other methods (move shared code to methods.shared):\n" + "\n".join(bad)


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)

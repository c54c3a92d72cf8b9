"""The verifiers package's modules import each other one way: no cycle, not even through an
import inside a function or under ``TYPE_CHECKING`` (the package's ``__init__``, which
re-exports everything, is the façade and not part of the graph)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import iprime.verifiers

PACKAGE = "iprime.verifiers"
ROOT = Path(iprime.verifiers.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # ``from .pkg import mod`` imports the module ``pkg.mod``; ``from .mod import name`` the module.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != PACKAGE)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths if module_name(p) != PACKAGE}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_graph_sees_imports_of_every_kind() -> None:
    graph = import_graph()
    assert "iprime.verifiers.dispatch" in graph["iprime.verifiers.batch"]  # module level
    assert "iprime.verifiers.code" in graph["iprime.verifiers.registry"]  # inside a method
    assert "iprime.verifiers.sandbox.runner" in graph["iprime.verifiers.sandbox.host"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles_inside_the_verifiers() -> None:
    assert cycles(import_graph()) == []


def test_the_sandbox_imports_nothing_else_of_iprime() -> None:
    """The sandbox only executes; the runner, started by path, imports nothing of iprime at all."""
    graph = import_graph()
    for name, imports in graph.items():
        if name.startswith(f"{PACKAGE}.sandbox"):
            assert {i for i in imports if not i.startswith(f"{PACKAGE}.sandbox")} == set(), name
    runner = ast.parse((ROOT / "sandbox" / "runner.py").read_text())
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(runner)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    ]
    assert not [m for m in imported if m is None or m.split(".")[0] == "iprime"], imported

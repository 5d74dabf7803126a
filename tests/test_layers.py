"""The house rules: stages are subpackages, imports form no cycle, and no stage hides an import
inside a function (where a cycle would go unseen)."""

from __future__ import annotations

import ast
from pathlib import Path

import tinygen

PKG = Path(tinygen.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, ast.AST, bool]]:
    """Every tinygen module `path` imports, with the node and whether it sits inside a function."""
    tree = ast.parse(path.read_text())
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child, inner) for a in child.names if a.name.split(".")[0] == "tinygen")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] == "tinygen":
                    # `from pkg import mod` imports pkg.mod when mod is a module
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        target = sub if _is_module(sub) else base
                        found.append((target, child, inner))
            visit(child, inner)

    visit(tree, False)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        graph[_module_name(path)] = {t for t, _, _ in _imports(path) if t != _module_name(path)}
    return graph


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n not in graph:
                continue
            assert state.get(n) != 1, "import cycle: " + " -> ".join(stack[stack.index(n):] + [n])
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    assert len(graph) > 40  # the walk saw the whole package


def test_no_tinygen_import_inside_a_function():
    hidden = [f"{p.relative_to(PKG.parent)}:{node.lineno}"
              for p in PKG.rglob("*.py") for _, node, inner in _imports(p) if inner]
    assert hidden == []


def test_subpackages_and_at_most_five_top_level_modules():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 5, top
    stages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert {"ir", "frontends", "reference", "zoo", "planning", "training", "codegen", "targets", "verify",
            "bench"} <= stages

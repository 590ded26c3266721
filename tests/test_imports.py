"""The ``deqa`` package has no import circle, and ``deqa.labels`` stays a leaf.

The module graph is read from the AST of every file under ``src/deqa``, imports inside functions
included (a function-level import hides a circle from Python at load time, not from the design:
through ``tests/test_dag.py`` it still makes every stage that imports one module depend on all the
others). ``from package import submodule`` is an edge to the submodule; the implicit import of a
module's parent package is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(src: Path, package: str) -> dict[str, Path]:
    out = {}
    for file in sorted((src / package).rglob("*.py")):
        parts = list(file.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = file
    return out


def _targets(node: ast.AST, package: str, modules: dict[str, Path]) -> set[str]:
    """The ``deqa`` modules one import statement loads (submodules rather than their package)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules}
    names = {a.name for a in node.names if f"{base}.{a.name}" not in modules}
    return subs | ({base} if names and base in modules else set())


def import_graph(src: Path = SRC, package: str = "deqa") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports anywhere in its file."""
    modules = _modules(src, package)
    graph = {}
    for name, file in modules.items():
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            edges |= _targets(node, package, modules)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_a_circle_hidden_in_a_function_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import leaf\n")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("import json\n\ndef f():\n    from pkg.sub.leaf import X\n    from . import c\n")
    (pkg / "c.py").write_text("def g():\n    import pkg.a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("from .. import LEVEL\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.sub.leaf", "pkg.c"}  # submodules, not their package; relative too
    assert graph["pkg"] == {"pkg.sub.leaf"} and graph["pkg.sub.leaf"] == {"pkg"}  # a name of the package
    assert find_cycle(graph) == ["pkg", "pkg.sub.leaf", "pkg"]
    (pkg / "__init__.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


def test_deqa_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_labels_is_a_leaf():
    """The label maths depends on the file contracts and its config only: editing an importer or
    a data generator never re-runs the soft_labels stage."""
    graph = import_graph()
    assert graph["deqa.labels"] <= {"deqa", "deqa.schema", "deqa.config", "deqa.portable"}
    assert graph["deqa.portable"] == set()  # the CPU-independent exp/log: numpy only

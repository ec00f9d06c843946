"""The import graph of ``edgedet``, read from the source with ``ast``: arrows only point down.

* no import cycles (imports inside functions count: they run too, only later);
* the core (everything outside ``edgedet/tools`` and ``edgedet/cli``) never imports ``edgedet.tools``;
* no private name (``_x``) is imported from another module;
* the command line and the scripts in ``tools/`` use the model tools through each subpackage's
  public face (``edgedet.tools.quantize``, not ``edgedet.tools.quantize.int8``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgedet"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a package means its __init__)
    names: tuple[str, ...]  # names taken from it ("from target import a, b"), empty for "import target"
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p, PACKAGE.parent): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST):
    """Every node, skipping the bodies of ``if TYPE_CHECKING:`` (never run)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def imports_of(path: Path, name: str, modules) -> list[Import]:
    """The imports of the module ``name`` (file ``path``), relative ones resolved. ``from p import x``
    is an import of ``p.x`` when that is a module, else of ``p``."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            plain = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    found.append(Import(name, sub, (), node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(name, target, tuple(plain), node.lineno))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    modules = all_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component with one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan, iterative over the successors
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        work = [(v, iter(sorted(edges.get(v, ()))))]
        while work:
            node, successors = work[-1]
            advanced = False
            for w in successors:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    components.append(component)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_cycle_in(sorted(c), edges) for c in components]


def _cycle_in(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, within the component."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, ())):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def test_cycle_finder_reports_the_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(edges) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_and_count_inside_functions(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import x\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import _y\n    from . import c2\n")
    modules = {module_name(p, tmp_path): p for p in pkg.rglob("*.py")}
    modules["pkg.sub.c2"] = pkg / "sub" / "c2.py"
    got = imports_of(pkg / "sub" / "b.py", "pkg.sub.b", modules)
    assert [(i.target, i.names) for i in got] == [("pkg.c", ("_y",)), ("pkg.sub.c2", ())]
    assert [i.target for i in imports_of(pkg / "sub" / "__init__.py", "pkg.sub", modules)] == ["pkg.sub.b"]


def test_no_import_cycles(graph):
    edges = {name: {i.target for i in imports if i.target in graph and i.target != name}
             for name, imports in graph.items()}
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_core_never_imports_the_tools(graph):
    core = [name for name in graph if not (_inside(name, "edgedet.tools") or _inside(name, "edgedet.cli"))]
    bad = [f"{name} (line {i.line}) imports {i.target}" for name in core for i in graph[name]
           if _inside(i.target, "edgedet.tools")]
    assert not bad, "core modules importing edgedet.tools:\n" + "\n".join(bad)


def test_no_private_names_imported_across_modules(graph):
    bad = [f"{name} (line {i.line}): from {i.target} import {n}" for name, imports in graph.items()
           for i in imports if _inside(i.target, "edgedet") for n in i.names
           if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def _tool_packages() -> set[str]:
    return {module_name(p.parent) for p in (PACKAGE / "tools").glob("*/__init__.py")}


def test_commands_and_scripts_use_the_tools_public_faces(graph):
    faces = _tool_packages()
    assert {"edgedet.tools.quantize", "edgedet.tools.prune", "edgedet.tools.convert"} <= faces
    modules = all_modules()
    users = {name: imports for name, imports in graph.items() if _inside(name, "edgedet.cli")}
    for script in sorted((ROOT / "tools").glob("*.py")):
        users[f"tools/{script.name}"] = imports_of(script, "script", modules)
    bad = [f"{name} (line {i.line}) imports {i.target}" for name, imports in users.items() for i in imports
           for face in faces if i.target.startswith(face + ".")]
    assert not bad, "behind a tool's public face:\n" + "\n".join(bad)

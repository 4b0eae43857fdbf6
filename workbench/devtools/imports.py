"""Import cycles between the modules of the project's packages.

``python -m workbench.devtools.imports`` parses (without importing anything) every module under
``kernels/``, ``toy_tasks/`` and ``workbench/``, draws an edge from a module to each project module it
imports, prints every cycle and exits with status 1 when there is one.

Every import is an edge, wherever it stands: at module level (runs when the module is imported),
inside a function (a lazy import: runs when the function is first called) or under
``if TYPE_CHECKING:`` (read by type checkers only). A cycle made only of module-level imports can
break an import outright; one that needs a lazy or typing import still ties the modules together
(neither can be read, tested or moved without the other), so both fail the check; the report says
which imports each cycle needs.

An edge goes to the most specific module named: ``from kernels import api`` is an edge to
``kernels.api``, ``from workbench.sparse import get`` one to the package ``workbench.sparse`` (its
``__init__``). Importing a submodule also runs its parent packages' ``__init__``; those implicit
edges are left out, or every package whose ``__init__`` imports its own submodules would be a cycle.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PACKAGES = ("kernels", "toy_tasks", "workbench")
"""The project's top-level packages (siblings in the repository root)."""
ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the packages (the repository root in a source checkout)."""

Kind = Literal["module", "lazy", "typing"]


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line`` of its file; ``kind`` says when the import runs."""

    source: str
    target: str
    line: int
    kind: Kind

    def __str__(self) -> str:
        where = {"module": "", "lazy": " (lazy)", "typing": " (TYPE_CHECKING)"}[self.kind]
        return f"{self.source}:{self.line} -> {self.target}{where}"


@dataclass(frozen=True)
class Cycle:
    """Modules that import each other (a strongly connected component of the import graph), the
    imports between them and a shortest closed path through the first of them."""

    modules: tuple[str, ...]
    edges: tuple[Edge, ...]
    path: tuple[str, ...]

    @property
    def at_import_time(self) -> bool:
        """Whether module-level imports alone close a cycle here."""
        module_edges = [edge for edge in self.edges if edge.kind == "module"]
        return bool(_components(set(self.modules), module_edges))

    def describe(self) -> str:
        kinds = "module-level imports" if self.at_import_time else "lazy or typing imports"
        lines = [f"cycle of {len(self.modules)} modules through {kinds}: " + " -> ".join(self.path)]
        lines += [f"    {edge}" for edge in self.edges]
        return "\n".join(lines)


def module_files(root: Path = ROOT, packages: Sequence[str] = PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports(module: str, path: Path, known: Iterable[str]) -> list[Edge]:
    """The edges from ``module`` (whose source is ``path``) to the modules in ``known``."""
    known = set(known)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges: list[Edge] = []

    def resolve(name: str) -> str | None:
        """The longest prefix of ``name`` that is a known module."""
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in known:
                return candidate
        return None

    def add(name: str | None, line: int, kind: Kind) -> None:
        target = resolve(name) if name else None
        edge = Edge(module, target, line, kind) if target not in (None, module) else None
        if edge is not None and edge not in edges:  # one edge per statement and target
            edges.append(edge)

    def visit(node: ast.AST, kind: Kind) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, kind)
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                # `from package import submodule` imports the submodule; otherwise a name of base.
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in known else base, node.lineno, kind)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            kind = "lazy" if kind == "module" else kind
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "typing")
            for child in node.orelse:
                visit(child, kind)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, kind)

    visit(tree, "module")
    return edges


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph(root: Path = ROOT, packages: Sequence[str] = PACKAGES) -> list[Edge]:
    """Every import edge between the modules of ``packages``."""
    files = module_files(root, packages)
    return [edge for module, path in files.items() for edge in imports(module, path, files)]


def _components(nodes: set[str], edges: Sequence[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    successors: dict[str, list[str]] = {node: [] for node in nodes}
    for edge in edges:
        if edge.source in nodes and edge.target in nodes:
            successors[edge.source].append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(set(successors[start]))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(set(successors[child])))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def _closed_path(modules: Sequence[str], edges: Sequence[Edge]) -> tuple[str, ...]:
    """A shortest cycle through the first module of a component (breadth-first search)."""
    successors: dict[str, list[str]] = {}
    for edge in edges:
        successors.setdefault(edge.source, []).append(edge.target)
    start = modules[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(set(successors.get(node, ()))):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return (*reversed(path), start)
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return (start,)


def find_cycles(root: Path = ROOT, packages: Sequence[str] = PACKAGES) -> list[Cycle]:
    """Every import cycle between the modules of ``packages`` (each strongly connected component of
    the import graph with more than one module), lazy and typing imports counted."""
    edges = import_graph(root, packages)
    nodes = {edge.source for edge in edges} | {edge.target for edge in edges}
    cycles = []
    for component in _components(nodes, edges):
        members = set(component)
        inside = tuple(
            sorted(
                (edge for edge in edges if edge.source in members and edge.target in members),
                key=lambda edge: (edge.source, edge.line, edge.target),
            )
        )
        cycles.append(Cycle(tuple(component), inside, _closed_path(component, inside)))
    return cycles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workbench.devtools.imports",
        description="Print the import cycles between the project's modules; exit 1 if any.",
    )
    parser.add_argument("packages", nargs="*", default=list(PACKAGES), help="top-level packages")
    parser.add_argument("--root", type=Path, default=ROOT, help="folder holding the packages")
    args = parser.parse_args(argv)
    cycles = find_cycles(args.root, args.packages)
    checked = ", ".join(f"{package}/" for package in args.packages)
    if not cycles:
        print(f"no import cycle between the modules of {checked}")
        return 0
    at_import = sum(cycle.at_import_time for cycle in cycles)
    print(
        f"{len(cycles)} import cycle(s) between the modules of {checked} "
        f"({at_import} through module-level imports alone):\n"
    )
    for cycle in sorted(cycles, key=lambda cycle: (not cycle.at_import_time, cycle.modules)):
        print(cycle.describe(), end="\n\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""The layers import downwards only, and the project's own modules import each other without cycles.

From the bottom: ``m6rec`` (core) ← ``features`` ← ``ranker`` ← ``pipelines`` ← ``flows``. A module may import
from its own layer or any below. ``m6rec/cli.py`` is the shell above them all and may import anything;
``m6rec/__main__.py`` only calls it. Every import counts, module-level and inside functions, relative ones
resolved, and imports under ``if TYPE_CHECKING:`` too: they never run, but they still name a dependency
(on a layer above, or back into a module that depends on the importer: a circle a reader must untangle
just as well). An import is an edge to the most
specific module it names (``from a import b`` to ``a.b`` where that is a module, else to ``a``), not to the
packages above it; ``importlib.import_module`` with a computed name is not seen.

Each rule is one test. Findings already known, and waiting for a fix, are listed in
:data:`KNOWN_VIOLATIONS` as ``"<rule>: <finding>"``; the tests subtract them, and fail when a listed one no
longer occurs, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("m6rec", "features", "ranker", "pipelines", "flows")
SHELLS = frozenset({"m6rec.cli"})

# Findings the tree is allowed to keep for now (none: every layer points down and no import cycles).
KNOWN_VIOLATIONS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ProjectImport:
    """One import statement's target inside the project: ``importer`` (dotted module) imports ``target``
    (the most specific project module it names) at ``path:line``."""

    importer: str
    path: str
    line: int
    target: str
    type_checking_only: bool


def _module_name(relative: Path) -> str:
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _source_files(root: Path, packages: tuple[str, ...]) -> Iterator[Path]:
    for package in packages:
        yield from sorted(path for path in (root / package).rglob("*.py") if "__pycache__" not in path.parts)


def _known_modules(root: Path, packages: tuple[str, ...]) -> set[str]:
    """Dotted names of every module and package (folders included, namespace packages too)."""
    modules = set()
    for path in _source_files(root, packages):
        relative = path.relative_to(root)
        modules.add(_module_name(relative))
        modules.update(".".join(relative.parts[:end]) for end in range(1, len(relative.parts)))
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    """Every ``import`` / ``from ... import`` in one file, at any depth, with whether only type checkers see it."""

    def __init__(self, module: str, is_package: bool, known: set[str], packages: tuple[str, ...]):
        self.module, self.known, self.packages = module, known, packages
        self.package = module if is_package else module.rpartition(".")[0]
        self.type_checking = 0
        self.found: list[tuple[int, str, bool]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_checking += 1
            for child in node.body:
                self.visit(child)
            self.type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node.lineno, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            if node.level - 1 >= len(base):
                raise AssertionError(f"{self.module}: relative import beyond the top-level package")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            self._add(node.lineno, submodule if submodule in self.known else source)

    def _add(self, line: int, target: str) -> None:
        if target.split(".")[0] in self.packages:
            self.found.append((line, target, self.type_checking > 0))


def collect_imports(root: Path, packages: tuple[str, ...] = LAYERS) -> list[ProjectImport]:
    """Every import, in the ``.py`` files of ``packages`` under ``root``, of a module of those packages."""
    known = _known_modules(root, packages)
    imports = []
    for path in _source_files(root, packages):
        relative = path.relative_to(root)
        module = _module_name(relative)
        collector = _ImportCollector(module, relative.name == "__init__.py", known, packages)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        imports += [
            ProjectImport(module, relative.as_posix(), line, target, type_checking_only)
            for line, target, type_checking_only in collector.found
        ]
    return imports


def direction_violations(
    root: Path, layers: tuple[str, ...] = LAYERS, shells: frozenset[str] = SHELLS
) -> dict[str, str]:
    """Imports of a layer above the importer's own: ``{"<file> imports <module>": "<file>:<line> ..."}``."""
    found = {}
    for imported in collect_imports(root, layers):
        if imported.importer in shells:
            continue
        own, other = imported.importer.split(".")[0], imported.target.split(".")[0]
        if layers.index(other) > layers.index(own):
            key = f"{imported.path} imports {imported.target}"
            found.setdefault(key, f"{imported.path}:{imported.line} imports {imported.target} ({other})")
    return {key: f"{message} — against the direction" for key, message in found.items()}


def _shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path ``start -> ... -> start`` inside ``within`` (ties broken by name)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in sorted(graph[node] & within):
            if successor == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if successor not in previous:
                previous[successor] = node
                queue.append(successor)
    raise AssertionError(f"{start} is on no cycle inside {sorted(within)}")


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def import_cycles(root: Path, packages: tuple[str, ...] = LAYERS) -> dict[str, str]:
    """Cycles of the import graph between the project's modules (imports under ``TYPE_CHECKING``
    included): for every module on a cycle, the shortest cycle through it, written from its first module by
    name: ``{"a -> b -> a": "a -> b -> a — an import cycle (a.py:3, b.py:9)"}``, with where each import is."""
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for imported in collect_imports(root, packages):
        graph.setdefault(imported.target, set())
        graph.setdefault(imported.importer, set())
        if imported.target != imported.importer:
            graph[imported.importer].add(imported.target)
            where.setdefault((imported.importer, imported.target), f"{imported.path}:{imported.line}")
    cycles = {}
    for component in _strongly_connected(graph):
        for node in sorted(component) if len(component) > 1 else ():
            cycle = _shortest_cycle(graph, node, component)
            first = cycle.index(min(cycle[:-1]))
            cycle = [*cycle[first:-1], *cycle[:first], cycle[first]]
            text = " -> ".join(cycle)
            edges = ", ".join(where[edge] for edge in zip(cycle, cycle[1:], strict=False))
            cycles[text] = f"{text} — an import cycle ({edges})"
    return cycles


RULES: dict[str, Callable[[Path], dict[str, str]]] = {
    "direction": direction_violations,
    "cycle": import_cycles,
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_project_imports_follow_the_rule(rule):
    found = RULES[rule](REPO)
    known = {entry.partition(": ")[2] for entry in KNOWN_VIOLATIONS if entry.startswith(f"{rule}: ")}
    new = [found[key] for key in sorted(set(found) - known)]
    fixed = sorted(known - set(found))
    assert not new, f"{len(new)} new {rule} finding(s):\n" + "\n".join(new)
    assert not fixed, "fixed, so take these out of KNOWN_VIOLATIONS:\n" + "\n".join(
        f"{rule}: {key}" for key in fixed
    )


def test_every_known_violation_names_a_rule():
    assert [entry for entry in KNOWN_VIOLATIONS if entry.partition(": ")[0] not in RULES] == []


FAKE_TREE = {
    "low/__init__.py": "",
    "low/clean.py": "import os\n\nfrom low import typed\n",
    "low/calls_up.py": "import low.clean\n\n\ndef later():\n    from high.b import helper\n\n    return helper\n",
    "low/typed.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    import high.e\n",
    "low/cli.py": "import high\nfrom high import b\n",
    "high/__init__.py": "",
    "high/b.py": "from low import clean\n\nfrom . import c\n\nhelper = c\n",
    "high/c.py": "def again():\n    import high.b\n\n    return high.b\n",
    "high/d.py": "import typing\n\nif typing.TYPE_CHECKING:\n    from .e import E\nelse:\n    E = None\n",
    "high/e.py": "from high.d import E\n",
}


@pytest.fixture
def fake_tree(tmp_path) -> Path:
    """Two layers, ``low`` under ``high``, whose findings are known: ``low/calls_up.py`` imports up inside
    a function and ``low/typed.py`` only for type checkers (two direction violations), ``high.b`` and
    ``high.c`` import each other, once inside a function (one cycle), ``high.d`` and ``high.e`` do, one of
    them only through ``TYPE_CHECKING`` (a cycle too), ``low/clean.py`` is clean and ``low/cli.py`` is the
    shell."""
    for name, text in FAKE_TREE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_direction_check_finds_exactly_the_planted_violations(fake_tree):
    found = direction_violations(fake_tree, layers=("low", "high"), shells=frozenset({"low.cli"}))
    assert sorted(found.values()) == [
        "low/calls_up.py:5 imports high.b (high) — against the direction",
        "low/typed.py:4 imports high.e (high) — against the direction",
    ]


def test_cycle_check_finds_exactly_the_planted_cycles_type_only_imports_included(fake_tree):
    assert sorted(import_cycles(fake_tree, packages=("low", "high")).values()) == [
        "high.b -> high.c -> high.b — an import cycle (high/b.py:3, high/c.py:2)",
        "high.d -> high.e -> high.d — an import cycle (high/d.py:4, high/e.py:1)",
    ]

"""The import rules of DESIGN.md's "Layers": the tree is the architecture; this test keeps it so.

Every module under src/wshub is parsed with ``ast`` (nothing is imported), and every import
statement counts wherever it stands: at the top, under ``if TYPE_CHECKING:``, inside a
function. The checkers are plain functions over ``(module name, source text)`` pairs, so the
tests below can feed them forbidden imports and see them reported. The tree's other rule,
modules of about 400 lines at most (STYLE.md), is checked here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SOURCE_ROOT = Path(__file__).resolve().parent.parent / "src"

#: Which layers each layer may import (itself included). Top-level modules (cli, testing,
#: tools, asgi, the package itself) may import anything, and no layer may import them.
ALLOWED: Mapping[str, frozenset[str]] = {
    "core": frozenset({"core"}),
    "brokers": frozenset({"core", "brokers"}),
    "hub": frozenset({"core", "brokers", "hub"}),
    "servers": frozenset({"core", "brokers", "hub", "servers"}),
    "client": frozenset({"core", "client"}),
}
TOP_LEVEL = "top level"

Sources = Iterable[tuple[str, str]]


def wshub_sources() -> list[tuple[str, str]]:
    """``(module name, source text)`` for every module under src/wshub.

    A package's own module keeps its file name: ``wshub/core/__init__.py`` is
    ``wshub.core.__init__``, so relative imports resolve the way Python resolves them.
    """
    return [
        (".".join(path.relative_to(SOURCE_ROOT).with_suffix("").parts), path.read_text("utf-8"))
        for path in sorted((SOURCE_ROOT / "wshub").rglob("*.py"))
    ]


def _canonical(name: str) -> str:
    return name.removesuffix(".__init__")


def layer_of(module: str) -> str | None:
    """The layer of a canonical module name; TOP_LEVEL outside the layer folders.

    None for a module in a subpackage that has no rule yet (a new folder needs one).
    """
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in ALLOWED:
        return parts[1]  # the layer package itself, ``wshub.core``
    if len(parts) <= 2:
        return TOP_LEVEL
    return parts[1] if parts[1] in ALLOWED else None


def imported_modules(name: str, source: str, known: frozenset[str]) -> list[tuple[int, str]]:
    """``(line, canonical module)`` for every wshub module that ``name``'s source imports.

    ``from package import thing`` names the submodule ``package.thing`` when there is one,
    else ``package`` itself. Relative imports are resolved against ``name``'s package.
    """
    package = name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if submodule in known else base))
    return [
        (line, module) for line, module in found if module == "wshub" or module.startswith("wshub.")
    ]


def layer_violations(sources: Sources) -> list[str]:
    """Every import that breaks a layer rule, as ``"module:line imports target (why)"``."""
    pairs = list(sources)
    known = frozenset(_canonical(name) for name, _ in pairs)
    problems: list[str] = []
    for name, source in pairs:
        module = _canonical(name)
        layer = layer_of(module)
        if layer is None:
            problems.append(f"{module}: its package has no layer rule in ALLOWED")
            continue
        if layer == TOP_LEVEL:
            continue
        for line, target in imported_modules(name, source, known):
            target_layer = layer_of(target)
            if target_layer not in ALLOWED[layer]:
                problems.append(
                    f"{module}:{line} imports {target} "
                    f"({layer} may import only {', '.join(sorted(ALLOWED[layer]))})"
                )
    return problems


def import_cycles(sources: Sources) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` for each group of wshub modules that import each other.

    Edges are the imports of ``imported_modules`` (TYPE_CHECKING and function-level included);
    the implicit import of a parent package is not an edge.
    """
    pairs = list(sources)
    known = frozenset(_canonical(name) for name, _ in pairs)
    graph: dict[str, set[str]] = {}
    for name, source in pairs:
        edges = graph.setdefault(_canonical(name), set())
        edges.update(target for _, target in imported_modules(name, source, known))
    for edges in graph.values():
        edges &= known
    cycles: list[list[str]] = []
    for component in _strongly_connected(graph):
        start = min(component)
        if len(component) > 1 or start in graph[start]:
            cycles.append(_cycle_through(start, component, graph))
    return sorted(cycles)


def _strongly_connected(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative so that a deep import chain cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: set[str] = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
    return components


def _cycle_through(start: str, component: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """A shortest path from ``start`` back to itself inside ``component`` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for successor in sorted(graph[node] & component):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if successor not in came_from:
                    came_from[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"{start} is in a cycle but no path returns to it")


# ---------------------------------------------------------------------------- the real tree


def test_the_walk_sees_every_module_of_every_layer() -> None:
    sources = wshub_sources()
    files = list((SOURCE_ROOT / "wshub").rglob("*.py"))
    assert len(sources) == len(files)
    layers = {layer_of(_canonical(name)) for name, _ in sources}
    assert layers == {*ALLOWED, TOP_LEVEL}


def test_every_module_imports_only_the_layers_below_it() -> None:
    assert layer_violations(wshub_sources()) == []


def test_no_import_cycle_among_wshub_modules() -> None:
    assert import_cycles(wshub_sources()) == []


#: STYLE.md: "keep modules under about 400 lines; split by responsibility".
MAX_MODULE_LINES = 400
#: Modules past the limit for now, and why. Each must still be past it: once split, its entry
#: goes (the test says so), so this list never hides a module that grew back.
LONG_MODULES: dict[str, str] = {}


def test_no_module_is_longer_than_the_guideline() -> None:
    lines = {
        path.relative_to(SOURCE_ROOT).as_posix(): len(path.read_text("utf-8").splitlines())
        for path in (SOURCE_ROOT / "wshub").rglob("*.py")
    }
    too_long = {
        module: count
        for module, count in lines.items()
        if count > MAX_MODULE_LINES and module not in LONG_MODULES
    }
    assert too_long == {}
    split_already = [m for m in LONG_MODULES if lines.get(m, 0) <= MAX_MODULE_LINES]
    assert split_already == [], "within the limit now: remove from LONG_MODULES"


# ---------------------------------------------------------------------------- the checkers can fail

FORBIDDEN = [
    ("wshub.core.x", "import wshub.hub.hub\n"),
    (
        "wshub.client.x",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from wshub.servers.websocket import serve_websocket\n",
    ),
    ("wshub.client.y", "def later():\n    from wshub.hub import hub\n"),
    ("wshub.brokers.x", "from wshub.hub.hooks import Identity\n"),
    ("wshub.hub.x", "from wshub import testing\n"),
    ("wshub.servers.x", "from wshub.client.client import Client\n"),
    ("wshub.core.y", "from ..hub import hub\n"),
    ("wshub.core.__init__", "import wshub\n"),
    ("wshub.plugins.x", "import os\n"),
]
SUPPORT = [
    ("wshub.testing", "import wshub.servers.websocket\n"),
    ("wshub.hub.__init__", ""),
    ("wshub.hub.hub", ""),
    ("wshub.servers.websocket", ""),
]


def test_the_layer_check_reports_each_forbidden_import() -> None:
    problems = layer_violations([*FORBIDDEN, *SUPPORT])
    assert problems == [
        "wshub.core.x:1 imports wshub.hub.hub (core may import only core)",
        "wshub.client.x:3 imports wshub.servers.websocket (client may import only client, core)",
        "wshub.client.y:2 imports wshub.hub.hub (client may import only client, core)",
        "wshub.brokers.x:1 imports wshub.hub.hooks (brokers may import only brokers, core)",
        "wshub.hub.x:1 imports wshub.testing (hub may import only brokers, core, hub)",
        "wshub.servers.x:1 imports wshub.client.client "
        "(servers may import only brokers, core, hub, servers)",
        "wshub.core.y:1 imports wshub.hub.hub (core may import only core)",
        "wshub.core:1 imports wshub (core may import only core)",
        "wshub.plugins.x: its package has no layer rule in ALLOWED",
    ]


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("wshub.servers.x", "from wshub.hub.hub import Hub\nfrom wshub.brokers import memory\n"),
        ("wshub.hub.x", "from wshub.core.config import HubConfig\nimport wshub.brokers\n"),
        ("wshub.client.x", "from wshub.core import protocol\nfrom wshub.client.state import S\n"),
        ("wshub.cli", "import wshub.servers.websocket\nfrom wshub.client import open_client\n"),
        ("wshub.core.x", "import trio\nimport attrs\n"),
    ],
)
def test_the_layer_check_accepts_allowed_imports(name: str, source: str) -> None:
    assert layer_violations([(name, source)]) == []


def test_the_cycle_check_reports_a_cycle_through_a_type_checking_import() -> None:
    sources = [
        ("wshub.hub.hub", "from wshub.hub.connection import Connection\n"),
        (
            "wshub.hub.connection",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from wshub.hub.reports import report\n",
        ),
        ("wshub.hub.reports", "def report():\n    from wshub.hub import hub\n"),
        ("wshub.hub.__init__", ""),
        ("wshub.core.a", "import wshub.core.a\n"),
        ("wshub.core.b", "from wshub.hub.hub import Hub\n"),
    ]
    assert import_cycles(sources) == [
        ["wshub.core.a", "wshub.core.a"],
        ["wshub.hub.connection", "wshub.hub.reports", "wshub.hub.hub", "wshub.hub.connection"],
    ]

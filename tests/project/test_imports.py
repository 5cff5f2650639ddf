"""Imports go one way: the import graph of mailcore, read from every module's syntax tree (imports
inside functions and TYPE_CHECKING blocks included), has no cycle beyond the ones listed here, each
waiting to be cut; and each folder of mailcore sits on one level of LAYERS, importing only downwards."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "mailcore"

# The levels of mailcore, bottom first: each top-level module or package of mailcore sits on one,
# and imports only from its own level or the ones below. Imports between two packages of one level
# are allowed as long as they form no cycle.
LAYERS: list[set[str]] = [
    # 1. Knowing no database and nothing of mailcore above: the body store, DNS caching, addresses,
    #    TLS contexts, refusals, and what travels on the wire (SMTP replies, DATA, POP3, SASL).
    {"store", "dnscache", "addresses", "tls", "rejections", "wire"},
    # 2. Values and message formatting: the envelope, header fields, the DNS checks of SPF, DKIM, DMARC, ARC.
    {"envelope", "headers", "authentication"},
    # 3. The database (models, the bridge from event loops to it) and the names of the cluster's jobs.
    {"models", "database_bridge", "jobs"},
    # 4. Clients that know no database: outbound SMTP and bounces, reverse delivery's GET, spamd.
    {"delivery", "reverse_delivery", "spam"},
    # 5. The services: the only code that opens database transactions.
    {"services"},
    # 6. Workers and job entry points: the queue runner, SOURCE, the pull sweep, the quarantine's jobs.
    {"workers", "tasks", "quarantine"},
    # 7. Protocols, web and commands on top.
    {"smtp", "pop3", "web", "management", "admin", "apps", "templatetags"},
]

# Cycles that remain, as sets of modules. The list only ever shrinks: a new cycle fails the test,
# and so does a listed one that is gone (take it off the list).
KNOWN_CYCLES: list[set[str]] = []


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The mailcore modules that `name` imports, wherever in it the import stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module.
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def folder_of(module: str) -> str:
    """The top-level module or package of mailcore that `module` is part of ("" for mailcore itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    """What breaks the layering of `graph` (module -> the modules it imports): a module on no level,
    an import upwards, and a cycle between the folders of one level."""
    level = {folder: n for n, group in enumerate(layers) for folder in group}
    problems = sorted(f"{module}: its folder is on no level of LAYERS" for module in graph if folder_of(module) not in level)
    between: dict[str, set[str]] = {}
    for module, targets in sorted(graph.items()):
        source = folder_of(module)
        for target in sorted(targets):
            destination = folder_of(target)
            if source == destination or source not in level or destination not in level:
                continue
            if level[destination] > level[source]:
                problems.append(f"{module} imports {target}: level {level[source] + 1} -> {level[destination] + 1}, upwards")
            elif level[destination] == level[source]:
                between.setdefault(source, set()).add(destination)
    problems += [f"a cycle between the folders of one level: {sorted(cycle)}" for cycle in cycles(between)]
    return problems


def test_the_layer_check_sees_an_upward_import_a_cycle_in_a_level_and_a_folder_on_no_level():
    layers = [{"low", "side"}, {"high"}]
    graph = {
        "mailcore.low.a": {"mailcore.high.b"},
        "mailcore.high.b": {"mailcore.low.a"},
        "mailcore.low.c": {"mailcore.side"},
        "mailcore.side": {"mailcore.low.a"},
        "mailcore.new.d": set(),
    }
    assert layer_violations(graph, layers) == [
        "mailcore.new.d: its folder is on no level of LAYERS",
        "mailcore.low.a imports mailcore.high.b: level 1 -> 2, upwards",
        "a cycle between the folders of one level: ['low', 'side']",
    ]
    assert layer_violations({"mailcore.high.b": {"mailcore.low.a"}, "mailcore.low.a": set()}, layers) == []


def test_folders_import_only_downwards():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    # mailcore/__init__.py is on no level: it imports nothing, and nothing needs to import it.
    assert graph.pop("mailcore") == set()
    assert layer_violations(graph, LAYERS) == []
    listed = [folder for group in LAYERS for folder in group]
    assert len(listed) == len(set(listed)), "a folder is listed on two levels"
    assert set(listed) == {folder_of(name) for name in graph}, "a level lists a folder that does not exist"


def test_the_finder_sees_a_cycle_through_an_import_inside_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]


def test_no_import_cycles_beyond_the_known_ones():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert "mailcore.tasks" in graph["mailcore.apps"]  # imports inside functions are counted
    found = sorted(cycles(graph), key=sorted)
    assert found == sorted(KNOWN_CYCLES, key=sorted)

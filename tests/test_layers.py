"""The layers stay layers (DESIGN.md section 3, issue 14 point 6): doors call services, services
commit and publish events, engines subscribe. A service (or a door) that calls an engine held on
the Runtime, or imports one, makes a circle (service -> executor -> service) that a reader meets
twice; this test reads the source (ast) and names the line that does it.

What counts as an engine: the modules below, and the Runtime fields that hold them. The Runtime
names the engines' types under TYPE_CHECKING only (for its fields' annotations); those imports
never run and are left out of the graph.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "opsroom"

ENGINES = frozenset({"opsroom.runbooks.executor", "opsroom.chat.hub", "opsroom.checks.monitor",
                     "opsroom.automation.rules"})
# Runtime fields that hold an engine -> its module. Services and doors must not use the first two
# (the circle of issue 14); all of them count as edges in the graph below.
ENGINE_FIELDS = {"executor": "opsroom.runbooks.executor", "rooms": "opsroom.chat.hub",
                 "monitor": "opsroom.checks.monitor", "rules": "opsroom.automation.rules",
                 "alerts": "opsroom.alerts.book"}
FORBIDDEN_FIELDS = frozenset({"executor", "rooms"})
# Doors besides the views: the chat commands (the hub calls them; they must not call it back)
# and the CLI.
DOORS = ("chat/commands.py", "chat/accounts.py", "runbooks/chat.py", "alerts/commands.py", "cli")
# Known and owned elsewhere; each entry must still be needed (a stale one fails), so the list only
# shrinks. checks/service.py runs on-demand checks through the monitor and reads its live states.
ALLOWED_IMPORTS = {("opsroom.checks.service", "opsroom.checks.monitor")}


def _name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
SERVICES = sorted(n for n, p in MODULES.items() if "service" in p.name and not n.startswith("opsroom.web."))


def _doors() -> list[str]:
    found = {n for n, p in MODULES.items() if p.name == "views.py"}
    for door in DOORS:
        target = PACKAGE / door
        found |= {_name(p) for p in ([target] if target.suffix == ".py" else target.rglob("*.py"))}
    return sorted(found)


DOORS_FOUND = _doors()


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(tree: ast.AST, *, skip_type_checking: bool) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(tree):
        if skip_type_checking and _type_checking(child):
            continue
        yield child
        yield from _walk(child, skip_type_checking=skip_type_checking)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The opsroom modules an import statement names (`from opsroom.x import y` names x and x.y)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    return [base, *(f"{base}.{a.name}" for a in node.names)]


def _engine_field(node: ast.AST) -> str | None:
    """`rt.X` / `runtime.X` / `self.rt.X` where X is a Runtime field holding an engine."""
    if not isinstance(node, ast.Attribute) or node.attr not in ENGINE_FIELDS:
        return None
    owner = node.value
    if (isinstance(owner, ast.Name) and owner.id in ("rt", "runtime")) or \
            (isinstance(owner, ast.Attribute) and owner.attr == "rt"):
        return node.attr
    return None


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """What a service or door module must not do, one line each: use rt.executor / rt.rooms, or
    import an engine module (TYPE_CHECKING imports included: the reader meets them all the same)."""
    found = []
    for node in _walk(ast.parse(source), skip_type_checking=False):
        field = _engine_field(node)
        if field in FORBIDDEN_FIELDS:
            found.append(f"{module}:{node.lineno} uses rt.{field}")  # type: ignore[attr-defined]
        for name in _imported(node, module, is_package):
            if name in ENGINES and (module, name) not in ALLOWED_IMPORTS:
                found.append(f"{module}:{node.lineno} imports {name}")  # type: ignore[attr-defined]
    return found


def edges(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """What a module depends on when it runs: its imports (function-level ones too, not
    TYPE_CHECKING ones) and the engines it reaches through the Runtime's fields."""
    out: set[str] = set()
    for node in _walk(ast.parse(source), skip_type_checking=True):
        out.update(_imported(node, module, is_package))
        field = _engine_field(node)
        if field is not None:
            out.add(ENGINE_FIELDS[field])
    return {m for m in out if m in MODULES and m != module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _source(module: str) -> tuple[str, bool]:
    path = MODULES[module]
    return path.read_text(), path.name == "__init__.py"


def test_the_lists_find_what_they_name() -> None:
    """A renamed file must not silently leave the test: the modules of the circle are all here."""
    for name in ("opsroom.runbooks.service", "opsroom.approvals.service", "opsroom.rooms.service",
                 "opsroom.catalog.service"):
        assert name in SERVICES
    assert {"opsroom.chat.commands", "opsroom.chat.accounts", "opsroom.runbooks.views"} <= set(DOORS_FOUND)
    assert ENGINES <= set(MODULES)


@pytest.mark.parametrize("module", SERVICES + DOORS_FOUND)
def test_services_and_doors_never_call_an_engine(module: str) -> None:
    source, is_package = _source(module)
    assert violations(source, module, is_package=is_package) == []


def test_every_allowance_is_still_needed() -> None:
    for module, engine in ALLOWED_IMPORTS:
        source, is_package = _source(module)
        assert engine in edges(source, module, is_package=is_package), f"{module} no longer imports {engine}: " \
            "remove it from ALLOWED_IMPORTS"


def test_no_circle_runs_through_a_service_an_engine_or_the_runtime() -> None:
    graph = {}
    for module in MODULES:
        source, is_package = _source(module)
        graph[module] = edges(source, module, is_package=is_package)
    watched = {*SERVICES, *ENGINES, "opsroom.runtime"}
    bad = [c for c in cycles(graph) if watched & set(c)]
    assert bad == [], "import circles (with rt.<engine> uses as edges): " + "; ".join(" <-> ".join(c) for c in bad)


def test_the_checks_catch_what_they_are_for() -> None:
    """The detectors themselves, on made-up modules: each form of the mistake is named."""
    bad = ("from opsroom.runbooks import executor\n"
           "import opsroom.chat.hub\n"
           "async def f(rt):\n"
           "    from opsroom.checks.monitor import Monitor\n"
           "    rt.executor.start(1)\n"
           "    return self.rt.rooms.adapters\n")
    found = violations(bad, "opsroom.x.service")
    assert [f.split(" ", 1)[1] for f in found] == [
        "imports opsroom.runbooks.executor", "imports opsroom.chat.hub", "imports opsroom.checks.monitor",
        "uses rt.executor", "uses rt.rooms"], found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = {"opsroom.runbooks.service": edges("def f(rt):\n    rt.executor.start(1)\n", "opsroom.runbooks.service"),
             "opsroom.runbooks.executor": {"opsroom.runbooks.service"}}
    assert cycles(graph) == [["opsroom.runbooks.executor", "opsroom.runbooks.service"]]

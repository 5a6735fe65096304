"""Load a catalog from YAML with every problem pointed at its file:line:column.

Each file is read by catalog/reading.py into plain values with the mark where each was
written; validation errors and broken references are then reported at the exact line a
person has to edit.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from opsroom.access.identity import ALL_PERMISSIONS
from opsroom.catalog import schema
from opsroom.catalog.catalog import Catalog, Location
from opsroom.catalog.errors import MAX_PROBLEMS, CatalogError, Problem, did_you_mean, explain, yaml_hint
from opsroom.catalog.extensions import plugin_settings_problems
from opsroom.catalog.hosts import check_hosts
from opsroom.catalog.reading import Doc, KeyPath, Locations, Reader, compose, location
from opsroom.catalog.schema import CHECK_TYPES, KINDS, Alias, Check, RoleBinding, approval_roles
from opsroom.catalog.templates import check_templates

BUILTIN_ROLES = ("viewer", "operator", "approver", "admin")
# Every kind but check is one model class named after the kind (environment -> Environment).
_CLASSES: dict[str, type[BaseModel]] = {k: getattr(schema, k.title().replace("_", "")) for k in KINDS.values()
                                        if k != "check"}
_CHECK: TypeAdapter[Check] = TypeAdapter(Check)
# The check class each `type:` selects, read from the union so new probe types need no edit here.
_CHECK_CLASSES: dict[str, type[BaseModel]] = {
    get_args(cls.model_fields["type"].annotation)[0]: cls for cls in get_args(get_args(Check)[0])
}
_PLURAL = {singular: plural for plural, singular in KINDS.items()}


@dataclass
class _Raw:
    """One object as written, before validation."""

    kind: str
    doc: Doc
    path: KeyPath  # e.g. ('checks', 3) within its file
    data: dict[Any, Any]

    @property
    def name(self) -> str | None:
        name = self.data.get("pattern" if self.kind == "alias" else "name")
        return name if isinstance(name, str) else None

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.name}'" if self.name else f"{self.kind} #{int(self.path[1]) + 1}"


class _Loader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[Problem] = []
        self.truncated = False
        self.broken = False  # some file could not be read whole: references cannot be judged
        self.raws: list[_Raw] = []
        self.reader = Reader(self.add)
        self.order: dict[str, int] = {}  # file -> position, to report problems file by file
        # Names that exist (validated or not, so a broken object's referrers are not blamed too).
        self.names: dict[str, set[str]] = defaultdict(set)
        self.defined_in: dict[str, dict[str, None]] = defaultdict(dict)  # kind -> files, in order

    def add(self, location: Location | None, message: str, hint: str = "") -> None:
        if len(self.problems) >= MAX_PROBLEMS:
            self.truncated = True
            return
        self.problems.append(Problem(location, message, hint))

    # --- files and YAML ---------------------------------------------------

    def files(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        if not self.root.is_dir():
            self.add(None, f"catalog path {self.root} does not exist",
                     "pass a directory of *.yaml files or a single YAML file")
            return []
        return sorted(
            p for p in self.root.rglob("*")
            if p.suffix in (".yaml", ".yml") and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )

    def read(self, path: Path) -> None:
        doc = Doc(str(path))
        self.order[doc.file] = len(self.order)
        try:
            node = compose(path.read_text(encoding="utf-8"))
            data = self.reader.convert(node, doc, ()) if node is not None else None
        except yaml.MarkedYAMLError as exc:
            self.broken = True
            problem = ", ".join(filter(None, [exc.context, exc.problem])) or "not valid YAML"
            # PyYAML notices a missing ':' a line late; where the key started is the line to fix.
            late = exc.context_mark and exc.problem == "could not find expected ':'"
            mark = (exc.context_mark if late else exc.problem_mark) or exc.context_mark
            self.add(location(doc.file, mark) if mark else Location(doc.file, 1, 1),
                     f"invalid YAML: {problem}", yaml_hint(problem))
            return
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            self.broken = True
            self.add(Location(doc.file, 1, 1), f"cannot read this file: {exc}",
                     "catalog files are UTF-8 text in YAML")
            return
        self.collect(doc, data)

    def collect(self, doc: Doc, data: Any) -> None:
        if data is None:
            return
        if not isinstance(data, dict):
            self.broken = True
            self.add(doc.at(()), "a catalog file must be a mapping of kinds to lists",
                     "start with a kind such as `services:` and list the items under it with `- name: …`")
            return
        for key, items in data.items():
            if key not in KINDS:
                self.broken = True
                self.add(doc.key_at((key,)), f"unknown top-level key '{key}'",
                         f"{did_you_mean(str(key), KINDS)}valid keys: {', '.join(KINDS)}")
                continue
            if items is None:
                continue
            if not isinstance(items, list):
                self.broken = True
                self.add(doc.at((key,)), f"`{key}` must be a list",
                         f"write each {KINDS[key]} as a `- name: …` item under `{key}:`")
                continue
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    self.raws.append(_Raw(KINDS[key], doc, (key, i), item))
                else:
                    self.broken = True
                    self.add(doc.at((key, i)), f"{KINDS[key]} #{i + 1} must be a mapping of fields",
                             "write it as `- name: …` followed by its other fields, indented alike")

    # --- validation ---------------------------------------------------------

    def validate(self, raw: _Raw) -> Any:
        tag = raw.data.get("type")
        try:
            if raw.kind == "check":
                return _CHECK.validate_python(raw.data)
            return _CLASSES[raw.kind].model_validate(raw.data)
        except ValidationError as exc:
            errors = exc.errors()
        model = _CLASSES.get(raw.kind) or (_CHECK_CLASSES.get(tag) if isinstance(tag, str) else None)
        for err in errors:
            if raw.kind == "check" and err["loc"][:1] == (tag,):
                err["loc"] = err["loc"][1:]  # pydantic puts the union tag first
            if raw.kind == "user" and err["loc"][:1] == ("roles",) and err["loc"][2:3] in (("role",), ("binding",)):
                err["loc"] = err["loc"][:2] + err["loc"][3:]  # a role entry's tag (schema.RoleEntry)
            path, message, hint = explain(err, model, raw.kind, CHECK_TYPES)
            full = raw.path + path
            if any(f == raw.doc.file and bad[: len(full)] == full for f, bad in self.reader.unresolved):
                continue  # already reported as an unset variable
            where = raw.doc.key_at(full) if err["type"] == "extra_forbidden" else None
            self.add(where or raw.doc.at(full), f"{raw.label}: {message}", hint)
        return None

    def build(self) -> Catalog:
        locations = Locations()
        catalog = Catalog(root=str(self.root), locations=locations)
        first: dict[tuple[str, str], _Raw] = {}
        for raw in self.raws:
            self.defined_in[raw.kind][raw.doc.file] = None
            obj = self.validate(raw)
            if obj is None:
                if raw.name:
                    self.names[raw.kind].add(raw.name)
                continue
            name = obj.pattern if isinstance(obj, Alias) else obj.name
            field_name = "pattern" if isinstance(obj, Alias) else "name"
            earlier = first.get((raw.kind, name))
            if earlier is not None:
                self.add(raw.doc.at((*raw.path, field_name)), f"duplicate {raw.kind} '{name}'",
                         f"the first {raw.kind} '{name}' is at {earlier.doc.at((*earlier.path, field_name))}; "
                         "rename or remove one of them")
                continue
            first[(raw.kind, name)] = raw
            self.names[raw.kind].add(name)
            if isinstance(obj, Alias):
                catalog.aliases.append(obj)
            else:
                getattr(catalog, _PLURAL[raw.kind])[name] = obj
            locations.defer(raw.kind, name, raw.doc, raw.path)
        return catalog

    # --- references between objects -----------------------------------------

    def ref(self, cat: Catalog, at: tuple[str, ...], verb: str, target: str, ref: str | None) -> None:
        """Report `ref` at `at` unless an object of kind `target` has that name."""
        builtin = BUILTIN_ROLES if target == "role" else ()
        if ref is None or ref in self.names[target] or ref in builtin:
            return
        files = ", ".join(self.defined_in.get(target, {}))
        where = (f"{target}s are defined in {files}" if files
                 else f"no {target}s are defined; add one under `{_PLURAL[target]}:`")
        if builtin:
            where = f"built-in roles: {', '.join(builtin)}; " + (
                f"others are defined in {files}" if files else "define others under `roles:`")
        self.add(cat.locate(*at), f"{at[0]} '{at[1]}' {verb} {target} '{ref}', which is not in the catalog",
                 f"{did_you_mean(ref, [*self.names[target], *builtin])}{where}")

    def params(self, cat: Catalog, at: tuple[str, ...], runbook: str, given: Collection[str],
               require: bool) -> None:
        """Parameters passed to a runbook must be ones it declares; required ones must be passed."""
        rb = cat.runbooks.get(runbook)
        if rb is None:
            return
        declared = list(rb.parameters)
        takes = (f"runbook '{runbook}' takes: {', '.join(declared)}" if declared
                 else f"runbook '{runbook}' takes no parameters")
        for p in given:
            if p not in rb.parameters:
                what = f"has placeholder '{{{p}}}'" if at[2] == "pattern" else f"passes parameter '{p}'"
                self.add(cat.locate(*at, p),
                         f"{at[0]} '{at[1]}' {what}, which runbook '{runbook}' does not take",
                         f"{did_you_mean(p, declared)}{takes}")
        for p, spec in rb.parameters.items() if require else ():
            if spec.required and spec.default is None and p not in given:
                self.add(cat.locate(*at),
                         f"{at[0]} '{at[1]}' does not give required parameter '{p}' of runbook '{runbook}'",
                         f"add `{p}: …` under {'.'.join(at[2:])}, "
                         f"or give the parameter a default in runbook '{runbook}'")

    def approvers(self, cat: Catalog, at: tuple[str, ...], policy: str | None) -> None:
        for role in approval_roles(policy) or ():
            self.ref(cat, at, "needs approval by", "role", role)

    def cycles(self, cat: Catalog, kind: str, field_name: str, verb: str,
               graph: dict[str, list[str]]) -> None:
        for cycle in _cycles(graph):
            index = graph[cycle[0]].index(cycle[1])
            self.add(cat.locate(kind, cycle[0], field_name, str(index)),
                     f"{_PLURAL[kind]} {verb} each other in a cycle: " + " -> ".join(cycle),
                     f"remove one of these {field_name} entries; a cycle has no order to follow")

    def check_refs(self, cat: Catalog) -> None:
        for n, sys in cat.systems.items():
            self.ref(cat, ("system", n, "environment"), "belongs to", "environment", sys.environment)
        for n, svc in cat.services.items():
            self.ref(cat, ("service", n, "system"), "belongs to", "system", svc.system)
            self.ref(cat, ("service", n, "environment"), "runs in", "environment", svc.environment)
            for i, dep in enumerate(svc.depends_on):
                self.ref(cat, ("service", n, "depends_on", str(i)), "depends on", "service", dep)
        deps = {n: s.depends_on for n, s in cat.services.items()}
        self.cycles(cat, "service", "depends_on", "depend on", deps)
        for n, chk in cat.checks.items():
            if not chk.service and not chk.system:
                self.add(cat.locate("check", n), f"check '{n}' belongs to no service or system",
                         "add `service: <name>`, or `system: <name>` for a check of a whole system")
            self.ref(cat, ("check", n, "service"), "checks", "service", chk.service)
            self.ref(cat, ("check", n, "system"), "belongs to", "system", chk.system)
            self.ref(cat, ("check", n, "environment"), "runs in", "environment", chk.environment)
        for n, rb in cat.runbooks.items():
            self.ref(cat, ("runbook", n, "environment"), "runs in", "environment", rb.environment)
            # Never from file order: a `staging` added above `prod` once made a prod runbook run
            # as staging, unapproved. A catalog of one environment has no order to get wrong.
            acts_on_service = any(p.type == "service" for p in rb.parameters.values())
            if rb.environment is None and not acts_on_service and len(cat.environments) != 1:
                envs = ", ".join(cat.environments) or "none defined yet"
                self.add(cat.locate("runbook", n), f"runbook '{n}' does not say which environment it acts on",
                         f"set `environment: <name>` (one of: {envs}) or give it a parameter of type service")
            self.approvers(cat, ("runbook", n, "approval"), rb.approval)
            for i, step in enumerate(rb.steps):
                at = ("runbook", n, "steps", str(i), "check")
                self.ref(cat, at, "waits for", "check", _literal(step.check))
        for n, rule in cat.rules.items():
            self.ref(cat, ("rule", n, "when", "check"), "watches", "check", _literal(rule.when.check))
            self.ref(cat, ("rule", n, "when", "service"), "watches", "service", rule.when.service)
            self.ref(cat, ("rule", n, "when", "system"), "watches", "system", rule.when.system)
            self.ref(cat, ("rule", n, "then", "runbook"), "runs", "runbook", rule.then.runbook)
            self.params(cat, ("rule", n, "then", "params"), rule.then.runbook, rule.then.params, True)
            self.approvers(cat, ("rule", n, "policy", "approval"), rule.policy.approval)
            verify = _literal(rule.policy.verify.check if rule.policy.verify else None)
            self.ref(cat, ("rule", n, "policy", "verify", "check"), "verifies with", "check", verify)
        for n, room in cat.rooms.items():
            for i, system in enumerate(room.systems):
                self.ref(cat, ("room", n, "systems", str(i)), "follows", "system", system)
            for i, text in enumerate(room.bind):
                platform = text.partition(":")[0]
                if platform not in cat.platforms and platform != "web":
                    self.add(cat.locate("room", n, "bind", str(i)),
                             f"room '{n}' binds to platform '{platform}', which is not defined",
                             did_you_mean(platform, sorted(cat.platforms)) +
                             f"add `platforms: [{{name: {platform}, ...}}]` or fix the name")
        self.platform_settings(cat)
        for alias in cat.aliases:
            self.ref(cat, ("alias", alias.pattern, "runbook"), "runs", "runbook", alias.runbook)
            self.params(cat, ("alias", alias.pattern, "pattern"), alias.runbook, alias.placeholders, False)
            self.params(cat, ("alias", alias.pattern, "params"), alias.runbook, alias.params, False)
        for n, user in cat.users.items():
            for i, role in enumerate(user.roles):
                if isinstance(role, str):
                    self.ref(cat, ("user", n, "roles", str(i)), "has", "role", role)
                else:
                    self.binding(cat, ("user", n, "roles", str(i)), role)
        for n, role_ in cat.roles.items():
            for i, parent in enumerate(role_.inherits):
                self.ref(cat, ("role", n, "inherits", str(i)), "inherits", "role", parent)
            for i, perm in enumerate(role_.permissions):
                # A misspelt permission would silently grant nothing.
                if perm != "*" and perm not in ALL_PERMISSIONS:
                    self.add(cat.locate("role", n, "permissions", str(i)),
                             f"role '{n}' has unknown permission '{perm}'",
                             did_you_mean(perm, sorted(ALL_PERMISSIONS)) +
                             f"known permissions: {', '.join(sorted(ALL_PERMISSIONS))}")
        self.cycles(cat, "role", "inherits", "inherit from", {n: r.inherits for n, r in cat.roles.items()})
        check_hosts(self, cat)  # hosts, jumps, pinned keys, key files; what runbooks and checks name


    def binding(self, cat: Catalog, at: tuple[str, ...], b: RoleBinding) -> None:
        """A scoped role names a known role, environment and (if any) a system of that environment:
        a binding that matches nothing would silently grant nothing, or look like it covers prod."""
        self.ref(cat, (*at, "role"), "has", "role", b.role)
        self.ref(cat, (*at, "environment"), "has a role in", "environment", b.environment)
        self.ref(cat, (*at, "system"), "has a role in", "system", b.system)
        system = cat.systems.get(b.system) if b.system else None
        if system is not None and b.environment in cat.environments and system.environment != b.environment:
            self.add(cat.locate(*at, "system"),
                     f"{at[0]} '{at[1]}' has a role in system '{b.system}' of environment '{b.environment}', "
                     f"but that system is in environment '{system.environment}'",
                     f"write `environment: {system.environment}`, or name a system of {b.environment}")

    def platform_settings(self, cat: Catalog) -> None:
        """Each platform's and alert source's settings checked by its plugin's own Config, at file:line."""
        for where, message, hint in plugin_settings_problems(cat):
            self.add(where, message, hint)


def _literal(name: str | None) -> str | None:
    """A reference that can be checked now; a templated one is only known when it runs."""
    return None if name is None or "{{" in name else name


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each cycle once, as [a, b, …, a]; iterative so a long chain cannot hit the recursion limit."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in state:
            continue
        path, todo = [start], [iter(graph[start])]
        state[start] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif nxt in graph and state.get(nxt) == 1:
                found.append([*path[path.index(nxt):], nxt])
            elif nxt in graph and nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(graph[nxt]))
    return found


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a catalog is built: it makes millions of objects that
    all live on, and the collector walked them again and again (40% of loading 20,000 checks)
    to find next to no garbage. It runs as usual once the load is over."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load_catalog(path: str | Path) -> Catalog:
    """Read every *.yaml/*.yml under `path` (or the one file) into a validated Catalog.

    Raises CatalogError with every problem found, each at its file:line:column.
    """
    loader = _Loader(Path(path))
    with _collector_paused():
        for file in loader.files():
            loader.read(file)
        catalog = loader.build()
        if not loader.broken:  # with a file unreadable, every reference into it would look broken
            loader.check_refs(catalog)
        check_templates(catalog, loader.add)  # each object alone: judged even when a file is broken
    if loader.problems:
        def order(p: Problem) -> tuple[int, int, int]:
            loc = p.location
            return (-1, 0, 0) if loc is None else (loader.order.get(loc.file, 0), loc.line, loc.column)

        raise CatalogError(sorted(loader.problems, key=order), loader.truncated)
    return catalog

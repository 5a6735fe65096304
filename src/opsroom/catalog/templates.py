"""Every template and condition in the catalog, compiled at load and its names checked.

A rule condition with a syntax error, a name the event does not have, or `params.servce`
for a runbook's `service` parameter used to pass `catalog validate` and fail when the rule
fired or the runbook ran: at the worst moment. Each is compiled here with the same
sandboxed environment that renders it, and the names it reads are checked against the
context it will be rendered with; problems point at the value's file:line:column.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from jinja2 import TemplateSyntaxError, nodes

from opsroom.automation.templates import FILTERS, GLOBALS, TESTS, is_template, template_names
from opsroom.catalog.catalog import Catalog, Location
from opsroom.catalog.errors import did_you_mean, dotted
from opsroom.catalog.schema import Rule, Runbook
from opsroom.checks.synthetic_check import check_synthetic_templates

Add = Callable[[Location | None, str, str], None]
KeyPath = tuple[str | int, ...]

# What each template is rendered with; keep in step with the code named beside each.
# runbooks/executor.py, Executor._run: steps and the success/failure messages.
STEP_NAMES = ("params", "execution", "runbook", "python", "environment", "data_dir")
# runbooks/ssh.py: a target: ssh runbook's steps also see the host they run for.
SSH_STEP_NAMES = (*STEP_NAMES, "host")
# runbooks/service.py, _summary: the run's name in rooms, made before it has an execution.
SUMMARY_NAMES = ("params",)
# automation/rules.py, _context: a rule's condition, then.params and policy.verify.check.
RULE_NAMES = ("check", "service", "system", "state", "state_type", "attempt", "output", "environment", "event")
# automation/rules.py, _alert_context: a rule with `when: {alert: ...}`.
ALERT_RULE_NAMES = ("alert", "labels", "annotations", "alertname", "severity", "service", "system", "environment",
                    "event")
# alerts/base.py, AlertIn.context: an alert source's `service:` and `system:`.
SOURCE_NAMES = ("labels", "annotations", "name", "alertname", "status", "severity", "fingerprint", "summary")
# The fields of the context's mappings that are known at load (params: the runbook's own).
_FIELDS = {"execution": ("id",)}


@dataclass(frozen=True)
class Scope:
    what: str  # names where the template is rendered, for messages
    names: tuple[str, ...]
    params: tuple[str, ...] = ()
    owner: str = ""  # the runbook whose parameters `params` holds


def check_templates(catalog: Catalog, add: Add) -> None:
    """Report every template and condition of the catalog that would fail when rendered."""
    checker = _Checker(catalog, add)
    for name, rb in catalog.runbooks.items():
        for path, source, scope, expression in _runbook_values(name, rb):
            checker.check("runbook", name, path, source, scope, expression)
    for name, rule in catalog.rules.items():
        for path, source, scope, expression in _rule_values(rule):
            checker.check("rule", name, path, source, scope, expression)
    for alias in catalog.aliases:
        checker.alias_params(alias.pattern, alias.placeholders, alias.params)
    source_scope = Scope("an alert source's mapping", SOURCE_NAMES)
    for name, alert_source in catalog.alert_sources.items():
        for field in ("service", "system"):
            value = getattr(alert_source, field)
            if value is not None:
                checker.check("alert_source", name, (field,), value, source_scope, False)
    check_synthetic_templates(catalog, add, checker.position)


Value = tuple[KeyPath, str, Scope, bool]


def _runbook_values(name: str, rb: Runbook) -> Iterator[Value]:
    params = tuple(rb.parameters)
    step = Scope("a runbook's steps and messages", SSH_STEP_NAMES if rb.target == "ssh" else STEP_NAMES, params,
                 name)
    summary = Scope("a runbook's summary", SUMMARY_NAMES, params, name)
    for field, scope in (("summary", summary), ("success_message", step), ("failure_message", step)):
        source = getattr(rb, field)
        if source is not None:
            yield (field,), source, scope, False
    for i, st in enumerate(rb.steps):
        for j, arg in enumerate(st.command or ()):
            yield ("steps", i, "command", j), arg, step, False
        for key, value in st.env.items():
            yield ("steps", i, "env", key), value, step, False
        if st.cwd is not None:
            yield ("steps", i, "cwd"), st.cwd, step, False
        if st.check is not None:
            yield ("steps", i, "check"), st.check, step, False
        if st.http is not None:
            yield ("steps", i, "http", "url"), st.http.url, step, False
            for key, value in st.http.headers.items():
                yield ("steps", i, "http", "headers", key), value, step, False
            if st.http.body is not None:
                yield ("steps", i, "http", "body"), st.http.body, step, False


def _rule_values(rule: Rule) -> Iterator[Value]:
    scope = Scope("a rule on alerts", ALERT_RULE_NAMES) if rule.when.alert is not None else Scope("a rule", RULE_NAMES)
    if rule.when.condition is not None:
        yield ("when", "condition"), rule.when.condition, scope, True
    for key, value in rule.then.params.items():
        yield ("then", "params", key), value, scope, False
    if rule.policy.verify is not None and rule.policy.verify.check is not None:
        yield ("policy", "verify", "check"), rule.policy.verify.check, scope, False


class _Checker:
    def __init__(self, catalog: Catalog, add: Add) -> None:
        self.catalog, self.add = catalog, add
        self._lines: dict[str, list[str]] = {}

    def check(self, kind: str, name: str, path: KeyPath, source: str, scope: Scope, expression: bool) -> None:
        if not expression and not is_template(source):
            return  # used as it is, never compiled
        label, where = f"{kind} '{name}'", dotted(path)

        def at(index: int) -> Location | None:  # located only for a problem: most templates have none
            return self.position(self.catalog.locate(kind, name, *map(str, path)), source, index)

        what = "condition" if expression else "template"
        try:
            free, fields, private = _facts(source, expression)
        except TemplateSyntaxError as exc:
            self.add(at(_line_start(source, (exc.lineno or 1) - 1)), f"{label}: {where}: {what} {source!r} does not "
                     f"compile: {exc.message}", _syntax_hint(exc.message or "", expression))
            return
        for var in sorted(free - set(scope.names)):
            self.add(at(_find(source, rf"(?<![\w.]){re.escape(var)}\b")),
                     f"{label}: {where} uses '{var}', which {scope.what} cannot see",
                     f"{did_you_mean(var, scope.names)}{scope.what} can use: {', '.join(scope.names)}")
        for base, attr, node_source in fields:
            if base not in free or base not in scope.names:
                continue
            if base == "params":
                known, whose = scope.params, f"runbook '{scope.owner}'"
                takes = (f"runbook '{scope.owner}' takes: {', '.join(known)}" if known
                         else f"runbook '{scope.owner}' takes no parameters; declare it under `parameters:`")
            elif base in _FIELDS:
                known, whose = _FIELDS[base], f"'{base}'"
                takes = f"'{base}' has: {', '.join(known)}"
            else:
                continue
            if attr not in known:
                self.add(at(_find(source, node_source)),
                         f"{label}: {where} uses {base}.{attr}, which {whose} does not have",
                         f"{did_you_mean(attr, known)}{takes}")
        for attr in private:
            self.add(at(_find(source, rf"(?<=\.){re.escape(attr)}\b")),
                     f"{label}: {where} reads '{attr}', a private attribute the sandbox refuses",
                     "templates read parameters and context values only; remove it")

    def alias_params(self, pattern: str, placeholders: list[str], params: dict[str, str]) -> None:
        """Alias parameters are filled with str.format from the pattern's placeholders."""
        for key, value in params.items():
            loc = self.catalog.locate("alias", pattern, "params", key)
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
            except ValueError as exc:
                self.add(loc, f"alias '{pattern}': params.{key}: {exc}",
                         "write {placeholder} for a placeholder of the pattern, {{ and }} for literal braces")
                continue
            for field in fields:
                if field not in placeholders:
                    self.add(self.position(loc, value, value.find("{" + field)),
                             f"alias '{pattern}': params.{key} uses {{{field}}}, which is not a placeholder "
                             "of its pattern",
                             f"{did_you_mean(field, placeholders)}the pattern's placeholders: "
                             f"{', '.join(placeholders) or 'none'}")

    def position(self, loc: Location | None, source: str, index: int) -> Location | None:
        """Where the character `index` of a value written at `loc` is in its file (best effort:
        exact for one-line plain and quoted values, by line for block scalars)."""
        if loc is None:
            return None
        lines = self._lines.get(loc.file)
        if lines is None:
            try:
                lines = Path(loc.file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                lines = []
            self._lines[loc.file] = lines
        written = lines[loc.line - 1] if 0 < loc.line <= len(lines) else ""
        first = written[loc.column - 1:loc.column]
        index = max(index, 0)
        row, col = source.count("\n", 0, index), index - (source.rfind("\n", 0, index) + 1)
        if first and first in "|>":  # a block scalar: its text starts on the next line
            at = loc.line + 1 + row
            body = lines[at - 1] if at <= len(lines) else ""
            return Location(loc.file, at, len(body) - len(body.lstrip(" ")) + col + 1)
        if row == 0:
            return Location(loc.file, loc.line, loc.column + (1 if first in ("'", '"') else 0) + col)
        return Location(loc.file, loc.line + row, col + 1)


@lru_cache(maxsize=4096)
def _facts(source: str, expression: bool) -> tuple[frozenset[str], tuple[tuple[str, str, str], ...], tuple[str, ...]]:
    """(free names, `name.field` uses, private attributes read) of a template, once per distinct
    text: the same few are written in thousands of rules."""
    tree, names = template_names(source, expression)
    private = tuple(sorted({n.attr for n in tree.find_all(nodes.Getattr) if n.attr.startswith("_")}))
    return names - GLOBALS, tuple(_fields(tree)), private


def _fields(tree: nodes.Template) -> Iterator[tuple[str, str, str]]:
    """(name, field, a pattern finding it in the source) for `name.field` and `name['field']`."""
    for attr in tree.find_all(nodes.Getattr):
        if isinstance(attr.node, nodes.Name):
            base = attr.node.name
            yield base, attr.attr, rf"\b{re.escape(base)}\s*\.\s*{re.escape(attr.attr)}\b"
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.node, nodes.Name) and isinstance(item.arg, nodes.Const) and isinstance(item.arg.value, str):
            base, key = item.node.name, item.arg.value
            yield base, key, rf"\b{re.escape(base)}\s*\[\s*['\"]{re.escape(key)}"


def _find(source: str, pattern: str) -> int:
    found = re.search(pattern, source)
    return found.start() if found else 0


def _line_start(source: str, line: int) -> int:
    index = 0
    for _ in range(line):
        nxt = source.find("\n", index)
        if nxt < 0:
            break
        index = nxt + 1
    return index


def _syntax_hint(message: str, expression: bool) -> str:
    unknown = re.match(r"No (filter|test) named '([^']*)'", message)
    if unknown:
        kind, name = unknown.groups()
        known = sorted(FILTERS if kind == "filter" else TESTS)
        return f"{did_you_mean(name, known)}see the Jinja2 list of built-in {kind}s"
    if expression:
        return "a condition is one Jinja2 expression, e.g. `state == 'CRITICAL' and attempt >= 2`"
    return "write {{ expression }} for a value and {% tag %} … {% endtag %} for logic; close every brace"

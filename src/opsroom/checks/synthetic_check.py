"""What a synthetic check's steps may say, judged when the catalog loads, not when a probe runs.

Extraction sources (`json:`, `header:`, `regex:`) are parsed here into the forms the probe uses,
and every `{{ vars.NAME }}` of a step is compiled with the sandbox that renders it and its
names checked against the variables known by then: the check's `variables` and what earlier
steps extract. A typo or a variable used before the step that extracts it is a file:line
error at load (``check_synthetic_templates``), not a CRITICAL at three in the morning.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError, nodes

from opsroom.automation.templates import GLOBALS, is_template, template_names
from opsroom.catalog.catalog import Catalog, Location
from opsroom.catalog.errors import did_you_mean, dotted
from opsroom.catalog.schema import SyntheticCheck

# The stdlib's own regex parser (re._parser, untyped): reads a pattern's structure.
sre_parse: Any = importlib.import_module("re._parser")
KeyPath = tuple[str | int, ...]
Add = Callable[[Location | None, str, str], None]
Position = Callable[[Location | None, str, int], Location | None]

MAX_PATH_DEPTH = 32
# Python's re has no time limit and holds the event loop while it runs: an extract pattern runs
# over this much of the body at most, and patterns that can backtrack exponentially (a repeat
# inside a repeat) or rescan the body from every position (one starting with a long repeat,
# `.*x` or `(\d+)x`) are refused at load.
MAX_REGEX_INPUT = 64 * 1024
_LONG_REPEAT = 256
MAX_VALUE = 4096  # an extracted value longer than this is cut: it only travels into later requests

_SEG = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\['([^'\\\[\]]*)'\]|\[\"([^\"\\\[\]]*)\"\]")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
PathPart = str | int


@dataclass(frozen=True, slots=True)
class Extractor:
    kind: str  # json | header | regex
    arg: str  # the JSONPath, header name or pattern as written
    path: tuple[PathPart, ...] = ()
    pattern: re.Pattern[str] | None = None


@functools.lru_cache(maxsize=1024)
def parse_json_path(expr: str) -> tuple[PathPart, ...]:
    """`$.a.b[0]['c-d']` -> ("a", "b", 0, "c-d"). JSON keys and list indexes only: no wildcards,
    filters, scripts or recursive descent, and nothing that reads a Python object's attributes."""
    expr = expr.strip()
    if not expr.startswith("$"):
        raise ValueError(f"JSONPath {expr!r} must start with $, e.g. $.data.token")
    parts: list[PathPart] = []
    pos = 1
    while pos < len(expr):
        m = _SEG.match(expr, pos)
        if m is None:
            raise ValueError(f"JSONPath {expr!r}: cannot read {expr[pos:]!r}; write .key, ['key'] or [index] "
                             "(wildcards, filters and .. are not supported)")
        name, index, single, double = m.groups()
        part: PathPart = int(index) if index is not None else (name or single or double or "")
        if isinstance(part, str) and part.startswith("__"):
            raise ValueError(f"JSONPath {expr!r}: {part!r} looks like Python attribute access; "
                             "a path reads JSON keys only")
        parts.append(part)
        pos = m.end()
    if len(parts) > MAX_PATH_DEPTH:
        raise ValueError(f"JSONPath {expr!r} is deeper than {MAX_PATH_DEPTH} levels")
    return tuple(parts)


_MISSING = object()


def json_lookup(doc: Any, path: tuple[PathPart, ...]) -> Any:
    """The value at `path`, or _MISSING; only dict keys and list items are ever read."""
    for part in path:
        if isinstance(part, int):
            if not isinstance(doc, list) or not -len(doc) <= part < len(doc):
                return _MISSING
            doc = doc[part]
        else:
            if not isinstance(doc, dict) or part not in doc:
                return _MISSING
            doc = doc[part]
    return doc


def is_missing(value: Any) -> bool:
    return value is _MISSING


def _nested_repeat(items: Any, inside: bool) -> bool:
    """Whether a parsed pattern has an unbounded-ish repeat inside another repeat: `(a+)+`, `(a*)*`."""
    for op, av in items:
        if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT):
            _lo, hi, sub = av
            repeats = hi > 1 and op != sre_parse.POSSESSIVE_REPEAT
            if repeats and inside:
                return True
            if _nested_repeat(sub, inside or repeats):
                return True
        elif op == sre_parse.SUBPATTERN:
            if _nested_repeat(av[-1], inside):
                return True
        elif op == sre_parse.BRANCH:
            if any(_nested_repeat(b, inside) for b in av[1]):
                return True
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT):
            if _nested_repeat(av[1], inside):
                return True
        elif op == sre_parse.ATOMIC_GROUP:
            if _nested_repeat(av, inside):
                return True
    return False


def _leading_repeat(items: Any) -> bool:
    """Whether a pattern can start with a long repeat: tried at every position of the body, each
    try scans on to the end (quadratic: 20 s for `(\\d+)x` over 64 KB of digits)."""
    if not items:
        return False
    op, av = next(iter(items))
    if op in (sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT):
        return bool(av[1] > _LONG_REPEAT)
    if op == sre_parse.SUBPATTERN:
        return _leading_repeat(av[-1])
    if op == sre_parse.ATOMIC_GROUP:
        return _leading_repeat(av)
    if op == sre_parse.BRANCH:
        return any(_leading_repeat(b) for b in av[1])
    return False


@functools.lru_cache(maxsize=1024)
def compile_safe_regex(pattern: str) -> re.Pattern[str]:
    """Compile a pattern a probe runs against a service's body; refuse catastrophic backtracking."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from exc
    parsed = sre_parse.parse(pattern)
    if _nested_repeat(parsed, False):
        raise ValueError(f"{pattern!r} repeats a repeated group (like (a+)+), which can take exponential "
                         "time on a hostile body; rewrite it without the nested repeat")
    if _leading_repeat(parsed):
        raise ValueError(f"{pattern!r} starts with a repeat, which rescans the body from every position; "
                         "start it with the literal text before the value, e.g. token=(\\w+)")
    return compiled


@functools.lru_cache(maxsize=1024)
def parse_extract(source: str) -> Extractor:
    """`json:$.a.b`, `header:X-Request-Id` or `regex:id=(\\d+)`; ValueError says what is wrong."""
    kind, sep, arg = source.partition(":")
    if not sep or kind not in ("json", "header", "regex"):
        raise ValueError(f"{source!r} must start with json:, header: or regex:")
    if kind == "json":
        return Extractor(kind, arg, path=parse_json_path(arg))
    if kind == "header":
        name = arg.strip()
        if not _HEADER_NAME.match(name):
            raise ValueError(f"header:{arg!r} is not a header name (letters, digits and -)")
        return Extractor(kind, name)
    compiled = compile_safe_regex(arg)
    if compiled.groups < 1:
        raise ValueError(f"regex:{arg!r} has no group; the value is the first group, e.g. regex:id=(\\d+)")
    return Extractor(kind, arg, pattern=compiled)


def template_strings(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    """Every string inside a json_body (dict values and list items; keys are sent as written)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from template_strings(v, (*path, str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from template_strings(v, (*path, i))


@dataclass(frozen=True, slots=True)
class Problem:
    path: KeyPath
    source: str  # the value written at path (for the column)
    index: int  # where in it the problem is
    message: str
    hint: str


def synthetic_problems(check: SyntheticCheck) -> Iterator[Problem]:
    """Everything in a synthetic check that would fail when it runs, step by step."""
    known: dict[str, str] = {name: "the check's variables" for name in check.variables}
    later: dict[str, int] = {}
    for i, st in enumerate(check.steps):
        for name in st.extract:
            later.setdefault(name, i + 1)
    seen: dict[str, int] = {}
    for i, st in enumerate(check.steps):
        step = ("steps", i)
        if st.name in seen:
            yield Problem((*step, "name"), st.name, 0, f"step {i + 1} has the same name as step {seen[st.name]}",
                          "step names are named in results and perfdata; make each unique")
        seen.setdefault(st.name, i + 1)
        values: list[tuple[KeyPath, str]] = [((*step, "url"), st.url)]
        values += [((*step, "headers", k), v) for k, v in st.headers.items()]
        if st.body is not None:
            values.append(((*step, "body"), st.body))
        values += list(template_strings(st.json_body, (*step, "json_body")))
        for path, source in values:
            yield from _template_problems(path, source, known, later, i + 1)
        if not is_template(st.url) and not re.match(r"^https?://", st.url):
            yield Problem((*step, "url"), st.url, 0, "url must start with http:// or https://",
                          "write the full address, e.g. https://shop.example/login")
        for key in st.headers:
            if not _HEADER_NAME.match(key):
                yield Problem((*step, "headers", key), key, 0, f"{key!r} is not a header name",
                              "a header name is letters, digits and -")
        for field in ("body_match", "body_not_match"):
            pattern = getattr(st, field)
            if pattern is not None:
                try:
                    compile_safe_regex(pattern)
                except ValueError as exc:
                    yield Problem((*step, field), pattern, 0, str(exc), "simplify the pattern")
        for name, source in st.extract.items():
            try:
                parse_extract(source)
            except ValueError as exc:
                yield Problem((*step, "extract", name), source, 0, f"extract {name}: {exc}",
                              "json:$.key.list[0], header:Name or regex:text=(group)")
            known.setdefault(name, f"step {i + 1}")


def _template_problems(path: KeyPath, source: str, known: dict[str, str], later: dict[str, int],
                       step: int) -> Iterator[Problem]:
    if not is_template(source):
        return
    try:
        tree, names = template_names(source)
    except TemplateSyntaxError as exc:
        yield Problem(path, source, 0, f"template {source!r} does not compile: {exc.message}",
                      "write {{ vars.NAME }}; close every brace")
        return
    for var in sorted(names - GLOBALS - {"vars"}):
        yield Problem(path, source, _find(source, rf"(?<![\w.]){re.escape(var)}\b"),
                      f"uses '{var}'; a synthetic step's templates can see only vars",
                      f"write {{{{ vars.{var} }}}} for a variable")
    for attr in sorted({n.attr for n in tree.find_all(nodes.Getattr) if n.attr.startswith("_")}):
        yield Problem(path, source, _find(source, rf"(?<=\.){re.escape(attr)}\b"),
                      f"reads '{attr}', a private attribute the sandbox refuses", "use vars.NAME only")
    for name, pattern in _var_fields(tree):
        if name in known:
            continue
        if later.get(name) == step:
            message = f"uses vars.{name}, which step {step} extracts from its own response (known from the next step)"
        elif name in later:
            message = f"uses vars.{name}, which step {later[name]} extracts, after this step ({step})"
        else:
            message = f"uses vars.{name}, which is neither a variable of the check nor extracted by a step"
        yield Problem(path, source, _find(source, pattern), message,
                      f"{did_you_mean(name, list(known))}known here: {', '.join(known) or 'none'}")


def _var_fields(tree: nodes.Template) -> Iterator[tuple[str, str]]:
    for attr in tree.find_all(nodes.Getattr):
        if isinstance(attr.node, nodes.Name) and attr.node.name == "vars":
            yield attr.attr, rf"\bvars\s*\.\s*{re.escape(attr.attr)}\b"
    for item in tree.find_all(nodes.Getitem):
        if (isinstance(item.node, nodes.Name) and item.node.name == "vars" and isinstance(item.arg, nodes.Const)
                and isinstance(item.arg.value, str)):
            yield item.arg.value, rf"\bvars\s*\[\s*['\"]{re.escape(item.arg.value)}"


def _find(source: str, pattern: str) -> int:
    found = re.search(pattern, source)
    return found.start() if found else 0


def check_synthetic_templates(catalog: Catalog, add: Add, position: Position) -> None:
    """Report every synthetic check's problems at the value's file:line:column (catalog load)."""
    for name, check in catalog.checks.items():
        if not isinstance(check, SyntheticCheck):
            continue
        for p in synthetic_problems(check):
            loc = catalog.locate("check", name, *map(str, p.path))
            add(position(loc, p.source, p.index), f"check '{name}': {dotted(p.path)}: {p.message}", p.hint)

"""Sandboxed Jinja2 for templated argv elements, rule params and conditions.

Each template renders to exactly one string; an argv element can never turn
into several arguments or reach a shell, whatever a parameter contains.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment

from opsroom.errors import Invalid

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


@lru_cache(maxsize=4096)
def _compile(source: str) -> Any:
    return _env.from_string(source)


@lru_cache(maxsize=1024)
def _compile_expr(source: str) -> Any:
    return _env.compile_expression(source)


# Names every template may use besides its context (range, dict, namespace, ...).
GLOBALS = frozenset(_env.globals)
FILTERS = frozenset(_env.filters)
TESTS = frozenset(_env.tests)


def is_template(source: str) -> bool:
    """Whether render() treats `source` as a template (a literal is used as it is)."""
    return "{" in source


def parse_template(source: str) -> nodes.Template:
    """The template's syntax tree, after compiling it as render() will (unknown filters and
    tests fail here too). Raises jinja2.TemplateSyntaxError: for checking a catalog at load."""
    _compile(source)
    return _env.parse(source)


def parse_expression(source: str) -> nodes.Template:
    """A condition's syntax tree, wrapped as a one-output template so jinja2.meta can read it.
    Raises jinja2.TemplateSyntaxError, as evaluate() would at the worst moment."""
    _compile_expr(source)
    parser = Parser(_env, source, state="variable")
    expr = parser.parse_expression()
    tree = nodes.Template([nodes.Output([expr], lineno=1)], lineno=1)
    tree.set_environment(_env)
    return tree


@lru_cache(maxsize=4096)
def template_names(source: str, expression: bool = False) -> tuple[nodes.Template, frozenset[str]]:
    """(syntax tree, names it reads from its context) of a template or condition, worked out once
    per distinct text: a catalog repeats the same few across thousands of rules and checks, and
    jinja2.meta compiles the whole template to find the names. The tree is shared: read it only.
    Raises jinja2.TemplateSyntaxError as parse_template and parse_expression do."""
    tree = parse_expression(source) if expression else parse_template(source)
    return tree, frozenset(meta.find_undeclared_variables(tree))


# What a template that compiled can still raise with the values it meets: `attempt > 'x'`
# (TypeError), `1 / 0`, `'a' | int(base=99)`. Loading checks names and syntax; these are
# only known at run time, and must reach the caller as a clear error, not a crashed handler.
_RENDER_ERRORS = (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError)


def render(source: str, context: dict[str, Any]) -> str:
    if not is_template(source):
        return source  # the common case: a literal argv element
    try:
        return str(_compile(source).render(context))
    except _RENDER_ERRORS as exc:
        raise Invalid(f"template {source!r} failed: {exc}", hint="check the names used inside {{ }}") from exc


def evaluate(expression: str, context: dict[str, Any]) -> bool:
    try:
        return bool(_compile_expr(expression)(**context))
    except _RENDER_ERRORS as exc:
        raise Invalid(f"condition {expression!r} failed: {exc}", hint="check the names in the condition") from exc

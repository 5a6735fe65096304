"""Sandboxed Jinja2 for templated argv elements, rule params and conditions.

Each template renders to exactly one string; an argv element can never turn
into several arguments or reach a shell, whatever a parameter contains.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from opsroom.errors import Invalid

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


@lru_cache(maxsize=4096)
def _compile(source: str) -> Any:
    return _env.from_string(source)


@lru_cache(maxsize=1024)
def _compile_expr(source: str) -> Any:
    return _env.compile_expression(source)


def render(source: str, context: dict[str, Any]) -> str:
    if "{" not in source:
        return source  # the common case: a literal argv element
    try:
        return str(_compile(source).render(context))
    except TemplateError as exc:
        raise Invalid(f"template {source!r} failed: {exc}", hint="check the names used inside {{ }}") from exc


def evaluate(expression: str, context: dict[str, Any]) -> bool:
    try:
        return bool(_compile_expr(expression)(**context))
    except TemplateError as exc:
        raise Invalid(f"condition {expression!r} failed: {exc}", hint="check the names in the condition") from exc

"""Validate and canonicalise runbook parameters before anything runs."""

from __future__ import annotations

import difflib
import re
from typing import Any

from opsroom.catalog.catalog import Catalog
from opsroom.catalog.schema import Runbook
from opsroom.errors import Invalid


def usage(runbook: Runbook) -> str:
    parts = [f"run {runbook.name}"]
    for name, p in runbook.parameters.items():
        shown = f"{name}=<{p.type if not p.choices else '|'.join(p.choices)}>"
        parts.append(shown if p.required and p.default is None else f"[{shown}]")
    return " ".join(parts)


def validate(catalog: Catalog, runbook: Runbook, given: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in given:
        if key not in runbook.parameters:
            close = difflib.get_close_matches(key, list(runbook.parameters), n=1)
            raise Invalid(f"runbook {runbook.name} has no parameter {key!r}",
                          hint=(f"did you mean {close[0]!r}? " if close else "") + f"usage: {usage(runbook)}")
    for name, spec in runbook.parameters.items():
        value = given.get(name)
        if value is None or value == "":
            if spec.default is not None:
                value = spec.default
            elif spec.required:
                raise Invalid(f"missing parameter {name!r} for runbook {runbook.name}",
                              hint=f"usage: {usage(runbook)}")
            else:
                continue
        out[name] = _coerce(catalog, runbook, name, value)
    return out


def _coerce(catalog: Catalog, runbook: Runbook, name: str, value: Any) -> Any:
    spec = runbook.parameters[name]
    text = str(value).strip()
    if spec.type == "int":
        try:
            result: Any = int(text)
        except ValueError:
            raise Invalid(f"parameter {name!r} must be a whole number, not {text!r}",
                          hint=f"usage: {usage(runbook)}") from None
    elif spec.type == "bool":
        if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise Invalid(f"parameter {name!r} must be true or false, not {text!r}", hint=f"usage: {usage(runbook)}")
        result = text.lower() in ("true", "yes", "1")
    elif spec.type == "service":
        found, suggestions = catalog.find_service(text)
        if found is None:
            hint = f"did you mean {' or '.join(suggestions)}?" if suggestions else \
                f"known services: {', '.join(sorted(catalog.services))}"
            raise Invalid(f"I don't know a service called {text!r}", hint=hint)
        result = found
    else:
        result = text
    if spec.choices is not None and str(result) not in spec.choices:
        raise Invalid(f"parameter {name!r} must be one of {', '.join(spec.choices)}, not {text!r}",
                      hint=f"usage: {usage(runbook)}")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, str(result)):
        raise Invalid(f"parameter {name!r} value {text!r} does not match the pattern {spec.pattern}",
                      hint="nothing was run; fix the value and try again")
    return result

"""Validate and canonicalise runbook parameters before anything runs.

Every value is checked before it can reach an argv, a URL or a row: its length, that it
holds no control characters (a NUL cannot be passed to exec; escapes and newlines forge
lines in rooms and terminals) and, for strings, that it cannot be read as an option.
Errors name the parameter and what is wrong; they quote a value only when it is not secret.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from opsroom.catalog.catalog import Catalog
from opsroom.catalog.schema import Parameter, Runbook
from opsroom.errors import Invalid

# C0 controls but tab, DEL, C1 controls (0x9b is a one-byte terminal CSI).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_SHOWN = 60  # at most this much of an unknown name or a bad value is quoted back


def usage(runbook: Runbook) -> str:
    parts = [f"run {runbook.name}"]
    for name, p in runbook.parameters.items():
        shown = f"{name}=<{p.type if not p.choices else '|'.join(p.choices)}>"
        parts.append(shown if p.required and p.default is None else f"[{shown}]")
    return " ".join(parts)


def _quoted(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "…")


def validate(catalog: Catalog, runbook: Runbook, given: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in given:
        if key not in runbook.parameters:
            close = difflib.get_close_matches(key[:100], list(runbook.parameters), n=1)
            raise Invalid(f"runbook {runbook.name} has no parameter {_quoted(str(key))}",
                          hint=(f"did you mean {close[0]!r}? " if close else "") + f"usage: {usage(runbook)}")
    for name, spec in runbook.parameters.items():
        value = given.get(name)
        reviewed = False
        if value is None or value == "":
            if spec.default is not None:
                value, reviewed = spec.default, True  # the catalog's own default: reviewed, not input
            elif spec.required:
                raise Invalid(f"missing parameter {name!r} for runbook {runbook.name}",
                              hint=f"usage: {usage(runbook)}")
            else:
                continue
        out[name] = _coerce(catalog, runbook, name, value, reviewed=reviewed)
    return out


def _check_text(runbook: Runbook, name: str, spec: Parameter, text: str) -> None:
    """Length and characters, before the value is coerced or matched."""
    if len(text) > spec.max_length:
        raise Invalid(f"parameter {name!r} is {len(text)} characters long; the limit is {spec.max_length}",
                      hint=f"shorten it, or raise `max_length` of parameter {name} in runbook {runbook.name}")
    bad = _CONTROL.search(text)
    if bad is not None:
        raise Invalid(f"parameter {name!r} holds a control character (U+{ord(bad.group()):04X}) "
                      f"at position {bad.start() + 1}",
                      hint="parameters are one line of text: remove NULs, newlines and escape characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Invalid(f"parameter {name!r} is not valid text (a lone surrogate at position {exc.start + 1})",
                      hint="send the value as UTF-8") from None


def _check_option(runbook: Runbook, name: str, spec: Parameter, text: str) -> None:
    if spec.type == "string" and text.startswith("-") and not spec.allow_options:
        raise Invalid(f"parameter {name!r} starts with '-', so a command would read it as an option",
                      hint=f"if runbook {runbook.name} passes it where an option is meant, set "
                           f"`allow_options: true` on the parameter; otherwise put `--` before it "
                           "in the step's command")


def _coerce(catalog: Catalog, runbook: Runbook, name: str, value: Any, *, reviewed: bool = False) -> Any:
    spec = runbook.parameters[name]
    raw = str(value)
    _check_text(runbook, name, spec, raw)
    text = raw.strip()
    if not reviewed:
        _check_option(runbook, name, spec, text)  # on the stripped value: " -la" is "-la"
    # A secret's value is never quoted back: errors go to rooms, logs and the audit log.
    shown = "the value given" if spec.secret else _quoted(text)
    if spec.type == "int":
        try:
            result: Any = int(text)
        except ValueError:
            raise Invalid(f"parameter {name!r} must be a whole number, not {shown}",
                          hint=f"usage: {usage(runbook)}") from None
    elif spec.type == "bool":
        if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise Invalid(f"parameter {name!r} must be true or false, not {shown}", hint=f"usage: {usage(runbook)}")
        result = text.lower() in ("true", "yes", "1")
    elif spec.type == "service":
        found, suggestions = catalog.find_service(text)
        if found is None:
            hint = f"did you mean {' or '.join(suggestions)}?" if suggestions and not spec.secret else \
                f"known services: {', '.join(sorted(catalog.services))}"
            raise Invalid(f"I don't know a service called {shown}", hint=hint)
        result = found
    else:
        result = text
    if spec.choices is not None and str(result) not in spec.choices:
        raise Invalid(f"parameter {name!r} must be one of {', '.join(spec.choices)}, not {shown}",
                      hint=f"usage: {usage(runbook)}")
    if spec.pattern is not None and not re.fullmatch(spec.pattern, str(result)):
        subject = f"parameter {name!r}" if spec.secret else f"parameter {name!r} value {shown}"
        raise Invalid(f"{subject} does not match the pattern {spec.pattern}",
                      hint="nothing was run; fix the value and try again")
    return result

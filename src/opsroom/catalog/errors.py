"""Catalog problems as people read them: file:line:column, what is wrong, and how to fix it.

Also turns pydantic and PyYAML errors into that vocabulary, so the loader only has to
say *where* a problem is.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from opsroom.catalog.catalog import Location
from opsroom.catalog.durations import HINT as DURATION_HINT

MAX_PROBLEMS = 100
YAML_HINT = "check indentation and that every `key: value` has a space after the colon"


@dataclass(frozen=True)
class Problem:
    location: Location | None
    message: str
    hint: str = ""

    def render(self) -> str:
        head = f"{self.location}: error: {self.message}" if self.location else f"error: {self.message}"
        return f"{head}\n    hint: {self.hint}" if self.hint else head


class CatalogError(Exception):
    """Every problem found in a catalog, so one edit-reload cycle can fix them all."""

    def __init__(self, problems: list[Problem], truncated: bool = False) -> None:
        self.problems = problems
        self.truncated = truncated
        super().__init__(self.render())

    def render(self) -> str:
        blocks = [p.render() for p in self.problems]
        if self.truncated:
            blocks.append(f"note: stopped after {len(self.problems)} problems; fix these and reload")
        return "\n".join(blocks)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """'did you mean 'x'? ' or '' — the closest candidate by spelling."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def yaml_hint(problem: str) -> str:
    """A fix for PyYAML's most common complaints, which are accurate but cryptic."""
    if "\\t" in problem or "\t" in problem:
        return "indent with spaces; YAML does not allow tab characters for indentation"
    if "expected a single document" in problem:
        return "a catalog file holds one YAML document; remove the extra `---` or split it into two files"
    if "nested too deeply" in problem:
        return "an alias (*name) here points back into its own anchor (&name); copy the values instead"
    if "mapping values are not allowed" in problem:
        return "a value contains ': ' — quote it, or " + YAML_HINT
    return YAML_HINT


# --- pydantic errors ------------------------------------------------------

_TYPE_HINTS = {
    "string_type": "quote the value, e.g. \"…\"",
    "string_pattern_mismatch": "names use lowercase letters, digits, '-', '_' and '.', "
                               "starting with a letter or digit",
    "string_too_long": "names are at most 64 characters",
    "int_type": "write a whole number",
    "int_parsing": "write a whole number",
    "float_parsing": "write a number",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "list_type": "write a YAML list: [a, b] or one `- item` per line",
    "dict_type": "write a mapping: one `key: value` per line",
    "model_type": "write a mapping: one `key: value` per line",
    "too_short": "add at least one item",
}


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and `X | None` so the model class (if any) underneath shows."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def model_at(root: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` below `root`, to list its fields."""
    tp: Any = root
    for part in path:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def dotted(path: Sequence[str | int]) -> str:
    """('steps', 0, 'command') -> 'steps[0].command', the way people point at YAML."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def explain(
    err: ErrorDetails, model: type[BaseModel] | None, kind: str, tags: Sequence[str]
) -> tuple[tuple[str | int, ...], str, str]:
    """(path within the object, message, hint) for one pydantic error of one catalog object.

    `model` is the class that validated the object (for a check: the class its `type`
    selected, whose tag pydantic puts first in `loc`, already stripped by the caller).
    """
    path = tuple(p for p in err["loc"] if p != "[key]")
    etype = err["type"]
    if etype == "union_tag_invalid":
        tag = str((err.get("ctx") or {}).get("tag", ""))
        return ("type",), f"unknown {kind} type '{tag}'", (
            f"{did_you_mean(tag, tags)}valid types: {', '.join(tags)}")
    if etype == "union_tag_not_found":
        return (), "missing required field 'type'", (
            f"add `type: {tags[0]}` to this {kind} (valid types: {', '.join(tags)})")
    where = f" in {dotted(path[:-1])}" if len(path) > 1 else ""
    if etype == "extra_forbidden":
        field = str(path[-1])
        parent = model_at(model, path[:-1]) if model else None
        names = list(parent.model_fields) if parent else []
        listed = f"valid fields: {', '.join(names)}" if names else "remove it"
        return path, f"unknown field '{field}'{where}", f"{did_you_mean(field, names)}{listed}"
    if etype == "missing":
        field = str(path[-1])
        under = f"under `{dotted(path[:-1])}` of" if where else "to"
        return path, f"missing required field '{field}'{where}", f"add `{field}: …` {under} this {kind}"
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    hint = ""
    if DURATION_HINT in msg:
        msg, hint = msg.replace(f"; {DURATION_HINT}", ""), DURATION_HINT
    elif etype == "literal_error":
        hint = f"use one of: {(err.get('ctx') or {}).get('expected', '')}"
    else:
        hint = _TYPE_HINTS.get(etype, "")
    if not hint:
        hint = f"fix the value of `{dotted(path)}`" if path else f"fix this {kind} as the message says"
    prefix = f"{dotted(path)}: " if path else ""
    return path, f"{prefix}{msg[:1].lower()}{msg[1:]}", hint

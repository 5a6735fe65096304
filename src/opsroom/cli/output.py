"""How a remote command prints what the server answered: a table for people, JSON or YAML for scripts.

JSON and YAML print the API's objects as they came (so `-o json` parses like the API), with every
character outside ASCII escaped: an escape sequence in a runbook's output or a user's name cannot
reach the terminal through them. Tables pass each cell through `terminal.clean`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import yaml

from opsroom.cli.terminal import clean


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


Column = tuple[str, str | Callable[[dict[str, Any]], Any]]


def when(value: Any) -> str:
    """A time the API sent (ISO 8601, or seconds since the epoch from an older server) as UTC."""
    if value is None or value == "":
        return "-"
    try:
        if isinstance(value, int | float):
            moment = datetime.fromtimestamp(float(value), UTC)
        else:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        return clean(str(value))
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    text = clean(str(value)).replace("\n", " ").replace("\t", " ")
    return text if len(text) <= 80 else text[:79] + "…"


def dump(data: Any, fmt: Format) -> str:
    if fmt is Format.yaml:
        return str(yaml.safe_dump(data, allow_unicode=False, sort_keys=False, default_flow_style=False))
    return json.dumps(data, indent=2, ensure_ascii=True) + "\n"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    grid = [[h.upper() for h, _ in columns]]
    for row in rows:
        grid.append([cell(get(row) if callable(get) else row.get(get)) for _, get in columns])
    widths = [max(len(r[i]) for r in grid) for i in range(len(columns))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in grid)


def show(data: Any, fmt: Format, columns: Sequence[Column] | None = None,
         text: Callable[[Any], str] | None = None) -> None:
    """Print `data` as `fmt`; a table from `columns` (for a list) or `text(data)` (for one object)."""
    if fmt is not Format.table:
        out = dump(data, fmt)
    elif text is not None:
        out = text(data)
    elif columns is not None:
        rows = data if isinstance(data, list) else [data]
        out = table([r for r in rows if isinstance(r, dict)], columns) if rows else "(none)\n"
    else:
        out = dump(data, Format.yaml)
    sys.stdout.write(clean(out))
    sys.stdout.flush()


def fields(obj: dict[str, Any], names: Sequence[str]) -> str:
    """`name: value` lines of one object, times shown as UTC."""
    lines = []
    for name in names:
        if name in obj:
            value = obj[name]
            shown = when(value) if name.endswith("_at") or name in ("since",) else cell(value)
            lines.append(f"{name}: {shown}")
    return "\n".join(lines) + "\n"

"""Durations as people write them in YAML: 30, 30s, 500ms, 5m, 1h, 1h30m."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any

from pydantic import BeforeValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
HINT = "write a duration like 30s, 500ms, 5m or 1h (a bare number means seconds)"


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; {HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _text_seconds(value)
    else:
        raise ValueError(f"{value!r} is not a duration; {HINT}")
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero; {HINT}")
    return seconds


@lru_cache(maxsize=1024)
def _text_seconds(value: str) -> float:
    """Once per distinct text: a catalog writes the same few (30s, 5m) thousands of times."""
    text = value.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, seconds = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration; {HINT}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

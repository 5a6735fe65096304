"""Durations as people write them in the catalog."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from opsroom.catalog.durations import HINT, Duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (0.25, 0.25),
        ("30", 30.0),
        ("1.5", 1.5),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        (" 1h 30m ", 5400.0),
        ("10S", 10.0),
    ],
)
def test_parses(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2 parsecs", "", "abc", "30x", "5m30", "m5", "-5s", True, None, [30]])
def test_rejects_with_the_hint(text: Any) -> None:
    with pytest.raises(ValueError, match="is not a duration") as info:
        parse_duration(text)
    assert HINT in str(info.value)


@pytest.mark.parametrize("text", [0, "0s", "0"])
def test_rejects_zero(text: Any) -> None:
    with pytest.raises(ValueError, match="longer than zero"):
        parse_duration(text)


def test_duration_type_in_pydantic() -> None:
    adapter = TypeAdapter(Duration)
    assert adapter.validate_python("2m") == 120.0
    with pytest.raises(ValidationError, match="not a duration"):
        adapter.validate_python("soon")

"""What the integrity service answers (CLI, and the API when one is added)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ScanResult(BaseModel):
    site: str
    files: int
    new_changes: int
    created: bool = False  # this scan made the first baseline
    baseline_ok: bool = True
    quarantined: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    seconds: float = 0.0


class AcceptResult(BaseModel):
    site: str
    generation: int
    files: int
    cleared: list[str]


class ChangeOut(BaseModel):
    path: str
    kinds: list[str]
    first_at: float
    last_at: float
    old: dict[str, Any] | None
    new: dict[str, Any] | None


class Status(BaseModel):
    site: str
    baseline_ok: bool
    generation: int
    files: int
    updated_at: float | None
    updated_by: str | None
    trees: list[str]
    files_watched: list[str]
    changes: list[ChangeOut]
    quarantined: list[str]

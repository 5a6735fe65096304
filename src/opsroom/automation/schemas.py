"""JSON shapes of the rules API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from opsroom.web.apitypes import UtcTime


class RuleWhenOut(BaseModel):
    """What the rule reacts to: one check, service or system changing state, or alerts matching labels."""

    check: str | None = None
    service: str | None = None
    system: str | None = None
    alert: str | list[str] | None = Field(default=None, description="label matchers over a received alert")
    state: list[str] = Field(default_factory=list, description="the states it acts on")
    state_type: Literal["hard", "soft", "any"] = "hard"
    attempt: int | None = None
    condition: str | None = None


class RuleOut(BaseModel):
    name: str
    enabled: bool
    description: str | None
    when: RuleWhenOut
    runbook: str
    params: dict[str, str] = Field(description="the runbook's parameters, templates over the event")
    approval: str
    max_runs: int = Field(description="runs allowed per window")
    window_s: float
    cooldown_s: float
    runs_in_window: int
    last_run_at: UtcTime | None
    suspended: str | None = Field(description="why this server acts on no rule (another server runs them)")

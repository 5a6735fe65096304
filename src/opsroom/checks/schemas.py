"""JSON shapes of the status API: systems, services and their checks, as the rooms show them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from opsroom.alerts.schemas import AlertOut
from opsroom.web.apitypes import UtcTime

State = Literal["OK", "WARNING", "CRITICAL", "UNKNOWN", "PENDING"]


class CheckOut(BaseModel):
    """A check's last result; `state` is PENDING until its first result."""

    check: str
    service: str
    state: State
    state_type: Literal["soft", "hard"] | None = Field(description="soft: still retrying before it counts")
    attempt: int
    since: UtcTime | None = Field(description="when the check entered this state")
    flapping: bool
    output: str
    latency_ms: float | None
    checked_at: UtcTime | None
    age_s: float | None = Field(description="seconds since the last result")
    down: bool | None = Field(description="the probe could not reach its target at all")


class FailingCheckOut(BaseModel):
    check: str
    service: str
    state: State
    since: UtcTime | None
    down: bool
    output: str
    flapping: bool


class SystemOut(BaseModel):
    system: str
    title: str
    environment: str
    protected: bool = Field(description="its environment needs approval for runbooks")
    healthy: bool
    failing: list[FailingCheckOut] = Field(description="checks in a hard non-OK state")
    alerts: list[AlertOut]
    services: list[str]


class ServiceHealthOut(BaseModel):
    service: str
    state: State
    checks: list[CheckOut]
    alerts: list[AlertOut]


class SystemHealthOut(BaseModel):
    system: str
    title: str
    environment: str
    protected: bool
    healthy: bool
    services: list[ServiceHealthOut]
    alerts: list[AlertOut] = Field(description="firing alerts of the system that name no service")


class ServiceStatusOut(BaseModel):
    service: str
    environment: str
    protected: bool
    state: State = Field(description="the worst of its checks and counted alerts")
    running: bool = Field(description="what its checks see: OK or WARNING")
    checks: list[CheckOut]
    alerts: list[AlertOut]


class ServiceOut(BaseModel):
    """A service in the list: its state from the last results (no check is run for the list)."""

    service: str
    title: str | None
    system: str
    environment: str
    protected: bool
    state: State
    checks: list[str]

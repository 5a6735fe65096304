"""JSON shapes of the alerts API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from opsroom.web.apitypes import UtcTime


class SilenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # A service, a system, or label matchers (`alertname="DiskFull", team="db"`).
    what: str = Field(min_length=1, max_length=500)
    duration: str = Field(min_length=1, max_length=32, description="e.g. 30m, 1h, 2d")
    reason: str = Field(min_length=1, max_length=500)


class AlertOut(BaseModel):
    """An alert as the rooms show it: from a sender (Alertmanager, a webhook), placed on a service
    or system by its labels."""

    id: int
    source: str
    name: str
    status: str = Field(description="firing or resolved")
    severity: str | None
    state: str = Field(description="the check-like state it counts as: OK, WARNING, CRITICAL or UNKNOWN")
    summary: str
    labels: dict[str, str]
    service: str | None
    system: str | None
    environment: str | None
    since: UtcTime = Field(description="when it started firing (the sender's startsAt)")
    age_s: float
    ends_at: UtcTime | None
    url: str | None
    acked_by: str | None
    silenced_by: int | None = Field(description="the id of the silence that quiets it")


class AlertDetailOut(AlertOut):
    annotations: dict[str, str]
    repeats: int
    received_at: UtcTime
    last_seen_at: UtcTime


class ReceivedOut(BaseModel):
    """What one delivery from a sender did."""

    received: int
    fired: int
    resolved: int
    repeats: int
    stored: int
    stale: int


class SilenceOut(BaseModel):
    id: int
    what: str
    service: str | None
    system: str | None
    matchers: list[str]
    reason: str
    created_by: str
    starts_at: UtcTime
    ends_at: UtcTime
    pushed: list[str] = Field(description="`SOURCE: ID` of the silences made at the senders")


class SilenceChangeOut(SilenceOut):
    failed: list[str] = Field(description="senders the silence could not be pushed to or expired at")

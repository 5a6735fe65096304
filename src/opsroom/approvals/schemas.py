"""JSON shapes of the approvals API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from opsroom.web.apitypes import UtcTime


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "deny"]
    reason: str | None = Field(default=None, max_length=2000)


class ApprovalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    execution_id: int
    status: str
    roles: list[str]
    requester: str
    summary: str
    created_at: UtcTime
    expires_at: UtcTime
    decided_by: str | None
    decided_at: UtcTime | None
    reason: str | None

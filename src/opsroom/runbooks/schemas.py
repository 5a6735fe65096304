from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ParamValue = str | int | bool


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, ParamValue] = Field(default_factory=dict, description="runbook parameters")
    room: str | None = Field(default=None, description="room to report progress to")


class ExecutionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    runbook: str
    summary: str
    params: dict[str, Any]
    environment: str
    status: str
    requested_by: str
    door: str
    rule: str | None
    approval_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None


class ExecutionDetail(ExecutionOut):
    output: str


class RunbookOut(BaseModel):
    name: str
    title: str | None
    description: str | None
    parameters: dict[str, Any]
    approval: str
    content_hash: str

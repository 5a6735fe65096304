"""JSON shapes of the runbooks API: runbooks, run requests, executions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from opsroom.secrets.masking import mask, mask_obj
from opsroom.web.apitypes import UtcTime

ParamValue = str | int | bool


# Every status an execution can have (domain/execution.py; a test keeps the two the same).
ExecutionStatus = Literal["pending", "awaiting_approval", "running", "succeeded", "failed", "timed_out",
                          "interrupted", "denied", "expired", "cancelled"]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, ParamValue] = Field(default_factory=dict, description="runbook parameters")
    room: str | None = Field(default=None, description="room to report progress to")


class ExecutionOut(BaseModel):
    """An execution as responses show it: secret parameters are stored masked (sealed apart)."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    runbook: str
    summary: str
    params: dict[str, Any]
    environment: str
    status: ExecutionStatus
    requested_by: str
    door: str
    rule: str | None
    approval_id: int | None
    created_at: UtcTime
    started_at: UtcTime | None
    finished_at: UtcTime | None
    error: str | None
    catalog_hash: str | None = Field(default=None, description="the catalog version it was requested under")

    # The last sink before a response: whatever secret value this process knows is masked
    # even if it reached a stored field some other way.
    @field_validator("summary", "error", "params", mode="after")
    @classmethod
    def _masked(cls, v: Any) -> Any:
        return mask_obj(v)


class ExecutionDetail(ExecutionOut):
    output: str

    @field_validator("output", mode="after")
    @classmethod
    def _masked_output(cls, v: str) -> str:
        return mask(v)


class ParameterOut(BaseModel):
    """A runbook parameter as a form or a client needs it; a secret's default is masked."""

    type: Literal["string", "int", "bool", "service", "choice"]
    description: str | None
    required: bool
    default: str | int | float | bool | None
    choices: list[str] | None
    pattern: str | None
    secret: bool
    max_length: int
    allow_options: bool = Field(description="a value may start with '-'")


class RunbookOut(BaseModel):
    name: str
    title: str | None
    description: str | None
    parameters: dict[str, ParameterOut]
    approval: str = Field(description="none, auto (approval in protected environments) or `role A, B`")
    content_hash: str

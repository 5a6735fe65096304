from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from opsroom.secrets.masking import mask, mask_obj

ParamValue = str | int | bool


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
    status: str
    requested_by: str
    door: str
    rule: str | None
    approval_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None


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


class RunbookOut(BaseModel):
    name: str
    title: str | None
    description: str | None
    parameters: dict[str, Any]
    approval: str
    content_hash: str

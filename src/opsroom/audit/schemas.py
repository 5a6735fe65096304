from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditRecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    seq: int
    at: float
    actor: str
    door: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any]
    correlation_id: str | None
    hash: str


class VerifyOut(BaseModel):
    ok: bool
    records: int
    broken_seq: int | None
    reason: str | None

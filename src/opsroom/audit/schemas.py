"""JSON shapes of the audit API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from opsroom.web.apitypes import UtcTime


class AuditRecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    seq: int
    at: UtcTime
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
    checkpoints: int = 0  # signed checkpoints found off the database and checked against the chain
    bad_checkpoint: str | None = None  # the checkpoint file at fault, when one is

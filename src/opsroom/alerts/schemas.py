from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SilenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # A service, a system, or label matchers (`alertname="DiskFull", team="db"`).
    what: str = Field(min_length=1, max_length=500)
    duration: str = Field(min_length=1, max_length=32, description="e.g. 30m, 1h, 2d")
    reason: str = Field(min_length=1, max_length=500)

"""Live streams over Server-Sent Events: a room's messages and an execution's output."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["streams"])

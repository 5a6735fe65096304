"""JSON API: the catalog (its version, and reloading it)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["catalog"])

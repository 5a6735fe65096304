"""JSON API: rooms and their messages. Thin: parse, call the service layer, return."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["rooms"])

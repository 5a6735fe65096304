"""Execution lifecycle (DESIGN 5c), pure: which status may follow which."""

from __future__ import annotations

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"awaiting_approval", "running", "failed"}),
    "awaiting_approval": frozenset({"pending", "running", "denied", "expired"}),
    "running": frozenset({"succeeded", "failed", "timed_out", "interrupted"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "timed_out": frozenset(),
    "interrupted": frozenset(),
    "denied": frozenset(),
    "expired": frozenset(),
}
FINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
ACTIVE = frozenset({"pending", "awaiting_approval", "running"})


def can_transition(old: str, new: str) -> bool:
    return new in TRANSITIONS.get(old, frozenset())

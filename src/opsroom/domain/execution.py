"""Execution lifecycle (DESIGN 5c), pure: which status may follow which."""

from __future__ import annotations

TRANSITIONS: dict[str, frozenset[str]] = {
    # interrupted: an approved run a dead server never started (recovery frees its lock key).
    # cancelled: stopped by its requester, an approver or an admin (runbooks/service.cancel_execution).
    "pending": frozenset({"awaiting_approval", "running", "failed", "interrupted", "cancelled"}),
    "awaiting_approval": frozenset({"pending", "running", "denied", "expired", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "timed_out", "interrupted", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "timed_out": frozenset(),
    "interrupted": frozenset(),
    "denied": frozenset(),
    "expired": frozenset(),
    "cancelled": frozenset(),
}
ACTIVE = frozenset({"pending", "awaiting_approval", "running"})


def can_transition(old: str, new: str) -> bool:
    return new in TRANSITIONS.get(old, frozenset())


class IllegalTransition(ValueError):
    """A status change the lifecycle does not allow: a bug, never input to recover from."""


def advance(old: str, new: str) -> str:
    """The new status, if the lifecycle allows it; every status change goes through here."""
    if not can_transition(old, new):
        raise IllegalTransition(f"an execution cannot go from {old} to {new}")
    return new

"""Typed events: every announcement, timeline entry and metric follows one of these.

Each event carries an id, a time, a source and a correlation id (the check or
alert that started the chain) so one incident can be followed through every step.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

_ids = itertools.count(1)


@dataclass(kw_only=True)
class Event:
    type: ClassVar[str] = "event"
    id: int = field(default_factory=lambda: next(_ids))
    at: float = field(default_factory=time.time)
    source: str = "opsroom"
    correlation_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["type"] = self.type
        return data


@dataclass(kw_only=True)
class CheckStateChanged(Event):
    type: ClassVar[str] = "check.state_changed"
    check: str
    service: str | None
    system: str | None
    environment: str
    old_state: str
    new_state: str
    state_type: str  # soft | hard
    attempt: int
    max_attempts: int
    output: str
    since: float
    down: bool = False  # the probe could not reach the thing at all


@dataclass(kw_only=True)
class CheckFlapping(Event):
    type: ClassVar[str] = "check.flapping"
    check: str
    system: str | None
    environment: str
    flapping: bool
    change_ratio: float


@dataclass(kw_only=True)
class SystemHealthChanged(Event):
    type: ClassVar[str] = "system.health_changed"
    system: str
    title: str
    environment: str
    protected: bool
    healthy: bool
    # (check, service, state, since, down) of each failing check, for the message.
    failing: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class ApprovalRequested(Event):
    type: ClassVar[str] = "approval.requested"
    approval_id: int
    execution_id: int
    runbook: str
    summary: str
    environment: str
    protected: bool
    roles: list[str]
    requester: str
    approvers: list[str]
    expires_at: float
    room: str | None = None


@dataclass(kw_only=True)
class ApprovalDecided(Event):
    type: ClassVar[str] = "approval.decided"
    approval_id: int
    execution_id: int
    runbook: str
    decision: str  # approved | denied | expired
    decided_by: str | None
    reason: str | None = None
    room: str | None = None


@dataclass(kw_only=True)
class ExecutionStarted(Event):
    type: ClassVar[str] = "execution.started"
    execution_id: int
    runbook: str
    summary: str
    environment: str
    triggered_by: str
    door: str
    rule: str | None = None
    room: str | None = None


@dataclass(kw_only=True)
class ExecutionOutput(Event):
    type: ClassVar[str] = "execution.output"
    execution_id: int
    runbook: str
    step: str
    text: str
    room: str | None = None


@dataclass(kw_only=True)
class ExecutionFinished(Event):
    type: ClassVar[str] = "execution.finished"
    execution_id: int
    runbook: str
    summary: str
    status: str  # succeeded | failed | timed_out | interrupted
    duration_s: float
    message: str
    rule: str | None = None
    error: str | None = None
    room: str | None = None


@dataclass(kw_only=True)
class RuleTriggered(Event):
    type: ClassVar[str] = "rule.triggered"
    rule: str
    runbook: str
    summary: str
    check: str
    system: str | None
    execution_id: int | None
    needs_approval: bool
    room: str | None = None


@dataclass(kw_only=True)
class RuleHeld(Event):
    """A rule matched but its policy held it back (rate limit, cooldown, flapping)."""

    type: ClassVar[str] = "rule.held"
    rule: str
    check: str
    reason: str


@dataclass(kw_only=True)
class RuleEscalated(Event):
    type: ClassVar[str] = "rule.escalated"
    rule: str
    check: str
    system: str | None
    reason: str


@dataclass(kw_only=True)
class RoomPresence(Event):
    type: ClassVar[str] = "room.presence"
    room: str
    person: str
    joined: bool


@dataclass(kw_only=True)
class RoomMessagePosted(Event):
    """A message was said in a room (by a person or by the bot)."""

    type: ClassVar[str] = "room.message"
    room: str
    message_id: int
    author: str
    text: str
    kind: str  # person | bot | notice
    reply_to: int | None = None


@dataclass(kw_only=True)
class AccessChanged(Event):
    """A person's access ended or shrank: logout, new password, disabled, roles changed, token revoked.

    Open doors (WebSockets, chat sessions) that act for this user drop or re-check at once;
    `session_hash` narrows a logout to that one session (sha256 of its token).
    """

    type: ClassVar[str] = "access.changed"
    user_id: int
    user: str
    reason: str  # logout | password | disabled | roles | token_revoked | chat_unlinked
    session_hash: str | None = None


def event_types() -> dict[str, type[Event]]:
    """Every event class by its type name (for the outbox, which stores events as JSON)."""
    found: dict[str, type[Event]] = {}
    stack: list[type[Event]] = [Event]
    while stack:
        cls = stack.pop()
        found[cls.type] = cls
        stack.extend(cls.__subclasses__())
    return found


def event_from_dict(data: dict[str, Any]) -> Event:
    cls = event_types()[data["type"]]
    fields = {k: v for k, v in data.items() if k not in ("type", "id")}
    return cls(**fields)

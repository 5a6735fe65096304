"""Typed events: every announcement, timeline entry and metric follows one of these.

Each event carries an id, a time, a source and a correlation id (the check or
alert that started the chain) so one incident can be followed through every step.
`id` numbers events within one process (SSE streams resume by it); `uid` is the event's
stable id everywhere (a UUIDv7, so it sorts by time) and `origin` the node that wrote it to
the durable log (eventlog/log.py; None until then).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

_ids = itertools.count(1)


def uuid7(*, at: float | None = None, key: str | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits (Python 3.11 has none).

    With `at` and `key` it is the same every time for the same pair (its "random" bits are a hash
    of `key`): an event that two code paths build from one row (ExecutionStarted) has one uid."""
    ms = time.time_ns() // 1_000_000 if at is None else int(at * 1000)
    rand = int.from_bytes(os.urandom(10) if key is None else hashlib.sha256(key.encode()).digest()[:10], "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 \
        | rand & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(kw_only=True)
class Event:
    type: ClassVar[str] = "event"
    id: int = field(default_factory=lambda: next(_ids))
    uid: str = field(default_factory=lambda: uuid7())
    at: float = field(default_factory=time.time)
    source: str = "opsroom"
    correlation_id: str | None = None
    origin: str | None = None  # the node that wrote it to the log (set by eventlog.log.append)

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
    decision: str  # approved | denied | expired | cancelled (its execution was cancelled while it waited)
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
class ExecutionReady(Event):
    """Execution N may start now, on this server: bus only, never in the log (the row is the record).

    Published after the commit that made it so: a run request_run stored running and owned by
    this server (`claimed`: the row's columns, so the executor starts it without reading it
    again), or an approved one (the executor moves it to running). The executor listens; where
    none runs, the row stays as it is and recovery closes it (runbooks/service.py).
    """

    type: ClassVar[str] = "execution.ready"
    execution_id: int
    claimed: dict[str, Any] | None = None


@dataclass(kw_only=True)
class ExecutionCancelRequested(Event):
    """Someone asked to stop a running execution: logged with the audit record of the request, so
    the server running it (`owner`) stops its steps wherever the request was made; its end then
    comes as an ExecutionFinished."""

    type: ClassVar[str] = "execution.cancel_requested"
    execution_id: int
    runbook: str
    by: str
    owner: str | None = None
    room: str | None = None


@dataclass(kw_only=True)
class CatalogReloaded(Event):
    """This server runs a new catalog (bus only: each server reloads its own). Published right
    after the swap, before any await, so engines that listen follow it in the same step of the
    event loop; `changed`: the kinds (checks, rooms, ...) with anything added, removed or changed."""

    type: ClassVar[str] = "catalog.reloaded"
    old_hash: str
    new_hash: str
    by: str
    changed: list[str] = field(default_factory=list)


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
class AlertFired(Event):
    """An alert from outside started firing (once per occurrence, never for a repeat)."""

    type: ClassVar[str] = "alert.fired"
    alert_id: int
    alert_source: str
    name: str
    severity: str | None
    summary: str
    labels: dict[str, str]
    annotations: dict[str, str]
    service: str | None
    system: str | None
    environment: str | None
    starts_at: float
    url: str | None = None
    silenced: bool = False  # a silence covers it: stored and shown, not announced, no rule runs


@dataclass(kw_only=True)
class AlertResolved(Event):
    type: ClassVar[str] = "alert.resolved"
    alert_id: int
    alert_source: str
    name: str
    service: str | None
    system: str | None
    environment: str | None
    starts_at: float
    ends_at: float
    silenced: bool = False


@dataclass(kw_only=True)
class AlertsNoticed(Event):
    """What one delivery of alerts changed for one system (or for no system): one room notice.

    `fired` and `resolved` hold (id, name, severity, service, summary, since) of each alert, so an
    Alertmanager group of ten is one message, not ten.
    """

    type: ClassVar[str] = "alert.noticed"
    system: str | None
    environment: str | None
    fired: list[dict[str, Any]] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)


@dataclass(kw_only=True)
class AlertAcknowledged(Event):
    type: ClassVar[str] = "alert.acknowledged"
    alert_id: int
    name: str
    by: str
    system: str | None
    room: str | None = None


@dataclass(kw_only=True)
class SilenceChanged(Event):
    """A silence was created or removed here (and pushed to the senders that keep their own)."""

    type: ClassVar[str] = "alert.silence"
    silence_id: int
    what: str  # "service-b", or the matchers
    by: str
    active: bool
    ends_at: float
    reason: str
    system: str | None
    pushed: list[str] = field(default_factory=list)  # "prometheus: <silence id>" per sender
    failed: list[str] = field(default_factory=list)  # "prometheus: why" per sender it could not reach
    room: str | None = None


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


_FIELD_TYPES: dict[type[Event], dict[str, Any]] = {}


def _field_types(cls: type[Event]) -> dict[str, Any]:
    known = _FIELD_TYPES.get(cls)
    if known is None:
        hints = typing.get_type_hints(cls)
        known = _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in fields(cls) if f.init and f.name != "id"}
    return known


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (the shapes events use: scalars, optionals,
    lists and dicts), so a malformed payload is refused here and not deep inside a handler."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_fits(v, inner) for v in value)
    if origin is dict:
        key, inner = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(_fits(k, key) and _fits(v, inner) for k, v in value.items())
    return isinstance(value, hint) if isinstance(hint, type) else True


def event_from_dict(data: dict[str, Any]) -> Event:
    """The event stored as `data` (the log, the outbox). Raises KeyError for a type this version
    does not know and TypeError for a payload that does not fit its type. Fields this version
    does not know (a newer writer's) are dropped, and so is `id` (the writer's per-process number:
this process numbers it anew); a row written before uids existed gets a new one."""
    cls = event_types()[data["type"]]
    known = _field_types(cls)
    values = {k: v for k, v in data.items() if k in known}
    for name, value in values.items():
        if not _fits(value, known[name]):
            raise TypeError(f"{cls.type}: field {name!r} has a value of type {type(value).__name__}")
    return cls(**values)

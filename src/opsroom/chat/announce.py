"""Render events into room announcements: the only place the bot's wording lives."""

from __future__ import annotations

import time
from dataclasses import dataclass

from opsroom.events import (
    ApprovalDecided,
    ApprovalRequested,
    CheckFlapping,
    Event,
    ExecutionFinished,
    ExecutionStarted,
    RuleEscalated,
    RuleTriggered,
    SystemHealthChanged,
)
from opsroom.runtime import Runtime


@dataclass(frozen=True)
class Announcement:
    rooms: list[str]
    text: str
    kind: str = "bot"  # bot | notice


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _env_tag(rt: Runtime, environment: str) -> str:
    """Production is always marked: protected environments get a loud prefix."""
    return f"[{environment.upper()}] " if rt.catalog.is_protected(environment) else ""


def _rooms(rt: Runtime, room: str | None, system: str | None = None) -> list[str]:
    if room:
        return [room]
    return rt.catalog.rooms_for_system(system)


def _problem(f: dict[str, object]) -> str:
    what = f.get("service") or f.get("check")
    verb = "is not running" if f.get("down") else f"is {str(f.get('state')).lower()}"
    detail = f"check {f['check']} {f['state']} since {_clock(float(f['since']))}"  # type: ignore[arg-type]
    if not f.get("down") and f.get("output"):
        detail += f": {f['output']}"
    return f"{what} {verb} ({detail})"


def render(rt: Runtime, ev: Event) -> Announcement | None:
    if isinstance(ev, SystemHealthChanged):
        tag = _env_tag(rt, ev.environment)
        if ev.healthy:
            return Announcement(_rooms(rt, None, ev.system), f"{tag}{ev.title} is healthy again")
        problems = "; ".join(_problem(f) for f in ev.failing) or "a check failed"
        return Announcement(_rooms(rt, None, ev.system), f"{tag}{ev.title} is unhealthy: {problems}")
    if isinstance(ev, ApprovalRequested):
        env = ev.environment.upper() if ev.protected else ev.environment
        roles = " or ".join(f"`{r}`" for r in ev.roles)
        asking = f"asking {', '.join(ev.approvers)}" if ev.approvers else "nobody holds that role yet"
        who = f" (asked by {ev.requester})" if ev.requester.startswith("rule:") else ""
        return Announcement(_rooms(rt, ev.room), f"{ev.summary} on {env} needs approval by role {roles}{who} — "
                                                 f"{asking}. Request #{ev.approval_id}.")
    if isinstance(ev, ApprovalDecided):
        if ev.decision == "approved":
            text = f"approved by {ev.decided_by}. Running runbook {ev.runbook} (execution #{ev.execution_id})…"
        elif ev.decision == "denied":
            # Quoted, and one line by construction (decide refuses line breaks and control
            # characters): what the denier wrote never reads as a bot line of its own.
            reason = " ".join((ev.reason or "").split())
            text = f'request #{ev.approval_id} denied by {ev.decided_by}: "{reason}". Nothing was run.'
        else:
            text = f"request #{ev.approval_id} expired without a decision. Nothing was run."
        return Announcement(_rooms(rt, ev.room), text)
    if isinstance(ev, ExecutionStarted):
        # Chat replies and approval notices already say it started; announce runs from other doors.
        if ev.rule is None and ev.door in ("api", "cli", "web"):
            return Announcement(_rooms(rt, ev.room),
                                f"{ev.triggered_by} started {ev.summary} via {ev.door} (execution #{ev.execution_id})")
        return None
    if isinstance(ev, ExecutionFinished):
        if ev.rule is not None and ev.status == "succeeded":
            return None  # the automated story shows only problem, recovery triggered, healthy again
        return Announcement(_rooms(rt, ev.room), ev.message)
    if isinstance(ev, RuleTriggered):
        if ev.needs_approval:
            return None  # the approval request says it
        tag = _env_tag(rt, rt.catalog.systems[ev.system].environment) if ev.system in rt.catalog.systems else ""
        return Announcement(_rooms(rt, ev.room, ev.system),
                            f"{tag}recovery runbook {ev.runbook} triggered for {ev.check} "
                            f"(rule {ev.rule}, execution #{ev.execution_id})")
    if isinstance(ev, RuleEscalated):
        return Announcement(_rooms(rt, None, ev.system),
                            f"automatic recovery needs a human: rule {ev.rule}: {ev.reason}")
    if isinstance(ev, CheckFlapping):
        text = (f"{ev.check} is flapping ({ev.change_ratio:.0%} of recent results changed state); "
                "notices and rules for it are held until it settles" if ev.flapping
                else f"{ev.check} stopped flapping")
        return Announcement(_rooms(rt, None, ev.system), text, "notice")
    return None


ANNOUNCED = (SystemHealthChanged, ApprovalRequested, ApprovalDecided, ExecutionStarted, ExecutionFinished,
             RuleTriggered, RuleEscalated, CheckFlapping)

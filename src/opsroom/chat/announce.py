"""Render events into room announcements: the only place the bot's wording lives."""

from __future__ import annotations

import time
from dataclasses import dataclass

from opsroom.chat.safe import neutralise
from opsroom.events import (
    AlertAcknowledged,
    AlertsNoticed,
    ApprovalDecided,
    ApprovalRequested,
    CheckFlapping,
    Event,
    ExecutionFinished,
    ExecutionStarted,
    RuleEscalated,
    RuleTriggered,
    SilenceChanged,
    SystemHealthChanged,
)
from opsroom.integrity.events import IntegrityChanged
from opsroom.integrity.render import announcement as integrity_text
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


def _alert_rooms(rt: Runtime, system: str | None) -> list[str]:
    """An alert no room subscribes to (mapped to no system) is heard everywhere, never nowhere."""
    return rt.catalog.rooms_for_system(system) or list(rt.catalog.rooms)


SHOWN_ALERTS = 5  # per notice; `alerts` lists them all


def one_line(value: object) -> str:
    """A sender's text (name, summary, label) on one line: a newline in an alert's summary must
    not start a line that reads as the bot's own (`[PROD] alert resolved: ...`). Neutralised here
    too, not only per platform: the web room shows the stored text itself, and a bidi override
    or terminal escape from a sender must not reorder or colour its page."""
    return " ".join(neutralise(str(value)).split())


def _alert_line(a: dict[str, object], *, resolved: bool) -> str:
    where = f" on {a['service']}" if a.get("service") else ""
    name = one_line(a["name"])
    if resolved:
        lasted = float(a.get("ends_at") or time.time()) - float(a["since"])  # type: ignore[arg-type]
        return f"#{a['id']} {name}{where} resolved after {_lasted(lasted)}"
    severity = f" ({one_line(a['severity'])})" if a.get("severity") else ""
    summary = f": {one_line(a['summary'])}" if a.get("summary") else ""
    return f"#{a['id']} {name}{where}{severity} since {_clock(float(a['since']))}{summary}"  # type: ignore[arg-type]


def _lasted(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _alerts_notice(rt: Runtime, ev: AlertsNoticed) -> Announcement:
    tag = _env_tag(rt, ev.environment) if ev.environment else ""
    lines = []
    for items, resolved in ((ev.fired, False), (ev.resolved, True)):
        if not items:
            continue
        head = ("alert resolved" if resolved else "ALERT firing") if len(items) == 1 else \
            (f"{len(items)} alerts resolved" if resolved else f"{len(items)} ALERTS firing")
        shown = [_alert_line(a, resolved=resolved) for a in items[:SHOWN_ALERTS]]
        more = f"; and {len(items) - SHOWN_ALERTS} more (`alerts`)" if len(items) > SHOWN_ALERTS else ""
        lines.append(f"{tag}{head}: " + "; ".join(shown) + more)
    if ev.fired:
        lines[-1 if not ev.resolved else 0] += f" — `ack {ev.fired[0]['id']}`"
    return Announcement(_alert_rooms(rt, ev.system), "\n".join(lines))


def render(rt: Runtime, ev: Event) -> Announcement | None:
    if isinstance(ev, IntegrityChanged):  # every room: a changed runbook or config concerns all
        return Announcement(list(rt.catalog.rooms), integrity_text(ev))
    if isinstance(ev, AlertsNoticed):
        return _alerts_notice(rt, ev)
    if isinstance(ev, AlertAcknowledged):
        return Announcement(_rooms(rt, ev.room) if ev.room else _alert_rooms(rt, ev.system),
                            f"alert #{ev.alert_id} {one_line(ev.name)} acknowledged by {ev.by}")
    if isinstance(ev, SilenceChanged):
        if ev.active:
            text = (f"{ev.by} silenced {one_line(ev.what)} until {_clock(ev.ends_at)}: \"{one_line(ev.reason)}\" "
                    f"(silence #{ev.silence_id})")
        else:
            text = f"{ev.by} removed silence #{ev.silence_id} on {one_line(ev.what)}"
        if ev.pushed:
            text += f"; {'expired' if not ev.active else 'also set'} in {', '.join(p.split(':')[0] for p in ev.pushed)}"
        if ev.failed:
            text += "; NOT in " + "; ".join(ev.failed)
        return Announcement(_rooms(rt, ev.room) if ev.room else _alert_rooms(rt, ev.system), text)
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
        elif ev.decision == "cancelled":
            return None  # the execution's own notice says who cancelled it before it started
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


ANNOUNCED = (AlertsNoticed, AlertAcknowledged, SilenceChanged,
             SystemHealthChanged, ApprovalRequested, ApprovalDecided, ExecutionStarted, ExecutionFinished,
             RuleTriggered, RuleEscalated, CheckFlapping, IntegrityChanged)

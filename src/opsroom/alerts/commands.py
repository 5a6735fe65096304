"""Chat commands for alerts: `alerts`, `alert 12`, `ack 12`, `silence service-b 1h because deploy`,
`silences`, `unsilence 3`. Parsing only; the service layer decides (chat/commands.py's rule)."""

from __future__ import annotations

import re
import time
from typing import Any

from opsroom.access.identity import Actor
from opsroom.alerts import service, silences
from opsroom.catalog.durations import parse_duration
from opsroom.chat.announce import one_line
from opsroom.errors import Invalid
from opsroom.runtime import Runtime

SHOWN = 10  # a phone screen; the web UI and the API have them all
# `silence <what> <duration> because <reason>`; "for" and a colon read as "because" too.
_SILENCE = re.compile(r"^(?P<what>.+?)\s+(?P<duration>[0-9][0-9a-z. ]*?)\s*(?:\s(?:because|for|reason)\s+|:\s*)"
                      r"(?P<reason>.*)$", re.IGNORECASE | re.DOTALL)
_NO_REASON = re.compile(r"^(?P<what>.+?)\s+(?P<duration>[0-9][0-9a-z.]*)$", re.IGNORECASE)


def _number(text: str, verb: str, what: str) -> int:
    from opsroom.chat.commands import parse_number

    return parse_number(text, verb, what)


def _ago(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _line(a: dict[str, Any]) -> str:
    where = f" on {a['service']}" if a["service"] else f" on {a['system']}" if a["system"] else ""
    marks = [one_line(a["severity"])] if a["severity"] else []
    if a["acked_by"]:
        marks.append(f"acked by {a['acked_by']}")
    if a["silenced_by"]:
        marks.append(f"silenced #{a['silenced_by']}")
    shown = f" ({', '.join(marks)})" if marks else ""
    # One line per alert: the sender's text must not add lines that read as the bot's own.
    return f"#{a['id']} {one_line(a['name'])}{where}{shown} since {_ago(a['since'])}" + (
        f": {one_line(a['summary'])}" if a["summary"] else "")


async def alerts(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> str:
    found = await service.list_alerts(rt, actor=actor)
    if not found:
        return "no alerts firing"
    more = f"\nand {len(found) - SHOWN} more in the web UI" if len(found) > SHOWN else ""
    return f"{len(found)} firing:\n" + "\n".join(_line(x) for x in found[:SHOWN]) + more


async def alert(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> str:
    x = await service.get_alert(rt, actor=actor, alert_id=_number(a["id"], "alert", "alert"))
    state = "resolved" if x["status"] == "resolved" else "firing"
    labels = ", ".join(f"{one_line(k)}={one_line(v)}" for k, v in sorted(x["labels"].items()))
    return f"{_line(x)}\n{state} · from {x['source']} · repeats {x['repeats']}" + (
        f"\nlabels: {labels}" if labels else "") + (f"\n{x['url']}" if x["url"] else "")


async def ack(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> str:
    alert_id = _number(a["id"], "ack", "alert")
    before = service.book(rt).firing.get(alert_id)
    # Read now: acknowledge() sets acked_by on this very object, so looking after would always
    # find it acknowledged and answer "already" to the first ack too.
    already = before.acked_by if before is not None else None
    x = await service.acknowledge(rt, actor=actor, alert_id=alert_id, room=room)
    if before is not None and already is None:
        return ""  # the alert.acknowledged event says it to the room
    if already is not None:
        return f"alert #{x['id']} {x['name']} is already acknowledged by {already}"
    return f"alert #{x['id']} {x['name']} ({x['status']}) is acknowledged by {x['acked_by']}"


async def silence(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> str:
    args = a["args"].strip()
    m = _SILENCE.match(args)
    if m is None:
        if _NO_REASON.match(args):
            raise Invalid("a silence needs a reason", hint=f"write `silence {args} because <why>`")
        raise Invalid("cannot read the silence", hint="write `silence service-b 1h because deploy`")
    try:
        duration = parse_duration(m.group("duration").replace(" ", ""))
    except ValueError as exc:
        raise Invalid(f"{m.group('duration')!r} is not a duration", hint=str(exc).split("; ")[-1]) from None
    if not m.group("reason").strip():
        raise Invalid("a silence needs a reason", hint=f"write `silence {m.group('what')} "
                                                       f"{m.group('duration')} because <why>`")
    await silences.create(rt, actor=actor, what=m.group("what").strip().strip("`"), duration_s=duration,
                          reason=m.group("reason"), room=room)
    return ""  # the alert.silence event tells the room, a sender that did not get it included


async def silences_list(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> str:
    found = await silences.list_active(rt, actor=actor)
    if not found:
        return "no silences"
    return "silences:\n" + "\n".join(
        f"#{s['id']} {one_line(s['what'])} until {_ago(s['ends_at'])} by {s['created_by']}: \"{s['reason']}\""
        + (f" (also in {', '.join(p.split(':')[0] for p in s['pushed'])})" if s["pushed"] else "")
        for s in found[:SHOWN])


async def unsilence(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> str:
    await silences.remove(rt, actor=actor, silence_id=_number(a["id"], "unsilence", "silence"), room=room)
    return ""


# (pattern, help, handler, kind) for chat/commands.py's table.
COMMANDS = [
    ("alerts", "the firing alerts", alerts, "read"),
    ("alert {id}", "one alert with its labels", alert, "read"),
    ("ack {id}", "acknowledge an alert: you are on it", ack, "decide"),
    ("silence {args}", "silence alerts: silence service-b 1h because deploy", silence, "change"),
    ("silences", "the active silences", silences_list, "read"),
    ("unsilence {id}", "end a silence now (here and in Alertmanager)", unsilence, "change"),
]

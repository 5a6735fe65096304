"""The chat command grammar and router: text in, one service call, a reply out.

Parsing only: every decision (may this person do it? is it valid?) is the
service layer's, so a chat command and the same API call behave the same.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opsroom.access.identity import Actor
from opsroom.approvals import service as approvals
from opsroom.catalog.schema import Alias
from opsroom.checks import service as checks
from opsroom.errors import Invalid, OpsroomError
from opsroom.runbooks import service as runbooks
from opsroom.runtime import Runtime

Reply = str


@dataclass(frozen=True)
class Builtin:
    pattern: str
    help: str
    regex: re.Pattern[str]
    handler: Callable[[Runtime, Actor, str | None, dict[str, str]], Awaitable[Reply]]


def _compile(pattern: str) -> re.Pattern[str]:
    """'start {service}' -> ^start\\s+(?P<service>.+?)$: words case-insensitive, placeholders lazy."""
    parts = []
    for word in pattern.split():
        m = re.fullmatch(r"\{(\w+)\}", word)
        parts.append(f"(?P<{m.group(1)}>.+?)" if m else re.escape(word))
    return re.compile("^" + r"\s+".join(parts) + r"\s*[?!.]*\s*$", re.IGNORECASE)


def _fmt_state(view: dict[str, Any]) -> str:
    bits = [f"{view['check']} {view['state']}"]
    if view.get("latency_ms") is not None and view["state"] == "OK":
        bits.append(f"{view['latency_ms']:.0f} ms")
    elif view.get("output"):
        bits.append(view["output"])
    if view.get("age_s") is not None:
        bits.append(f"checked {view['age_s']:.0f} s ago")
    return ", ".join(bits)


async def _is_running(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    st = await checks.get_service_status(rt, actor=actor, service=a["service"])
    word = "running" if st["running"] else "NOT running" if st["state"] == "CRITICAL" else st["state"]
    detail = "; ".join(_fmt_state(v) for v in st["checks"]) or "no checks"
    return f"{st['service']} is {word} ({detail})"


async def _health(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    h = await checks.get_system_health(rt, actor=actor, system=a["system"])
    parts = [f"{s['service']} {s['state']}" for s in h["services"]]
    verdict = f"{h['title']} is healthy" if h["healthy"] else f"{h['title']} is UNHEALTHY"
    prefix = f"[{h['environment'].upper()}] " if h["protected"] else ""
    return prefix + " · ".join([*parts, verdict])


async def _status(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    lines = []
    for s in await checks.overview(rt, actor=actor):
        mark = f"[{s['environment'].upper()}] " if s["protected"] else ""
        if s["healthy"]:
            lines.append(f"{mark}{s['title']}: healthy")
        else:
            bad = ", ".join(f"{f['check']} {f['state']}" for f in s["failing"])
            lines.append(f"{mark}{s['title']}: UNHEALTHY ({bad})")
    open_requests = await approvals.list_open(rt, actor=actor)
    for r in open_requests:
        lines.append(f"request #{r.id}: {r.summary} by {r.requester}, needs {' or '.join(r.roles)}")
    return "\n".join(lines) or "nothing is configured yet"


async def _approve(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    await approvals.decide(rt, actor=actor, approval_id=_int(a["id"], "approve"), approve=True)
    return ""  # the approval.decided event announces it to everyone


async def _deny(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    await approvals.decide(rt, actor=actor, approval_id=_int(a["id"], "deny"), approve=False,
                           reason=a.get("reason"))
    return ""


async def _deny_no_reason(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    raise Invalid("a deny needs a reason", hint=f"write `deny {a['id']} <why>`")


def _int(text: str, verb: str) -> int:
    text = text.strip().lstrip("#")
    if not text.isdigit():
        raise Invalid(f"{text!r} is not a request number", hint=f"write `{verb} 17` with the number from the request")
    return int(text)


async def _run(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    try:
        words = shlex.split(a["args"])
    except ValueError as exc:
        raise Invalid(f"cannot read the parameters: {exc}", hint="quote values with spaces: key='a b'") from None
    name, params = words[0], {}
    for w in words[1:]:
        if "=" not in w:
            raise Invalid(f"{w!r} is not key=value", hint=f"write `run {name} key=value`")
        k, _, v = w.partition("=")
        params[k] = v
    return await _request(rt, actor, room, name, params)


async def _request(rt: Runtime, actor: Actor, room: str | None, runbook: str, params: dict[str, Any]) -> Reply:
    row = await runbooks.request_run(rt, actor=actor, runbook=runbook, params=params, room=room)
    if row.status == "awaiting_approval":
        return ""  # the approval.requested event announces who is asked
    return f"running {row.summary} (execution #{row.id})…"


async def _execution(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    row = await runbooks.get_execution(rt, actor=actor, execution_id=_int(a["id"], "execution"))
    tail = "\n".join(row.output.strip().splitlines()[-10:])
    return f"execution #{row.id} {row.summary}: {row.status}" + (f"\n{tail}" if tail else "")


async def _help(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    lines = [f"`{b.pattern}` {b.help}" for b in BUILTINS if b.help]
    lines += [f"`{al.pattern}` {al.help or 'runs ' + al.runbook}" for al in rt.catalog.aliases]
    return "commands:\n" + "\n".join(lines)


async def _who(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    hub = rt.rooms
    people = await hub.present(room) if hub is not None and room else []
    if not people:
        return "nobody else is here"
    return "here: " + ", ".join(f"{p['name']} ({', '.join(p['roles']) or 'no roles'})" for p in people)


def _builtin(pattern: str, help_text: str,
             handler: Callable[[Runtime, Actor, str | None, dict[str, str]], Awaitable[Reply]]) -> Builtin:
    return Builtin(pattern, help_text, _compile(pattern), handler)


BUILTINS: list[Builtin] = [
    _builtin("is {service} running", "is it up? (from its checks)", _is_running),
    _builtin("is {service} up", "", _is_running),
    _builtin("health {system}", "every service of a system", _health),
    _builtin("status", "all systems and open requests", _status),
    _builtin("approve {id}", "approve a request", _approve),
    _builtin("deny {id} {reason}", "deny a request, with a reason", _deny),
    _builtin("deny {id}", "", _deny_no_reason),
    _builtin("run {args}", "run a runbook: run NAME key=value…", _run),
    _builtin("execution {id}", "an execution's status and last output", _execution),
    _builtin("help", "this list", _help),
    _builtin("who", "who is in the room", _who),
]


def _command_words(rt: Runtime) -> list[str]:
    return [b.pattern for b in BUILTINS] + [a.pattern for a in rt.catalog.aliases]


def _did_you_mean(rt: Runtime, text: str) -> str:
    first = text.split()[0].lower() if text.split() else ""
    patterns = _command_words(rt)
    heads = {p.split()[0]: p for p in patterns}
    close = difflib.get_close_matches(first, list(heads), n=2, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(f"`{heads[c]}`" for c in close) + "? (`help` lists all)"
    close_full = difflib.get_close_matches(text.lower(), patterns, n=1, cutoff=0.4)
    if close_full:
        return f"did you mean `{close_full[0]}`? (`help` lists all)"
    return "type `help` for the list of commands"


KNOWN_SHOWN = 8  # a phone screen's worth; the rest is counted, `status` lists them all


def _known(rt: Runtime, placeholders: list[str]) -> str:
    """The names a missing placeholder can take, so the person can retype without looking them up."""
    kinds: dict[str, list[str]] = {"service": list(rt.catalog.services), "system": list(rt.catalog.systems),
                                   "runbook": list(rt.catalog.runbooks)}
    parts = []
    for placeholder in placeholders:
        names = sorted(kinds.get(placeholder, []))
        if names:
            more = f" and {len(names) - KNOWN_SHOWN} more" if len(names) > KNOWN_SHOWN else ""
            parts.append(f"{placeholder}s: {', '.join(names[:KNOWN_SHOWN])}{more}")
    return "".join(f" — {p}" for p in parts)


def _alias_args(alias: Alias, found: dict[str, str]) -> dict[str, str]:
    if not alias.params:
        return dict(found)
    return {k: v.format(**found) for k, v in alias.params.items()}


def redact(rt: Runtime, text: str) -> str:
    """Mask values of secret runbook parameters in what a person typed, before anyone else sees it."""
    m = re.match(r"^\s*[!/]?run\s+(\S+)\s+(.*)$", text, re.IGNORECASE | re.DOTALL)
    if not m:
        return text
    name, _ = rt.catalog.find_runbook(m.group(1))
    if name is None:
        return text
    secret = {k for k, p in rt.catalog.runbooks[name].parameters.items() if p.secret}
    if not secret:
        return text
    pattern = r"(\b(?:" + "|".join(map(re.escape, secret)) + r")=)(\"[^\"]*\"|'[^']*'|\S+)"
    return text[: m.start(2)] + re.sub(pattern, r"\1****", m.group(2))


async def handle(rt: Runtime, *, actor: Actor, room: str | None, text: str) -> Reply:
    """Run one chat command; every error becomes a helpful reply, never a traceback."""
    text = " ".join(text.strip().split())
    if text.startswith(("!", "/")):
        text = text[1:]
    if not text:
        return ""
    try:
        for b in BUILTINS:
            m = b.regex.match(text)
            if m:
                return await b.handler(rt, actor, room, m.groupdict())
        for alias in rt.catalog.aliases:
            m = _compile(alias.pattern).match(text)
            if m:
                return await _request(rt, actor, room, alias.runbook, _alias_args(alias, m.groupdict()))
        # A known command word with its argument missing: say what is missing.
        first = text.split()[0].lower()
        for pattern in _command_words(rt):
            if pattern.split()[0] == first and "{" in pattern and len(text.split()) < len(pattern.split()):
                missing = re.findall(r"\{(\w+)\}", pattern)
                return f"missing {', '.join(missing)}: write `{pattern}`" + _known(rt, missing)
        return f"I don't understand {text!r}; {_did_you_mean(rt, text)}"
    except OpsroomError as exc:
        return f"{exc.message}" + (f" — {exc.hint}" if exc.hint else "")

"""The chat command grammar and router: text in, one service call, a reply out.

Parsing only: every decision (may this person do it? is it valid?) is the
service layer's, so a chat command and the same API call behave the same.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from opsroom.access.identity import Actor
from opsroom.approvals import service as approvals
from opsroom.catalog.schema import Alias
from opsroom.chat.announce import one_line
from opsroom.chat.phrases import rephrase
from opsroom.chat.words import split_words
from opsroom.checks import service as checks
from opsroom.errors import Invalid, NotFound, OpsroomError
from opsroom.rooms import service as rooms
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.params import usage
from opsroom.runtime import Runtime
from opsroom.secrets.masking import MASK, mask, register

Reply = str


@dataclass(frozen=True)
class Builtin:
    pattern: str
    help: str
    regex: re.Pattern[str]
    handler: Callable[[Runtime, Actor, str | None, dict[str, str]], Awaitable[Reply]]
    # read: only looks; decide: approves or denies; change: runs something (aliases do too).
    kind: str = "read"


@functools.lru_cache(maxsize=1024)  # every line is matched against every alias, twice (redact, handle)
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


def _naming(rt: Runtime, exc: NotFound, kind: str) -> NotFound:
    """An unknown name with nothing close ("is web down") is answered with the names there are.
    The service layer checked the permission before it looked the name up."""
    if exc.hint and exc.hint.startswith("did you mean"):
        return exc
    return NotFound(exc.message, hint=_known(rt, [kind]).removeprefix(" — ") or exc.hint)


async def _is_running(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    try:
        st = await checks.get_service_status(rt, actor=actor, service=a["service"])
    except NotFound as exc:
        raise _naming(rt, exc, "service") from None
    by_checks = [v["state"] for v in st["checks"]]
    word = "running" if st["running"] else "NOT running" if "CRITICAL" in by_checks else st["state"]
    detail = "; ".join(_fmt_state(v) for v in st["checks"]) or "no checks"
    page = f" — {rt.settings.web_url}/services/{quote(st['service'], safe='')}"
    return f"{st['service']} is {word} ({detail})" + _alerts_said(st["alerts"]) + page


def _alerts_said(alerts: list[dict[str, Any]]) -> str:
    """Firing alerts beside the checks: `; ALERT #3 HighLatency (page) since 21:04:07`."""
    said = []
    for a in alerts:
        marks = [m for m in (one_line(a["severity"]) if a["severity"] else None,
                             "silenced" if a["silenced_by"] else None,
                             f"acked by {a['acked_by']}" if a["acked_by"] else None) if m]
        said.append(f"ALERT #{a['id']} {one_line(a['name'])}" + (f" ({', '.join(marks)})" if marks else "")
                    + f" firing since {time.strftime('%H:%M:%S', time.localtime(a['since']))}")
    return "; " + "; ".join(said) if said else ""


async def _health(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    try:
        h = await checks.get_system_health(rt, actor=actor, system=a["system"])
    except NotFound as exc:
        raise _naming(rt, exc, "system") from None
    parts = [f"{s['service']} {s['state']}" + (f" ({len(s['alerts'])} alert{'s' if len(s['alerts']) > 1 else ''})"
                                                if s["alerts"] else "") for s in h["services"]]
    parts += [f"ALERT #{a['id']} {one_line(a['name'])}" for a in h["alerts"]]
    verdict = f"{h['title']} is healthy" if h["healthy"] else f"{h['title']} is UNHEALTHY"
    prefix = f"[{h['environment'].upper()}] " if h["protected"] else ""
    return prefix + " · ".join([*parts, verdict])


async def _status(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    lines = []
    # One view, one audit record (was two writes: overview's and list_open's) on the hot path of
    # the most asked question.
    systems = await checks.overview(rt, actor=actor, audited=False)
    open_requests = await approvals.list_open_viewed(rt, actor=actor, action="status", target="systems")
    for s in systems:
        mark = f"[{s['environment'].upper()}] " if s["protected"] else ""
        if s["healthy"]:
            lines.append(f"{mark}{s['title']}: healthy")
        else:
            bad = [f"{f['check']} {f['state']}" for f in s["failing"]]
            bad += [f"alert #{a['id']} {one_line(a['name'])}" for a in s["alerts"] if not a["silenced_by"]]
            lines.append(f"{mark}{s['title']}: UNHEALTHY ({', '.join(bad)})")
    for r in open_requests:
        lines.append(f"request #{r.id}: {r.summary} by {r.requester}, needs {' or '.join(r.roles)}")
    return "\n".join(lines) or "nothing is configured yet"


async def _approve(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    await approvals.decide(rt, actor=actor, approval_id=parse_number(a["id"], "approve"), approve=True)
    return ""  # the approval.decided event announces it to everyone


async def _deny(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    await approvals.decide(rt, actor=actor, approval_id=parse_number(a["id"], "deny"), approve=False,
                           reason=a.get("reason"))
    return ""


async def _deny_no_reason(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    raise Invalid("a deny needs a reason", hint=f"write `deny {a['id']} <why>`")


MAX_ID = 2**31 - 1  # ids are 32-bit in the store; a larger number names nothing


def parse_number(text: str, verb: str, what: str = "request") -> int:
    """A request or execution number: ASCII digits only ('²' and '٣' are digits to str.isdigit)."""
    text = text.strip().lstrip("#")
    shown = text if len(text) <= 24 else text[:24] + "…"
    article = "an" if what[0] in "aeiou" else "a"
    if not re.fullmatch(r"[0-9]+", text):
        raise Invalid(f"#{shown} is not {article} {what} number",
                      hint=f"write `{verb} 17` with the number from the {what}")
    number = int(text)
    if number > MAX_ID:
        raise NotFound(f"there is no {what} #{shown}: the number is too large",
                       hint=f"`status` lists open requests; numbers go up to {MAX_ID}")
    return number




@dataclass
class _RunLine:
    """`run NAME key=value…` read once, for the handler and for redaction alike."""

    name: str
    runbook: str | None  # the catalog's name, when NAME is one
    params: dict[str, str]
    # (key, start and end of the value as written, value) of every key=value word
    values: list[tuple[str, int, int, str]]
    bare: list[tuple[int, int]]  # spans of words that are not key=value


def _read_run(rt: Runtime, args: str) -> _RunLine:
    words = split_words(args)
    if not words:
        raise Invalid("which runbook?", hint="write `run NAME key=value…`")
    name = words[0][0]
    runbook, _ = rt.catalog.find_runbook(name)
    known = list(rt.catalog.runbooks[runbook].parameters) if runbook is not None else []
    lower = {k.lower(): k for k in known}
    params: dict[str, str] = {}
    values: list[tuple[str, int, int, str]] = []
    bare: list[tuple[int, int]] = []
    for word, start, end in words[1:]:
        if "=" not in word:
            bare.append((start, end))
            continue
        key, _, value = word.partition("=")
        key = key if key in known else lower.get(key.lower(), key)  # `Token=` means `token=`
        params[key] = value
        # Every '=' written yields an '=' read, so the first one written ends the key.
        eq = args[start:end].find("=")
        values.append((key, start + eq + 1, end, value))
    return _RunLine(name, runbook, params, values, bare)


async def _run(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    try:
        line = _read_run(rt, a["args"])
    except ValueError as exc:
        raise Invalid(f"cannot read the parameters: {exc}", hint="quote values with spaces: key='a b'") from None
    if line.bare:
        # For a runbook that takes secrets the word may be one typed without its key: not echoed.
        start, end = line.bare[0]
        shown = "a parameter" if _secret_params(rt, line.runbook) else repr(a["args"][start:end])
        raise Invalid(f"{shown} is not key=value", hint=f"write `run {line.name} key=value`")
    return await _request(rt, actor, room, line.runbook or line.name, line.params)


async def _request(rt: Runtime, actor: Actor, room: str | None, runbook: str, params: dict[str, Any]) -> Reply:
    row = await runbooks.request_run(rt, actor=actor, runbook=runbook, params=params, room=room)
    if row.status == "awaiting_approval":
        return ""  # the approval.requested event announces who is asked
    return f"running {row.summary} (execution #{row.id})…"


async def _execution(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    row = await runbooks.get_execution(rt, actor=actor, execution_id=parse_number(a["id"], "execution", "execution"))
    tail = "\n".join(row.output.strip().splitlines()[-10:])
    return f"execution #{row.id} {row.summary}: {row.status}" + (f"\n{tail}" if tail else "")


async def _executions(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    rows = await runbooks.list_executions(rt, actor=actor, limit=10)  # a phone screen; the web UI has all
    lines = [f"#{r.id} {r.summary or r.runbook}: {r.status} (by {r.requested_by})" for r in rows]
    return "recent executions:\n" + "\n".join(lines) if lines else "no executions yet"


async def _help_one(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    """`help run`, `help start`, `help deploy`: one command with the parameters it takes."""
    word = a["command"].strip().strip("`").lower()
    cat = rt.catalog
    lines = [f"`{b.pattern}` {b.help}".rstrip() for b in BUILTINS if b.pattern.split()[0] == word]
    for al in cat.aliases:
        if al.pattern.split()[0].lower() == word:
            found, _ = cat.find_runbook(al.runbook)
            how = usage(cat.runbooks[found]) if found is not None else f"runs {al.runbook}"
            lines.append(f"`{al.pattern}` {al.help or ''} ({how})".replace("  ", " "))
    names = sorted(cat.runbooks) if word == "run" else [n for n in [cat.find_runbook(word)[0]] if n]
    lines += [usage(cat.runbooks[n]) for n in names[:KNOWN_SHOWN]]
    if len(names) > KNOWN_SHOWN:
        lines.append(f"and {len(names) - KNOWN_SHOWN} more: `help NAME` for one")
    if not lines:
        return f"there is no command {word!r}; {_did_you_mean(rt, word)}"
    return "\n".join(lines)


async def _help(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    lines = [f"`{b.pattern}` {b.help}" for b in BUILTINS if b.help]
    lines += [f"`{al.pattern}` {al.help or 'runs ' + al.runbook}" for al in rt.catalog.aliases]
    return "commands:\n" + "\n".join(lines)


async def _who(rt: Runtime, actor: Actor, room: str | None, a: dict[str, str]) -> Reply:
    people = await rooms.present(rt, room=room) if room else []
    if not people:
        return "nobody else is here"
    return "here: " + ", ".join(f"{p['name']} ({', '.join(p['roles']) or 'no roles'})" for p in people)


def _builtin(pattern: str, help_text: str,
             handler: Callable[[Runtime, Actor, str | None, dict[str, str]], Awaitable[Reply]],
             kind: str = "read") -> Builtin:
    return Builtin(pattern, help_text, _compile(pattern), handler, kind)


BUILTINS: list[Builtin] = [
    _builtin("is {service} running", "is it up? (from its checks)", _is_running),
    _builtin("is {service} up", "", _is_running),
    _builtin("health {system}", "every service of a system", _health),
    _builtin("status", "all systems and open requests", _status),
    _builtin("approve {id}", "approve a request", _approve, "decide"),
    _builtin("deny {id} {reason}", "deny a request, with a reason", _deny, "decide"),
    _builtin("deny {id}", "", _deny_no_reason, "decide"),
    _builtin("run {args}", "run a runbook: run NAME key=value…", _run, "change"),
    _builtin("execution {id}", "an execution's status and last output", _execution),
    _builtin("executions", "the recent executions", _executions),
    _builtin("help", "this list", _help),
    _builtin("help {command}", "one command and its parameters", _help_one),
    _builtin("who", "who is in the room", _who),
]


def _alert_commands() -> list[Builtin]:
    from opsroom.alerts.commands import COMMANDS  # here: they parse numbers with this module's parse_number
    from opsroom.runbooks.chat import COMMANDS as EXECUTIONS

    return [_builtin(pattern, help_text, handler, kind) for pattern, help_text, handler, kind in EXECUTIONS + COMMANDS]


BUILTINS[-3:-3] = _alert_commands()  # before help and who, after the run and execution commands


def _command_words(rt: Runtime) -> list[str]:
    return [b.pattern for b in BUILTINS] + [a.pattern for a in rt.catalog.aliases]


def _kinds(rt: Runtime) -> dict[str, str]:
    """Every command pattern and what it does: aliases run runbooks, so they change things."""
    kinds = {a.pattern: "change" for a in rt.catalog.aliases}
    kinds.update({b.pattern: b.kind for b in BUILTINS})  # a builtin wins where an alias shadows it
    return kinds


# Text starting with one of these, or ending with '?', asks something: it is never answered
# with a command that changes anything ("status of web" must not suggest `start web`).
QUESTION_WORDS = frozenset({"status", "state", "what", "whats", "what's", "is", "are", "show", "tail", "ack",
                            "list", "where", "why", "how", "who", "when", "which", "check", "get", "view",
                            "log", "logs", "uptime", "ping", "health", "info", "describe"})
_FALLBACK_READS = ("is {service} running", "status")


def reads_as_question(text: str) -> bool:
    words = text.lower().split()
    return bool(words) and (words[0] in QUESTION_WORDS or text.rstrip().endswith("?"))


def _did_you_mean(rt: Runtime, text: str) -> str:
    """Close commands, reading ones first; a question gets reading ones only, and a command
    that changes or decides something is never the only suggestion."""
    words = text.lower().split()
    first = words[0] if words else ""
    kinds = _kinds(rt)
    heads: dict[str, str] = {}
    for pattern in kinds:
        heads.setdefault(pattern.split()[0].lower(), pattern)
    close = [heads[h] for h in difflib.get_close_matches(first, list(heads), n=3, cutoff=0.5)]
    if not close:
        close = difflib.get_close_matches(text.lower(), list(kinds), n=2, cutoff=0.4)
    reads = [p for p in close if kinds[p] == "read"]
    others = [] if reads_as_question(text) else [p for p in close if kinds[p] != "read"]
    if not reads and (others or reads_as_question(text)):
        reads = list(_FALLBACK_READS)
    chosen = [*reads, *others][:3]
    if not chosen:
        return "type `help` for the list of commands"
    return "did you mean " + " or ".join(f"`{p}`" for p in chosen) + "? (`help` lists all)"


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


def _forget(*_values: Any) -> None:
    return None


def _secret_params(rt: Runtime, runbook: str | None) -> set[str]:
    if runbook is None or runbook not in rt.catalog.runbooks:
        return set()
    return {k for k, p in rt.catalog.runbooks[runbook].parameters.items() if p.secret}


def _collapsed(text: str) -> tuple[str, list[int]]:
    """" ".join(text.split()), and for each of its characters the index it came from in text."""
    out: list[str] = []
    where: list[int] = []
    for m in re.finditer(r"\S+", text):
        if out:
            out.append(" ")
            where.append(m.start() - 1)
        out.append(m.group())
        where.extend(range(m.start(), m.end()))
    return "".join(out), where


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in sorted(set(spans), reverse=True):
        text = text[:start] + MASK + text[end:]
    return text


def redact(rt: Runtime, text: str, *, learn: bool = False) -> str:
    """Mask the values of secret runbook parameters in what a person typed, before anyone sees it.

    The line is read as the handler reads it (run words, or an alias) and the secret values are
    masked where they were written, however quoted or escaped. With `learn` (the person may run
    runbooks) they are also registered with the process-wide masker, so an echo anywhere later
    (a reply, a log line) is masked too; not for others, or a viewer could make any word of
    the audit log and the server log vanish by "typing it as a secret".
    """
    remember = register if learn else _forget
    body = re.match(r"^\s*(?:[!/]\s*)?", text)
    offset = body.end() if body else 0
    command = text[offset:]
    run = re.match(r"run\s+", command, re.IGNORECASE)
    if run is not None:
        args_at = offset + run.end()
        args = text[args_at:]
        try:
            line = _read_run(rt, args)
        except (ValueError, OpsroomError):
            # Unreadable: everything after a secret-taking runbook's name is hidden.
            name = args.split()[0] if args.split() else ""
            found, _ = rt.catalog.find_runbook(name) if name else (None, [])
            if not _secret_params(rt, found):
                return text
            return text[:args_at + args.index(name) + len(name)] + " " + MASK
        secret = _secret_params(rt, line.runbook)
        hidden = [(key, start, end, value) for key, start, end, value in line.values if key in secret]
        remember(*(value for *_, value in hidden), *(args[start:end] for _, start, end, _ in hidden))
        # A word that is not key=value may be a secret typed without its key: hidden, not learned.
        spans = [(start, end) for _, start, end, _ in hidden] + (line.bare if secret else [])
        return mask(text[:args_at] + _cut(args, [(start, end) for start, end in spans if end > start]))
    # Aliases are matched as handle() matches them, on the line with its spaces collapsed (a
    # placeholder may span a newline); each collapsed position maps back to where it was typed.
    flat, where = _collapsed(command)
    for alias in rt.catalog.aliases:
        m = _compile(alias.pattern).match(flat)
        if m is None:
            continue
        secret = _secret_params(rt, rt.catalog.find_runbook(alias.runbook)[0])
        if alias.params:
            feeding = {ph for k, tmpl in alias.params.items() if k in secret for ph in re.findall(r"\{(\w+)\}", tmpl)}
            with contextlib.suppress(KeyError, IndexError, ValueError):
                given = _alias_args(alias, m.groupdict())
                remember(*(given[k] for k in secret if k in given))
        else:
            feeding = secret & set(m.groupdict())
        remember(*(m.group(ph) for ph in feeding),
                 *(command[where[m.start(ph)]:where[m.end(ph) - 1] + 1] for ph in feeding if m.end(ph) > m.start(ph)))
        spans = [(offset + where[m.start(ph)], offset + where[m.end(ph) - 1] + 1)
                 for ph in feeding if m.end(ph) > m.start(ph)]
        return mask(_cut(text, spans))
    return mask(text)


def looks_like_command(rt: Runtime, text: str) -> bool:
    """Whether a line starts as a command does (`!`/`/`, or a command's first word)."""
    raw = text.strip()
    if raw.startswith(("!", "/")):
        return True
    first = raw.split()[0].lower() if raw.split() else ""
    return any(p.split()[0].lower() == first for p in _command_words(rt))


async def handle(rt: Runtime, *, actor: Actor, room: str | None, text: str, addressed: bool = True) -> Reply:
    """Run one chat command; every error becomes a helpful reply, never a traceback.

    Not `addressed` (a line in a shared platform channel without `!` or `/`): people talk among
    themselves there, so a line that is no command gets no "I don't understand".
    """
    raw = text.strip()
    if raw.startswith(("!", "/")):
        raw = raw[1:].strip()
        addressed = True
    text = " ".join(raw.split())  # commands match however they were spaced
    if not text:
        return ""
    # "status of web", "Run System A Health Check": the reading command meant (never a change).
    text = rephrase(rt.catalog, text,
                    alias_matches=lambda t: any(_compile(al.pattern).match(t) for al in rt.catalog.aliases))
    try:
        for b in BUILTINS:
            m = b.regex.match(text)
            if m:
                found = m.groupdict()
                if b.handler is _run:
                    # The words as typed: a quoted value keeps its spaces ('a  b' is not 'a b').
                    found = {"args": raw.split(maxsplit=1)[1]}
                return await b.handler(rt, actor, room, found)
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
        return f"I don't understand {text!r}; {_did_you_mean(rt, text)}" if addressed else ""
    except OpsroomError as exc:
        return f"{exc.message}" + (f" — {exc.hint}" if exc.hint else "")

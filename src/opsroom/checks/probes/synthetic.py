"""Synthetic transactions: HTTP steps in order, as a user makes them, sharing cookies and variables.

Each run has its own ClientSession, so its own cookie jar and connection pool: cookies pass
between the steps of one run, never between runs or checks, and nothing of the shared
keep-alive pool of http checks is used. Variables start from the check's `variables` and grow
with each step's `extract`; templates are rendered by the sandbox with ``{"vars": ...}``, once,
so a value that looks like a template (`{{ 7*7 }}` from a response) is sent as the text it is.

Redirects are followed within the run's session (cookies set on the way are kept), at most
``MAX_REDIRECTS`` hops, and only to the same origin, or from http to https on the same host:
a service cannot send the monitor to another host (an internal address, a metadata service).
A redirect whose status the step expects (`expect_status: [302]`) is not followed.

Nothing a run learns is put in its output: the output is built from the step's name, status
codes, latencies and the patterns of the catalog; text from an exception or the body passes
through a redaction of every variable's value (secrets and extracted tokens alike), and then
the process-wide masker.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
from yarl import URL

from opsroom.automation.templates import render
from opsroom.catalog.schema import SyntheticCheck, SyntheticStep
from opsroom.checks.probes.base import USER_AGENT, Probe, ProbeContext, ProbeResult, elapsed_ms, fmt_seconds
from opsroom.checks.probes.http import decode_body, read_capped
from opsroom.checks.synthetic_check import (
    MAX_REGEX_INPUT,
    MAX_VALUE,
    compile_safe_regex,
    is_missing,
    json_lookup,
    parse_extract,
)
from opsroom.errors import Invalid
from opsroom.secrets.masking import MASK, MIN_SECRET, mask

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_LINE_BREAK = re.compile(r"[\r\n\x00]")


class StepFailed(Exception):
    """A step's assertion or request failed: the run stops, the check is CRITICAL. The detail is
    put in the output as it is: text from outside the catalog is redacted before it goes in."""

    def __init__(self, detail: str, *, down: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.down = down


@dataclass(slots=True)
class Run:
    check: SyntheticCheck
    vars: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    perf: dict[str, float] = field(default_factory=dict)
    snippet: str = ""

    def redact(self, text: str) -> str:
        """Every variable's value (a secret, a session token) out of text bound for a result."""
        for value in sorted(self.vars.values(), key=len, reverse=True):
            if len(value) >= MIN_SECRET:
                text = text.replace(value, MASK)
        return mask(text)


def perf_keys(steps: list[SyntheticStep]) -> list[str]:
    """`step_<name>_ms` for each step: letters, digits and _, unique within the check."""
    keys: list[str] = []
    for i, st in enumerate(steps):
        slug = re.sub(r"[^a-z0-9]+", "_", st.name.lower()).strip("_") or str(i + 1)
        key = f"step_{slug}_ms"
        if key in keys:
            key = f"step_{slug}_{i + 1}_ms"
        keys.append(key)
    return keys


class SyntheticProbe(Probe[SyntheticCheck]):
    type: ClassVar[str] = "synthetic"

    async def probe(self, check: SyntheticCheck, ctx: ProbeContext) -> ProbeResult:
        run = Run(check, dict(check.variables))
        keys = perf_keys(check.steps)
        loop = asyncio.get_running_loop()
        # Our own limit, a little before Probe.run's: a run cut off here still says which step hung.
        timeout = float(check.timeout)
        deadline = loop.time() + timeout - min(0.1, timeout * 0.05)
        start = time.perf_counter()
        connector = aiohttp.TCPConnector(limit=4, use_dns_cache=False)
        jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies of hosts named by IP address too
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar, trust_env=False,
                                         timeout=aiohttp.ClientTimeout(total=None),
                                         headers={"User-Agent": USER_AGENT}) as session:
            for i, st in enumerate(check.steps):
                label = f"step {i + 1} ({st.name})"
                step_start = time.perf_counter()
                try:
                    async with asyncio.timeout_at(deadline):
                        ms = await _step(session, run, i + 1, st)
                except TimeoutError:
                    ms = elapsed_ms(step_start)
                    run.perf[keys[i]] = round(ms, 3)
                    return _result(run, "CRITICAL", f"{label} timed out after {ms:.0f} ms "
                                   f"(the check's timeout is {fmt_seconds(timeout)})", start)
                except StepFailed as exc:
                    ms = elapsed_ms(step_start)
                    run.perf[keys[i]] = round(ms, 3)
                    took = "" if " ms" in exc.detail else f" after {ms:.0f} ms"  # every failure says how long
                    return _result(run, "CRITICAL", f"{label} failed: {exc.detail}{took}", start,
                                   down=exc.down and i == 0)
                run.perf[keys[i]] = round(ms, 3)
                if st.latency_critical_ms is not None and ms > st.latency_critical_ms:
                    return _result(run, "CRITICAL", f"{label} failed: took {ms:.0f} ms "
                                   f"(critical above {st.latency_critical_ms:g} ms)", start)
                if st.latency_warning_ms is not None and ms > st.latency_warning_ms:
                    run.warnings.append(f"{label} slow: {ms:.0f} ms (warning above {st.latency_warning_ms:g} ms)")
            total = elapsed_ms(start)  # before the session closes: its teardown is not the service's time
        n = len(check.steps)
        steps = f"{n} step{'' if n == 1 else 's'}"
        if check.budget_ms is not None and total > check.budget_ms:
            run.warnings.append(f"{steps} in {total:.0f} ms, over the budget of {check.budget_ms:g} ms")
        elif run.warnings:
            run.warnings.append(f"{steps} in {total:.0f} ms")
        if run.warnings:
            return _result(run, "WARNING", "; ".join(run.warnings), start, total)
        return _result(run, "OK", f"{steps} OK in {total:.0f} ms", start, total)


def _result(run: Run, state: str, output: str, start: float, total: float | None = None, *,
            down: bool = False) -> ProbeResult:
    total = elapsed_ms(start) if total is None else total
    run.perf["total_ms"] = round(total, 3)
    long_output = "\n".join(run.lines)
    if run.snippet:
        long_output += "\n" + run.snippet
    return ProbeResult(state, mask(output), long_output=run.redact(long_output), latency_ms=total,
                       perfdata=dict(run.perf), down=down)


def _render(source: str, run: Run, what: str) -> str:
    try:
        return render(source, {"vars": run.vars})
    except Invalid as exc:
        raise StepFailed(f"{what}: {run.redact(exc.message)}") from exc


def _render_json(value: Any, run: Run) -> Any:
    if isinstance(value, str):
        return _render(value, run, "json_body")
    if isinstance(value, dict):
        return {k: _render_json(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_json(v, run) for v in value]
    return value


def _one_line(value: str, what: str) -> str:
    # A value from a response (or a variable) with CR/LF would add a header or split the request.
    if _LINE_BREAK.search(value):
        raise StepFailed(f"{what} would contain a line break or NUL (from a variable); refused")
    return value


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, (url.host or "").lower(), url.port)


def _may_follow(src: URL, dst: URL) -> bool:
    """Same origin, or the same host moving from http to https (a login page's usual redirect)."""
    if _origin(src) == _origin(dst):
        return True
    return (src.scheme == "http" and dst.scheme == "https" and (src.host or "").lower() == (dst.host or "").lower()
            and dst.port == 443)


async def _step(session: aiohttp.ClientSession, run: Run, n: int, st: SyntheticStep) -> float:
    """One step: render, request (following allowed redirects), assert, extract; its latency in ms."""
    url_text = _one_line(_render(st.url, run, "url"), "the url").strip()
    if not re.match(r"^https?://", url_text):
        raise StepFailed("the url does not start with http:// or https:// after rendering")
    try:
        url = URL(url_text)
    except ValueError as exc:
        raise StepFailed(f"the url is not valid: {run.redact(str(exc))}") from exc
    headers = {k: _one_line(_render(v, run, f"header {k}"), f"header {k}") for k, v in st.headers.items()}
    data = _render(st.body, run, "body").encode() if st.body is not None else None
    json_body = _render_json(st.json_body, run) if st.json_body is not None else None
    method = st.method
    start = time.perf_counter()
    for hop in range(MAX_REDIRECTS + 1):
        status, body, charset, resp_headers, location = await _request(session, run, method, url, headers, data,
                                                                      json_body)
        if status not in REDIRECTS or status in st.expect_status or location is None:
            break
        try:
            nxt = url.join(URL(_one_line(location, "the redirect's Location")))
        except ValueError as exc:
            raise StepFailed(f"HTTP {status} to an invalid Location ({run.redact(str(exc))})") from exc
        if not _may_follow(url, nxt):
            where = run.redact(f"{nxt.scheme}://{nxt.host}:{nxt.port}")
            raise StepFailed(f"HTTP {status} redirects to another origin ({where}); not followed "
                             "(a synthetic step follows redirects to its own origin only)")
        if hop == MAX_REDIRECTS:
            raise StepFailed(f"more than {MAX_REDIRECTS} redirects")
        run.lines.append(f"   HTTP {status} -> {run.redact(nxt.path)}")
        if status == 303 or (status in (301, 302) and method == "POST"):
            method, data, json_body = "GET", None, None  # as browsers do
        url = nxt
    ms = elapsed_ms(start)
    run.lines.append(f"{n}. {st.name}: HTTP {status} in {ms:.0f} ms")
    if status not in st.expect_status:
        expected = ", ".join(str(s) for s in st.expect_status)
        run.snippet = run.redact(decode_body(body[:500], charset))
        raise StepFailed(f"HTTP {status} in {ms:.0f} ms (expected {expected})")
    text: str | None = None
    if st.body_match is not None or st.body_not_match is not None:
        text = decode_body(body, charset)
        if st.body_match is not None and not compile_safe_regex(st.body_match).search(text):
            run.snippet = run.redact(text[:500])
            raise StepFailed(f"body does not match {st.body_match!r} (HTTP {status} in {ms:.0f} ms)")
        if st.body_not_match is not None and compile_safe_regex(st.body_not_match).search(text):
            run.snippet = run.redact(text[:500])
            raise StepFailed(f"body matches {st.body_not_match!r} (HTTP {status} in {ms:.0f} ms)")
    if st.extract:
        _extract(run, st, body, charset, text, resp_headers)
    return ms


async def _request(session: aiohttp.ClientSession, run: Run, method: str, url: URL, headers: dict[str, str],
                   data: bytes | None, json_body: Any) -> tuple[int, bytes, str, dict[str, str], str | None]:
    verify = run.check.verify_tls
    try:
        async with session.request(method, url, headers=headers or None, data=data, json=json_body,
                                   ssl=verify, allow_redirects=False) as resp:
            body = await read_capped(resp)
            # The last value of each header, by lower-case name (the case people write varies).
            got = {k.lower(): v for k, v in resp.headers.items()}
            return resp.status, body, resp.charset or "utf-8", got, resp.headers.get("Location")
    except aiohttp.ClientConnectorCertificateError as exc:
        raise StepFailed(run.redact(f"TLS certificate error ({exc.host}:{exc.port}): {exc.certificate_error}")) from exc
    except aiohttp.ClientSSLError as exc:
        raise StepFailed(run.redact(f"TLS error ({exc.host}:{exc.port}): {exc.os_error}")) from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ConnectionRefusedError):
            raise StepFailed(run.redact(f"connection refused ({exc.host}:{exc.port})"), down=True) from exc
        reason = exc.os_error.strerror or exc.os_error
        raise StepFailed(run.redact(f"cannot connect to {exc.host}:{exc.port}: {reason}"), down=True) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise StepFailed("server closed the connection without a response") from exc
    except aiohttp.ClientResponseError as exc:
        raise StepFailed(run.redact(f"invalid HTTP response: {exc.message}")) from exc
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: aiohttp refusing a header or URL
        raise StepFailed(run.redact(f"HTTP request failed: {type(exc).__name__}: {exc}")) from exc


def _extract(run: Run, st: SyntheticStep, body: bytes, charset: str, text: str | None,
             headers: dict[str, str]) -> None:
    doc: Any = None
    parsed = False
    for name, source in st.extract.items():
        try:
            ex = parse_extract(source)
        except ValueError as exc:  # refused at load too; a catalog loaded without that check lands here
            raise StepFailed(f"extract {name}: {exc}") from exc
        value: str | None
        if ex.kind == "json":
            if not parsed:
                try:
                    doc = json.loads(decode_body(body, charset))
                except ValueError as exc:
                    raise StepFailed(f"extract {name}: the response is not JSON") from exc
                parsed = True
            found = json_lookup(doc, ex.path)
            if is_missing(found):
                raise StepFailed(f"extract {name}: {ex.arg} not found in the response")
            value = found if isinstance(found, str) else json.dumps(found, separators=(",", ":"))
        elif ex.kind == "header":
            value = headers.get(ex.arg.lower())
            if value is None:
                raise StepFailed(f"extract {name}: no {ex.arg} header in the response")
        else:
            assert ex.pattern is not None
            source_text = text if text is not None else decode_body(body[:MAX_REGEX_INPUT * 4], charset)
            m = ex.pattern.search(source_text[:MAX_REGEX_INPUT])
            if m is None or m.group(1) is None:
                raise StepFailed(f"extract {name}: {ex.arg!r} does not match the response")
            value = m.group(1)
        run.vars[name] = value[:MAX_VALUE]

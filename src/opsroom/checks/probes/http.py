"""HTTP probe: status, body match, latency and the certificate's days left, over the shared
keep-alive session or, with ``fresh_connection``, over a new connection for every probe."""

from __future__ import annotations

import datetime as dt
import functools
import time
from typing import ClassVar

import aiohttp
from cryptography import x509

from opsroom.catalog.schema import HttpCheck
from opsroom.checks.probes.base import USER_AGENT, Probe, ProbeContext, ProbeResult, compile_regex, elapsed_ms

# Enough to match a health page; a bigger body is cut, not read into memory.
MAX_BODY = 1 << 20


def _host_port(exc: aiohttp.ClientConnectorError) -> str:
    return f"{exc.host}:{exc.port}"


class HttpProbe(Probe[HttpCheck]):
    type: ClassVar[str] = "http"

    async def probe(self, check: HttpCheck, ctx: ProbeContext) -> ProbeResult:
        if check.fresh_connection:
            # A session and connector of its own, closed when the probe ends: its pool starts
            # empty, so no kept-alive connection of another probe, or of this check's last run,
            # can answer for it. (Not force_close: that drops the connection as soon as the body
            # is in, before the certificate can be read from it.)
            connector = aiohttp.TCPConnector(limit=1, use_dns_cache=False)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                             trust_env=False, headers={"User-Agent": USER_AGENT}) as session:
                return await self._request(check, session)
        return await self._request(check, ctx.session())

    async def _request(self, check: HttpCheck, session: aiohttp.ClientSession) -> ProbeResult:
        start = time.perf_counter()
        expires: float | None = None
        try:
            async with session.request(
                check.method, check.url, headers=check.headers or None, data=check.body,
                ssl=check.verify_tls, allow_redirects=False,
            ) as resp:
                if check.url.startswith("https:") and (check.cert_warning_days or check.cert_critical_days):
                    expires = _cert_expiry(resp)
                # Read the body even when not matching it: a fully read response lets the
                # connection go back to the pool instead of being closed.
                body = await read_capped(resp)
                status = resp.status
                charset = resp.charset or "utf-8"
        except aiohttp.ClientConnectorCertificateError as exc:
            return ProbeResult("CRITICAL", f"TLS certificate error ({_host_port(exc)}): "
                               f"{exc.certificate_error}", latency_ms=elapsed_ms(start))
        except aiohttp.ClientSSLError as exc:
            return ProbeResult("CRITICAL", f"TLS error ({_host_port(exc)}): {exc.os_error}",
                               latency_ms=elapsed_ms(start))
        except aiohttp.ClientConnectorError as exc:
            # Nothing answered at all: the service is down, not merely unhealthy.
            if isinstance(exc.os_error, ConnectionRefusedError):
                text = f"connection refused ({_host_port(exc)})"
            else:
                text = f"cannot connect to {_host_port(exc)}: {exc.os_error.strerror or exc.os_error}"
            return ProbeResult("CRITICAL", text, latency_ms=elapsed_ms(start), down=True)
        except aiohttp.ServerDisconnectedError:
            return ProbeResult("CRITICAL", "server closed the connection without a response",
                               latency_ms=elapsed_ms(start))
        except aiohttp.ClientResponseError as exc:
            return ProbeResult("CRITICAL", f"invalid HTTP response: {exc.message}",
                               latency_ms=elapsed_ms(start))
        except aiohttp.ClientError as exc:
            return ProbeResult("CRITICAL", f"HTTP request failed: {type(exc).__name__}: {exc}",
                               latency_ms=elapsed_ms(start))
        ms = elapsed_ms(start)
        perf = {"time_ms": round(ms, 3), "size_bytes": float(len(body))}
        head = f"HTTP {status} in {ms:.0f} ms"
        if status not in check.expect_status:
            expected = ", ".join(str(s) for s in check.expect_status)
            return ProbeResult("CRITICAL", f"HTTP {status} (expected {expected}) in {ms:.0f} ms",
                               long_output=_snippet(body, charset), latency_ms=ms, perfdata=perf)
        if check.body_match is not None:
            text = decode_body(body, charset)
            if not compile_regex(check.body_match).search(text):
                return ProbeResult("CRITICAL", f"body does not match {check.body_match!r} ({head})",
                                   long_output=_snippet(body, charset), latency_ms=ms, perfdata=perf)
        state, text = "OK", head
        if check.latency_critical_ms is not None and ms > check.latency_critical_ms:
            state, text = "CRITICAL", f"{head} (critical above {check.latency_critical_ms:g} ms)"
        elif check.latency_warning_ms is not None and ms > check.latency_warning_ms:
            state, text = "WARNING", f"{head} (warning above {check.latency_warning_ms:g} ms)"
        if expires is not None:
            days = (expires - time.time()) / 86400.0
            perf["cert_days"] = round(days, 2)
            cert_state = ("CRITICAL" if check.cert_critical_days and days < check.cert_critical_days
                          else "CRITICAL" if days <= 0  # expired: served anyway (verify_tls: false)
                          else "WARNING" if check.cert_warning_days and days < check.cert_warning_days else "OK")
            if cert_state != "OK":
                text = f"{_cert_text(days, expires)}; {text}"
                if _RANK[cert_state] > _RANK[state]:
                    state = cert_state
        return ProbeResult(state, text, latency_ms=ms, perfdata=perf)


_RANK = {"OK": 0, "WARNING": 1, "CRITICAL": 2}


def _cert_expiry(resp: aiohttp.ClientResponse) -> float | None:
    """notAfter of the peer's certificate, as a Unix time; None when it cannot be read.

    Read on every https probe, from whichever connection served it, kept-alive or new:
    a reused connection still holds the certificate it was opened with, and a rotated
    certificate shows as soon as the pool opens a new connection (keepalive_timeout).
    The DER bytes are the same every time, so parsing is cached by them and a probe pays
    one getpeercert() copy. The binary form is read because the decoded one is empty
    when the certificate was not verified (verify_tls: false).
    """
    conn = resp.connection
    transport = conn.transport if conn is not None else None
    if transport is None:
        # An empty body releases the connection before we get here; the protocol (aiohttp's
        # handler for that connection) still holds the transport, back in the pool.
        transport = getattr(getattr(resp, "_protocol", None), "transport", None)
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return _not_after(der) if der else None


@functools.lru_cache(maxsize=1024)
def _not_after(der: bytes) -> float | None:
    try:
        return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    except ValueError:  # a certificate cryptography cannot parse: no figure rather than a failed probe
        return None


def _cert_text(days: float, expires: float) -> str:
    date = dt.datetime.fromtimestamp(expires, dt.UTC).date().isoformat()
    if days <= 0:
        ago = -days
        return f"certificate expired {_span(ago)} ago ({date})"
    return f"certificate expires in {_span(days)} ({date})"


def _span(days: float) -> str:
    if days < 1:
        hours = round(days * 24)
        return f"{hours} hour{'' if hours == 1 else 's'}"
    n = round(days)
    return f"{n} day{'' if n == 1 else 's'}"


async def read_capped(resp: aiohttp.ClientResponse) -> bytes:
    # StreamReader.read(n) returns whatever chunk arrived, so loop until EOF or the cap.
    chunks: list[bytes] = []
    size = 0
    while size < MAX_BODY:
        chunk = await resp.content.read(MAX_BODY - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def decode_body(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset, errors="replace")
    except LookupError:  # a server announcing a charset Python does not know
        return body.decode("utf-8", errors="replace")


def _snippet(body: bytes, charset: str) -> str:
    """The start of an unexpected body: often the error page says why."""
    return decode_body(body[:500], charset)

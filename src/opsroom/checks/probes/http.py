"""HTTP probe: status, body match and latency over the shared keep-alive session."""

from __future__ import annotations

import time
from typing import ClassVar

import aiohttp

from opsroom.catalog.schema import HttpCheck
from opsroom.checks.probes.base import Probe, ProbeContext, ProbeResult, compile_regex, elapsed_ms

# Enough to match a health page; a bigger body is cut, not read into memory.
MAX_BODY = 1 << 20


def _host_port(exc: aiohttp.ClientConnectorError) -> str:
    return f"{exc.host}:{exc.port}"


class HttpProbe(Probe[HttpCheck]):
    type: ClassVar[str] = "http"

    async def probe(self, check: HttpCheck, ctx: ProbeContext) -> ProbeResult:
        start = time.perf_counter()
        try:
            async with ctx.session().request(
                check.method, check.url, headers=check.headers or None, data=check.body,
                ssl=check.verify_tls, allow_redirects=False,
            ) as resp:
                # Read the body even when not matching it: a fully read response lets the
                # connection go back to the pool instead of being closed.
                body = await _read_capped(resp)
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
            text = _decode(body, charset)
            if not compile_regex(check.body_match).search(text):
                return ProbeResult("CRITICAL", f"body does not match {check.body_match!r} ({head})",
                                   long_output=_snippet(body, charset), latency_ms=ms, perfdata=perf)
        if check.latency_critical_ms is not None and ms > check.latency_critical_ms:
            return ProbeResult("CRITICAL", f"{head} (critical above {check.latency_critical_ms:g} ms)",
                               latency_ms=ms, perfdata=perf)
        if check.latency_warning_ms is not None and ms > check.latency_warning_ms:
            return ProbeResult("WARNING", f"{head} (warning above {check.latency_warning_ms:g} ms)",
                               latency_ms=ms, perfdata=perf)
        return ProbeResult("OK", head, latency_ms=ms, perfdata=perf)


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
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


def _decode(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset, errors="replace")
    except LookupError:  # a server announcing a charset Python does not know
        return body.decode("utf-8", errors="replace")


def _snippet(body: bytes, charset: str) -> str:
    """The start of an unexpected body: often the error page says why."""
    return _decode(body[:500], charset)

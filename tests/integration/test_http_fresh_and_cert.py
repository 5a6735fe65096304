"""HTTP checks that do not hide a failure: a fresh connection per probe, and the certificate's days
left. Real servers on 127.0.0.1 with certificates made here; no mocks."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opsroom.catalog.schema import HttpCheck
from opsroom.checks.probes import ProbeContext, get_probe

# --- a server that stops accepting but keeps serving its open connections ----


class Closing:
    """HTTP/1.1 keep-alive on raw asyncio: after `accept` connections the listening socket is
    closed (new connections are refused) while the accepted ones keep answering."""

    def __init__(self, accept: int) -> None:
        self.accept = accept
        self.accepted = 0
        self.served = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        if self.accepted >= self.accept and self.server is not None:
            self.server.close()  # the listener only: open connections stay (no wait_closed)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                self.served += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                             b"Connection: keep-alive\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    def close(self) -> None:
        for w in self.writers:
            w.close()


async def test_kept_alive_check_stays_ok_but_fresh_connection_check_is_critical() -> None:
    target = Closing(accept=1)
    port = await target.start()
    url = f"http://127.0.0.1:{port}/health"
    ctx = ProbeContext()
    probe = get_probe("http")
    kept = HttpCheck(name="kept", type="http", url=url, timeout=2)
    fresh = HttpCheck(name="fresh", type="http", url=url, timeout=2, fresh_connection=True)
    try:
        first = await probe.run(kept, ctx)
        assert first.state == "OK", first.output
        assert target.accepted == 1
        await asyncio.sleep(0.05)
        # The listener is gone: the kept-alive check is served by the connection it already has.
        again = await probe.run(kept, ctx)
        assert again.state == "OK", again.output
        assert target.served == 2 and target.accepted == 1
        # The fresh-connection check must open its own, and nothing accepts it.
        result = await probe.run(fresh, ctx)
        assert result.state == "CRITICAL", result.output
        assert "connection refused" in result.output
        assert result.down
        assert target.served == 2
    finally:
        await ctx.close()
        target.close()


async def test_fresh_connection_opens_a_new_connection_every_probe() -> None:
    target = Closing(accept=10)
    port = await target.start()
    ctx = ProbeContext()
    check = HttpCheck(name="fresh", type="http", url=f"http://127.0.0.1:{port}/", fresh_connection=True)
    try:
        for _ in range(3):
            result = await get_probe("http").run(check, ctx)
            assert result.state == "OK", result.output
        assert target.accepted == 3 and target.served == 3
        kept = HttpCheck(name="kept", type="http", url=f"http://127.0.0.1:{port}/")
        for _ in range(3):
            assert (await get_probe("http").run(kept, ctx)).state == "OK"
        assert target.accepted == 4 and target.served == 6  # the default reuses its one connection
    finally:
        await ctx.close()
        target.close()
        if target.server is not None:
            target.server.close()


# --- certificates made by the test -----------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certs(tmp: Path, days_left: float) -> tuple[Path, Path, Path]:
    """A self-signed CA and a leaf for 127.0.0.1 expiring `days_left` days from now (negative: expired)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("opsroom test CA")).issuer_name(_name("opsroom test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=400)).not_valid_after(now + dt.timedelta(days=400))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=300)).not_valid_after(now + dt.timedelta(days=days_left))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path, ca_path = tmp / "leaf.pem", tmp / "leaf.key", tmp / "ca.pem"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, ca_path


Serve = Callable[[float], Any]


@pytest.fixture
async def https(tmp_path: Path) -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def serve(days_left: float) -> str:
        d = tmp_path / f"c{len(runners)}"
        d.mkdir()
        cert, key, _ = make_certs(d, days_left)
        sslctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        sslctx.load_cert_chain(cert, key)
        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def empty(request: web.Request) -> web.Response:
            return web.Response(status=204)

        app = web.Application()
        app.router.add_get("/", ok)
        app.router.add_get("/empty", empty)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sslctx)
        await site.start()
        return f"https://127.0.0.1:{runner.addresses[0][1]}"

    try:
        yield serve
    finally:
        for r in runners:
            await r.cleanup()


async def _run(url: str, **kw: Any) -> Any:
    ctx = ProbeContext()
    try:
        check = HttpCheck(name="tls", type="http", url=url, verify_tls=False, **kw)
        return await get_probe("http").run(check, ctx)
    finally:
        await ctx.close()


async def test_certificate_five_days_from_expiry_is_warning(https: Serve) -> None:
    base = await https(5)
    result = await _run(base + "/")
    assert result.state == "WARNING", result.output
    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(days=5)).date().isoformat()
    assert f"certificate expires in 5 days ({expiry})" in result.output
    assert 4.9 < result.perfdata["cert_days"] <= 5.0


async def test_certificate_two_days_from_expiry_is_critical(https: Serve) -> None:
    result = await _run(await https(2) + "/")
    assert result.state == "CRITICAL", result.output
    assert "certificate expires in 2 days" in result.output


async def test_certificate_thirty_days_is_ok_with_cert_days(https: Serve) -> None:
    result = await _run(await https(30) + "/")
    assert result.state == "OK", result.output
    assert 29.9 < result.perfdata["cert_days"] <= 30.0
    assert "certificate" not in result.output


async def test_expired_certificate_is_critical(https: Serve) -> None:
    result = await _run(await https(-3) + "/")
    assert result.state == "CRITICAL", result.output
    assert "certificate expired 3 days ago" in result.output
    assert result.perfdata["cert_days"] < -2.9


async def test_expired_certificate_is_critical_even_with_thresholds_off(https: Serve) -> None:
    result = await _run(await https(-1) + "/", cert_warning_days=1)
    assert result.state == "CRITICAL", result.output
    off = await _run(await https(5) + "/", cert_warning_days=0, cert_critical_days=0)
    assert off.state == "OK" and "cert_days" not in off.perfdata


async def test_thresholds_are_configurable(https: Serve) -> None:
    base = await https(20)
    assert (await _run(base + "/", cert_warning_days=30)).state == "WARNING"
    assert (await _run(base + "/", cert_warning_days=30, cert_critical_days=25)).state == "CRITICAL"


async def test_certificate_read_on_kept_alive_connection_and_empty_body(https: Serve) -> None:
    base = await https(5)
    ctx = ProbeContext()
    try:
        for path in ("/", "/", "/empty", "/empty"):
            check = HttpCheck(name="tls", type="http", url=base + path, verify_tls=False, expect_status=[200, 204])
            result = await get_probe("http").run(check, ctx)
            assert result.state == "WARNING", (path, result.output)
            assert "cert_days" in result.perfdata
    finally:
        await ctx.close()


async def test_certificate_read_on_fresh_connection(https: Serve) -> None:
    result = await _run(await https(2) + "/", fresh_connection=True)
    assert result.state == "CRITICAL" and "expires in 2 days" in result.output


async def test_verified_tls_with_untrusted_ca_still_fails_as_before(https: Serve) -> None:
    ctx = ProbeContext()
    try:
        check = HttpCheck(name="tls", type="http", url=await https(30) + "/")
        result = await get_probe("http").run(check, ctx)
        assert result.state == "CRITICAL" and "TLS certificate error" in result.output
    finally:
        await ctx.close()


async def test_plain_http_has_no_cert_days() -> None:
    target = Closing(accept=5)
    port = await target.start()
    try:
        result = await _run(f"http://127.0.0.1:{port}/")
        assert result.state == "OK" and "cert_days" not in result.perfdata
    finally:
        target.close()
        if target.server is not None:
            target.server.close()

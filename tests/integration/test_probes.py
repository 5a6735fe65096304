"""Probes against real local servers, processes and plugin scripts; no mocks."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web

from opsroom.catalog.schema import CommandCheck, HttpCheck, ProcessCheck, TcpCheck
from opsroom.checks.probes import PROBES, ProbeContext, ProbeResult, get_probe, parse_output, parse_perfdata

# --- fixtures -------------------------------------------------------------


class Target:
    def __init__(self, port: int, peers: list[Any]) -> None:
        self.port = port
        self.peers = peers

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    peers: list[Any] = []

    async def ok(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="status: healthy\nversion=1.2.3\n")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=503, text="database unreachable")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "5")))
        return web.Response(text="late")

    async def echo(request: web.Request) -> web.Response:
        body = await request.text()
        agent = request.headers.get("User-Agent", "")
        return web.Response(text=f"{request.method} {request.headers.get('X-Probe', '-')} {body} {agent}")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/fail", fail)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/echo", echo)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Target(port, peers)
    finally:
        await runner.cleanup()


@pytest.fixture
def closed_port() -> int:
    # Bind, learn the port, close: nothing listens there for the test's duration.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "37.123"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


async def run(check: Any, ctx: ProbeContext) -> ProbeResult:
    return await get_probe(check.type).run(check, ctx)


def http(url: str, **kw: Any) -> HttpCheck:
    return HttpCheck(name="web", type="http", url=url, **kw)


# --- http -----------------------------------------------------------------


async def test_http_ok_reuses_one_connection(target: Target, ctx: ProbeContext) -> None:
    for _ in range(5):
        r = await run(http(target.url("/ok")), ctx)
        assert r.state == "OK" and r.output.startswith("HTTP 200 in ") and r.output.endswith(" ms")
        assert not r.down and r.perfdata["time_ms"] == pytest.approx(r.latency_ms, abs=0.01)
    assert len(set(target.peers)) == 1  # keep-alive: one client socket for all five


async def test_http_unexpected_status(target: Target, ctx: ProbeContext) -> None:
    r = await run(http(target.url("/fail")), ctx)
    assert r.state == "CRITICAL" and r.output.startswith("HTTP 503 (expected 200)")
    assert "database unreachable" in r.long_output and not r.down
    r = await run(http(target.url("/fail"), expect_status=[200, 503]), ctx)
    assert r.state == "OK"


async def test_http_body_match(target: Target, ctx: ProbeContext) -> None:
    r = await run(http(target.url("/ok"), body_match=r"version=1\.2\.\d"), ctx)
    assert r.state == "OK"
    r = await run(http(target.url("/ok"), body_match=r"version=2\."), ctx)
    assert r.state == "CRITICAL" and r.output.startswith("body does not match 'version=2\\\\.'")


async def test_http_method_headers_body(target: Target, ctx: ProbeContext) -> None:
    r = await run(http(target.url("/echo"), method="POST", headers={"X-Probe": "yes"}, body="ping",
                       body_match="^POST yes ping opsroom-check/1$"), ctx)
    assert r.state == "OK", r.output


async def test_http_latency_thresholds(target: Target, ctx: ProbeContext) -> None:
    url = target.url("/slow?delay=0.15")
    r = await run(http(url, latency_warning_ms=50), ctx)
    assert r.state == "WARNING" and "(warning above 50 ms)" in r.output
    r = await run(http(url, latency_warning_ms=20, latency_critical_ms=50), ctx)
    assert r.state == "CRITICAL" and "(critical above 50 ms)" in r.output
    assert r.latency_ms >= 140


async def test_http_timeout(target: Target, ctx: ProbeContext) -> None:
    t0 = time.monotonic()
    r = await run(http(target.url("/slow?delay=5"), timeout=0.3), ctx)
    assert time.monotonic() - t0 < 1.0
    assert r.state == "CRITICAL" and r.output == "timed out after 0.3s" and not r.down


async def test_http_connection_refused(closed_port: int, ctx: ProbeContext) -> None:
    r = await run(http(f"http://127.0.0.1:{closed_port}/health"), ctx)
    assert r.state == "CRITICAL" and r.down
    assert r.output == f"connection refused (127.0.0.1:{closed_port})"


# --- tcp ------------------------------------------------------------------


async def test_tcp_ok_and_refused(target: Target, closed_port: int, ctx: ProbeContext) -> None:
    r = await run(TcpCheck(name="t", type="tcp", host="127.0.0.1", port=target.port), ctx)
    assert r.state == "OK" and r.output.startswith(f"TCP connect to 127.0.0.1:{target.port} in ")
    assert "time_ms" in r.perfdata
    r = await run(TcpCheck(name="t", type="tcp", host="127.0.0.1", port=closed_port), ctx)
    assert r.state == "CRITICAL" and r.down and r.output == f"connection refused (127.0.0.1:{closed_port})"


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listener that never accepts and whose backlog is full: Linux drops further SYNs, so a
    connect to it hangs (the real shape of a firewalled or overloaded host)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port: int = srv.getsockname()[1]
    filler = socket.socket()
    filler.connect(("127.0.0.1", port))
    try:
        yield port
    finally:
        filler.close()
        srv.close()


async def test_tcp_connect_that_hangs_times_out_and_leaves_nothing_watched(full_backlog: int,
                                                                           ctx: ProbeContext) -> None:
    start = time.monotonic()
    r = await run(TcpCheck(name="t", type="tcp", host="127.0.0.1", port=full_backlog, timeout=0.3), ctx)
    assert (r.state, r.output) == ("CRITICAL", "timed out after 0.3s")
    assert time.monotonic() - start < 1.0
    assert len(ctx.connects) == 0 and len(ctx.deadlines) == 0


async def test_tcp_hundreds_at_once_each_get_their_own_answer(target: Target, closed_port: int,
                                                               ctx: ProbeContext) -> None:
    ports = [target.port if i % 3 else closed_port for i in range(500)]
    results = await asyncio.gather(*(run(TcpCheck(name=f"t{i}", type="tcp", host="127.0.0.1", port=port), ctx)
                                     for i, port in enumerate(ports)))
    for port, r in zip(ports, results, strict=True):
        if port == target.port:
            assert r.state == "OK", r.output
        else:
            assert r.state == "CRITICAL" and r.output == f"connection refused (127.0.0.1:{closed_port})"
    assert len(ctx.connects) == 0


async def test_tcp_by_name_tries_each_address(target: Target, ctx: ProbeContext) -> None:
    """localhost may resolve to ::1 first, where nothing listens: the next address is tried."""
    r = await run(TcpCheck(name="t", type="tcp", host="localhost", port=target.port), ctx)
    assert r.state == "OK", r.output


async def test_tcp_on_the_plain_selector_path(target: Target, closed_port: int, ctx: ProbeContext,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Where epoll is missing the probe uses loop.sock_connect, with the same answers."""
    import select

    monkeypatch.delattr(select, "epoll")
    assert (await run(TcpCheck(name="t", type="tcp", host="127.0.0.1", port=target.port), ctx)).state == "OK"
    r = await run(TcpCheck(name="t", type="tcp", host="127.0.0.1", port=closed_port), ctx)
    assert r.output == f"connection refused (127.0.0.1:{closed_port})"


# --- process --------------------------------------------------------------


def proc_check(**kw: Any) -> ProcessCheck:
    return ProcessCheck(name="p", type="process", **kw)


async def test_process_by_name_and_cmdline(sleeper: subprocess.Popen[bytes], ctx: ProbeContext) -> None:
    r = await run(proc_check(process_name="sleep", cmdline_match=r"^sleep 37\.123$"), ctx)
    assert r.state == "OK" and r.perfdata["count"] == 1 and str(sleeper.pid) in r.output
    r = await run(proc_check(cmdline_match=r"^sleep 37\.123$", min_count=2), ctx)
    assert r.state == "CRITICAL" and not r.down and "expected at least 2" in r.output
    r = await run(proc_check(process_name="no-such-daemon-xyz"), ctx)
    assert r.state == "CRITICAL" and r.down and r.output == "no process matches name=no-such-daemon-xyz"


async def test_process_gone_after_kill(sleeper: subprocess.Popen[bytes], ctx: ProbeContext) -> None:
    check = proc_check(cmdline_match=r"^sleep 37\.123$")
    assert (await run(check, ctx)).state == "OK"
    sleeper.kill()
    sleeper.wait()
    r = await run(check, ctx)
    assert r.state == "CRITICAL" and r.down


async def test_process_pidfile(sleeper: subprocess.Popen[bytes], tmp_path: Path, ctx: ProbeContext) -> None:
    pidfile = tmp_path / "svc.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    r = await run(proc_check(pidfile=str(pidfile)), ctx)
    assert r.state == "OK" and f"pid {sleeper.pid}" in r.output
    r = await run(proc_check(pidfile=str(pidfile), process_name="nginx"), ctx)
    assert r.state == "CRITICAL" and r.down

    missing = tmp_path / "missing.pid"
    r = await run(proc_check(pidfile=str(missing)), ctx)
    assert r.state == "CRITICAL" and r.down and r.output == f"pidfile {missing} does not exist"

    dead = subprocess.Popen(["sleep", "0"])
    dead.wait()
    stale = tmp_path / "stale.pid"
    stale.write_text(str(dead.pid))
    if not psutil.pid_exists(dead.pid):  # a reused pid would make this case meaningless
        r = await run(proc_check(pidfile=str(stale)), ctx)
        assert r.state == "CRITICAL" and r.down and r.output == f"no process with pid {dead.pid} (from {stale})"

    garbage = tmp_path / "garbage.pid"
    garbage.write_text("not a pid")
    r = await run(proc_check(pidfile=str(garbage)), ctx)
    assert r.state == "CRITICAL" and "holds no pid" in r.output


# --- command --------------------------------------------------------------

PLUGIN = textwrap.dedent("""
    import os, sys, time
    code = int(sys.argv[1])
    if code == 99:
        with open(sys.argv[2], "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(30)
    if code == 98:
        print("secret=" + str(os.environ.get("OPSROOM_TEST_SECRET")) + " foo=" + os.environ.get("FOO", "-"))
        sys.exit(0)
    if code == 97:
        sys.stderr.write("only stderr here\\n")
        sys.exit(2)
    words = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}.get(code, "WEIRD")
    print(f"DISK {words} - free space: / 3326 MB (56%) | '/ free'=3326MB;1000;500;0;5000 inodes=56%;;;0;100")
    print("line two of the long output")
    print("line three | 'load 1m'=0.52;4;8 empty=U")
    print("more=7")
    sys.exit(code)
""")


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "check_disk.py"
    path.write_text(PLUGIN)
    return path


def cmd(plugin: Path, *args: str, **kw: Any) -> CommandCheck:
    return CommandCheck(name="c", type="command", argv=[sys.executable, str(plugin), *args], **kw)


@pytest.mark.parametrize(("code", "state"), [(0, "OK"), (1, "WARNING"), (2, "CRITICAL"), (3, "UNKNOWN")])
async def test_command_exit_codes(plugin: Path, ctx: ProbeContext, code: int, state: str) -> None:
    r = await run(cmd(plugin, str(code)), ctx)
    assert r.state == state
    assert r.output.startswith(f"DISK {state} - free space: / 3326 MB (56%)") and "|" not in r.output
    assert r.long_output == "line two of the long output\nline three "
    assert r.perfdata == {"/ free": 3326.0, "inodes": 56.0, "load 1m": 0.52, "more": 7.0}


async def test_command_other_exit_code_is_unknown(plugin: Path, ctx: ProbeContext) -> None:
    r = await run(cmd(plugin, "7"), ctx)
    assert r.state == "UNKNOWN" and "exited with code 7 (not a Nagios code 0-3)" in r.output
    assert "DISK WEIRD" in r.output


async def test_command_stderr_when_stdout_is_empty(plugin: Path, ctx: ProbeContext) -> None:
    r = await run(cmd(plugin, "97"), ctx)
    assert r.state == "CRITICAL" and r.output == "only stderr here"


async def test_command_timeout_kills_the_plugin(plugin: Path, tmp_path: Path, ctx: ProbeContext) -> None:
    pidfile = tmp_path / "plugin.pid"
    t0 = time.monotonic()
    r = await run(cmd(plugin, "99", str(pidfile), timeout=1.0), ctx)
    assert time.monotonic() - t0 < 2.0
    assert r.state == "CRITICAL" and r.output == "timed out after 1s"
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "plugin still running after its timeout"
        await asyncio.sleep(0.05)


async def test_command_missing_executable(ctx: ProbeContext) -> None:
    r = await run(CommandCheck(name="c", type="command", argv=["/nonexistent/check_foo", "-w", "1"]), ctx)
    assert r.state == "UNKNOWN" and r.output == "command not found: /nonexistent/check_foo"


async def test_command_env_is_minimal(plugin: Path, ctx: ProbeContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSROOM_TEST_SECRET", "hunter2")
    r = await run(cmd(plugin, "98", env={"FOO": "bar"}), ctx)
    assert r.state == "OK" and r.output == "secret=None foo=bar"


# --- the contract ---------------------------------------------------------


def test_registry() -> None:
    assert set(PROBES) >= {"http", "tcp", "process", "command"}
    with pytest.raises(KeyError, match="no probe for check type 'smtp'"):
        get_probe("smtp")


async def test_probe_never_raises(ctx: ProbeContext) -> None:
    # An invalid URL that passes the schema's prefix check still becomes a result, not an exception.
    r = await run(http("http://"), ctx)
    assert r.state in {"UNKNOWN", "CRITICAL"} and r.output


def test_parse_perfdata_forms() -> None:
    assert parse_perfdata("time=0.003s;1;2;0 'a b'=5 'it''s'=1.5e3 bad=U size=-2KB") == {
        "time": 0.003, "a b": 5.0, "it's": 1500.0, "size": -2.0}
    assert parse_output("") == ("", "", {})
    assert parse_output("PING OK\n") == ("PING OK", "", {})


async def test_context_closes_and_recreates(target: Target) -> None:
    c = ProbeContext()
    assert (await run(http(target.url("/ok")), c)).state == "OK"
    await c.close()
    assert (await run(http(target.url("/ok")), c)).state == "OK"  # lazily re-created
    await c.close()
    await c.close()  # idempotent


def test_no_leftover_children() -> None:
    # The timeout test must not leave a plugin behind (checked once more at the end).
    me = psutil.Process(os.getpid())
    assert not [p for p in me.children(recursive=True) if "check_disk.py" in " ".join(p.cmdline())]

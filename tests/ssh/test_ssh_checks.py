"""`via:` checks against the loopback sshd: command plugins and the process table over SSH."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from opsroom.catalog.schema import CommandCheck, Host, ProcessCheck
from opsroom.checks.probes import ProbeContext, ProbeResult, get_probe
from opsroom.ssh import inventory
from tests.ssh import sshd
from tests.ssh.helpers import PY, gone, pgrep

PLUGIN = ("import sys; print('OK - %d args: %s|x=1;2;3 y=2.5s' % (len(sys.argv) - 2, sys.argv[2:]));"
          "print('long output'); sys.exit(int(sys.argv[1]))")


@pytest.fixture
def hosts(server: sshd.Sshd) -> dict[str, Host]:
    return {"box": Host(**server.host("box")), "narrow": Host(**server.host("narrow", max_sessions=2))}


@pytest.fixture
async def pctx(hosts: dict[str, Host]) -> AsyncIterator[ProbeContext]:
    ctx = ProbeContext()
    ctx.hosts = lambda: hosts
    try:
        yield ctx
    finally:
        await ctx.close()  # closes its SSH pool too


def command(argv: list[str], via: str = "box", **extra: Any) -> CommandCheck:
    return CommandCheck(name="plugin", type="command", service="svc", argv=argv, via=via, **extra)


async def probe(check: Any, ctx: ProbeContext) -> ProbeResult:
    return await get_probe(check.type).run(check, ctx)


@pytest.mark.parametrize(("code", "state"), [(0, "OK"), (1, "WARNING"), (2, "CRITICAL"), (3, "UNKNOWN")])
async def test_command_via_host_maps_exit_codes_and_perfdata(pctx: ProbeContext, code: int, state: str) -> None:
    result = await probe(command([PY, "-c", PLUGIN, str(code), "a b; echo injected", "$(id)"]), pctx)
    assert result.state == state
    assert result.output == "OK - 2 args: ['a b; echo injected', '$(id)']"
    assert result.perfdata == {"x": 1.0, "y": 2.5}
    assert result.long_output == "long output"


async def test_command_via_host_not_found_and_odd_exit(pctx: ProbeContext) -> None:
    missing = await probe(command(["/nonexistent/check_x"]), pctx)
    assert missing.state == "UNKNOWN" and "command not found on box" in missing.output
    odd = await probe(command(["sh", "-c", "echo odd >&2; exit 9"]), pctx)
    assert odd.state == "UNKNOWN" and "exited with code 9" in odd.output and "odd" in odd.output


async def test_command_via_host_timeout_kills_the_remote_plugin(pctx: ProbeContext) -> None:
    check = command(["sh", "-c", "sleep 419.5 & sleep 420.5"], timeout=1.0)
    started = time.monotonic()
    result = await probe(check, pctx)
    assert result.state == "CRITICAL" and "timed out" in result.output
    assert time.monotonic() - started < 3
    assert await gone("sleep 4(19|20).5"), pgrep("sleep 4(19|20).5")


async def test_one_connection_per_host_and_reconnect(pctx: ProbeContext) -> None:
    check = command([PY, "-c", PLUGIN, "0"])
    for _ in range(5):
        assert (await probe(check, pctx)).state == "OK"
    pool = inventory.pool_for(pctx)
    assert pool.connects == 1
    (await pool.connection("box")).close()  # the connection dies behind the pool's back
    await asyncio.sleep(0.05)
    assert (await probe(check, pctx)).state == "OK"
    assert pool.connects == 2


async def test_max_sessions_bounds_concurrent_checks(pctx: ProbeContext) -> None:
    check = command(["sh", "-c", "sleep 0.4; echo OK"], via="narrow")
    started = time.monotonic()
    results = await asyncio.gather(*(probe(check, pctx) for _ in range(6)))
    assert all(r.state == "OK" for r in results), results
    assert time.monotonic() - started >= 1.2  # 6 sessions, 2 at a time, 0.4 s each


async def test_unknown_host_is_unknown_not_a_crash(pctx: ProbeContext) -> None:
    result = await probe(command(["true"], via="elsewhere"), pctx)
    assert result.state == "UNKNOWN" and "no host called 'elsewhere'" in result.output


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "421.75"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def process(**fields: Any) -> ProcessCheck:
    return ProcessCheck(name="proc", type="process", service="svc", via="box", **fields)


async def test_process_via_host_by_name_and_command_line(pctx: ProbeContext,
                                                         sleeper: subprocess.Popen[bytes]) -> None:
    found = await probe(process(process_name="sleep", cmdline_match=r"421\.75"), pctx)
    assert found.state == "OK" and f"pid {sleeper.pid}" in found.output and "on box" in found.output
    assert found.perfdata == {"count": 1.0}
    too_few = await probe(process(cmdline_match=r"^sleep 421\.75$", min_count=2), pctx)
    assert too_few.state == "CRITICAL" and "expected at least 2" in too_few.output
    # The listing's own shell and ps are not counted (their command line names the listing).
    own = await probe(process(cmdline_match="@@opsroom@@|ps -e"), pctx)
    assert own.state == "CRITICAL" and own.perfdata == {"count": 0.0}
    sleeper.kill()
    sleeper.wait()
    gone_ = await probe(process(cmdline_match=r"421\.75"), pctx)
    assert gone_.state == "CRITICAL" and gone_.down


async def test_process_via_host_by_pidfile(pctx: ProbeContext, tmp_path: Path,
                                           sleeper: subprocess.Popen[bytes]) -> None:
    pidfile = tmp_path / "svc.pid"
    missing = await probe(process(pidfile=str(pidfile)), pctx)
    assert missing.state == "CRITICAL" and "does not exist on box" in missing.output
    pidfile.write_text(f"{sleeper.pid}\n")
    assert (await probe(process(pidfile=str(pidfile)), pctx)).state == "OK"
    wrong_name = await probe(process(pidfile=str(pidfile), process_name="nginx"), pctx)
    assert wrong_name.state == "CRITICAL"
    pidfile.write_text("garbage")
    assert "holds no pid" in (await probe(process(pidfile=str(pidfile)), pctx)).output


async def test_a_plugin_flooding_stderr_still_finishes(pctx: ProbeContext) -> None:
    flood = "import sys; sys.stderr.write('e' * 4_000_000); sys.stderr.flush(); print('OK - survived|n=1')"
    result = await probe(command([PY, "-c", flood], timeout=20.0), pctx)
    assert result.state == "OK" and result.output == "OK - survived" and result.perfdata == {"n": 1.0}

"""The `command` check against Debian's real monitoring-plugins, run through opsroom's own monitor.

Each check is declared in a catalog, booted, and run with `Monitor.run_check`: the same path the
scheduler takes, so the state the room would hear and the perfdata /metrics exports are what is
asserted, not a probe called by hand.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from opsroom.runtime import Runtime
from tests.factories import free_port, write_catalog
from tests.inprocess import booted
from tests.integration.conftest import PAGE

PLUGINS = Path("/usr/lib/nagios/plugins")


def _catalog(tmp: Path, checks: list[dict[str, Any]]) -> Path:
    for c in checks:
        c.setdefault("type", "command")
        c.setdefault("service", "svc")
        c.setdefault("max_attempts", 1)  # one result is a hard state: what the room would hear
    return write_catalog(tmp / "catalog", {
        "environments": [{"name": "test"}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "checks": checks,
        "rooms": [{"name": "ops"}],
    })


async def _run(rt: Runtime, name: str) -> tuple[str, str, dict[str, float]]:
    """Run one check through the monitor; the state, output and perfdata it recorded."""
    mon = rt.monitor
    assert mon is not None
    await mon.run_check(name)
    st, last = mon.status[name], mon.last[name]
    assert st.state_type == "hard"
    return st.state, last.output, last.perfdata


def test_the_plugins_are_installed() -> None:
    for name in ("check_dummy", "check_http", "check_tcp", "check_procs", "check_disk"):
        assert (PLUGINS / name).is_file(), f"{name} missing: apt-get install monitoring-plugins"


async def test_check_dummy_each_exit_code_maps_to_its_state(tmp_path: Path) -> None:
    states = ["OK", "WARNING", "CRITICAL", "UNKNOWN"]
    checks = [{"name": f"dummy-{code}", "argv": [str(PLUGINS / "check_dummy"), str(code), f"text for {code}"]}
              for code in range(4)]
    async with booted(tmp_path, _catalog(tmp_path, checks)) as (rt, _fake):
        for code, want in enumerate(states):
            state, output, perfdata = await _run(rt, f"dummy-{code}")
            assert (state, output, perfdata) == (want, f"{want}: text for {code}", {})


async def test_check_http_ok_with_time_and_size_as_numbers(tmp_path: Path, http_target: int) -> None:
    checks = [{"name": "web", "argv": [str(PLUGINS / "check_http"), "-H", "127.0.0.1", "-p", str(http_target)]}]
    async with booted(tmp_path, _catalog(tmp_path, checks)) as (rt, _fake):
        state, output, perfdata = await _run(rt, "web")
    assert state == "OK" and output.startswith("HTTP OK: HTTP/1.1 200 OK"), output
    assert set(perfdata) == {"time", "size"}
    # size counts the whole response (status line and headers too); time is seconds, unit dropped.
    assert len(PAGE) < perfdata["size"] < len(PAGE) + 1000
    assert 0.0 <= perfdata["time"] < 5.0 and isinstance(perfdata["time"], float)


async def test_check_tcp_ok_then_critical_on_a_closed_port(tmp_path: Path, http_target: int) -> None:
    closed = free_port()  # bound and released: nothing listens there now
    checks = [{"name": "tcp-open", "argv": [str(PLUGINS / "check_tcp"), "-H", "127.0.0.1", "-p", str(http_target)]},
              {"name": "tcp-closed", "argv": [str(PLUGINS / "check_tcp"), "-H", "127.0.0.1", "-p", str(closed)]}]
    async with booted(tmp_path, _catalog(tmp_path, checks)) as (rt, _fake):
        state, output, perfdata = await _run(rt, "tcp-open")
        assert state == "OK" and f"port {http_target}" in output and "time" in perfdata
        state, output, _ = await _run(rt, "tcp-closed")
        assert state == "CRITICAL" and "Connection refused" in output


async def test_check_procs_finds_this_process_and_misses_an_absent_one(tmp_path: Path) -> None:
    # A process of the test's own, not the test runner: check_procs skips its own parent, which
    # is this very process when the suite runs as `pytest` (one process of that name).
    marker = f"{os.getpid() % 1000}.{time.time_ns() % 10**6:06d}"
    sleeper = subprocess.Popen(["sleep", marker])
    checks = [{"name": "procs-me", "argv": [str(PLUGINS / "check_procs"), "-C", "sleep", "-a", marker, "-c", "1:1"]},
              {"name": "procs-none", "argv": [str(PLUGINS / "check_procs"), "-C", "no-such-proc-x", "-c", "1:"]}]
    try:
        async with booted(tmp_path, _catalog(tmp_path, checks)) as (rt, _fake):
            state, output, perfdata = await _run(rt, "procs-me")
            assert state == "OK", output
            assert perfdata["procs"] == 1
            state, output, perfdata = await _run(rt, "procs-none")
            assert state == "CRITICAL" and perfdata == {"procs": 0.0}, output
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_check_disk_perfdata_with_units_is_bytes_as_a_number(tmp_path: Path) -> None:
    checks = [{"name": "disk", "argv": [str(PLUGINS / "check_disk"), "-w", "1%", "-c", "1%", "-p", "/tmp"]}]
    async with booted(tmp_path, _catalog(tmp_path, checks)) as (rt, _fake):
        state, output, perfdata = await _run(rt, "disk")
    assert state in ("OK", "WARNING", "CRITICAL") and output.startswith("DISK "), output
    (label, used), = perfdata.items()  # one filesystem: its mount point, the unit (B) dropped
    assert label.startswith("/")
    assert used == pytest.approx(psutil.disk_usage("/tmp").used, rel=0.05)


async def test_a_plugin_that_hangs_is_killed_at_its_timeout_with_its_children(tmp_path: Path) -> None:
    marker = "60.25"  # a sleep length nothing else on this machine uses
    spawner = ("import subprocess, time; subprocess.Popen(['/bin/sleep', '" + marker + "']); time.sleep(60)")
    checks = [{"name": "hang", "argv": ["/bin/sleep", marker], "timeout": "1s"},
              {"name": "hang-kids", "argv": [sys.executable, "-c", spawner], "timeout": "1s"}]

    def left() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            if p.info["cmdline"] == ["/bin/sleep", marker] and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        return found

    async with booted(tmp_path, _catalog(tmp_path, checks)) as (rt, _fake):
        for name in ("hang", "hang-kids"):
            t0 = time.monotonic()
            state, output, _ = await _run(rt, name)
            assert time.monotonic() - t0 < 3.0
            assert (state, output) == ("CRITICAL", "timed out after 1s")
            deadline = time.monotonic() + 2.0
            while left():
                assert time.monotonic() < deadline, f"{name}: a plugin process outlived its timeout: {left()}"
                await asyncio.sleep(0.05)


async def test_exit_code_4_is_unknown(tmp_path: Path) -> None:
    checks = [{"name": "odd", "argv": [sys.executable, "-c", "print('ODD - four|x=1'); raise SystemExit(4)"]}]
    async with booted(tmp_path, _catalog(tmp_path, checks)) as (rt, _fake):
        state, output, perfdata = await _run(rt, "odd")
    assert state == "UNKNOWN" and "exited with code 4" in output and "ODD - four" in output
    assert perfdata == {"x": 1.0}


async def test_a_plugin_that_prints_without_end_is_read_bounded(tmp_path: Path) -> None:
    import tracemalloc

    from opsroom.checks.probes.command import MAX_OUTPUT

    # 40 MB on stdout: kept to MAX_OUTPUT as it is read, never held whole in memory first.
    flood = [sys.executable, "-c", "import sys; [sys.stdout.write('x' * 65536) for _ in range(640)]; sys.exit(1)"]
    async with booted(tmp_path, _catalog(tmp_path, [{"name": "flood", "argv": flood, "timeout": "20s"}])) as (rt, _):
        tracemalloc.start()
        try:
            state, output, _ = await _run(rt, "flood")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert state == "WARNING" and set(output) == {"x"} and len(output) <= MAX_OUTPUT
    assert peak < 8 * MAX_OUTPUT + (4 << 20), f"peak {peak / 1e6:.1f} MB while reading the plugin"

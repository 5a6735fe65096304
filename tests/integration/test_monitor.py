"""The monitor on a real store: state changes, system health announcements, retention, restarts."""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from opsroom.checks.models import CheckResultRow
from opsroom.checks.probes.base import ProbeResult
from opsroom.events import CheckStateChanged, SystemHealthChanged
from opsroom.runtime import Runtime
from tests.factories import small_catalog
from tests.inprocess import booted as _boot
from tests.inprocess import said as _said

T0 = 1_700_000_000.0


def _catalog(tmp: Path) -> Path:
    ok = [sys.executable, "-c", "print('OK - fine')"]
    return small_catalog(
        tmp,
        systems=[{"name": "sys-p", "title": "Shop", "environment": "prod"},
                 {"name": "sys-t", "title": "Shop Test", "environment": "test"}],
        services=[{"name": "svc-x", "system": "sys-p"}, {"name": "svc-y", "system": "sys-p"},
                  {"name": "svc-t", "system": "sys-t"}],
        checks=[{"name": "x-http", "type": "command", "service": "svc-x", "max_attempts": 3, "argv": ok},
                {"name": "y-http", "type": "command", "service": "svc-y", "max_attempts": 2, "argv": ok},
                {"name": "t-http", "type": "command", "service": "svc-t", "max_attempts": 1, "argv": ok}],
    )


def _result(state: str, output: str = "", *, down: bool = False) -> ProbeResult:
    return ProbeResult(state=state, output=output or f"{state} - test", long_output="", latency_ms=1.0,
                       perfdata={}, down=down)


def _changes(rt: Runtime, check: str) -> list[tuple[str, str, str, int]]:
    return [(e.old_state, e.new_state, e.state_type, e.attempt) for e in rt.bus.history
            if isinstance(e, CheckStateChanged) and e.check == check]


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


async def test_soft_to_hard_emits_only_on_changes(tmp_path: Path) -> None:
    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, _fake):
        assert rt.monitor is not None
        for i, state in enumerate(["OK", "CRITICAL", "CRITICAL", "CRITICAL", "CRITICAL", "CRITICAL", "OK", "OK"]):
            rt.monitor.record("x-http", _result(state), now=T0 + i)
        await rt.bus.drain()
        assert _changes(rt, "x-http") == [
            ("OK", "CRITICAL", "soft", 1),
            ("CRITICAL", "CRITICAL", "soft", 2),  # the attempt advanced: early rules may act on it
            ("CRITICAL", "CRITICAL", "hard", 3),
            ("CRITICAL", "OK", "hard", 1),
        ]
        st = rt.monitor.status["x-http"]
        assert (st.state, st.state_type, st.attempt) == ("OK", "hard", 1)
        assert st.since == T0 + 6
        # WARNING -> CRITICAL on a hard problem is a change; another CRITICAL is not.
        rt.monitor.record("t-http", _result("WARNING"), now=T0 + 10)
        rt.monitor.record("t-http", _result("CRITICAL"), now=T0 + 11)
        rt.monitor.record("t-http", _result("CRITICAL"), now=T0 + 12)
        await rt.bus.drain()
        assert [c[1:3] for c in _changes(rt, "t-http")] == [("WARNING", "hard"), ("CRITICAL", "hard")]


async def test_system_health_announced_once_and_healthy_again(tmp_path: Path) -> None:
    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, fake):
        assert rt.monitor is not None
        for i in range(3):
            rt.monitor.record("x-http", _result("CRITICAL", "connection refused", down=True), now=T0 + i)
            if i < 2:  # soft attempts page nobody
                assert not [t for t in await _said(rt, fake) if "unhealthy" in t]
        for i in range(3, 8):  # still CRITICAL: nothing new to say
            rt.monitor.record("x-http", _result("CRITICAL", "connection refused", down=True), now=T0 + i)
        said = await _said(rt, fake)
        assert said == [f"[PROD] Shop is unhealthy: svc-x is not running (check x-http CRITICAL since {_clock(T0)})"]
        assert rt.monitor.system_healthy["sys-p"] is False
        rt.monitor.record("x-http", _result("OK"), now=T0 + 9)
        rt.monitor.record("x-http", _result("OK"), now=T0 + 10)
        said = await _said(rt, fake)
        assert said[1:] == ["[PROD] Shop is healthy again"]
        health = [e for e in rt.bus.history if isinstance(e, SystemHealthChanged)]
        assert [(e.system, e.healthy, e.protected) for e in health] == [("sys-p", False, True), ("sys-p", True, True)]


async def test_second_failing_service_does_not_repeat_the_notice(tmp_path: Path) -> None:
    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, fake):
        assert rt.monitor is not None
        for i in range(3):
            rt.monitor.record("x-http", _result("CRITICAL", down=True), now=T0 + i)
        for i in range(2):
            rt.monitor.record("y-http", _result("CRITICAL", "HTTP 500"), now=T0 + 5 + i)
        rt.monitor.record("x-http", _result("OK"), now=T0 + 10)  # y still failing: not healthy yet
        said = await _said(rt, fake)
        assert len([t for t in said if "unhealthy" in t]) == 1
        assert not [t for t in said if "healthy again" in t]
        rt.monitor.record("y-http", _result("OK"), now=T0 + 11)
        assert (await _said(rt, fake))[-1] == "[PROD] Shop is healthy again"


async def test_unprotected_environment_is_not_marked(tmp_path: Path) -> None:
    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, fake):
        assert rt.monitor is not None
        rt.monitor.record("t-http", _result("CRITICAL", "HTTP 503 in 4 ms"), now=T0)
        rt.monitor.record("t-http", _result("OK"), now=T0 + 1)
        said = await _said(rt, fake)
        assert said == [f"Shop Test is unhealthy: svc-t is critical (check t-http CRITICAL since {_clock(T0)}: "
                        "HTTP 503 in 4 ms)", "Shop Test is healthy again"]
        assert not any(t.startswith("[") for t in said)


async def test_results_are_persisted_with_bounded_retention(tmp_path: Path) -> None:
    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, _fake):
        assert rt.monitor is not None
        rt.settings.check_result_retention = 5
        for i in range(20):
            rt.monitor.record("x-http", _result("OK", f"OK - result {i}"), now=T0 + i)
            if i % 3 == 2:
                await rt.monitor.flush()
        await rt.monitor.flush()
        rt.monitor.record("y-http", _result("OK"), now=T0)
        await rt.monitor.flush()
        async with rt.read() as s:
            rows = list((await s.execute(select(CheckResultRow).where(CheckResultRow.check == "x-http")
                                         .order_by(CheckResultRow.at))).scalars())
            other = (await s.execute(select(func.count()).select_from(CheckResultRow)
                                     .where(CheckResultRow.check == "y-http"))).scalar_one()
        assert 5 <= len(rows) <= 6  # pruned once 20% over retention
        assert rows[-1].output == "OK - result 19"  # the newest are kept
        assert [r.at for r in rows] == [T0 + i for i in range(20 - len(rows), 20)]
        assert other == 1  # pruning one check leaves the others alone


async def test_state_survives_a_restart_without_reannouncing(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    async with _boot(tmp_path, catalog) as (rt, fake):
        assert rt.monitor is not None
        for i in range(3):
            rt.monitor.record("x-http", _result("CRITICAL", down=True), now=T0 + i)
        rt.monitor.record("y-http", _result("CRITICAL", "HTTP 500"), now=T0 + 5)  # soft attempt 1 of 2
        assert len([t for t in await _said(rt, fake) if "unhealthy" in t]) == 1
        before: dict[str, Any] = {n: rt.monitor.status[n] for n in ("x-http", "y-http")}

    async with _boot(tmp_path, catalog) as (rt, fake):
        assert rt.monitor is not None
        x, y = rt.monitor.status["x-http"], rt.monitor.status["y-http"]
        assert (x.state, x.state_type, x.attempt, x.since) == ("CRITICAL", "hard", 3, T0)
        assert (y.state, y.state_type, y.attempt, y.since) == ("CRITICAL", "soft", 1, T0 + 5)
        assert x.history == before["x-http"].history
        assert rt.monitor.system_healthy["sys-p"] is False
        assert rt.monitor.last["x-http"].down is True
        rt.monitor.record("x-http", _result("CRITICAL", down=True), now=T0 + 20)
        await rt.bus.drain()
        assert _changes(rt, "x-http") == []
        assert await _said(rt, fake) == []  # the problem was announced before the restart
        # The soft attempt counts on where it was: one more failure makes it hard.
        rt.monitor.record("y-http", _result("CRITICAL", "HTTP 500"), now=T0 + 21)
        await rt.bus.drain()
        assert _changes(rt, "y-http") == [("CRITICAL", "CRITICAL", "hard", 2)]
        for name in ("x-http", "y-http"):
            rt.monitor.record(name, _result("OK"), now=T0 + 30)
        assert await _said(rt, fake) == ["[PROD] Shop is healthy again"]


async def test_flapping_holds_notices_and_a_settled_problem_is_announced(tmp_path: Path) -> None:
    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, fake):
        assert rt.monitor is not None
        t = T0
        for i in range(14):  # soft CRITICAL / OK flips: flapping, never hard
            t += 1
            rt.monitor.record("y-http", _result("CRITICAL" if i % 2 == 0 else "OK", "HTTP 500"), now=t)
        assert rt.monitor.status["y-http"].flapping
        for _ in range(6):  # hard CRITICAL / OK while flapping: held back
            t += 1
            rt.monitor.record("y-http", _result("CRITICAL", "HTTP 500"), now=t)
            t += 1
            rt.monitor.record("y-http", _result("CRITICAL", "HTTP 500"), now=t)
            t += 1
            rt.monitor.record("y-http", _result("OK"), now=t)
        said = await _said(rt, fake)
        assert said == [next(s for s in said if "flapping" in s)]
        assert said[0].startswith("y-http is flapping (")
        # It settles into a real, lasting problem: once it stops flapping the room must hear it.
        for _ in range(21):
            t += 1
            rt.monitor.record("y-http", _result("CRITICAL", "HTTP 500"), now=t)
        assert not rt.monitor.status["y-http"].flapping
        said = await _said(rt, fake)
        assert said[1] == "y-http stopped flapping"
        assert said[2:] == [f"[PROD] Shop is unhealthy: svc-y is critical "
                            f"(check y-http CRITICAL since {_clock(rt.monitor.status['y-http'].since)}: HTTP 500)"]


async def test_a_cancelled_flush_loses_no_results(tmp_path: Path) -> None:
    """A flush cancelled while it waits for the store (e.g. at shutdown) puts its batch back."""
    import asyncio

    from sqlalchemy import func, select

    from opsroom.checks.models import CheckResultRow

    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, _fake):
        assert rt.monitor is not None and rt._write_lock is not None
        rt.settings.check_result_ok_interval = 0  # keep every result: this is about the flush
        for i in range(50):
            rt.monitor.record("x-http", _result("OK"), now=1000.0 + i)
        async with rt._write_lock:  # the store is busy: the flush takes its batch, then waits
            task = asyncio.get_running_loop().create_task(rt.monitor.flush())
            await asyncio.sleep(0.05)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await rt.monitor.flush()
        async with rt.read() as s:
            stored = (await s.execute(select(func.count()).select_from(CheckResultRow))).scalar_one()
        assert stored == 50


async def test_an_on_demand_run_leaves_the_schedule_alone(tmp_path: Path) -> None:
    """Someone asking `is x running` gets a fresh result; the scheduled cadence keeps its time."""
    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, _fake):
        assert rt.monitor is not None
        rt.monitor.scheduler.add("x-http", 100.0)
        due = rt.monitor.scheduler.next_due("x-http")
        await rt.monitor.run_check("x-http")
        assert rt.monitor.last["x-http"].output
        assert rt.monitor.scheduler.next_due("x-http") == due


async def test_a_steady_check_rewrites_its_state_row_only_on_change_or_once_a_minute(tmp_path: Path) -> None:
    """Thousands of OK results a second must not each rewrite a state row; a change always does."""
    from opsroom.checks.models import CheckStateRow
    from opsroom.checks.results import STATE_REFRESH_S
    from opsroom.domain.check_state import HISTORY_SIZE

    async def row() -> CheckStateRow:
        async with rt.read() as s:
            found = await s.get(CheckStateRow, "x-http")
        assert found is not None
        return found

    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, _fake):
        assert rt.monitor is not None
        rt.settings.check_result_ok_interval = 0  # keep every result: this is about state rows
        t = T0
        for _ in range(HISTORY_SIZE):  # fills the history: every one of these changes the status
            t += 1
            rt.monitor.record("x-http", _result("OK", f"OK at {t}"), now=t)
        await rt.monitor.flush()
        assert (await row()).last_check == t
        filled = t
        for _ in range(10):  # steady: the same status again, well inside the refresh period
            t += 1
            rt.monitor.record("x-http", _result("OK", f"OK at {t}"), now=t)
        await rt.monitor.flush()
        assert (await row()).last_check == filled
        t = filled + STATE_REFRESH_S + 1  # the refresh falls due
        rt.monitor.record("x-http", _result("OK", f"OK at {t}"), now=t)
        await rt.monitor.flush()
        assert ((await row()).last_check, (await row()).last_output) == (t, f"OK at {t}")
        t += 1
        rt.monitor.record("x-http", _result("CRITICAL", "down"), now=t)  # a change: written at once
        await rt.monitor.flush()
        assert ((await row()).state, (await row()).last_check) == ("CRITICAL", t)
        async with rt.read() as s:  # every result is kept whether or not its state row was rewritten
            assert (await s.execute(select(func.count()).select_from(CheckResultRow))).scalar_one() == \
                HISTORY_SIZE + 12


async def test_a_restart_does_not_rewrite_every_stored_state_at_once(tmp_path: Path) -> None:
    """Stored states are already right after a restart: their refreshes are spread, not a burst."""
    from opsroom.checks.models import CheckStateRow
    from opsroom.checks.results import STATE_REFRESH_S
    from opsroom.domain.check_state import HISTORY_SIZE

    catalog = _catalog(tmp_path)
    names = ("x-http", "y-http", "t-http")
    async with _boot(tmp_path, catalog) as (rt, _fake):
        assert rt.monitor is not None
        for i in range(HISTORY_SIZE):
            for name in names:
                rt.monitor.record(name, _result("OK"), now=T0 + i)
    async def last_checks() -> dict[str, float | None]:
        async with rt.read() as s:
            return {r.check: r.last_check for r in (await s.execute(select(CheckStateRow))).scalars()}

    async with _boot(tmp_path, catalog) as (rt, _fake):
        assert rt.monitor is not None
        t = T0 + 100
        for name in names:
            rt.monitor.record(name, _result("OK", "after the restart"), now=t)
        await rt.monitor.flush()
        # Nothing rewritten: the rows already hold these states (from before the restart).
        assert await last_checks() == {n: T0 + HISTORY_SIZE - 1 for n in names}
        while t < T0 + 100 + STATE_REFRESH_S:
            t += 1
            for name in names:
                rt.monitor.record(name, _result("OK", f"at {t}"), now=t)
        await rt.monitor.flush()
        refreshed = await last_checks()
        assert all(T0 + 100 < (refreshed[n] or 0) <= t for n in names)  # each within one period


async def test_a_steady_ok_check_keeps_one_result_a_minute_and_every_problem(tmp_path: Path) -> None:
    from opsroom.domain.check_state import HISTORY_SIZE

    async with _boot(tmp_path, _catalog(tmp_path)) as (rt, _fake):
        assert rt.monitor is not None and rt.monitor.results is not None
        assert rt.settings.check_result_ok_interval == 60.0  # the default
        t = T0
        for _ in range(HISTORY_SIZE):  # a new check: each result changes the status, each is kept
            t += 1
            rt.monitor.record("x-http", _result("OK"), now=t)
        for _ in range(300):  # five minutes of steady OK every second: one kept a minute
            t += 1
            rt.monitor.record("x-http", _result("OK", f"OK at {t}"), now=t)
        problem_at = t + 1
        for i in range(5):  # a problem: every result kept, soft and hard
            rt.monitor.record("x-http", _result("CRITICAL", f"down {i}", down=True), now=problem_at + i)
        rt.monitor.record("x-http", _result("OK", "back"), now=problem_at + 5)  # the recovery: kept
        await rt.monitor.flush()
        async with rt.read() as s:
            rows = list((await s.execute(select(CheckResultRow).where(CheckResultRow.check == "x-http")
                                         .order_by(CheckResultRow.at))).scalars())
        steady = [r for r in rows[HISTORY_SIZE:] if r.at < problem_at]
        assert 4 <= len(steady) <= 6, [r.at for r in steady]
        assert all(b.at - a.at >= 60 for a, b in itertools.pairwise(steady))
        assert [r.output for r in rows if r.at >= problem_at] == [f"down {i}" for i in range(5)] + ["back"]
        assert rt.monitor.results.sampled_out == 300 - len(steady)

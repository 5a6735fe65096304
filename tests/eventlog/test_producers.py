"""Every producer writes its event in the transaction of its change.

The commit of a transaction that wrote to the event log is made to fail (an engine event, after
every statement ran): the change and its event must both be gone. Then the same change commits:
both are there, and the copy published on the bus has the logged copy's uid. A producer that
wrote its event in a transaction of its own would be caught either way (its change would stay).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.engine import Engine

from opsroom import server
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.access.models import UserRow
from opsroom.alerts import service as alerts
from opsroom.alerts import silences
from opsroom.alerts.models import AlertRow, SilenceRow
from opsroom.approvals import service as approvals
from opsroom.approvals.models import ApprovalRow
from opsroom.chat.fake import FakeAdapter
from opsroom.checks.models import CheckStateRow
from opsroom.checks.probes import ProbeResult
from opsroom.config import Settings
from opsroom.eventlog.models import EventRow
from opsroom.events import Event, ExecutionFinished
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests.factories import PASSWORDS, small_catalog

AM_TOKEN = "am-test-token-0123456789abcdef"


class CommitFailer:
    """Fails the commit of the next transaction that inserted an event of the type armed (other
    transactions, e.g. the announcer's, go on)."""

    def __init__(self) -> None:
        self.armed: str | None = None
        self.failed = 0

    def arm(self, type_: str) -> None:
        self.armed = type_

    def executed(self, conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if (self.armed is not None and statement.lstrip().upper().startswith("INSERT INTO EVENT_LOG")
                and f"'{self.armed}'" in repr(parameters)):
            conn.info["wrote_event"] = True

    def commit(self, conn: Any) -> None:
        if conn.info.pop("wrote_event", False) and self.armed is not None:
            self.armed = None
            self.failed += 1
            raise RuntimeError("injected: this commit failed")

    def rollback(self, conn: Any) -> None:
        conn.info.pop("wrote_event", None)


@pytest.fixture
def failer() -> Iterator[CommitFailer]:
    f = CommitFailer()
    hooks = (("after_cursor_execute", f.executed), ("commit", f.commit), ("rollback", f.rollback))
    for name, fn in hooks:
        event.listen(Engine, name, fn)
    try:
        yield f
    finally:
        for name, fn in hooks:
            event.remove(Engine, name, fn)


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[Runtime]:
    catalog = small_catalog(tmp_path, alert_sources=[{"name": "am", "kind": "alertmanager", "token": AM_TOKEN}])
    settings = Settings(data=tmp_path / "data", catalog=catalog)
    runtime = await server.open_runtime(settings)
    await server.start(runtime, adapters=[FakeAdapter()], schedule=False, passwords=PASSWORDS)
    runtime.bus.keep_history = True
    try:
        yield runtime
    finally:
        await server.stop(runtime)


async def logged(rt: Runtime, type_: str) -> list[EventRow]:
    async with rt.read() as s:
        return list((await s.execute(select(EventRow).where(EventRow.type == type_).order_by(EventRow.id))).scalars())


def published(rt: Runtime, type_: str) -> list[Event]:
    return [ev for ev in rt.bus.history if ev.type == type_]


async def test_access_changed(rt: Runtime, failer: CommitFailer) -> None:
    failer.arm("access.changed")
    with pytest.raises(RuntimeError, match="injected"):
        await access.disable_user(rt, actor=SYSTEM, name="dev")
    async with rt.read() as s:
        assert not (await s.execute(select(UserRow.disabled).where(UserRow.name == "dev"))).scalar_one()
    assert await logged(rt, "access.changed") == []
    await access.disable_user(rt, actor=SYSTEM, name="dev")
    [row] = await logged(rt, "access.changed")
    assert row.payload["user"] == "dev" and row.origin == rt.node_id
    assert [ev.uid for ev in published(rt, "access.changed")] == [row.uid]


async def test_approval_requested_decided_and_the_execution(rt: Runtime, failer: CommitFailer) -> None:
    you = await access.actor_by_name(rt, name="you", door="api")
    boss = await access.actor_by_name(rt, name="boss", door="api")
    failer.arm("approval.requested")
    with pytest.raises(RuntimeError, match="injected"):
        await runbooks.request_run(rt, actor=you, runbook="deploy", params={})
    async with rt.read() as s:
        assert (await s.execute(select(ExecutionRow.id))).first() is None
    assert await logged(rt, "approval.requested") == []
    row = await runbooks.request_run(rt, actor=you, runbook="deploy", params={})
    [requested] = await logged(rt, "approval.requested")
    assert requested.payload["execution_id"] == row.id and requested.correlation_id == row.correlation_id
    approval_id = requested.payload["approval_id"]

    failer.arm("approval.decided")
    with pytest.raises(RuntimeError, match="injected"):
        await approvals.decide(rt, actor=boss, approval_id=approval_id, approve=True)
    async with rt.read() as s:
        assert (await s.get_one(ApprovalRow, approval_id)).status == "open"
    assert await logged(rt, "approval.decided") == []
    await approvals.decide(rt, actor=boss, approval_id=approval_id, approve=True)
    assert rt.executor is not None
    await rt.executor.wait(row.id)
    [decided] = await logged(rt, "approval.decided")
    [started] = await logged(rt, "execution.started")
    [finished] = await logged(rt, "execution.finished")
    assert decided.payload["decision"] == "approved"
    assert finished.payload["status"] == "succeeded" and finished.payload["execution_id"] == row.id
    # The bus copies are the logged ones (one uid each).
    for type_, stored in (("approval.decided", decided), ("execution.started", started),
                          ("execution.finished", finished)):
        assert [ev.uid for ev in published(rt, type_)] == [stored.uid], type_


async def test_a_run_without_approval_logs_its_start_with_its_row(rt: Runtime) -> None:
    you = await access.actor_by_name(rt, name="you", door="api")
    row = await runbooks.request_run(rt, actor=you, runbook="count", params={"n": "7"})
    assert rt.executor is not None
    await rt.executor.wait(row.id)
    [started] = await logged(rt, "execution.started")
    [finished] = await logged(rt, "execution.finished")
    assert started.payload["execution_id"] == finished.payload["execution_id"] == row.id
    assert started.id < finished.id
    assert [ev.uid for ev in published(rt, "execution.started")] == [started.uid]


async def test_cancel_and_finish(rt: Runtime, failer: CommitFailer) -> None:
    you = await access.actor_by_name(rt, name="you", door="api")
    row = await runbooks.request_run(rt, actor=you, runbook="deploy", params={})
    failer.arm("execution.finished")
    with pytest.raises(RuntimeError, match="injected"):
        await runbooks.cancel_execution(rt, actor=you, execution_id=row.id)
    async with rt.read() as s:
        assert (await s.get_one(ExecutionRow, row.id)).status == "awaiting_approval"
    assert await logged(rt, "execution.finished") == []
    await runbooks.cancel_execution(rt, actor=you, execution_id=row.id)
    assert [r.payload["decision"] for r in await logged(rt, "approval.decided")] == ["cancelled"]
    assert [r.payload["status"] for r in await logged(rt, "execution.finished")] == ["cancelled"]

    # mark_finished takes the executor's event and writes it with the finished row.
    other = await runbooks.request_run(rt, actor=you, runbook="deploy", params={})
    async with rt.write() as s:  # as if it ran on a worker
        await s.execute(update(ExecutionRow).where(ExecutionRow.id == other.id).values(status="running"))
    ev = ExecutionFinished(execution_id=other.id, runbook="deploy", summary=other.summary, status="failed",
                           duration_s=0.0, message="test")
    failer.arm("execution.finished")
    with pytest.raises(RuntimeError, match="injected"):
        await runbooks.mark_finished(rt, other.id, status="failed", output="", error="x", message="test", event=ev)
    async with rt.read() as s:
        assert (await s.get_one(ExecutionRow, other.id)).status == "running"
    await runbooks.mark_finished(rt, other.id, status="failed", output="", error="x", message="test", event=ev)
    assert ev.uid in [r.uid for r in await logged(rt, "execution.finished")]


def _am_body(*, status: str = "firing", fingerprint: str = "fp-1") -> bytes:
    starts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    alert = {"status": status, "labels": {"alertname": "DiskFull", "severity": "page"},
             "annotations": {"summary": "disk full"}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
             "fingerprint": fingerprint, "generatorURL": "http://prometheus.example/graph"}
    return json.dumps({"version": "4", "status": status, "receiver": "opsroom", "groupKey": "{}:{}",
                       "alerts": [alert], "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                       "externalURL": "http://am.example"}).encode()


async def test_alerts_and_silences(rt: Runtime, failer: CommitFailer) -> None:
    headers = {"authorization": f"Bearer {AM_TOKEN}"}
    failer.arm("alert.fired")
    with pytest.raises(RuntimeError, match="injected"):
        await alerts.receive(rt, source="am", headers=headers, body=_am_body())
    async with rt.read() as s:
        assert (await s.execute(select(AlertRow.id))).first() is None
    assert await logged(rt, "alert.fired") == []
    await alerts.receive(rt, source="am", headers=headers, body=_am_body())
    [fired] = await logged(rt, "alert.fired")
    assert [r.payload["fired"][0]["name"] for r in await logged(rt, "alert.noticed")] == ["DiskFull"]
    assert [ev.uid for ev in published(rt, "alert.fired")] == [fired.uid]

    admin = await access.actor_by_name(rt, name="lead", door="api")
    failer.arm("alert.acknowledged")
    with pytest.raises(RuntimeError, match="injected"):
        await alerts.acknowledge(rt, actor=admin, alert_id=fired.payload["alert_id"])
    assert await logged(rt, "alert.acknowledged") == []
    await alerts.acknowledge(rt, actor=admin, alert_id=fired.payload["alert_id"])
    await alerts.acknowledge(rt, actor=admin, alert_id=fired.payload["alert_id"])  # again: nothing new
    assert len(await logged(rt, "alert.acknowledged")) == 1

    # A silence's event is logged with the outcome of its push (no sender to push to here).
    view = await silences.create(rt, actor=SYSTEM, what="svc", duration_s=600, reason="deploy")
    [changed] = await logged(rt, "alert.silence")
    assert changed.payload["silence_id"] == view["id"] and changed.payload["active"] is True
    await silences.remove(rt, actor=SYSTEM, silence_id=view["id"])
    assert [r.payload["active"] for r in await logged(rt, "alert.silence")] == [True, False]
    async with rt.read() as s:
        assert (await s.get_one(SilenceRow, view["id"])).expired_at is not None


async def test_check_events_go_with_the_state_row(rt: Runtime, failer: CommitFailer) -> None:
    monitor = rt.monitor
    assert monitor is not None and monitor.results is not None
    await monitor.flush()
    failer.arm("check.state_changed")
    monitor.record("svc-cmd", ProbeResult(state="CRITICAL", output="CRITICAL - down"))
    # The bus has it at once (the rules' fast path); the log only with the state row.
    assert [ev.type for ev in rt.bus.history][-1] == "check.state_changed"
    with pytest.raises(RuntimeError, match="injected"):
        await monitor.results._drain_once()
    async with rt.read() as s:
        state = (await s.execute(select(CheckStateRow.state).where(CheckStateRow.check == "svc-cmd"))).scalar()
    assert state != "CRITICAL"
    assert await logged(rt, "check.state_changed") == []
    await monitor.flush()  # put back and written again, together
    async with rt.read() as s:
        state = (await s.execute(select(CheckStateRow.state).where(CheckStateRow.check == "svc-cmd"))).scalar()
    assert state == "CRITICAL"
    [changed] = await logged(rt, "check.state_changed")
    assert changed.payload["new_state"] == "CRITICAL" and changed.correlation_id.startswith("check:svc-cmd:")
    assert changed.uid == [ev for ev in rt.bus.history if ev.type == "check.state_changed"][-1].uid


async def test_rules_leave_another_servers_check_changes_to_it(tmp_path: Path) -> None:
    """The relay puts other servers' events on this bus; a rule fires once, where its check runs."""
    from opsroom.events import CheckStateChanged

    rules = [{"name": "recover-svc", "when": {"check": "svc-cmd", "state": "CRITICAL", "state_type": "hard"},
              "then": {"runbook": "count", "params": {"n": "1"}},
              "policy": {"approval": "none", "max_runs": 100, "window": "1h", "cooldown": "1ms", "verify": None,
                         "escalate": False}}]
    settings = Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path, rules=rules))
    rt = await server.open_runtime(settings)
    await server.start(rt, adapters=[FakeAdapter()], schedule=False, passwords=PASSWORDS)
    try:
        def changed(origin: str | None) -> CheckStateChanged:
            ev = CheckStateChanged(check="svc-cmd", service="svc", system="sys", environment="test", old_state="OK",
                                   new_state="CRITICAL", state_type="hard", attempt=1, max_attempts=1,
                                   output="CRITICAL", since=time.time())
            ev.origin = origin
            return ev

        rt.bus.publish(changed("otherhost:1:abc"))  # as the relay publishes it
        await rt.bus.drain()
        async with rt.read() as s:
            assert (await s.execute(select(ExecutionRow.id))).first() is None, "a relayed change fired a rule here"
        rt.bus.publish(changed(None))  # this server's own monitor
        await rt.bus.drain()
        async with rt.read() as s:
            assert len((await s.execute(select(ExecutionRow.id))).all()) == 1
    finally:
        await server.stop(rt)

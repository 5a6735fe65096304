"""Approvals on a running opsroom: expiry, binding to the runbook version, the same record from every door."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from opsroom import server
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.approvals import service as approvals
from opsroom.approvals.models import ApprovalRow
from opsroom.approvals.views import router as approvals_router
from opsroom.audit import service as audit
from opsroom.audit.models import AuditRecordRow
from opsroom.chat.fake import FakeAdapter
from opsroom.events import ApprovalDecided
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.web import errors
from tests.factories import small_catalog, token_for
from tests.inprocess import ask as _ask
from tests.inprocess import booted as _booted
from tests.inprocess import said as _said
from tests.inprocess import settle as _settle

Running = tuple[Runtime, FakeAdapter]


async def _request_deploy(fake: FakeAdapter, user: str = "you") -> int:
    before = len(fake.sent)
    await fake.say("ops", user, "run deploy")
    try:
        msg = await fake.wait_for(lambda m: "needs approval" in m.text and m in fake.sent[before:], timeout=3)
    except TimeoutError:
        raise AssertionError(f"no approval request; the room said {[m.text for m in fake.sent[before:]]}") from None
    return int(msg.text.rsplit("#", 1)[1].rstrip("."))


async def _execution_of(rt: Runtime, approval_id: int) -> ExecutionRow:
    async with rt.read() as s:
        approval = await s.get(ApprovalRow, approval_id)
        assert approval is not None
        row = await s.get(ExecutionRow, approval.execution_id)
    assert row is not None
    return row


async def _approval(rt: Runtime, approval_id: int) -> ApprovalRow:
    async with rt.read() as s:
        row = await s.get(ApprovalRow, approval_id)
    assert row is not None
    return row


async def _force_expiry(rt: Runtime, approval_id: int) -> None:
    async with rt.write() as s:
        await s.execute(update(ApprovalRow).where(ApprovalRow.id == approval_id).values(expires_at=1.0))


async def test_expired_request_closes_and_a_late_approve_is_refused(running: Running) -> None:
    rt, fake = running
    rt.bus.keep_history = True
    request = await _request_deploy(fake)
    assert [r.id for r in await approvals.list_open(rt, actor=SYSTEM)] == [request]
    await _force_expiry(rt, request)
    # Past its time but not yet swept: it is no longer open to a vote.
    assert await approvals.list_open(rt, actor=SYSTEM) == []
    assert "it has expired" in await _ask(fake, "boss", f"approve {request}")
    mark = len(fake.sent)
    expired = await approvals.expire_due(rt)
    assert [r.id for r in expired] == [request]
    assert await approvals.expire_due(rt) == []  # once only
    execution = await _execution_of(rt, request)
    assert execution.status == "expired" and execution.finished_at is not None
    assert (await _approval(rt, request)).status == "expired"
    said = await _said(rt, fake, mark)
    assert said == [f"request #{request} expired without a decision. Nothing was run."]
    [decided] = [e for e in rt.bus.history if isinstance(e, ApprovalDecided)]
    assert decided.decision == "expired" and decided.correlation_id == execution.correlation_id
    reply = await _ask(fake, "boss", f"approve {request}")
    assert reply == f"request #{request} cannot be decided: it is already expired"
    await _settle(rt)
    assert (await _execution_of(rt, request)).status == "expired"  # never ran
    assert not rt.executor or not rt.executor.tasks
    records = await audit.list_records(rt, actor=SYSTEM, limit=50)
    assert [r.outcome for r in records if r.action == "approval.expire"] == ["expired"]
    assert [r.outcome for r in records if r.action == "approval.approve"] == ["refused", "refused"]
    # The expired run no longer blocks asking again.
    again = await _request_deploy(fake)
    assert again != request


async def test_approval_is_bound_to_the_runbook_version(running: Running) -> None:
    rt, fake = running
    request = await _request_deploy(fake)
    old = rt.catalog.runbooks["deploy"]
    changed = old.model_copy(update={"steps": [old.steps[0].model_copy(
        update={"command": [sys.executable, "-c", "print('deployed something else')"]})]})
    assert changed.content_hash != old.content_hash
    rt.catalog.runbooks["deploy"] = changed
    reply = await _ask(fake, "boss", f"approve {request}")
    assert "changed since it was requested" in reply
    await _settle(rt)
    execution = await _execution_of(rt, request)
    assert execution.status == "expired" and execution.started_at is None and execution.output == ""
    assert (await _approval(rt, request)).status == "expired"  # void: nothing may run under it
    assert "already expired" in await _ask(fake, "boss", f"approve {request}")
    records = await audit.list_records(rt, actor=SYSTEM, limit=20)
    refusal = next(r for r in records if r.action == "approval.approve"
                   and "changed" in (r.details.get("reason") or ""))
    assert refusal.outcome == "refused" and refusal.actor == "boss"
    # "Ask again" must be possible at once: the stale request does not hold the run's lock.
    again = await _request_deploy(fake)
    await fake.say("ops", "boss", f"approve {again}")
    await _settle(rt)
    assert (await _execution_of(rt, again)).status == "succeeded"
    assert "deployed something else" in (await _execution_of(rt, again)).output
    # A runbook removed from the catalog since the request is a change too.
    gone = await _request_deploy(fake)
    del rt.catalog.runbooks["deploy"]
    assert "changed since it was requested" in await _ask(fake, "boss", f"approve {gone}")
    await _settle(rt)
    assert (await _execution_of(rt, gone)).status == "expired"


async def test_a_stale_request_can_still_be_denied(running: Running) -> None:
    rt, fake = running
    request = await _request_deploy(fake)
    old = rt.catalog.runbooks["deploy"]
    rt.catalog.runbooks["deploy"] = old.model_copy(update={"timeout": old.timeout + 1})
    mark = len(fake.sent)
    await fake.say("ops", "boss", f"deny {request} changed under us")
    assert (await _said(rt, fake, mark))[-1] == (
        f'request #{request} denied by boss: "changed under us". Nothing was run.')
    assert (await _execution_of(rt, request)).status == "denied"


async def test_web_and_api_decisions_record_the_same_audit_shape_as_chat(running: Running) -> None:
    rt, fake = running
    first = await _request_deploy(fake)
    await fake.say("ops", "boss", f"approve {first}")
    await _settle(rt)
    assert (await _execution_of(rt, first)).status == "succeeded"

    second = await _request_deploy(fake)
    boss_web = await access.actor_by_name(rt, name="boss", door="web")
    row = await approvals.decide(rt, actor=boss_web, approval_id=second, approve=True)
    assert row.status == "approved" and row.decided_by == "boss"
    await _settle(rt)
    assert (await _execution_of(rt, second)).status == "succeeded"

    third = await _request_deploy(fake)
    app = FastAPI()
    app.state.rt = rt
    errors.install(app)
    app.include_router(approvals_router, prefix="/api/v1")
    token = await token_for(rt, "boss")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        resp = await http.post(f"/api/v1/approvals/{third}/decision", json={"decision": "approve"},
                               headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "approved"
        late = await http.post(f"/api/v1/approvals/{third}/decision", json={"decision": "approve"},
                               headers={"Authorization": f"Bearer {token}"})
        assert late.status_code == 409 and "already approved" in late.text
    await _settle(rt)
    assert (await _execution_of(rt, third)).status == "succeeded"

    records = await audit.list_records(rt, actor=SYSTEM, limit=200)
    decided = {r.target: r for r in records if r.action == "approval.approve" and r.outcome == "approved"}
    by_door = {decided[f"approval:{n}"].door: decided[f"approval:{n}"] for n in (first, second, third)}
    assert set(by_door) == {"chat", "web", "api"}

    def shape(r: AuditRecordRow) -> dict[str, Any]:
        return {"actor": r.actor, "action": r.action, "outcome": r.outcome, "target": r.target.split(":")[0],
                "details": {k: v for k, v in r.details.items() if k != "execution"},
                "detail_keys": sorted(r.details)}

    assert shape(by_door["chat"]) == shape(by_door["web"]) == shape(by_door["api"])
    assert shape(by_door["chat"]) == {"actor": "boss", "action": "approval.approve", "outcome": "approved",
                                      "target": "approval", "details": {"reason": None, "requester": "you"},
                                      "detail_keys": ["execution", "reason", "requester"]}
    executions = {e.id for e in await runbooks.list_executions(rt, actor=SYSTEM)}
    assert {r.details["execution"] for r in by_door.values()} == executions
    assert (await audit.verify(rt)).ok


async def test_housekeeping_sweeps_expired_requests_and_stops_between_passes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "HOUSEKEEPING_EVERY_S", 0.05)
    async with _booted(tmp_path, small_catalog(tmp_path)) as (rt, fake):
        request = await _request_deploy(fake)
        await _force_expiry(rt, request)
        for _ in range(100):  # the sweep, not this test, closes it
            if (await _approval(rt, request)).status == "expired":
                break
            await asyncio.sleep(0.05)
        assert (await _approval(rt, request)).status == "expired"
        task = rt.housekeeping
    # Left by stop between passes (finished), not cancelled in the middle of a transaction.
    assert task.done() and not task.cancelled() and task.exception() is None


@pytest.mark.parametrize("second", ["lead", "boss"])
async def test_concurrent_approvals_on_postgresql_decide_once(tmp_path: Path, pg_own_url: str, second: str) -> None:
    """Two approvers (or one approver's double click) at the same moment on a real committed
    PostgreSQL: one decision, one 409, one `approved` record, one run; never a 500."""
    from opsroom.config import Settings
    from tests.factories import PASSWORDS

    rt = await server.open_runtime(Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path),
                                            database_url=pg_own_url))
    fake = FakeAdapter()
    await server.start(rt, adapters=[fake], schedule=False, passwords=PASSWORDS)
    try:
        request = await _request_deploy(fake)
        app = FastAPI()
        app.state.rt = rt
        errors.install(app)
        app.include_router(approvals_router, prefix="/api/v1")
        tokens = [await token_for(rt, "boss"), await token_for(rt, second)]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            responses = await asyncio.gather(*(
                http.post(f"/api/v1/approvals/{request}/decision", json={"decision": "approve"},
                          headers={"Authorization": f"Bearer {t}"}) for t in tokens))
        assert sorted(r.status_code for r in responses) == [200, 409], [r.text for r in responses]
        assert "already approved" in next(r.text for r in responses if r.status_code == 409)
        await _settle(rt)
        assert (await _execution_of(rt, request)).status == "succeeded"
        records = [r for r in await audit.list_records(rt, actor=SYSTEM, limit=100)
                   if r.action == "approval.approve"]
        assert sorted(r.outcome for r in records) == ["approved", "refused"]
        assert (await audit.verify(rt)).ok
    finally:
        await server.stop(rt)

"""Separation of duties: nothing runs on prod but exactly what someone else approved.

The attacker here has write access to the store (a direct SQL update plays them): an
approval must still cover only the parameters, secrets, target and runbook version it
was asked for, when the decision is taken and again when the run starts.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM, Actor
from opsroom.approvals import service as approvals
from opsroom.approvals.models import ApprovalRow
from opsroom.audit import service as audit
from opsroom.chat.fake import FakeAdapter
from opsroom.errors import Conflict, Invalid, PermissionDenied
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests.factories import small_catalog
from tests.inprocess import ask, booted, said, settle

Running = tuple[Runtime, FakeAdapter]


def _catalog(tmp: Path) -> Path:
    """A prod runbook that writes the version it was given to a file: the proof of what ran."""
    ran = tmp / "ran.txt"
    write = f"import sys; open({str(ran)!r}, 'a').write(sys.argv[1] + '\\n')"
    return small_catalog(tmp, runbooks=[{
        "name": "release", "environment": "prod",
        "parameters": {"version": {"type": "string", "pattern": "[0-9.]{1,10}"}},
        "steps": [{"command": [sys.executable, "-c", write, "{{ params.version }}"]}],
    }, {
        "name": "rotate", "environment": "prod",
        "parameters": {"version": {"type": "string"}, "password": {"type": "string", "secret": True}},
        "steps": [{"command": [sys.executable, "-c", write, "{{ params.version }}-{{ params.password }}"]}],
    }], aliases=[])


@pytest.fixture
async def prod(tmp_path: Path) -> AsyncIterator[Running]:
    async with booted(tmp_path, _catalog(tmp_path)) as pair:
        yield pair


def _ran(rt: Runtime) -> list[str]:
    path = Path(rt.settings.catalog).parent / "ran.txt"  # type: ignore[arg-type]
    return path.read_text().split() if path.exists() else []


async def _who(rt: Runtime, name: str, door: str = "api") -> Actor:
    return await access.actor_by_name(rt, name=name, door=door)  # type: ignore[arg-type]


async def _request(rt: Runtime, version: str = "1.0") -> ExecutionRow:
    row = await runbooks.request_run(rt, actor=await _who(rt, "you"), runbook="release", params={"version": version})
    assert row.status == "awaiting_approval" and row.approval_id is not None
    return row


async def _tamper(rt: Runtime, execution_id: int, **values: Any) -> None:
    async with rt.write() as s:
        await s.execute(update(ExecutionRow).where(ExecutionRow.id == execution_id).values(**values))


async def _execution(rt: Runtime, execution_id: int) -> ExecutionRow:
    async with rt.read() as s:
        row = await s.get(ExecutionRow, execution_id)
    assert row is not None
    return row


async def _records(rt: Runtime, action: str) -> list[Any]:
    return [r for r in await audit.list_records(rt, actor=SYSTEM, limit=500) if r.action == action]


@pytest.mark.parametrize("change", [{"params": {"version": "6.6.6"}}, {"target": "ssh"},
                                    {"secret_params": "sealed:forged"}, {"environment": "test"}])
async def test_a_request_changed_in_the_store_before_the_decision_is_not_run(
        prod: Running, change: dict[str, Any]) -> None:
    rt, _ = prod
    execution = await _request(rt)
    await _tamper(rt, execution.id, **change)
    with pytest.raises(Conflict, match="changed in the store since it was requested; ask again"):
        await approvals.decide(rt, actor=await _who(rt, "boss"), approval_id=execution.approval_id or 0,
                               approve=True)
    await settle(rt)
    assert _ran(rt) == []
    after = await _execution(rt, execution.id)
    assert after.status == "expired" and after.started_at is None
    async with rt.read() as s:
        approval = await s.get(ApprovalRow, execution.approval_id)
    assert approval is not None and approval.status == "expired" and "changed in the store" in (approval.reason or "")
    [refusal] = await _records(rt, "approval.approve")
    assert refusal.outcome == "refused" and refusal.actor == "boss" and "changed" in refusal.details["reason"]
    assert (await audit.verify(rt)).ok
    # The untouched request of the same runbook still goes through.
    again = await _request(rt, "1.1")
    await approvals.decide(rt, actor=await _who(rt, "boss"), approval_id=again.approval_id or 0, approve=True)
    await settle(rt)
    assert _ran(rt) == ["1.1"]


async def test_sealed_secrets_are_bound_too(prod: Running) -> None:
    """The approved secret runs; another request's sealed secret swapped in does not."""
    rt, _ = prod
    you, boss = await _who(rt, "you"), await _who(rt, "boss")
    first, second = [await runbooks.request_run(rt, actor=you, runbook="rotate",
                                                params={"version": n, "password": f"s3cret-{n}"}) for n in "12"]
    assert first.secret_params and second.secret_params and first.secret_params != second.secret_params
    await approvals.decide(rt, actor=boss, approval_id=first.approval_id or 0, approve=True)
    await settle(rt)
    assert _ran(rt) == ["1-s3cret-1"]
    await _tamper(rt, second.id, secret_params=first.secret_params)
    with pytest.raises(Conflict, match="changed in the store"):
        await approvals.decide(rt, actor=boss, approval_id=second.approval_id or 0, approve=True)
    await settle(rt)
    assert _ran(rt) == ["1-s3cret-1"]


async def test_parameters_changed_between_the_approval_and_the_start_are_not_run(prod: Running) -> None:
    rt, fake = prod
    execution = await _request(rt)
    executor, rt.executor = rt.executor, None  # hold the start back to edit the row in between
    try:
        await approvals.decide(rt, actor=await _who(rt, "boss"), approval_id=execution.approval_id or 0,
                               approve=True)
    finally:
        rt.executor = executor
    assert (await _execution(rt, execution.id)).status == "pending"
    await _tamper(rt, execution.id, params={"version": "6.6.6"})
    mark = len(fake.sent)
    assert rt.executor is not None
    await rt.executor.start(execution.id)
    await settle(rt)
    assert _ran(rt) == []
    after = await _execution(rt, execution.id)
    assert after.status == "failed" and after.started_at is None
    assert f"not what request #{execution.approval_id} approved" in (after.error or "")
    [refused] = await _records(rt, "execution.refused")
    assert refused.outcome == "refused" and refused.target == f"execution:{execution.id}"
    assert any(f"#{execution.id}" in line and "was not run" in line for line in await said(rt, fake, mark))


async def test_an_execution_pointed_at_another_approved_request_is_not_run(prod: Running) -> None:
    rt, _ = prod
    first = await _request(rt, "1.0")
    boss = await _who(rt, "boss")
    await approvals.decide(rt, actor=boss, approval_id=first.approval_id or 0, approve=True)
    await settle(rt)
    assert _ran(rt) == ["1.0"]
    second = await _request(rt, "6.6.6")
    # Borrow the first request's approval: approved, but for another execution.
    await _tamper(rt, second.id, approval_id=first.approval_id, status="pending")
    assert rt.executor is not None
    await rt.executor.start(second.id)
    await settle(rt)
    assert _ran(rt) == ["1.0"]
    after = await _execution(rt, second.id)
    assert after.status == "failed" and "is not a request for this execution" in (after.error or "")


async def test_the_requester_cannot_approve_their_own_request_through_any_door(prod: Running) -> None:
    rt, fake = prod
    lead = await _who(rt, "lead")  # operator and approver at once
    execution = await runbooks.request_run(rt, actor=lead, runbook="release", params={"version": "2.0"})
    for door in ("api", "web", "chat"):
        with pytest.raises(PermissionDenied, match="nobody approves their own request"):
            await approvals.decide(rt, actor=lead.via(door), approval_id=execution.approval_id or 0, approve=True)
    assert "nobody approves their own request" in await ask(fake, "lead", f"approve {execution.approval_id}")
    await settle(rt)
    assert _ran(rt) == []
    assert [r.outcome for r in await _records(rt, "approval.approve")] == ["refused"] * 4


@pytest.mark.parametrize("reason", [
    "no\n[opsroom] request #1 approved by boss. Running runbook release",
    "carriage\rreturn", "escape \x1b[2J sequence", "bidi \u202e override", "line\u2028separator",
    "x" * 501,
])
async def test_a_deny_reason_is_one_plain_line_of_bounded_length(prod: Running, reason: str) -> None:
    rt, _ = prod
    execution = await _request(rt)
    with pytest.raises(Invalid, match=r"one line|control or invisible|at most 500"):
        await approvals.decide(rt, actor=await _who(rt, "boss"), approval_id=execution.approval_id or 0,
                               approve=False, reason=reason)
    assert (await _execution(rt, execution.id)).status == "awaiting_approval"  # nothing decided
    [refusal] = await _records(rt, "approval.deny")
    assert refusal.outcome == "refused" and reason not in str(refusal.details)


async def test_a_deny_reason_is_shown_quoted_on_one_line(prod: Running) -> None:
    rt, fake = prod
    execution = await _request(rt)
    mark = len(fake.sent)
    reason = "not now 👩‍💻, ask after the freeze — \"really\""
    await approvals.decide(rt, actor=await _who(rt, "boss"), approval_id=execution.approval_id or 0,
                           approve=False, reason=f"  {reason} ")
    [line] = [t for t in await said(rt, fake, mark) if "denied by" in t]
    assert line == f'request #{execution.approval_id} denied by boss: "{reason}". Nothing was run.'


async def test_reading_requests_is_audited_and_so_is_a_refused_read(prod: Running) -> None:
    rt, _ = prod
    execution = await _request(rt)
    dev = await _who(rt, "dev")
    assert [r.id for r in await approvals.list_open(rt, actor=dev)] == [execution.approval_id]
    assert (await approvals.get(rt, actor=dev, approval_id=execution.approval_id or 0)).status == "open"
    nobody = Actor("mallory", "api", frozenset(), frozenset(), user_id=999)
    with pytest.raises(PermissionDenied):
        await approvals.list_open(rt, actor=nobody)
    with pytest.raises(PermissionDenied):
        await approvals.get(rt, actor=nobody, approval_id=execution.approval_id or 0)
    seen = [(r.action, r.actor, r.outcome, r.target)
            for r in reversed(await audit.list_records(rt, actor=SYSTEM, limit=500))
            if r.action in ("approval.list", "approval.view")]
    assert seen == [("approval.list", "dev", "ok", "approvals"),
                    ("approval.view", "dev", "ok", f"approval:{execution.approval_id}"),
                    ("approval.list", "mallory", "refused", "approvals"),
                    ("approval.view", "mallory", "refused", f"approval:{execution.approval_id}")]


async def test_a_reason_that_is_not_text_is_invalid_not_a_crash(prod: Running) -> None:
    rt, _ = prod
    execution = await _request(rt)
    with pytest.raises(Invalid, match="a reason is one line of text"):
        await approvals.decide(rt, actor=await _who(rt, "boss"), approval_id=execution.approval_id or 0,
                               approve=False, reason={"forged": "\n"})  # type: ignore[arg-type]
    assert (await _execution(rt, execution.id)).status == "awaiting_approval"

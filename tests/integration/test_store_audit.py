"""The store and the audit chain, on SQLite and on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text, update

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.audit.models import AuditRecordRow
from opsroom.errors import Conflict, Unauthenticated
from opsroom.runtime import Runtime


async def test_chain_verifies_and_names_first_broken_record(store_rt: Runtime) -> None:
    for i in range(5):
        await audit.append_alone(store_rt, actor=SYSTEM, action="test.step", target=f"t:{i}", details={"i": i})
    ok = await audit.verify(store_rt)
    assert ok.ok and ok.records == 5

    async with store_rt.write() as s:
        await s.execute(update(AuditRecordRow).where(AuditRecordRow.seq == 3).values(actor="mallory"))
    broken = await audit.verify(store_rt)
    assert not broken.ok
    assert broken.broken_seq == 3
    assert "hash" in (broken.reason or "")


async def test_removed_tail_is_detected(store_rt: Runtime) -> None:
    for i in range(3):
        await audit.append_alone(store_rt, actor=SYSTEM, action="test.step", target=f"t:{i}")
    async with store_rt.write() as s:
        await s.execute(text("DELETE FROM audit_records WHERE seq = 3"))
    result = await audit.verify(store_rt)
    assert not result.ok and result.broken_seq == 3


async def test_users_tokens_and_login(store_rt: Runtime) -> None:
    await access.add_user(store_rt, actor=SYSTEM, name="alice", roles=["viewer"], password="correct horse battery")
    try:
        await access.add_user(store_rt, actor=SYSTEM, name="alice", roles=["viewer"])
        raise AssertionError("a duplicate user was accepted")
    except Conflict:
        pass
    token = await access.create_token(store_rt, actor=SYSTEM, user="alice")
    actor = await access.authenticate_token(store_rt, token=token, door="api")
    assert actor.name == "alice" and actor.can("status.read") and not actor.can("runbook.run")
    try:
        await access.authenticate_token(store_rt, token=token + "x", door="api")
        raise AssertionError("a wrong token was accepted")
    except Unauthenticated:
        pass
    result = await access.login(store_rt, name="alice", password="correct horse battery")
    again, csrf = await access.session_actor(store_rt, session_token=result.session_token, door="web")
    assert again.name == "alice" and csrf == result.csrf_token
    try:
        await access.login(store_rt, name="alice", password="wrong")
        raise AssertionError("a wrong password was accepted")
    except Unauthenticated:
        pass
    rows = await audit.list_records(store_rt, actor=SYSTEM, limit=50)
    actions = [r.action for r in rows]
    assert "user.add" in actions and "token.create" in actions and "login" in actions
    assert any(r.action == "login" and r.outcome == "denied" for r in rows)
    assert (await audit.verify(store_rt)).ok


async def test_database_refuses_two_active_runs_with_one_lock_key(store_rt: Runtime) -> None:
    """The partial unique index holds even when the service-layer query is raced (two servers)."""
    import pytest
    from sqlalchemy.exc import IntegrityError

    from opsroom.runbooks.models import ExecutionRow

    def row(status: str) -> ExecutionRow:
        return ExecutionRow(runbook="r", runbook_hash="h", params={}, target="local", environment="test",
                            status=status, summary="r", requested_by="x", door="api", lock_key="k")

    async with store_rt.write() as s:
        s.add(row("succeeded"))
        s.add(row("failed"))
        s.add(row("running"))
    with pytest.raises(IntegrityError):
        async with store_rt.write() as s:
            s.add(row("pending"))

"""Role bindings scoped by environment and system, on a running opsroom with its real store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from opsroom.access import explain as explaining
from opsroom.access import reconcile
from opsroom.access import service as access
from opsroom.access.identity import Binding
from opsroom.access.models import UserRow
from opsroom.access.schemas import ExplainOut
from opsroom.access.views import router as access_router
from opsroom.approvals import service as approvals
from opsroom.audit.models import AuditRecordRow
from opsroom.catalog.loader import load_catalog
from opsroom.checks import service as checks
from opsroom.errors import Invalid, NotFound, PermissionDenied
from opsroom.events import AccessChanged
from opsroom.runbooks import service as runbooks
from opsroom.runtime import Runtime
from opsroom.web import errors
from tests.factories import token_for
from tests.inprocess import booted, settle
from tests.scoped import USERS, scoped_catalog


async def _refusals(rt: Runtime, user: str, action: str) -> list[AuditRecordRow]:
    async with rt.read() as s:
        rows = (await s.execute(select(AuditRecordRow).where(
            AuditRecordRow.actor == user, AuditRecordRow.action == action,
            AuditRecordRow.outcome == "refused"))).scalars()
        return list(rows)


async def test_bindings_are_stored_and_make_the_actor(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        async with rt.read() as s:
            dev = (await s.execute(select(UserRow).where(UserRow.name == "dev"))).scalar_one()
        assert dev.roles == ["viewer"] and dev.bindings == [{"role": "operator", "environment": "test"}]
        actor = await access.actor_by_name(rt, name="sysa", door="api")
        assert actor.roles == frozenset()
        assert actor.bindings[0] == Binding("operator", "prod", "sys-a", actor.bindings[0].permissions)
        assert "runbook.run" in actor.bindings[0].permissions
        # Default deny: another system, no system, another environment, or a check naming no scope.
        assert actor.can("runbook.run", environment="prod", system="sys-a")
        assert not actor.can("runbook.run", environment="prod", system="sys-b")
        assert not actor.can("runbook.run", environment="prod")
        assert not actor.can("runbook.run", environment="test", system="sys-a")
        assert not actor.can("runbook.run")
        assert actor.can_somewhere("runbook.run") and not actor.can_somewhere("user.manage")
        assert actor.roles_in("prod", "sys-a") == {"operator", "approver"} and actor.roles_in("test") == set()
        # An unscoped role still answers for every environment, as before scopes.
        you = await access.actor_by_name(rt, name="you", door="api")
        assert you.can("runbook.run") and you.can("runbook.run", environment="prod", system="sys-b")


async def test_a_changed_binding_is_reconciled_audited_and_reaches_open_doors(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        heard: list[AccessChanged] = []
        rt.bus.add_listener(lambda ev: heard.append(ev) if isinstance(ev, AccessChanged) else None)
        moved = dict(USERS, dev=["viewer", {"role": "operator", "environment": "prod", "system": "sys-b"}])
        rt.use_catalog(load_catalog(scoped_catalog(tmp_path / "v2", users=moved)))
        report = await reconcile.reconcile_users(rt)
        await settle(rt)
        assert report.bindings == {"dev": ([{"role": "operator", "environment": "test"}],
                                           [{"role": "operator", "environment": "prod", "system": "sys-b"}])}
        assert "dev" not in report.roles  # the unscoped roles did not change
        assert [(e.user, e.reason) for e in heard] == [("dev", "roles")]
        dev = await access.actor_by_name(rt, name="dev", door="api")
        assert dev.can("runbook.run", environment="prod", system="sys-b")
        assert not dev.can("runbook.run", environment="test", system="sys")
        async with rt.read() as s:
            rec = (await s.execute(select(AuditRecordRow).where(
                AuditRecordRow.action == "user.reconcile", AuditRecordRow.target == "user:dev"))).scalars().all()
        assert rec and rec[-1].details["bindings"]["new"] == [
            {"role": "operator", "environment": "prod", "system": "sys-b"}]


async def test_run_is_allowed_in_the_bound_environment_only(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        dev = await access.actor_by_name(rt, name="dev", door="api")
        row = await runbooks.request_run(rt, actor=dev, runbook="poke", params={"service": "svc"})
        assert row.environment == "test" and row.status in ("running", "pending")
        with pytest.raises(PermissionDenied) as refused:
            await runbooks.request_run(rt, actor=dev, runbook="poke", params={"service": "svc-a"})
        assert "in environment prod" in refused.value.message
        assert "operator on environment test" in str(refused.value.hint)
        [rec] = await _refusals(rt, "dev", "runbook.run")
        assert rec.details["reason"] == "no role grants runbook.run in environment prod, system sys-a"
        # A binding to one system covers that system's services, not its neighbour's.
        sysa = await access.actor_by_name(rt, name="sysa", door="api")
        assert (await runbooks.request_run(rt, actor=sysa, runbook="poke", params={"service": "svc-a"})).id
        with pytest.raises(PermissionDenied):
            await runbooks.request_run(rt, actor=sysa, runbook="poke", params={"service": "svc-b"})


async def test_approve_and_cancel_need_a_binding_covering_the_run(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        you = await access.actor_by_name(rt, name="you", door="api")
        on_prod = await runbooks.request_run(rt, actor=you, runbook="guarded", params={"service": "svc-b"})
        assert on_prod.status == "awaiting_approval" and on_prod.approval_id is not None
        tester = await access.actor_by_name(rt, name="tester", door="chat")  # approver and operator on test
        with pytest.raises(PermissionDenied, match="not allowed in environment prod"):
            await approvals.decide(rt, actor=tester, approval_id=on_prod.approval_id, approve=True)
        with pytest.raises(PermissionDenied):
            await runbooks.cancel_execution(rt, actor=tester, execution_id=on_prod.id)
        assert [r.details["reason"] for r in await _refusals(rt, "tester", "approval.approve")] == [
            "not allowed in environment prod, system sys-b: no role grants approval.decide there"]
        assert len(await _refusals(rt, "tester", "execution.cancel")) == 1
        sysa = await access.actor_by_name(rt, name="sysa", door="api")  # approver on prod's other system
        with pytest.raises(PermissionDenied):
            await approvals.decide(rt, actor=sysa, approval_id=on_prod.approval_id, approve=True)
        prodapp = await access.actor_by_name(rt, name="prodapp", door="api")
        decided = await approvals.decide(rt, actor=prodapp, approval_id=on_prod.approval_id, approve=True)
        assert decided.status == "approved" and decided.decided_by == "prodapp"
        # On test, the test-bound approver decides (and may cancel what waits there).
        on_test = await runbooks.request_run(rt, actor=you, runbook="guarded", params={"service": "svc"})
        assert on_test.approval_id is not None
        cancelled = await runbooks.cancel_execution(rt, actor=tester, execution_id=on_test.id)
        assert cancelled.status == "cancelled"
        await settle(rt)


async def test_check_runs_and_execution_reads_follow_the_scope(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        you = await access.actor_by_name(rt, name="you", door="api")
        on_prod = await runbooks.request_run(rt, actor=you, runbook="poke", params={"service": "svc-a"})
        on_test = await runbooks.request_run(rt, actor=you, runbook="poke", params={"service": "svc"})
        await settle(rt)
        tester = await access.actor_by_name(rt, name="tester", door="web")
        assert (await runbooks.get_execution(rt, actor=tester, execution_id=on_test.id)).id == on_test.id
        with pytest.raises(PermissionDenied, match="in environment prod"):
            await runbooks.get_execution(rt, actor=tester, execution_id=on_prod.id)
        assert (await checks.run_check(rt, actor=tester, check="svc-cmd"))["check"] == "svc-cmd"
        with pytest.raises(PermissionDenied):
            await checks.run_check(rt, actor=tester, check="svc-a-cmd")
        assert len(await _refusals(rt, "tester", "execution.read")) == 1
        assert len(await _refusals(rt, "tester", "check.run")) == 1
        # dev's unscoped viewer reads prod as before.
        dev = await access.actor_by_name(rt, name="dev", door="web")
        assert (await runbooks.get_execution(rt, actor=dev, execution_id=on_prod.id)).id == on_prod.id


async def test_explain_names_the_deciding_binding_or_why_none_covers(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        admin = await access.actor_by_name(rt, name="admin", door="api")
        ok = await explaining.explain(rt, actor=admin, user="dev", action="run", target="poke svc")
        assert ok.allowed and ok.decided_by == "binding operator on environment test"
        assert (ok.environment, ok.system, ok.permission) == ("test", "sys", "runbook.run")
        no = await explaining.explain(rt, actor=admin, user="dev", action="run", target="poke service=svc-a")
        assert not no.allowed and no.decided_by is None
        assert no.why == ("no role grants runbook.run in environment prod, system sys-a: operator on environment "
                          "test: bound to environment test, the target is in prod")
        assert [(g.role, g.environment, g.grants, g.covers) for g in no.grounds] == [
            ("viewer", None, False, True), ("operator", "test", True, False)]
        sysa = await explaining.explain(rt, actor=admin, user="sysa", action="run", target="poke svc-b")
        assert not sysa.allowed and "bound to system sys-a, the target is in system sys-b" in sysa.why
        you = await explaining.explain(rt, actor=admin, user="you", action="check", target="svc-a-cmd")
        assert you.allowed and you.decided_by == "unscoped role operator"
        # Requests and executions: the same answer the services give.
        requester = await access.actor_by_name(rt, name="you", door="api")
        row = await runbooks.request_run(rt, actor=requester, runbook="guarded", params={"service": "svc-a"})
        own = await explaining.explain(rt, actor=admin, user="you", action="approve", target=f"#{row.approval_id}")
        assert not own.allowed and "no role grants approval.decide" in own.why  # an operator, and its requester
        sysa_ok = await explaining.explain(rt, actor=admin, user="sysa", action="approve", target=str(row.approval_id))
        assert sysa_ok.allowed and sysa_ok.decided_by == "binding approver on environment prod, system sys-a"
        for user, allowed in (("you", True), ("tester", False), ("sysa", True), ("dev", False), ("prodapp", True)):
            said = await explaining.explain(rt, actor=admin, user=user, action="cancel", target=str(row.id))
            assert said.allowed is allowed, (user, said.why)
            assert said.allowed == runbooks.may_cancel(await access.actor_by_name(rt, name=user, door="api"),
                                                       row, rt.catalog)
        view = await explaining.explain(rt, actor=admin, user="tester", action="view", target=str(row.id))
        assert not view.allowed and "bound to environment test, the target is in prod" in view.why


async def test_explain_about_someone_else_needs_user_manage_and_is_audited(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        dev = await access.actor_by_name(rt, name="dev", door="api")
        mine = await explaining.explain(rt, actor=dev, user="dev", action="run", target="poke svc")
        assert mine.allowed
        with pytest.raises(PermissionDenied):
            await explaining.explain(rt, actor=dev, user="boss", action="run", target="poke svc")
        assert len(await _refusals(rt, "dev", "access.explain")) == 1
        with pytest.raises(Invalid, match="unknown action"):
            await explaining.explain(rt, actor=dev, user="dev", action="destroy", target="poke svc")
        # Whether someone exists is not told either; an admin is told plainly.
        with pytest.raises(PermissionDenied):
            await explaining.explain(rt, actor=dev, user="nobody", action="run", target="poke svc")
        assert len(await _refusals(rt, "dev", "access.explain")) == 2
        admin = await access.actor_by_name(rt, name="admin", door="api")
        with pytest.raises(NotFound, match="there is no active user 'nobody'"):
            await explaining.explain(rt, actor=admin, user="Nobody", action="run", target="poke svc")
        # One's own name, however it is spelled, is one's own.
        assert (await explaining.explain(rt, actor=dev, user="DEV", action="run", target="poke svc")).allowed
        with pytest.raises(Invalid, match="depends on the service"):
            await explaining.explain(rt, actor=dev, user="dev", action="run", target="poke")


async def test_the_cli_and_the_api_give_the_same_answer(tmp_path: Path) -> None:
    catalog = scoped_catalog(tmp_path)
    async with booted(tmp_path, catalog) as (rt, _fake):
        token = await token_for(rt, "dev")
        app = FastAPI()
        app.state.rt = rt
        errors.install(app)
        app.include_router(access_router, prefix="/api/v1")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            resp = await client.get("/api/v1/access/explain", params={"action": "run", "target": "poke svc-a"},
                                    headers={"Authorization": f"Bearer {token}"})
            other = await client.get("/api/v1/access/explain",
                                     params={"user": "boss", "action": "run", "target": "poke svc-a"},
                                     headers={"Authorization": f"Bearer {token}"})
            users = await client.get("/api/v1/users", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    api = ExplainOut.model_validate(resp.json())
    assert not api.allowed and api.user == "dev" and api.environment == "prod"
    assert other.status_code == 403
    assert {u["name"]: u["bindings"] for u in users.json()}["sysa"] == [
        {"role": "operator", "environment": "prod", "system": "sys-a"},
        {"role": "approver", "environment": "prod", "system": "sys-a"}]
    # The CLI: a local admin on the server host, on the store the server used.
    done = subprocess.run([sys.executable, "-m", "opsroom", "access", "explain", "dev", "run", "poke", "svc-a",
                           "--data", str(tmp_path / "data"), "--catalog", str(catalog), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert ExplainOut.model_validate(json.loads(done.stdout)) == api
    shown = subprocess.run([sys.executable, "-m", "opsroom", "access", "explain", "dev", "run", "poke", "svc",
                            "--data", str(tmp_path / "data"), "--catalog", str(catalog)],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[:2] == [
        "ALLOWED: dev run poke service=svc (environment test, system sys)",
        "  binding operator on environment test grants runbook.run in environment test, system sys"]


async def test_a_viewer_reads_production_through_readonly_runbooks_and_nothing_more(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        assert rt.catalog.is_protected("prod")
        dev = await access.actor_by_name(rt, name="dev", door="chat")  # viewer, operator on test
        tail = await runbooks.request_run(rt, actor=dev, runbook="tail", params={"service": "svc-a"})
        assert tail.environment == "prod" and tail.approval_id is None  # readonly: no approval on prod
        with pytest.raises(PermissionDenied, match="may not run poke in environment prod"):
            await runbooks.request_run(rt, actor=dev, runbook="poke", params={"service": "svc-a"})
        await settle(rt)
        async with rt.read() as s:
            assert (await s.get_one(type(tail), tail.id)).status == "succeeded"
        admin = await access.actor_by_name(rt, name="admin", door="api")
        said = await explaining.explain(rt, actor=admin, user="dev", action="run", target="tail svc-a")
        assert said.allowed and said.permission == "execution.read" and said.decided_by == "unscoped role viewer"
        # A readonly runbook is still scoped: read access bound to test reads nothing of prod.
        tester = await access.actor_by_name(rt, name="tester", door="api")
        with pytest.raises(PermissionDenied, match="in environment prod"):
            await runbooks.request_run(rt, actor=tester, runbook="tail", params={"service": "svc-a"})
        # And readonly is part of what an approval binds: flipping it changes the runbook's hash.
        rb = rt.catalog.runbooks["tail"]
        assert rb.model_copy(update={"readonly": False}).content_hash != rb.content_hash


async def test_a_scoped_only_reader_lists_the_runs_and_requests_of_its_scope(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        you = await access.actor_by_name(rt, name="you", door="api")
        runs = {svc: await runbooks.request_run(rt, actor=you, runbook="guarded", params={"service": svc})
                for svc in ("svc", "svc-a", "svc-b")}
        tester = await access.actor_by_name(rt, name="tester", door="api")  # test only
        assert [r.id for r in await runbooks.list_executions(rt, actor=tester)] == [runs["svc"].id]
        assert [r.execution_id for r in await approvals.list_open(rt, actor=tester)] == [runs["svc"].id]
        sysa = await access.actor_by_name(rt, name="sysa", door="api")  # prod's system-a only
        assert [r.id for r in await runbooks.list_executions(rt, actor=sysa)] == [runs["svc-a"].id]
        viewed = await approvals.list_open_viewed(rt, actor=sysa, action="status", target="status")
        assert [r.execution_id for r in viewed] == [runs["svc-a"].id]
        # An unscoped reader sees them all, newest first, as before scopes.
        assert [r.id for r in await runbooks.list_executions(rt, actor=you)] == [
            runs["svc-b"].id, runs["svc-a"].id, runs["svc"].id]
        for row in runs.values():
            await runbooks.cancel_execution(rt, actor=you, execution_id=row.id)
        await settle(rt)

"""The attacker's side of scoped roles: an operator bound to test reaching for prod through every
door, lookalike names, and bindings that must not load or must match nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.access.models import UserRow
from opsroom.approvals.models import ApprovalRow
from opsroom.approvals.views import router as approvals_router
from opsroom.audit.models import AuditRecordRow
from opsroom.catalog.errors import CatalogError
from opsroom.catalog.loader import load_catalog
from opsroom.errors import PermissionDenied
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runbooks.views import router as runbooks_router
from opsroom.runtime import Runtime
from opsroom.web import errors
from opsroom.web.deps import SESSION_COOKIE
from tests.factories import token_for, write_catalog
from tests.inprocess import ask, booted, settle
from tests.scoped import scoped_catalog


def _app(rt: Runtime) -> FastAPI:
    app = FastAPI()
    app.state.rt = rt
    errors.install(app)
    app.include_router(runbooks_router, prefix="/api/v1")
    app.include_router(approvals_router, prefix="/api/v1")
    return app


async def _prod_runs(rt: Runtime) -> int:
    async with rt.read() as s:
        return int((await s.execute(select(func.count()).select_from(ExecutionRow).where(
            ExecutionRow.environment == "prod"))).scalar_one())


async def _refused(rt: Runtime, user: str) -> list[tuple[str, str]]:
    async with rt.read() as s:
        rows = (await s.execute(select(AuditRecordRow).where(
            AuditRecordRow.actor == user, AuditRecordRow.outcome == "refused").order_by(AuditRecordRow.seq))).scalars()
        return [(r.action, r.target) for r in rows]


async def test_an_operator_bound_to_test_cannot_touch_prod_through_the_api(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        you = await access.actor_by_name(rt, name="you", door="api")
        waiting = await runbooks.request_run(rt, actor=you, runbook="guarded", params={"service": "svc-a"})
        done = await runbooks.request_run(rt, actor=you, runbook="poke", params={"service": "svc-b"})
        await settle(rt)
        before = await _prod_runs(rt)
        auth = {"Authorization": f"Bearer {await token_for(rt, 'tester')}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(rt)), base_url="http://t") as http:
            run = await http.post("/api/v1/runbooks/poke/run", json={"params": {"service": "svc-a"}}, headers=auth)
            # Spelled otherwise, the service is still found as svc-a, and its scope is still prod.
            shouted = await http.post("/api/v1/runbooks/poke/run", json={"params": {"service": "SVC-A"}},
                                      headers=auth)
            approve = await http.post(f"/api/v1/approvals/{waiting.approval_id}/decision",
                                      json={"decision": "approve"}, headers=auth)
            cancel = await http.post(f"/api/v1/executions/{waiting.id}/cancel", headers=auth)
            read = await http.get(f"/api/v1/executions/{done.id}", headers=auth)
            request = await http.get(f"/api/v1/approvals/{waiting.approval_id}", headers=auth)
            guessed = await http.post("/api/v1/executions/99999/cancel", headers=auth)
        assert [r.status_code for r in (run, shouted, approve, cancel, read, request, guessed)] == \
            [403, 403, 403, 403, 403, 403, 404]
        assert "in environment prod" in run.json()["detail"]
        assert await _prod_runs(rt) == before
        async with rt.read() as s:
            assert (await s.get_one(ApprovalRow, waiting.approval_id)).status == "open"
            assert (await s.get_one(ExecutionRow, waiting.id)).status == "awaiting_approval"
        assert await _refused(rt, "tester") == [
            ("runbook.run", "runbook:poke"), ("runbook.run", "runbook:poke"),
            ("approval.approve", f"approval:{waiting.approval_id}"), ("execution.cancel", f"execution:{waiting.id}"),
            ("execution.read", f"execution:{done.id}"), ("approval.view", f"approval:{waiting.approval_id}")]


async def test_an_operator_bound_to_test_cannot_touch_prod_from_chat(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, fake):
        you = await access.actor_by_name(rt, name="you", door="api")
        waiting = await runbooks.request_run(rt, actor=you, runbook="guarded", params={"service": "svc-a"})
        before = await _prod_runs(rt)
        assert "in environment prod" in await ask(fake, "tester", "run poke service=svc-a")
        assert "not allowed in environment prod" in await ask(fake, "tester", f"approve {waiting.approval_id}")
        assert "may not cancel" in await ask(fake, "tester", f"cancel {waiting.id}")
        # The test environment still works for them, from the same door.
        await ask(fake, "tester", "run poke service=svc")
        await settle(rt)
        assert await _prod_runs(rt) == before
        async with rt.read() as s:
            assert (await s.get_one(ApprovalRow, waiting.approval_id)).status == "open"
            ran = (await s.execute(select(ExecutionRow).where(ExecutionRow.requested_by == "tester"))).scalars()
            assert [(r.environment, r.door) for r in ran] == [("test", "chat")]
        assert [a for a, _ in await _refused(rt, "tester")] == ["runbook.run", "approval.approve", "execution.cancel"]


async def test_a_scoped_approver_on_the_web_still_needs_the_pages_decision_token(tmp_path: Path) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        you = await access.actor_by_name(rt, name="you", door="api")
        waiting = await runbooks.request_run(rt, actor=you, runbook="guarded", params={"service": "svc-a"})
        await access.set_password(rt, actor=SYSTEM, name="prodapp", password="prodapp-test-password")
        login = await access.login(rt, name="prodapp", password="prodapp-test-password", door="web")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(rt)), base_url="http://t") as http:
            http.cookies.set(SESSION_COOKIE, login.session_token)
            forged = await http.post(f"/api/v1/approvals/{waiting.approval_id}/decision",
                                     json={"decision": "approve"}, headers={"X-CSRF-Token": login.csrf_token})
        assert forged.status_code == 403 and "decision token" in forged.json()["detail"]
        async with rt.read() as s:
            assert (await s.get_one(ApprovalRow, waiting.approval_id)).status == "open"


async def test_a_stored_binding_matches_its_environment_exactly(tmp_path: Path) -> None:
    """A row written around the catalog (or before a rename) with `PROD`, `prod ` or prod with a
    Cyrillic o covers nothing: names are compared as stored, never folded into prod."""
    async with booted(tmp_path, scoped_catalog(tmp_path)) as (rt, _fake):
        await access.add_user(rt, actor=SYSTEM, name="mallory", roles=[])
        for env in ("PROD", "prod ", "pr\u043ed", "*", ""):
            async with rt.write() as s:
                await s.execute(update(UserRow).where(UserRow.name == "mallory").values(
                    bindings=[{"role": "admin", "environment": env}]))
            mallory = await access.actor_by_name(rt, name="mallory", door="api")
            assert not mallory.can("runbook.run", environment="prod", system="sys-a"), env
            assert not mallory.can("runbook.run"), env
            with pytest.raises(PermissionDenied):
                await runbooks.request_run(rt, actor=mallory, runbook="poke", params={"service": "svc-a"})


@pytest.mark.parametrize(("env", "message"), [
    ("staging", "has a role in environment 'staging', which is not in the catalog"),
    ("Prod", "roles[1].environment: string should match pattern"),
    ("pr\u043ed", "roles[1].environment: string should match pattern"),  # Cyrillic o
    ("prod\u200b", "roles[1].environment: string should match pattern"),  # zero-width space
])
def test_a_binding_to_an_unknown_or_lookalike_environment_does_not_load(tmp_path: Path, env: str,
                                                                        message: str) -> None:
    text = f"""\
        environments: [{{name: prod, protected: true}}, {{name: test}}]
        systems: [{{name: sys-a, environment: prod}}]
        users:
          - name: dev
            roles:
              - viewer
              - {{role: operator, environment: "{env}"}}
        """
    with pytest.raises(CatalogError) as failed:
        load_catalog(write_catalog(tmp_path / "c", text))
    [problem] = failed.value.problems
    assert problem.location is not None and (problem.location.line, problem.location.column) == (7, 39)
    assert message in problem.message


def test_a_binding_names_a_known_role_and_a_system_of_its_environment(tmp_path: Path) -> None:
    text = """\
        environments: [{name: prod}, {name: test}]
        systems: [{name: sys-a, environment: prod}]
        users:
          - name: dev
            roles:
              - {role: operater, environment: test}
              - {role: operator, environment: test, system: sys-a}
              - {role: operator, environmnt: test}
        """
    with pytest.raises(CatalogError) as failed:
        load_catalog(write_catalog(tmp_path / "c", text))
    rendered = failed.value.render()
    assert "catalog.yaml:8:26: error: user 'dev': unknown field 'environmnt' in roles[2]" in rendered
    assert "missing required field 'environment' in roles[2]" in rendered
    fixed = text.replace("{role: operator, environmnt: test}", "operator")
    with pytest.raises(CatalogError) as failed:
        load_catalog(write_catalog(tmp_path / "d", fixed))
    lines = failed.value.render().splitlines()
    assert lines[0].endswith("catalog.yaml:6:16: error: user 'dev' has role 'operater', which is not in the catalog")
    assert "did you mean 'operator'?" in lines[1]
    assert lines[2].endswith("catalog.yaml:7:53: error: user 'dev' has a role in system 'sys-a' of environment "
                             "'test', but that system is in environment 'prod'")

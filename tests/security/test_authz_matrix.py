"""The authorization matrix (issue 15, acceptance 1): every role x scope x action x door, against a
table of expected outcomes computed here, on a running opsroom with its real store. 0 mismatches,
and every refusal leaves a refused audit record.

Actions: view an execution, run a runbook, approve a request, cancel someone else's waiting
run, run a check, and run a `readonly: true` runbook (tail). Scopes: the role unscoped (every
environment), bound to test, bound to prod. Each action is tried on a target in test and one in
prod. Doors: the JSON API with a bearer token, the web (a browser session on the same API:
cookie, CSRF token, the page's decision token), chat through the hub (the fake adapter; chat has
no command that runs one check, so `check` is not tried there), and the CLI as a client with a
token (`opsroom runbook run`, `approve`, `cancel`, `execution`, `check run` against the API
served on loopback).
The outcome is read from the store, never from the door's wording.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import func, select

from opsroom.access import service as access
from opsroom.access.identity import BUILTIN_ROLES, SYSTEM
from opsroom.access.views import router as access_router
from opsroom.approvals.models import ApprovalRow
from opsroom.approvals.views import router as approvals_router
from opsroom.audit.models import AuditRecordRow
from opsroom.chat.fake import FakeAdapter
from opsroom.checks.views import router as checks_router
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runbooks.views import router as runbooks_router
from opsroom.runtime import Runtime
from opsroom.web import errors
from opsroom.web.deps import SESSION_COOKIE
from opsroom.web.security import decision_token
from tests.factories import free_port, token_for
from tests.inprocess import booted, settle
from tests.scoped import scoped_catalog

ROLES = ("viewer", "operator", "approver", "admin")
SCOPES = ("unscoped", "test", "prod")
ENVS = {"test": "svc", "prod": "svc-a"}  # the target's environment -> the service the target acts on
CHECKS = {"test": "svc-cmd", "prod": "svc-a-cmd"}
# action -> (permission it needs, refused audit action)
ACTIONS = {"view": ("execution.read", "execution.read"), "run": ("runbook.run", "runbook.run"),
           "approve": ("approval.decide", "approval.approve"),
           # someone else's waiting run: only approval.decide there lets a non-requester cancel it
           "cancel": ("approval.decide", "execution.cancel"), "check": ("check.run", "check.run"),
           # a `readonly: true` runbook (read-only production): execution.read, or runbook.run
           "tail": ("execution.read", "runbook.run")}
DOORS = ("api", "web", "chat", "cli")
PASSWORD = "matrix-test-password"


def expected(role: str, scope: str, action: str, env: str) -> bool:
    """The table: the role's permission, where its scope covers the target's environment."""
    perms = BUILTIN_ROLES[role]
    needs = {ACTIONS[action][0], "runbook.run"} if action == "tail" else {ACTIONS[action][0]}
    return ("*" in perms or bool(needs & perms)) and scope in ("unscoped", env)


def user_name(role: str, scope: str) -> str:
    return f"{role}-{scope}"


def matrix_users() -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = {"you": ["operator"]}  # asks for the runs others approve, cancel, view
    for role, scope in itertools.product(ROLES, SCOPES):
        users[user_name(role, scope)] = [role] if scope == "unscoped" else [{"role": role, "environment": scope}]
    return users


@dataclass
class World:
    rt: Runtime
    fake: FakeAdapter
    http: httpx.AsyncClient
    tokens: dict[str, str]
    sessions: dict[str, tuple[str, str]]  # user -> (session token, csrf)
    views: dict[str, int]  # env -> a finished execution there
    url: str = ""
    home: Path = Path()
    n: int = 0

    def tag(self) -> str:
        self.n += 1
        return f"t{self.n}"

    def headers(self, user: str, door: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        if door == "api":
            return {"Authorization": f"Bearer {self.tokens[user]}", **(extra or {})}
        return {"X-CSRF-Token": self.sessions[user][1], **(extra or {})}

    def cookies(self, user: str, door: str) -> dict[str, str]:
        return {SESSION_COOKIE: self.sessions[user][0]} if door == "web" else {}

    async def call(self, user: str, door: str, method: str, path: str, body: Any = None,
                   extra: dict[str, str] | None = None) -> int:
        self.http.cookies.clear()
        for name, value in self.cookies(user, door).items():
            self.http.cookies.set(name, value)
        resp = await self.http.request(method, path, json=body, headers=self.headers(user, door, extra))
        return resp.status_code

    async def cli(self, user: str, *args: str) -> int:
        """The CLI on another machine: its own HOME, no OPSROOM_* settings, the server and a token."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSROOM_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "opsroom", *args, "--server", self.url, "--token", self.tokens[user],
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env={**env, "HOME": str(self.home)})
        return await proc.wait()

    async def waiting(self, env: str) -> ExecutionRow:
        you = await access.actor_by_name(self.rt, name="you", door="api")
        row = await runbooks.request_run(self.rt, actor=you, runbook="guarded",
                                         params={"service": ENVS[env], "tag": self.tag()})
        assert row.status == "awaiting_approval" and row.approval_id is not None
        return row


async def _count(rt: Runtime, *where: Any) -> int:
    async with rt.read() as s:
        return int((await s.execute(select(func.count()).select_from(AuditRecordRow).where(*where))).scalar_one())


async def _refused(rt: Runtime, user: str, action: str) -> int:
    return await _count(rt, AuditRecordRow.actor == user, AuditRecordRow.action == action,
                        AuditRecordRow.outcome == "refused")


async def attempt(w: World, user: str, door: str, action: str, env: str) -> bool | None:
    """Try it; whether it happened, read from the store (None: not offered by this door)."""
    rt = w.rt
    if action == "view":
        eid = w.views[env]
        before = await _count(rt, AuditRecordRow.actor == user, AuditRecordRow.action == "execution.view",
                              AuditRecordRow.target == f"execution:{eid}", AuditRecordRow.outcome != "refused")
        if door == "chat":
            await w.fake.say("ops", user, f"execution {eid}")
        elif door == "cli":
            await w.cli(user, "execution", str(eid))
        else:
            await w.call(user, door, "GET", f"/api/v1/executions/{eid}")
        return await _count(rt, AuditRecordRow.actor == user, AuditRecordRow.action == "execution.view",
                            AuditRecordRow.target == f"execution:{eid}", AuditRecordRow.outcome != "refused") > before
    if action in ("run", "tail"):
        runbook = "poke" if action == "run" else "tail"
        before = await _runs(rt, user, runbook)
        tag = w.tag()
        if door == "chat":
            await w.fake.say("ops", user, f"run {runbook} service={ENVS[env]} tag={tag}")
        elif door == "cli":
            await w.cli(user, "runbook", "run", runbook, f"service={ENVS[env]}", f"tag={tag}", "--no-wait")
        else:
            await w.call(user, door, "POST", f"/api/v1/runbooks/{runbook}/run",
                         {"params": {"service": ENVS[env], "tag": tag}})
        return await _runs(rt, user, runbook) > before
    if action == "approve":
        row = await w.waiting(env)
        assert row.approval_id is not None
        if door == "chat":
            await w.fake.say("ops", user, f"approve {row.approval_id}")
        elif door == "cli":
            await w.cli(user, "approve", str(row.approval_id))
        else:
            async with rt.read() as s:
                binding = (await s.get_one(ApprovalRow, row.approval_id)).binding_hash
            token = decision_token(w.sessions[user][1], row.approval_id, binding) if door == "web" else ""
            await w.call(user, door, "POST", f"/api/v1/approvals/{row.approval_id}/decision",
                         {"decision": "approve"}, {"X-Decision-Token": token} if door == "web" else None)
        async with rt.read() as s:
            return (await s.get_one(ApprovalRow, row.approval_id)).status == "approved"
    if action == "cancel":
        row = await w.waiting(env)
        if door == "chat":
            await w.fake.say("ops", user, f"cancel {row.id}")
        elif door == "cli":
            await w.cli(user, "cancel", str(row.id))
        else:
            await w.call(user, door, "POST", f"/api/v1/executions/{row.id}/cancel")
        async with rt.read() as s:
            status = (await s.get_one(ExecutionRow, row.id)).status
        if status == "awaiting_approval":  # close it, so its approval does not linger
            await runbooks.cancel_execution(rt, actor=SYSTEM, execution_id=row.id)
        return status == "cancelled"
    if door == "chat":
        return None
    before = await _count(rt, AuditRecordRow.actor == user, AuditRecordRow.action == "check.run",
                          AuditRecordRow.outcome != "refused")
    if door == "cli":
        await w.cli(user, "check", "run", CHECKS[env])
    else:
        await w.call(user, door, "POST", f"/api/v1/checks/{CHECKS[env]}/run")
    return await _count(rt, AuditRecordRow.actor == user, AuditRecordRow.action == "check.run",
                        AuditRecordRow.outcome != "refused") > before


async def _world(rt: Runtime, fake: FakeAdapter, http: httpx.AsyncClient) -> World:
    users = [user_name(r, s) for r, s in itertools.product(ROLES, SCOPES)]
    tokens = {u: await token_for(rt, u) for u in users}
    sessions = {}
    for u in users:
        await access.set_password(rt, actor=SYSTEM, name=u, password=PASSWORD)
        login = await access.login(rt, name=u, password=PASSWORD, door="web")
        sessions[u] = (login.session_token, login.csrf_token)
    you = await access.actor_by_name(rt, name="you", door="api")
    views = {}
    for env, svc in ENVS.items():
        views[env] = (await runbooks.request_run(rt, actor=you, runbook="poke",
                                                 params={"service": svc, "tag": f"view-{env}"})).id
    await settle(rt)
    return World(rt, fake, http, tokens, sessions, views)


def _app(rt: Runtime) -> FastAPI:
    app = FastAPI()
    app.state.rt = rt
    errors.install(app)
    for router in (runbooks_router, approvals_router, checks_router, access_router):
        app.include_router(router, prefix="/api/v1")
    return app


@asynccontextmanager
async def _served(rt: Runtime, door: str) -> AsyncIterator[str]:
    """For the CLI door: the same API served on loopback, in this loop, for the client processes."""
    if door != "cli":
        yield ""
        return
    server = uvicorn.Server(uvicorn.Config(_app(rt), host="127.0.0.1", port=free_port(), log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the API server did not start"
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await task


# The CLI door starts one client process per case (144, in turn: each is counted against the audit
# log before the next): ~60 s alone, past the default 120 s at the load of a whole `make test`.
@pytest.mark.parametrize("door", [pytest.param(d, marks=pytest.mark.timeout(480)) if d == "cli" else d
                                  for d in DOORS])
async def test_every_role_scope_action_has_its_expected_outcome(tmp_path: Path, door: str) -> None:
    async with booted(tmp_path, scoped_catalog(tmp_path, users=matrix_users())) as (rt, fake):
        transport = httpx.ASGITransport(app=_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http, _served(rt, door) as url:
            w = await _world(rt, fake, http)
            w.url, w.home = url, tmp_path / "laptop"
            w.home.mkdir()
            mismatches: list[str] = []
            cases = refusals = 0
            for role, scope, action, env in itertools.product(ROLES, SCOPES, ACTIONS, ENVS):
                user = user_name(role, scope)
                audit_action = ACTIONS[action][1]
                refused_before = await _refused(rt, user, audit_action)
                got = await attempt(w, user, door, action, env)
                if got is None:
                    continue
                cases += 1
                want = expected(role, scope, action, env)
                if got != want:
                    mismatches.append(f"{role} {scope} {action} on {env} via {door}: got {got}, expected {want}")
                if not want and await _refused(rt, user, audit_action) <= refused_before:
                    mismatches.append(f"{role} {scope} {action} on {env} via {door}: refused without a record")
                refusals += not want
            await settle(rt)
    assert cases == len(ROLES) * len(SCOPES) * len(ENVS) * (len(ACTIONS) - (door == "chat"))
    assert refusals > 0 and refusals < cases  # the table has both outcomes
    assert mismatches == [], "\n".join(mismatches)


async def _runs(rt: Runtime, user: str, runbook: str) -> int:
    async with rt.read() as s:
        return int((await s.execute(select(func.count()).select_from(ExecutionRow).where(
            ExecutionRow.requested_by == user, ExecutionRow.runbook == runbook))).scalar_one())


def test_the_table_itself() -> None:
    """The table says what docs/access.md says; a wrong table would make the matrix agree with a bug."""
    assert expected("operator", "test", "run", "test") and not expected("operator", "test", "run", "prod")
    assert not expected("viewer", "unscoped", "run", "test") and expected("viewer", "prod", "view", "prod")
    assert expected("approver", "prod", "cancel", "prod") and not expected("operator", "unscoped", "cancel", "prod")
    assert expected("admin", "unscoped", "approve", "prod") and not expected("admin", "test", "approve", "prod")
    assert expected("viewer", "prod", "tail", "prod") and not expected("viewer", "test", "tail", "prod")


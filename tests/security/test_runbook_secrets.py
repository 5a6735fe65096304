"""Secret runbook parameters: sealed in the store, masked in every response, message, room and record."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.approvals import service as approvals
from opsroom.audit.models import AuditRecordRow
from opsroom.chat.fake import FakeAdapter
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runbooks.views import router as runbooks_router
from opsroom.runtime import Runtime
from opsroom.secrets import sealing
from opsroom.web import errors
from tests import inprocess
from tests.factories import token_for, write_catalog

PY = sys.executable
SECRET = "pa55-Canary-7f3e9b"


def _forms(value: str) -> list[str]:
    raw = value.encode()
    return [value, raw.hex(), base64.b64encode(raw).decode().rstrip("="), hashlib.sha256(raw).hexdigest()]


def _catalog(tmp: Path) -> Path:
    return write_catalog(tmp / "catalog", {
        "environments": [{"name": "test"}, {"name": "prod", "protected": True}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "runbooks": [{
            "name": "rotate", "environment": "test", "approval": "none",
            "summary": "rotate with {{ params.password }} for {{ params.user }}",
            "parameters": {"user": {"type": "string"}, "password": {"type": "string", "secret": True}},
            "success_message": "rotated {{ params.user }} to {{ params.password }}",
            "steps": [{"command": [PY, "-c", "import sys; open(sys.argv[1],'w').write(sys.argv[2]); print(sys.argv[2])",
                                   str(tmp / "seen"), "{{ params.password }}"]}]}, {
            "name": "rotate-bad", "environment": "test", "approval": "none",
            "parameters": {"password": {"type": "string", "secret": True}},
            "failure_message": "could not use {{ params.password }}",
            "steps": [{"command": [PY, "-c", "import sys; sys.exit(3)", "{{ params.password }}"]}]}, {
            "name": "rotate-prod", "environment": "prod",
            "parameters": {"password": {"type": "string", "secret": True}},
            "steps": [{"command": [PY, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                                   str(tmp / "seen-prod"), "{{ params.password }}"]}]}],
        "rooms": [{"name": "ops"}],
        "users": [{"name": "you", "roles": ["operator"]}, {"name": "dev", "roles": ["viewer"]},
                  {"name": "boss", "roles": ["approver"]}],
    })


@pytest.fixture
async def booted(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeAdapter]]:
    async with inprocess.booted(tmp_path, _catalog(tmp_path)) as pair:
        yield pair


async def _run(rt: Runtime, runbook: str, **params: str) -> ExecutionRow:
    row = await runbooks.request_run(rt, actor=SYSTEM, runbook=runbook, params=params, room="ops")
    assert rt.executor is not None
    await rt.executor.wait(row.id)
    await inprocess.settle(rt)
    return row


async def test_a_secret_reaches_its_step_and_nowhere_else(booted: tuple[Runtime, FakeAdapter],
                                                          tmp_path: Path) -> None:
    rt, fake = booted
    row = await _run(rt, "rotate", user="alice", password=SECRET)
    assert (tmp_path / "seen").read_text() == SECRET  # the step got the real value, unsealed

    # The store: the row's columns, and the raw bytes of the whole database file.
    async with rt.read() as s:
        stored = await s.get(ExecutionRow, row.id)
        dump = json.dumps([list(r) for r in (await s.execute(text("SELECT * FROM executions"))).all()],
                          default=str)
        audit_dump = json.dumps([list(r) for r in (await s.execute(text("SELECT * FROM audit_records"))).all()],
                                default=str)
    assert stored is not None and stored.status == "succeeded", stored and stored.error
    assert stored.params == {"user": "alice", "password": "****"}
    assert stored.secret_params and stored.secret_params.startswith("v1:")
    assert stored.summary == "rotate with **** for alice"
    for form in _forms(SECRET):
        assert form not in dump and form not in audit_dump
    # The lock key is no plain hash of the secret: it is computed over the masks.
    assert stored.lock_key == runbooks.lock_key("rotate", {"user": "alice", "password": "****"})

    # The success message was rendered with the masks: in the room and in the audit record.
    said = await inprocess.said(rt, fake)
    assert any("rotated alice to ****" in t for t in said), said
    assert not [t for t in said if SECRET in t]

    # The key: one file in the data dir, 32 bytes, owner-only.
    key = rt.settings.data / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert sealing.unseal(key.read_bytes(), stored.secret_params) == {"password": SECRET}


async def test_a_failure_message_is_masked_too(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, fake = booted
    row = await _run(rt, "rotate-bad", password=SECRET)
    said = await inprocess.said(rt, fake)
    assert any("could not use ****" in t for t in said), said
    async with rt.read() as s:
        finish = (await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == "execution.finish",
                                                               AuditRecordRow.target == f"execution:{row.id}"))
                  ).scalar_one()
    assert finish.details["message"].startswith("could not use **** (")
    assert SECRET not in json.dumps(finish.details)


async def test_an_approved_run_gets_its_sealed_secret(booted: tuple[Runtime, FakeAdapter], tmp_path: Path) -> None:
    rt, _fake = booted
    you = await access.actor_by_name(rt, name="you", door="api")
    row = await runbooks.request_run(rt, actor=you, runbook="rotate-prod", params={"password": SECRET})
    assert row.status == "awaiting_approval" and row.approval_id is not None
    assert row.params == {"password": "****"}
    boss = await access.actor_by_name(rt, name="boss", door="api")
    await approvals.decide(rt, actor=boss, approval_id=row.approval_id, approve=True)
    assert rt.executor is not None
    await rt.executor.wait(row.id)
    await inprocess.settle(rt)
    assert (tmp_path / "seen-prod").read_text() == SECRET  # unsealed from the stored row, after approval
    async with rt.read() as s:
        done = await s.get(ExecutionRow, row.id)
    assert done is not None and done.status == "succeeded"


async def test_viewers_read_executions_without_secrets(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, _fake = booted
    row = await _run(rt, "rotate", user="bob", password=SECRET)
    app = FastAPI()
    app.state.rt = rt
    errors.install(app)
    app.include_router(runbooks_router, prefix="/api/v1")
    token = await token_for(rt, "dev")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        one = await http.get(f"/api/v1/executions/{row.id}")
        many = await http.get("/api/v1/executions")
        books = await http.get("/api/v1/runbooks")
    assert one.status_code == many.status_code == books.status_code == 200
    assert one.json()["params"] == {"user": "bob", "password": "****"}
    assert "secret_params" not in one.json()
    for resp in (one, many, books):
        for form in _forms(SECRET):
            assert form not in resp.text


def test_the_key_file_is_made_once_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = sealing.data_key(data)
    assert sealing.data_key(data) == first and (data / "secret.key").read_bytes() == first
    assert [p.name for p in data.iterdir()] == ["secret.key"]  # no temporary file left behind
    blob = sealing.seal(first, {"p": SECRET})
    assert sealing.seal(first, {"p": SECRET}) != blob  # a fresh nonce every time
    tampered = blob[:-6] + ("A" if blob[-6] != "A" else "B") + blob[-5:]
    with pytest.raises(sealing.SealError):
        sealing.unseal(first, tampered)
    with pytest.raises(sealing.SealError):
        sealing.unseal(os.urandom(32), blob)
    other = tmp_path / "other"
    other.mkdir()
    (other / "secret.key").write_bytes(os.urandom(32))
    (other / "secret.key").chmod(0o644)
    with pytest.raises(sealing.SealError) as refused:
        sealing.data_key(other)
    assert "chmod 600" in str(refused.value.hint)

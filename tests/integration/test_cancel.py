"""Cancel (issue 13 point 2): from chat, the API and the CLI a running step stops within the grace
period, its whole process group is gone, the room hears who cancelled it and the audit log says so."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.approvals.models import ApprovalRow
from opsroom.audit import service as audit
from opsroom.errors import Conflict, PermissionDenied
from opsroom.rooms import service as rooms
from opsroom.runbooks import executor
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests import inprocess
from tests.chat.harness import Served, serve
from tests.factories import small_catalog, token_for

PY = sys.executable
# Writes its pid and a grandchild's (same process group), then sleeps: what a cancel must stop whole.
SLEEPER = ("import subprocess,sys,time,os; c=subprocess.Popen([sys.executable,'-c','import time; time.sleep(120)']);"
           "open(sys.argv[1]+'.tmp','w').write(f'{os.getpid()} {c.pid}'); os.rename(sys.argv[1]+'.tmp',sys.argv[1]);"
           "time.sleep(120)")
# Refuses SIGTERM: only the SIGKILL after the grace period ends it.
STUBBORN = ("import os,signal,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "open(sys.argv[1]+'.tmp','w').write(str(os.getpid())); os.rename(sys.argv[1]+'.tmp',sys.argv[1]);"
            "time.sleep(120)")


def _catalog(tmp: Path) -> Path:
    base = small_catalog(tmp)  # its users (you operator, boss approver, dev viewer, lead) and room ops
    data: dict[str, Any] = yaml.safe_load((base / "catalog.yaml").read_text())
    data["users"].append({"name": "other", "roles": ["operator"]})
    data["users"].append({"name": "admin", "roles": ["admin"]})
    data["runbooks"] += [
        {"name": "sleeper", "approval": "none", "environment": "test", "parameters": {"tag": {"type": "string"}},
         "steps": [{"command": [PY, "-c", SLEEPER, str(tmp / "pids-{{ params.tag }}")]}]},
        {"name": "stubborn", "approval": "none", "environment": "test",
         "steps": [{"command": [PY, "-c", STUBBORN, str(tmp / "pid-stubborn")]}]},
        {"name": "guarded", "environment": "prod", "steps": [{"command": [PY, "-c", "print('ran')"]}]},
    ]
    (base / "catalog.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return base


async def _pids(path: Path) -> list[int]:
    async with asyncio.timeout(10):
        while not path.exists():
            await asyncio.sleep(0.02)
    return [int(p) for p in path.read_text().split()]


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


async def _start(rt: Runtime, user: str, tmp: Path, tag: str) -> tuple[int, list[int]]:
    actor = await access.actor_by_name(rt, name=user, door="api")
    row = await runbooks.request_run(rt, actor=actor, runbook="sleeper", params={"tag": tag})
    assert row.status == "running"
    return row.id, await _pids(tmp / f"pids-{tag}")


async def _status(rt: Runtime, eid: int) -> ExecutionRow:
    async with rt.read() as s:
        return await s.get_one(ExecutionRow, eid)


async def _audited(rt: Runtime, eid: int, outcome: str) -> list[str]:
    records = await audit.list_records(rt, actor=SYSTEM, action="execution.cancel", limit=100)
    return [r.actor for r in records if r.target == f"execution:{eid}" and r.outcome == outcome]


async def _room_text(rt: Runtime) -> str:
    await inprocess.settle(rt)
    return "\n".join(m.text for m in await rooms.history_of(rt, room="ops", limit=200))


@pytest.fixture
async def booted(tmp_path: Path) -> AsyncIterator[tuple[Runtime, Any]]:
    async with inprocess.booted(tmp_path, _catalog(tmp_path)) as (rt, fake):
        yield rt, fake


async def test_cancel_from_chat_stops_the_group_and_the_room_hears_who(booted: tuple[Runtime, Any],
                                                                        tmp_path: Path) -> None:
    rt, fake = booted
    eid, pids = await _start(rt, "you", tmp_path, "chat")
    started = time.monotonic()
    before = len(fake.sent)
    await fake.say("ops", "you", f"cancel {eid}")
    took = time.monotonic() - started
    assert took < executor.CANCEL_GRACE_S, took  # a plain sleeper ends on SIGTERM, no grace needed
    row = await _status(rt, eid)
    assert row.status == "cancelled" and row.error == "cancelled by you"
    assert _gone(pids), [psutil.Process(p).status() for p in pids if psutil.pid_exists(p)]
    said = await inprocess.said(rt, fake, before)
    assert any(f"execution #{eid} cancelled by you" in t for t in said), said
    assert await _audited(rt, eid, "stopping") == ["you"]
    finished = await audit.list_records(rt, actor=SYSTEM, action="execution.finish", limit=100)
    assert [r.outcome for r in finished if r.target == f"execution:{eid}"] == ["cancelled"]
    # Twice: the second one is told there is nothing left to cancel.
    again = await inprocess.ask(fake, "you", f"cancel {eid}")
    assert f"execution #{eid} is already cancelled: nothing to cancel" in again


async def test_sigterm_refused_means_sigkill_after_the_grace(booted: tuple[Runtime, Any], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rt, _fake = booted
    monkeypatch.setattr(executor, "CANCEL_GRACE_S", 0.5)
    you = await access.actor_by_name(rt, name="you", door="api")
    row = await runbooks.request_run(rt, actor=you, runbook="stubborn", params={})
    pid = (await _pids(tmp_path / "pid-stubborn"))[0]
    started = time.monotonic()
    done = await runbooks.cancel_execution(rt, actor=you, execution_id=row.id)
    took = time.monotonic() - started
    assert done.status == "cancelled"
    assert 0.5 <= took < 0.5 + 3, took  # it outlived the SIGTERM, not the SIGKILL
    assert _gone([pid])


async def test_who_may_cancel(booted: tuple[Runtime, Any], tmp_path: Path) -> None:
    rt, _fake = booted
    eid, pids = await _start(rt, "you", tmp_path, "perm")
    for name in ("dev", "other"):  # a viewer; an operator who did not ask for it
        actor = await access.actor_by_name(rt, name=name, door="api")
        with pytest.raises(PermissionDenied) as refused:
            await runbooks.cancel_execution(rt, actor=actor, execution_id=eid)
        assert "requester, an approver or an admin" in (refused.value.hint or "")
    assert (await _status(rt, eid)).status == "running" and not _gone(pids)
    assert sorted(await _audited(rt, eid, "refused")) == ["dev", "other"]
    boss = await access.actor_by_name(rt, name="boss", door="api")  # an approver may
    assert (await runbooks.cancel_execution(rt, actor=boss, execution_id=eid)).status == "cancelled"
    assert _gone(pids)
    with pytest.raises(Conflict, match="already cancelled"):
        await runbooks.cancel_execution(rt, actor=boss, execution_id=eid)
    # An admin may cancel anyone's.
    eid2, pids2 = await _start(rt, "other", tmp_path, "admin")
    admin = await access.actor_by_name(rt, name="admin", door="api")
    assert (await runbooks.cancel_execution(rt, actor=admin, execution_id=eid2)).error == "cancelled by admin"
    assert _gone(pids2)
    # A finished one: a clear conflict.
    you = await access.actor_by_name(rt, name="you", door="api")
    done = await runbooks.request_run(rt, actor=you, runbook="count", params={"n": "3"})
    await inprocess.settle(rt)
    with pytest.raises(Conflict, match=f"execution #{done.id} is already succeeded"):
        await runbooks.cancel_execution(rt, actor=you, execution_id=done.id)


async def test_cancelling_a_run_awaiting_approval_closes_its_request(booted: tuple[Runtime, Any]) -> None:
    rt, fake = booted
    you = await access.actor_by_name(rt, name="you", door="api")
    row = await runbooks.request_run(rt, actor=you, runbook="guarded", params={})
    assert row.status == "awaiting_approval" and row.approval_id is not None
    before = len(fake.sent)
    done = await runbooks.cancel_execution(rt, actor=you, execution_id=row.id)
    assert done.status == "cancelled"
    async with rt.read() as s:
        approval = await s.get_one(ApprovalRow, row.approval_id)
    assert approval.status == "cancelled" and approval.decided_by == "you"
    said = await inprocess.said(rt, fake, before)
    assert any(f"execution #{row.id}" in t and "cancelled by you before it started" in t for t in said), said
    reply = await inprocess.ask(fake, "boss", f"approve {row.approval_id}")  # nothing left to approve
    assert reply == f"request #{row.approval_id} cannot be decided: it is already cancelled", reply
    assert (await _status(rt, row.id)).status == "cancelled"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """The whole web app in this process on a loopback port: the API and the CLI's server."""
    async with serve(tmp_path, catalog_path=_catalog(tmp_path)) as running:
        yield running


async def test_cancel_from_the_api(served: Served, tmp_path: Path) -> None:
    rt = served.rt
    eid, pids = await _start(rt, "you", tmp_path, "api")
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
        other = {"Authorization": f"Bearer {await token_for(rt, 'other')}"}
        refused = await http.post(f"/api/v1/executions/{eid}/cancel", headers=other)
        assert refused.status_code == 403, refused.text
        assert not _gone(pids)
        mine = {"Authorization": f"Bearer {await token_for(rt, 'you')}"}
        started = time.monotonic()
        resp = await http.post(f"/api/v1/executions/{eid}/cancel", headers=mine)
        assert resp.status_code == 200, resp.text
        assert time.monotonic() - started < executor.CANCEL_GRACE_S
        assert resp.json()["status"] == "cancelled"
        again = await http.post(f"/api/v1/executions/{eid}/cancel", headers=mine)
        assert again.status_code == 409 and "already cancelled" in again.text, again.text
    assert _gone(pids)
    assert f"execution #{eid} cancelled by you" in await _room_text(rt)
    assert await _audited(rt, eid, "stopping") == ["you"]


async def test_cancel_from_the_cli(served: Served, tmp_path: Path) -> None:
    rt = served.rt
    eid, pids = await _start(rt, "you", tmp_path, "cli")
    env = {**os.environ, "OPSROOM_URL": served.base}

    def cli(*args: str, token: str) -> Any:
        return subprocess.run([PY, "-m", "opsroom", "cancel", *args], capture_output=True, text=True, timeout=60,
                              env={**env, "OPSROOM_TOKEN": token})

    viewer = await asyncio.to_thread(cli, str(eid), token=await token_for(rt, "dev"))
    assert viewer.returncode == 3 and "may not cancel executions" in viewer.stderr, viewer.stderr
    assert "Traceback" not in viewer.stderr and not _gone(pids)
    boss = await token_for(rt, "boss")
    done = await asyncio.to_thread(cli, str(eid), token=boss)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"execution #{eid}: cancelled"
    assert _gone(pids)
    assert (await _status(rt, eid)).error == "cancelled by boss"
    assert f"execution #{eid} cancelled by boss" in await _room_text(rt)
    assert await _audited(rt, eid, "stopping") == ["boss"]
    twice = await asyncio.to_thread(cli, str(eid), token=boss)
    assert twice.returncode == 1 and "already cancelled" in twice.stderr, twice.stderr


async def test_cancel_an_ssh_run_leaves_no_remote_process(tmp_path: Path) -> None:
    """`target: ssh`: cancelling the steps' task closes the session, which kills the remote group."""
    from tests.ssh import sshd
    from tests.ssh.helpers import catalog, gone, pgrep, ssh_runbook

    pid_file = tmp_path / "remote.pid"
    book = ssh_runbook("remote-hang", [{"command": ["sh", "-c", "echo $$ > \"$1\"; sleep 517.25 & sleep 518.25",
                                                    "sh", str(pid_file)]}])
    with sshd.running(tmp_path / "sshd") as server:
        async with inprocess.booted(tmp_path, catalog(tmp_path, server, runbooks_=[book])) as (rt, _fake):
            you = await access.actor_by_name(rt, name="you", door="api")
            row = await runbooks.request_run(rt, actor=you, runbook="remote-hang", params={})
            await _pids(pid_file)
            assert pgrep("sleep 51[78].25")
            done = await runbooks.cancel_execution(rt, actor=you, execution_id=row.id)
            assert done.status == "cancelled" and done.error == "cancelled by you"
            assert await gone("sleep 51[78].25"), pgrep("sleep 51[78].25")

"""Runbook processes: a minimal environment, and no step outliving a killed server beside a second run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert, select

from opsroom.access.identity import SYSTEM
from opsroom.audit.models import AuditRecordRow
from opsroom.errors import Conflict
from opsroom.runbooks import processes
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests import inprocess
from tests.e2e.harness import Demo, cli, start_server
from tests.factories import write_catalog

PY = sys.executable
CANARY = "canary-db-password-0xdeadbeef"
API_CANARY = "canary-api-key-0xfeedface"
DUMP_ENV = "import json,os,sys; open(sys.argv[1],'w').write(json.dumps(dict(os.environ)))"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_runbook_never_sees_the_servers_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSROOM_TEST_DB_PASSWORD", CANARY)
    monkeypatch.setenv("OPSROOM_TEST_API_CANARY", API_CANARY)
    monkeypatch.setenv("KUBECONFIG", "/etc/kube/config-for-test")
    monkeypatch.setenv("PATH", f"/home/someone/.local/bin:{os.environ['PATH']}")
    catalog = write_catalog(tmp_path / "catalog", {
        "environments": [{"name": "test"}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "runbooks": [
            {"name": "env", "approval": "none", "steps": [
                {"command": [PY, "-c", DUMP_ENV, str(tmp_path / "plain.json")], "env": {"MODE": "x{{ runbook }}"}},
                {"command": [PY, "-c", "import os; print(sorted(os.environ))"]}]},
            # A secret ${VAR} handed over on purpose is masked wherever the command prints it.
            {"name": "api", "approval": "none", "steps": [
                {"command": [PY, "-c", "import os; print('key is', os.environ['API_KEY'])"],
                 "env": {"API_KEY": "${secret:OPSROOM_TEST_API_CANARY}"}}]},
            {"name": "kube", "approval": "none", "inherit_env": ["KUBECONFIG", "NOT_SET_ANYWHERE"],
             "steps": [{"command": [PY, "-c", DUMP_ENV, str(tmp_path / "kube.json")]}]}],
        "rooms": [{"name": "ops"}],
    })
    async with inprocess.booted(tmp_path, catalog) as (rt, fake):
        for name in ("env", "api", "kube"):
            row = await runbooks.request_run(rt, actor=SYSTEM, runbook=name, params={}, room="ops")
            assert rt.executor is not None
            await rt.executor.wait(row.id)
        said = await inprocess.said(rt, fake)
        async with rt.read() as s:
            outputs = [r.output for r in (await s.execute(select(ExecutionRow))).scalars()]
    plain = json.loads((tmp_path / "plain.json").read_text())
    home = str(tmp_path / "data" / "runbook-home")
    assert plain == {"PATH": processes.SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home,
                     "MODE": "xenv"} | ({"TZ": os.environ["TZ"]} if "TZ" in os.environ else {})
    kube = json.loads((tmp_path / "kube.json").read_text())
    assert kube["KUBECONFIG"] == "/etc/kube/config-for-test" and "NOT_SET_ANYWHERE" not in kube
    assert "OPSROOM_TEST_DB_PASSWORD" not in kube
    assert not [t for t in [*said, *outputs] if CANARY in t or "OPSROOM_TEST_DB_PASSWORD" in t]
    assert any("key is ****" in t for t in outputs) and not [t for t in [*said, *outputs] if API_CANARY in t]


def test_a_process_group_is_killed_only_while_it_is_still_ours() -> None:
    proc = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        started = processes.start_time(proc.pid)
        assert started is not None and started.isdigit()
        # Same pid, another start time: a reused number names somebody else's process.
        assert not processes.kill_if_ours(proc.pid, str(int(started) + 1))
        assert not processes.kill_if_ours(proc.pid, None)
        assert proc.poll() is None
        assert processes.kill_if_ours(proc.pid, started)
        assert proc.wait(5) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not processes.kill_if_ours(proc.pid, started)  # gone: nothing to kill


async def test_a_pending_run_left_behind_frees_its_lock(store_rt: Runtime) -> None:
    """Approved ('pending') but never started by a server that died: it must not hold the lock forever."""
    now = time.time()
    key = runbooks.lock_key("echo-args", {"text": "a"})
    base = {"runbook": "echo-args", "runbook_hash": "h", "params": {"text": "a"}, "environment": "test",
            "summary": "run echo-args text=a", "requested_by": "you", "door": "api", "status": "pending"}
    async with store_rt.write() as s:
        await s.execute(insert(ExecutionRow), [
            {**base, "lock_key": key, "created_at": now - 3600},  # nobody's, long ago
            {**base, "lock_key": "fresh", "created_at": now},  # just approved: its server starts it now
            {**base, "lock_key": "dead-owner", "created_at": now, "owner": f"{socket.gethostname()}:999999999:x"},
            {**base, "lock_key": "other-host", "created_at": now, "owner": "another-host:1:x"}])
    with pytest.raises(Conflict):
        await runbooks.request_run(store_rt, actor=SYSTEM, runbook="echo-args", params={"text": "a"})
    found = await runbooks.recover_interrupted(store_rt)
    assert sorted(r.lock_key for r in found) == sorted([key, "dead-owner"])
    async with store_rt.read() as s:
        rows = {r.lock_key: r for r in (await s.execute(select(ExecutionRow))).scalars()}
        records = (await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == "execution.interrupted"))
                   ).scalars().all()
    assert rows[key].status == "interrupted" and "before this approved run started" in str(rows[key].error)
    assert rows["dead-owner"].status == "interrupted"
    assert rows["fresh"].status == "pending" and rows["other-host"].status == "pending"  # only its host can tell
    assert sorted(r.target for r in records) == sorted(f"execution:{rows[k].id}" for k in (key, "dead-owner"))
    again = await runbooks.request_run(store_rt, actor=SYSTEM, runbook="echo-args", params={"text": "a"})
    assert again.status == "pending"


def _catalog(tmp: Path) -> Path:
    return write_catalog(tmp / "catalog", {
        "environments": [{"name": "test"}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "runbooks": [{"name": "long", "approval": "none", "steps": [{"timeout": "120s", "command": [
            PY, "-c", "import os,sys,time; open(sys.argv[1],'a').write(f'{os.getpid()}\\n'); time.sleep(120)",
            str(tmp / "pids")]}]}],
        "rooms": [{"name": "ops"}],
        "users": [{"name": "you", "roles": ["operator"], "password_env": "OPSROOM_TEST_PW_YOU"}],
    })


def _api(server: Demo, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _wait_running(api: httpx.Client, execution: int, pids: Path, count: int) -> int:
    for _ in range(400):
        lines = pids.read_text().split() if pids.exists() else []
        if len(lines) >= count and api.get(f"/executions/{execution}").json()["status"] == "running":
            return int(lines[count - 1])
        time.sleep(0.05)
    raise AssertionError(f"execution #{execution} never started its step")


@pytest.mark.e2e
async def test_after_kill_9_the_old_step_is_killed_and_a_new_run_starts_alone(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    env = {"OPSROOM_TEST_PW_YOU": "you-password-long"}
    pids = tmp_path / "pids"
    server = start_server(tmp_path, ["serve", "--catalog", str(catalog)], env_extra=env)
    step = 0
    try:
        token = cli("token", "create", "you", "--data", str(server.data), "--catalog", str(catalog)).stdout.strip()
        assert token, "no token"
        with _api(server, token) as api:
            first = api.post("/runbooks/long/run", json={"params": {}}).json()["id"]
            step = _wait_running(api, first, pids, 1)
            # The group is stored off the spawn's path: wait until it is, as a crash could come any time.
            await asyncio.sleep(0.5)
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server's group only: the step has its own session
        server.proc.wait(10)
        assert _alive(step), "the step should outlive a kill -9 of the server (its own session)"

        again = start_server(tmp_path, ["serve", "--catalog", str(catalog)], data=server.data, port=server.port,
                             env_extra=env)
        try:
            for _ in range(100):
                if not _alive(step):
                    break
                await asyncio.sleep(0.05)
            assert not _alive(step), "recovery left the old step running"
            with _api(again, token) as api:
                old = api.get(f"/executions/{first}").json()
                assert old["status"] == "interrupted", old
                assert "process group was killed" in old["error"]
                second = api.post("/runbooks/long/run", json={"params": {}})
                assert second.status_code == 202, second.text  # the lock is free
                new_step = _wait_running(api, second.json()["id"], pids, 2)
                assert new_step != step and _alive(new_step)
        finally:
            again.stop()
    finally:
        for line in (pids.read_text().split() if pids.exists() else []):
            processes.kill_group(int(line))
        server.stop()

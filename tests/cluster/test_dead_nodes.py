"""Executions of a server that died on another host are closed by the others (issue 14, point 4)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import insert, select

from opsroom.access.identity import SYSTEM
from opsroom.cluster.membership import DEAD_AFTER_S, Membership
from opsroom.cluster.models import NodeRow
from opsroom.errors import Conflict
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime

BASE = {"runbook": "echo-args", "runbook_hash": "h", "params": {"text": "a"}, "environment": "test",
        "summary": "run echo-args text=a", "requested_by": "you", "door": "api", "status": "running"}


async def _node(rt: Runtime, node_id: str, *, age: float, stopped: bool = False) -> None:
    """A node row as a server on another host leaves it: heartbeat `age` seconds old."""
    now = time.time()
    async with rt.write() as s:
        await s.execute(insert(NodeRow).values(
            node_id=node_id, kind="server", host=node_id.split(":")[0], pid=1, environment=None, version="0",
            started_at=now - 600, heartbeat_at=now - age, stopped_at=now if stopped else None, info={}))


async def test_running_executions_of_a_silent_remote_server_are_interrupted_once(store_rt: Runtime) -> None:
    await _node(store_rt, "far-away:10:a", age=DEAD_AFTER_S + 5)  # died: no heartbeat for a while
    await _node(store_rt, "far-away:11:b", age=0.2)  # alive on its host
    await _node(store_rt, "far-away:12:c", age=0.2, stopped=True)  # stopped cleanly, left its run
    now = time.time()
    key = runbooks.lock_key("echo-args", {"text": "a"})
    async with store_rt.write() as s:
        await s.execute(insert(ExecutionRow), [
            {**BASE, "lock_key": key, "created_at": now, "started_at": now, "owner": "far-away:10:a",
             "pgid": 4242, "pg_started": "1"},
            {**BASE, "lock_key": "alive", "created_at": now, "started_at": now, "owner": "far-away:11:b"},
            {**BASE, "lock_key": "stopped", "created_at": now, "started_at": now, "owner": "far-away:12:c"},
            {**BASE, "lock_key": "unknown", "created_at": now, "started_at": now, "owner": "old-version:1:z"},
            {**BASE, "lock_key": "pending-dead", "status": "pending", "created_at": now, "owner": "far-away:10:a"}])
    with pytest.raises(Conflict):  # the dead server's run holds the lock until it is closed
        await runbooks.request_run(store_rt, actor=SYSTEM, runbook="echo-args", params={"text": "a"})
    store_rt.bus.keep_history = True
    found = await runbooks.recover_interrupted(store_rt)
    assert sorted(r.lock_key for r in found) == sorted([key, "pending-dead", "stopped"])
    async with store_rt.read() as s:
        rows = {r.lock_key: r for r in (await s.execute(select(ExecutionRow))).scalars()}
    assert rows["alive"].status == "running", "a live server's run was taken from it"
    assert rows["unknown"].status == "running", "a server that never heartbeat cannot be judged dead"
    assert rows[key].status == "interrupted" and "not re-run" in str(rows[key].error)
    assert "killed" not in str(rows[key].error), "a process group of another host was treated as local"
    # A second sweep (another server's, or the next pass) announces nothing again.
    assert await runbooks.recover_interrupted(store_rt) == []
    finished = [e for e in store_rt.bus.history if e.type == "execution.finished"]
    assert sorted(e.execution_id for e in finished) == sorted(  # type: ignore[attr-defined]
        rows[k].id for k in (key, "pending-dead", "stopped"))
    # The lock is free: the same run can be asked for again.
    again = await runbooks.request_run(store_rt, actor=SYSTEM, runbook="echo-args", params={"text": "a"})
    assert again.status in ("pending", "running")


async def test_a_heartbeating_membership_keeps_its_runs(store_rt: Runtime) -> None:
    member = Membership(store_rt)
    member.node_id = "elsewhere:7:q"
    await member.beat()
    now = time.time()
    async with store_rt.write() as s:
        await s.execute(insert(ExecutionRow), [{**BASE, "lock_key": "k", "created_at": now, "started_at": now,
                                               "owner": "elsewhere:7:q"}])
    assert await runbooks.recover_interrupted(store_rt) == []
    await member.stop()
    assert [r.lock_key for r in await runbooks.recover_interrupted(store_rt)] == ["k"]

"""Cancel, by attack class: authorization bypass through each door, ids out of range, cancelling
twice (also at once), and a cancel racing the end of the run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM, Actor, permissions_for, rule_actor
from opsroom.audit import service as audit
from opsroom.errors import Conflict, NotFound, PermissionDenied
from opsroom.runbooks import service as runbooks
from opsroom.runtime import Runtime
from tests import inprocess
from tests.factories import token_for
from tests.integration import test_cancel as base
from tests.integration.test_cancel import Served, _gone, _start, _status

booted = base.booted  # the fixtures: a booted opsroom with the fake chat, one served on loopback
served = base.served


async def test_authorization_bypass_through_chat(booted: tuple[Runtime, Any], tmp_path: Path) -> None:
    rt, fake = booted
    eid, pids = await _start(rt, "you", tmp_path, "chatbypass")
    viewer = await inprocess.ask(fake, "dev", f"cancel {eid}")
    assert "dev may not cancel executions" in viewer, viewer
    other = await inprocess.ask(fake, "other", f"cancel {eid}")
    assert f"other may not cancel execution #{eid}: you asked for it" in other, other
    stranger = await inprocess.ask(fake, "nobody-linked", f"cancel {eid}")  # a chat account of no user
    assert "cancelled" not in stranger, stranger
    assert (await _status(rt, eid)).status == "running" and not _gone(pids)
    await runbooks.cancel_execution(rt, actor=await access.actor_by_name(rt, name="you", door="api"),
                                    execution_id=eid)
    assert _gone(pids)


async def test_a_same_name_is_not_the_requester(booted: tuple[Runtime, Any], tmp_path: Path) -> None:
    """Only the same user (id) is the requester: a name alone, or a rule's run, is nobody's to take."""
    rt, _fake = booted
    eid, pids = await _start(rt, "you", tmp_path, "samename")
    perms = permissions_for(["operator"])
    impostor = Actor("you", "api", frozenset({"operator"}), perms, user_id=None)
    with pytest.raises(PermissionDenied):
        await runbooks.cancel_execution(rt, actor=impostor, execution_id=eid)
    assert not _gone(pids)
    by_rule = await runbooks.request_run(rt, actor=rule_actor("restart"), runbook="sleeper",
                                         params={"tag": "rule"}, rule="restart")
    you = await access.actor_by_name(rt, name="you", door="api")
    with pytest.raises(PermissionDenied):
        await runbooks.cancel_execution(rt, actor=you, execution_id=by_rule.id)
    boss = await access.actor_by_name(rt, name="boss", door="api")
    for row_id in (eid, by_rule.id):
        assert (await runbooks.cancel_execution(rt, actor=boss, execution_id=row_id)).status == "cancelled"
    assert _gone(pids)


async def test_authorization_bypass_through_the_api(served: Served, tmp_path: Path) -> None:
    rt = served.rt
    eid, pids = await _start(rt, "you", tmp_path, "apibypass")
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
        assert (await http.post(f"/api/v1/executions/{eid}/cancel")).status_code == 401
        forged = await http.post(f"/api/v1/executions/{eid}/cancel", headers={"Authorization": "Bearer opr_forged"})
        assert forged.status_code == 401
        viewer = {"Authorization": f"Bearer {await token_for(rt, 'dev')}"}
        assert (await http.post(f"/api/v1/executions/{eid}/cancel", headers=viewer)).status_code == 403
        # No probing: a viewer learns nothing about which numbers exist.
        unknown = await http.post("/api/v1/executions/424242/cancel", headers=viewer)
        assert unknown.status_code == 403, unknown.text
        get = await http.get(f"/api/v1/executions/{eid}/cancel", headers=viewer)
        assert get.status_code == 405
    assert (await _status(rt, eid)).status == "running" and not _gone(pids)
    refused = await audit.list_records(rt, actor=SYSTEM, action="execution.cancel", limit=100)
    assert [r.actor for r in refused if r.outcome == "refused"] == ["dev", "dev"]


@pytest.mark.parametrize(("path", "status"), [("0", 422), ("-1", 422), ("99999999999999999999999", 422),
                                              ("1e3", 422), ("%C2%B2", 422), ("424242", 404)])
async def test_ids_out_of_range_through_the_api(served: Served, path: str, status: int) -> None:
    token = await token_for(served.rt, "boss")
    async with httpx.AsyncClient(base_url=served.base, timeout=30) as http:
        resp = await http.post(f"/api/v1/executions/{path}/cancel", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == status, resp.text
    assert "Traceback" not in resp.text


@pytest.mark.parametrize(("text", "answer"), [
    ("cancel 0", "there is no execution #0"),
    ("cancel 99999999999999999999", "the number is too large"),
    ("cancel -1", "#-1 is not an execution number"),
    ("cancel ²", "#² is not an execution number"),
    ("cancel 1; rm -rf /", "is not an execution number"),
    ("cancel 424242", "there is no execution #424242"),
])
async def test_ids_out_of_range_through_chat(booted: tuple[Runtime, Any], text: str, answer: str) -> None:
    _rt, fake = booted
    reply = await inprocess.ask(fake, "boss", text)
    assert answer in reply, reply


@pytest.mark.parametrize("arg", ["0", "-1", "abc", "99999999999999999999999"])
async def test_ids_out_of_range_through_the_cli(served: Served, arg: str) -> None:
    token = await token_for(served.rt, "boss")
    env = {**os.environ, "OPSROOM_URL": served.base, "OPSROOM_TOKEN": token}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "opsroom", "cancel", "--", arg],
                                   capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode in (1, 2), (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == ""


async def test_cancelling_twice_at_once_stops_it_once(booted: tuple[Runtime, Any], tmp_path: Path) -> None:
    rt, _fake = booted
    eid, pids = await _start(rt, "you", tmp_path, "twice")
    you = await access.actor_by_name(rt, name="you", door="api")
    boss = await access.actor_by_name(rt, name="boss", door="api")
    results = await asyncio.gather(runbooks.cancel_execution(rt, actor=you, execution_id=eid),
                                   runbooks.cancel_execution(rt, actor=boss, execution_id=eid),
                                   return_exceptions=True)
    for r in results:
        assert not isinstance(r, BaseException) or isinstance(r, Conflict), r
    row = await _status(rt, eid)
    assert row.status == "cancelled" and row.error in ("cancelled by you", "cancelled by boss")
    assert _gone(pids)
    finished = await audit.list_records(rt, actor=SYSTEM, action="execution.finish", limit=100)
    assert [r.outcome for r in finished if r.target == f"execution:{eid}"] == ["cancelled"]
    with pytest.raises(Conflict, match="already cancelled"):
        await runbooks.cancel_execution(rt, actor=you, execution_id=eid)


async def test_a_cancel_racing_the_end_of_the_run(booted: tuple[Runtime, Any]) -> None:
    """Either it is cancelled or it finished first (a clear Conflict): one final status, one record."""
    rt, _fake = booted
    you = await access.actor_by_name(rt, name="you", door="api")
    outcomes: set[str] = set()
    for n, delay in enumerate([0, 0, 0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, None]):
        row = await runbooks.request_run(rt, actor=you, runbook="count", params={"n": str(n)})
        if delay is None:  # the last one surely finished first, however loaded this machine is
            await inprocess.settle(rt)
        else:
            await asyncio.sleep(delay)
        try:
            done = await runbooks.cancel_execution(rt, actor=you, execution_id=row.id)
            assert done.status == "cancelled"
        except Conflict as exc:
            assert "finished" in exc.message or "already succeeded" in exc.message, exc.message
        await inprocess.settle(rt)
        final = await _status(rt, row.id)
        assert final.status in ("cancelled", "succeeded")
        outcomes.add(final.status)
        finished = await audit.list_records(rt, actor=SYSTEM, action="execution.finish", limit=500)
        assert [r.outcome for r in finished if r.target == f"execution:{row.id}"] == [final.status], (n, delay)
    assert "succeeded" in outcomes, outcomes


async def test_unknown_ids_are_not_found_for_those_who_may_cancel(booted: tuple[Runtime, Any]) -> None:
    rt, _fake = booted
    boss = await access.actor_by_name(rt, name="boss", door="api")
    with pytest.raises(NotFound, match="there is no execution #999"):
        await runbooks.cancel_execution(rt, actor=boss, execution_id=999)

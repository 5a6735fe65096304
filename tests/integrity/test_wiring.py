"""The server's own path: a running opsroom refuses a quarantined runbook where runs are asked
for, and where an approved run starts (its files may have changed while it waited)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from opsroom.access.identity import Actor
from opsroom.approvals import service as approvals
from opsroom.errors import Conflict
from opsroom.integrity import service as integrity
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests.inprocess import booted, said, settle
from tests.integrity.conftest import make_tree


async def _ask(rt: Runtime, runbook: str) -> ExecutionRow:
    """Ask for a run once the watcher has judged what it heard (until then a protected runbook
    beside a written file is refused as "changed a moment ago", by design)."""
    for _ in range(100):
        try:
            return await runbooks.request_run(rt, actor=OPERATOR, runbook=runbook, params={})
        except Conflict as exc:
            if "a moment ago" not in exc.message:
                raise
        await asyncio.sleep(0.1)
    raise AssertionError("the watcher did not settle within 10 s")


ADMIN = Actor("alice", "cli", frozenset({"admin"}), frozenset({"*"}))
OPERATOR = Actor("olga", "api", frozenset({"operator"}),
                 frozenset({"runbook.run", "status.read", "execution.read", "approval.read"}))
APPROVER = Actor("pat", "api", frozenset({"approver"}),
                 frozenset({"approval.decide", "approval.read", "status.read", "execution.read"}))


async def test_a_running_server_refuses_a_changed_protected_runbook_until_accepted(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    async with booted(tmp_path, tree.catalog) as (rt, fake):
        tree.restart.write_text("#!/bin/sh\nrm -rf /srv/data\n")
        with pytest.raises(Conflict, match="quarantined"):
            await runbooks.request_run(rt, actor=OPERATOR, runbook="restart-prod", params={})
        done = await runbooks.request_run(rt, actor=OPERATOR, runbook="restart-test", params={})
        await settle(rt)
        assert (await runbooks.get_execution(rt, actor=OPERATOR, execution_id=done.id)).status == "succeeded"
        await integrity.scan_now(rt, found_by="scan")
        assert any("file integrity" in line.lower() or "restart.sh" in line for line in await said(rt, fake))
        await integrity.accept(rt, actor=ADMIN, paths=[str(tree.restart)])
        asked = await _ask(rt, "restart-prod")  # a loaded watcher may still be judging the write
        assert asked.status == "awaiting_approval"


async def test_a_run_approved_after_its_script_changed_does_not_run_it(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    async with booted(tmp_path, tree.catalog) as (rt, _fake):
        asked = await runbooks.request_run(rt, actor=OPERATOR, runbook="restart-prod", params={})
        assert asked.status == "awaiting_approval" and asked.approval_id is not None
        tree.restart.write_text("#!/bin/sh\nrm -rf /srv/data\n")  # while it waits for approval
        await approvals.decide(rt, actor=APPROVER, approval_id=asked.approval_id, approve=True)
        await settle(rt)
        row = await runbooks.get_execution(rt, actor=OPERATOR, execution_id=asked.id)
        assert row.status == "failed" and "quarantined" in (row.error or "")


async def test_a_catalog_reload_accepts_the_catalog_files_it_applied_but_not_the_scripts(tmp_path: Path) -> None:
    from opsroom.catalog import service as catalog_service

    tree = make_tree(tmp_path)
    async with booted(tmp_path, tree.catalog) as (rt, _fake):
        files = list(tree.catalog.rglob("*.yaml"))
        assert files
        for f in files:  # an edit an admin then applies with a reload
            f.write_text(f.read_text() + "\n# reviewed change\n")
        tree.restart.write_text("#!/bin/sh\necho edited too\n")  # not a catalog file
        await integrity.scan_now(rt, found_by="scan")
        with pytest.raises(Conflict, match="quarantined"):
            await runbooks.request_run(rt, actor=OPERATOR, runbook="linked-prod", params={})
        await catalog_service.reload_catalog(rt, actor=ADMIN)
        asked = await _ask(rt, "linked-prod")
        assert asked.status == "awaiting_approval"  # its catalog file was applied by the reload
        with pytest.raises(Conflict, match=r"restart\.sh"):
            await _ask(rt, "restart-prod")

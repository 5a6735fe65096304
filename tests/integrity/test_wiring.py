"""The server's own path: a running opsroom refuses a quarantined runbook where runs are asked
for, and where an approved run starts (its files may have changed while it waited)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsroom.access.identity import Actor
from opsroom.approvals import service as approvals
from opsroom.errors import Conflict
from opsroom.integrity import service as integrity
from opsroom.runbooks import service as runbooks
from tests.inprocess import booted, said, settle
from tests.integrity.conftest import make_tree

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
        asked = await runbooks.request_run(rt, actor=OPERATOR, runbook="restart-prod", params={})
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

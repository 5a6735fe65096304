"""A changed runbook of a protected environment refuses to run until an admin accepts the change:
`integrity.service.refusal` is what runbooks.service.request_run asks (wired by the lead)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from opsroom.access.identity import Actor
from opsroom.audit.models import AuditRecordRow
from opsroom.catalog.loader import load_catalog
from opsroom.errors import NotFound, PermissionDenied
from opsroom.integrity import monitor, service
from opsroom.integrity.snapshot import absolute
from opsroom.runtime import Runtime
from tests.integrity.conftest import Tree, changes, make_tree, opened

ADMIN = Actor("alice", "cli", frozenset({"admin"}), frozenset({"*"}))
OPERATOR = Actor("olga", "api", frozenset({"operator"}), frozenset({"runbook.run", "status.read"}))


async def _audited(rt: Runtime, action: str) -> list[AuditRecordRow]:
    async with rt.read() as s:
        return list((await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == action))).scalars())


async def test_a_changed_script_quarantines_its_protected_runbook_until_accepted(tree: Tree, rt: Runtime) -> None:
    await service.scan_now(rt, found_by="start")
    assert await service.refusal(rt, runbook="restart-prod") is None
    tree.restart.write_text("#!/bin/sh\nrm -rf /srv/data\n")
    (tree.scripts / "test.sh").write_text("#!/bin/sh\necho changed\n")
    result = await service.scan_now(rt, found_by="scan")
    assert result.quarantined == ["restart-prod"]  # restart-test's environment is not protected

    why = await service.refusal(rt, runbook="restart-prod")
    assert why is not None and "quarantined" in why and absolute(tree.restart) in why and "content" in why
    assert await service.refusal(rt, runbook="restart-test") is None
    assert await service.refusal(rt, runbook="linked-prod") is None  # its files did not change
    # The same runbook asked for on an unprotected environment (the caller knows the run's own).
    assert await service.refusal(rt, runbook="restart-prod", environment="test") is None

    with pytest.raises(PermissionDenied):
        await service.accept(rt, actor=OPERATOR, paths=[str(tree.restart)])
    assert await service.refusal(rt, runbook="restart-prod") is not None
    assert await _audited(rt, "integrity.accept") == []

    done = await service.accept(rt, actor=ADMIN, paths=[str(tree.restart)])
    assert done.cleared == [absolute(tree.restart)] and done.generation == 2
    assert await service.refusal(rt, runbook="restart-prod") is None
    (record,) = await _audited(rt, "integrity.accept")
    assert record.actor == "alice" and record.details["paths"] == [absolute(tree.restart)]
    # Accepted is accepted: the next rescan finds nothing new, and test.sh is still listed as open.
    assert (await service.scan_now(rt, found_by="scan")).new_changes == 0
    status = await service.status(rt, actor=ADMIN)
    assert [c.path for c in status.changes] == [absolute(tree.scripts / "test.sh")]


async def test_the_target_of_a_linked_script_and_the_catalog_file_count_too(tree: Tree, rt: Runtime) -> None:
    await service.scan_now(rt, found_by="start")
    (tree.scripts / "real.sh").write_text("#!/bin/sh\necho swapped body\n")  # what link.sh runs
    await service.scan_now(rt, found_by="scan")
    assert await service.refusal(rt, runbook="linked-prod") is not None
    assert await service.refusal(rt, runbook="restart-prod") is None
    await service.accept(rt, actor=ADMIN)

    catalog_file = tree.catalog / "catalog.yaml"
    catalog_file.write_text(catalog_file.read_text() + "# edited by hand\n")
    await service.scan_now(rt, found_by="scan")
    for name in ("restart-prod", "linked-prod"):  # defined in the edited file
        assert await service.refusal(rt, runbook=name) is not None
    assert await service.refusal(rt, runbook="restart-test") is None


async def test_a_change_heard_but_not_yet_judged_already_refuses(tree: Tree, rt: Runtime) -> None:
    """Between inotify's event and its record a run must not slip through."""
    handle = await monitor.start(rt)
    try:
        handle.monitor.heard([absolute(tree.restart)])
        why = await service.refusal(rt, runbook="restart-prod")
        assert why is not None and "being checked" in why
    finally:
        await monitor.stop(handle)


async def test_accepting_an_unknown_path_says_so(tree: Tree, rt: Runtime) -> None:
    await service.scan_now(rt, found_by="start")
    with pytest.raises(NotFound):
        await service.accept(rt, actor=ADMIN, paths=["/nonexistent/file"])


@pytest.mark.parametrize("store_rt", ["postgresql"], indirect=True)
async def test_quarantine_and_accept_on_postgresql(store_rt: Runtime, tmp_path: object) -> None:
    from pathlib import Path

    tree = make_tree(Path(str(tmp_path)) / "pg")
    store_rt.use_catalog(load_catalog(tree.catalog))
    await service.scan_now(store_rt, found_by="start")
    tree.restart.chmod(0o777)
    assert (await service.scan_now(store_rt, found_by="scan")).quarantined == ["restart-prod"]
    assert await service.refusal(store_rt, runbook="restart-prod") is not None
    await service.accept(store_rt, actor=ADMIN, paths=[str(tree.scripts)])
    assert await service.refusal(store_rt, runbook="restart-prod") is None


async def test_a_change_not_yet_heard_of_refuses_too(tree: Tree, rt: Runtime) -> None:
    """No watcher, no rescan since the change: the refusal's own lstat against the baseline sees it
    (a run asked for a millisecond after the write, before inotify's event arrives)."""
    await service.scan_now(rt, found_by="start")
    assert await service.refusal(rt, runbook="linked-prod") is None
    (tree.scripts / "real.sh").chmod(0o700)
    why = await service.refusal(rt, runbook="linked-prod")
    assert why is not None and "real.sh" in why and "a moment ago" in why
    assert await service.refusal(rt, runbook="restart-prod") is None


async def test_two_servers_of_one_store_on_one_host_keep_their_own_baselines(tree: Tree) -> None:
    # Servers of a cluster on one host share the store and the catalog but not the data dir, so
    # not the key that signs a baseline: each must find its own, never take the other's for forged.
    shared = f"sqlite+aiosqlite:///{tree.root / 'shared.db'}"
    async with opened(tree, data=tree.root / "data-a", database_url=shared) as a:
        await service.scan_now(a, found_by="start")
        async with opened(tree, data=tree.root / "data-b", database_url=shared) as b:
            await service.scan_now(b, found_by="start")
            await service.scan_now(a, found_by="scan")
            assert not changes(a) and not changes(b), [e.changes for e in changes(a) + changes(b)]
            assert service.scope(a).site != service.scope(b).site
            tree.restart.write_text("#!/bin/sh\necho changed\n")
            await service.scan_now(b, found_by="scan")
            assert [c["kinds"] for e in changes(b) for c in e.changes if c["path"].endswith("restart.sh")]
            assert all(e.baseline_ok for e in changes(b))

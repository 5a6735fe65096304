"""The catalog's users reconciled with the store at every start (issue 9, finding 24)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from opsroom import events, server
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.access.models import ApiTokenRow, UserRow
from opsroom.access.reconcile import reconcile_users
from opsroom.access.secrets import new_token, token_hash
from opsroom.audit import service as audit
from opsroom.audit.models import AuditRecordRow
from opsroom.catalog.loader import load_catalog
from opsroom.chat.fake import FakeAdapter
from opsroom.config import Settings
from opsroom.errors import Conflict, Unauthenticated
from opsroom.runtime import Runtime
from tests.factories import PASSWORDS, small_catalog

PW = "correct horse battery staple"


def _catalog(tmp: Path, users: list[dict[str, Any]]) -> Path:
    return small_catalog(tmp, users=users)


async def _users(rt: Runtime) -> dict[str, UserRow]:
    async with rt.read() as s:
        return {r.name: r for r in (await s.execute(select(UserRow))).scalars()}


async def _reconciled(rt: Runtime) -> list[AuditRecordRow]:
    async with rt.read() as s:
        return list((await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == "user.reconcile")
                                     .order_by(AuditRecordRow.seq))).scalars())


async def test_removed_and_demoted_catalog_users_lose_access_and_local_users_are_untouched(
        store_rt: Runtime, tmp_path: Path) -> None:
    store_rt.catalog = load_catalog(_catalog(tmp_path / "one", [
        {"name": "you", "roles": ["operator", "approver"]}, {"name": "boss", "roles": ["approver"]}]))
    first = await reconcile_users(store_rt, passwords={"you": PW, "boss": PW})
    assert sorted(first.created) == ["boss", "you"]
    await access.add_user(store_rt, actor=SYSTEM, name="ops1", roles=["admin"], password=PW)
    boss_session = await access.login(store_rt, name="boss", password=PW)
    boss_token = await access.create_token(store_rt, actor=SYSTEM, user="boss")
    assert {n: r.source for n, r in (await _users(store_rt)).items()} == {
        "you": "catalog", "boss": "catalog", "ops1": "local"}

    # The next start's catalog: boss is gone, you keeps only operator.
    store_rt.catalog = load_catalog(_catalog(tmp_path / "two", [{"name": "you", "roles": ["operator"]}]))
    store_rt.bus.keep_history = True
    seq = len(await _reconciled(store_rt))
    with capture_logs() as logs:
        report = await reconcile_users(store_rt)
    assert report.disabled == ["boss"] and report.roles == {"you": (["operator", "approver"], ["operator"])}
    users = await _users(store_rt)
    assert users["boss"].disabled and users["boss"].disabled_by == "catalog"
    assert users["you"].roles == ["operator"] and not users["you"].disabled
    assert users["ops1"].roles == ["admin"] and not users["ops1"].disabled  # local: never touched
    with pytest.raises(Unauthenticated):
        await access.login(store_rt, name="boss", password=PW)
    with pytest.raises(Unauthenticated):
        await access.session_actor(store_rt, session_token=boss_session.session_token, door="web")
    with pytest.raises(Unauthenticated):
        await access.authenticate_token(store_rt, token=boss_token, door="api")
    assert not (await access.actor_by_name(store_rt, name="you", door="chat")).can("approval.decide")
    # Audited per user, logged once, and open doors told.
    records = (await _reconciled(store_rt))[seq:]
    assert {r.target: r.details for r in records} == {
        "user:you": {"roles": {"old": ["operator", "approver"], "new": ["operator"]}},
        "user:boss": {"disabled": "no longer in the catalog"}}
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["catalog users reconciled"]
    changed = {(e.user, e.reason) for e in store_rt.bus.history if isinstance(e, events.AccessChanged)}
    assert changed == {("boss", "disabled"), ("you", "roles")}
    # An admin cannot quietly undo the catalog.
    with pytest.raises(Conflict, match="removed from the catalog"):
        await access.enable_user(store_rt, actor=SYSTEM, name="boss")

    # A third start with nothing changed changes nothing and records nothing.
    seq = len(await _reconciled(store_rt))
    again = await reconcile_users(store_rt)
    assert not again.changed and len(await _reconciled(store_rt)) == seq


async def test_a_user_back_in_the_catalog_returns_but_one_an_admin_disabled_does_not(
        store_rt: Runtime, tmp_path: Path) -> None:
    both = [{"name": "you", "roles": ["operator"]}, {"name": "boss", "roles": ["approver"]}]
    store_rt.catalog = load_catalog(_catalog(tmp_path / "a", both))
    await reconcile_users(store_rt, passwords={"you": PW, "boss": PW})
    store_rt.catalog = load_catalog(_catalog(tmp_path / "b", both[:1]))
    await reconcile_users(store_rt)
    await access.disable_user(store_rt, actor=SYSTEM, name="you")
    store_rt.catalog = load_catalog(_catalog(tmp_path / "c", both))
    report = await reconcile_users(store_rt)
    assert report.enabled == ["boss"]
    users = await _users(store_rt)
    assert not users["boss"].disabled and users["you"].disabled and users["you"].disabled_by == "admin"
    assert (await access.login(store_rt, name="boss", password=PW)).actor.name == "boss"


async def test_password_env_is_applied_when_it_changes_and_a_user_without_one_is_named(
        store_rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_rt.catalog = load_catalog(_catalog(tmp_path, [
        {"name": "you", "roles": ["operator"], "password_env": "OPSROOM_TEST_YOU_PW"},
        {"name": "dev", "roles": ["viewer"]}]))
    monkeypatch.setenv("OPSROOM_TEST_YOU_PW", PW)
    with capture_logs() as logs:
        first = await reconcile_users(store_rt)
    assert first.no_password == ["dev"]
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert "dev" in warning["event"] and "opsroom user passwd dev" in warning["hint"]
    session = await access.login(store_rt, name="you", password=PW)

    # Unchanged: no new hash, no record, the session lives on.
    seq = len(await _reconciled(store_rt))
    assert (await reconcile_users(store_rt)).passwords == []
    assert len(await _reconciled(store_rt)) == seq

    # Rotated in the environment: applied at the next start, old sessions ended, audited.
    monkeypatch.setenv("OPSROOM_TEST_YOU_PW", PW + " rotated")
    assert (await reconcile_users(store_rt)).passwords == ["you"]
    with pytest.raises(Unauthenticated):
        await access.session_actor(store_rt, session_token=session.session_token, door="web")
    with pytest.raises(Unauthenticated):
        await access.login(store_rt, name="you", password=PW)
    assert (await access.login(store_rt, name="you", password=PW + " rotated")).actor.name == "you"
    [record] = (await _reconciled(store_rt))[seq:]
    assert record.details == {"password": "set from OPSROOM_TEST_YOU_PW"}
    assert PW not in str(record.details)


async def test_a_catalog_user_already_stored_as_local_is_adopted(store_rt: Runtime, tmp_path: Path) -> None:
    # Stores from before the reconcile hold their catalog users as 'local' (the column's default).
    await access.add_user(store_rt, actor=SYSTEM, name="boss", roles=["admin"], password=PW)
    store_rt.catalog = load_catalog(_catalog(tmp_path, [{"name": "boss", "roles": ["approver"]}]))
    report = await reconcile_users(store_rt)
    assert report.adopted == ["boss"] and report.roles == {"boss": (["admin"], ["approver"])}
    row = (await _users(store_rt))["boss"]
    assert (row.source, row.roles) == ("catalog", ["approver"])


async def test_a_restart_with_a_changed_catalog_applies_it(tmp_path: Path) -> None:
    catalog = small_catalog(tmp_path)
    settings = Settings(data=tmp_path / "data", catalog=catalog)
    rt = await server.open_runtime(settings)
    await server.start(rt, adapters=[FakeAdapter()], schedule=False, passwords=PASSWORDS)
    try:
        boss = await access.login(rt, name="boss", password=PASSWORDS["boss"])
        assert (await access.actor_by_name(rt, name="lead", door="chat")).can("approval.decide")
    finally:
        await server.stop(rt)

    small_catalog(tmp_path, users=[{"name": "you", "roles": ["operator"]}, {"name": "dev", "roles": ["viewer"]},
                                   {"name": "lead", "roles": ["operator"]}])
    rt = await server.open_runtime(settings)
    await server.start(rt, adapters=[FakeAdapter()], schedule=False, passwords=PASSWORDS)
    try:
        with pytest.raises(Unauthenticated):
            await access.login(rt, name="boss", password=PASSWORDS["boss"])
        with pytest.raises(Unauthenticated):
            await access.session_actor(rt, session_token=boss.session_token, door="web")
        lead = await access.actor_by_name(rt, name="lead", door="chat")
        assert lead.roles == {"operator"} and not lead.can("approval.decide")
        assert "boss" not in await access.holders_of(rt, roles=["approver"])
        targets = {r.target for r in await _reconciled(rt)}
        assert {"user:boss", "user:lead"} <= targets
    finally:
        await server.stop(rt)


async def test_names_stored_before_normalisation_are_renamed_or_disabled(store_rt: Runtime, tmp_path: Path) -> None:
    lookalike = "b\u043ess"  # Cyrillic o
    async with store_rt.write() as s:
        s.add_all([UserRow(name="Ops", roles=["admin"]), UserRow(name=lookalike, roles=["admin"]),
                   UserRow(name="OPS", roles=["viewer"])])
    async with store_rt.read() as s:
        bad_id = (await s.execute(select(UserRow.id).where(UserRow.name == lookalike))).scalar_one()
    token = new_token("opr")
    async with store_rt.write() as s:
        s.add(ApiTokenRow(user_id=bad_id, name="old", token_hash=token_hash(token)))
    assert (await access.authenticate_token(store_rt, token=token, door="api")).name == lookalike
    store_rt.catalog = load_catalog(_catalog(tmp_path, [{"name": "you", "roles": ["operator"]}]))
    report = await reconcile_users(store_rt)
    assert report.renamed == {"OPS": "ops"}  # the first in order gets the name; the other is disabled
    assert sorted(report.disabled) == sorted(["Ops", lookalike])
    users = await _users(store_rt)
    assert users["ops"].display_name == "OPS" and users["ops"].roles == ["viewer"] and not users["ops"].disabled
    assert users[lookalike].disabled and users["Ops"].disabled
    with pytest.raises(Unauthenticated):
        await access.authenticate_token(store_rt, token=token, door="api")


async def test_a_renamed_user_keeps_the_audit_log_whole(store_rt: Runtime, tmp_path: Path) -> None:
    # Added (and audited) by an opsroom from before names were normalised, then renamed at start:
    # `audit verify` must follow the rename, not call the new name a user with no record.
    async with store_rt.write() as s:
        s.add(UserRow(name="Ops", roles=["viewer"]))
    await audit.append_alone(store_rt, actor=SYSTEM, action="user.add", target="user:Ops")
    store_rt.catalog = load_catalog(_catalog(tmp_path, [{"name": "you", "roles": ["operator"]}]))
    report = await reconcile_users(store_rt)
    assert report.renamed == {"Ops": "ops"}
    result = await audit.verify(store_rt)
    assert result.ok, result.reason


async def test_enabling_without_a_catalog_at_hand_is_not_called_a_removal(store_rt: Runtime, tmp_path: Path) -> None:
    # `opsroom user enable` run without --catalog has an empty catalog: it cannot tell a removed
    # catalog user, so it enables; the next start's reconcile disables a removed one again.
    from opsroom.catalog.catalog import Catalog

    store_rt.catalog = load_catalog(_catalog(tmp_path, [{"name": "you", "roles": ["operator"]}]))
    await reconcile_users(store_rt, passwords={"you": PW})
    await access.disable_user(store_rt, actor=SYSTEM, name="you")
    store_rt.catalog = Catalog()
    await access.enable_user(store_rt, actor=SYSTEM, name="you")
    assert not (await _users(store_rt))["you"].disabled

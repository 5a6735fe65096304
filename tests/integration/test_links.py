"""Chat account links: the service on both stores, and linking through a platform-like fake adapter."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from opsroom.access import links
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM, Actor
from opsroom.access.models import LinkCodeRow
from opsroom.audit.models import AuditRecordRow
from opsroom.errors import Conflict, Invalid, NotFound, PermissionDenied
from opsroom.runtime import Runtime


class Clock:
    """A wall clock the test moves (codes expire by it)."""

    def __init__(self, at: float = 1_900_000_000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


async def _actor(rt: Runtime, name: str) -> Actor:
    return await access.actor_by_name(rt, name=name, door="web")


async def _audit(rt: Runtime, action: str) -> list[AuditRecordRow]:
    async with rt.read() as s:
        return list((await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == action)
                                     .order_by(AuditRecordRow.seq))).scalars())


async def _users(rt: Runtime) -> None:
    for name, roles in (("you", ["operator"]), ("boss", ["approver"]), ("dev", ["viewer"])):
        await access.add_user(rt, actor=SYSTEM, name=name, roles=roles)


# --- the service, on SQLite and PostgreSQL -------------------------------------------------

async def test_link_account_and_lookups(store_rt: Runtime) -> None:
    rt = store_rt
    await _users(rt)
    assert await links.linked_user(rt, platform="slack", account_id="U1") is None
    await links.link_account(rt, platform="slack", account_id="U1", display_name="You", user="you")
    await links.link_account(rt, platform="slack", account_id="U2", display_name="Boss", user="boss")
    await links.link_account(rt, platform="irc", account_id="you!u@h", display_name="you", user="you")
    assert await links.linked_user(rt, platform="slack", account_id="U1") == "you"
    assert await links.linked_user(rt, platform="irc", account_id="U1") is None  # ids are per platform
    assert await links.accounts_of(rt, platform="slack", users=["you", "boss", "dev"]) == [
        ("boss", "U2", "Boss"), ("you", "U1", "You")]
    assert await links.accounts_of(rt, platform="slack", users=[]) == []
    # Relinking the account to someone else replaces its link (one account acts as one user).
    await links.link_account(rt, platform="slack", account_id="U1", display_name="You", user="dev")
    assert await links.linked_user(rt, platform="slack", account_id="U1") == "dev"
    mine = await links.list_links(rt, actor=await _actor(rt, "you"))
    assert [(i.platform, i.account_id) for i in mine] == [("irc", "you!u@h")]
    audited = await _audit(rt, "chat.link")
    assert [r.details["replaced"] for r in audited] == [None, None, None, "you"]


async def test_code_issue_redeem_once_and_expiry(store_rt: Runtime) -> None:
    rt = store_rt
    await _users(rt)
    clock = rt.extras["link_clock"] = Clock()
    you = await _actor(rt, "you")
    code, expires = await links.issue_link_code(rt, actor=you)
    assert expires == clock.at + 600 and len(code) == 8 and set(code) <= set(links.ALPHABET)
    # Typed in lower case with a dash: the same code.
    user = await links.redeem_link_code(rt, platform="slack", account_id="U1", display_name="You",
                                        code=f" {code[:4].lower()}-{code[4:]} ")
    assert user == "you" and await links.linked_user(rt, platform="slack", account_id="U1") == "you"
    with pytest.raises(Conflict, match="already used"):
        await links.redeem_link_code(rt, platform="slack", account_id="U9", display_name="x", code=code)
    late, _ = await links.issue_link_code(rt, actor=you)
    clock.at += 600
    with pytest.raises(Invalid, match="expired") as exc:
        await links.redeem_link_code(rt, platform="slack", account_id="U9", display_name="x", code=late)
    assert exc.value.hint and "get a new code" in exc.value.hint
    assert await links.linked_user(rt, platform="slack", account_id="U9") is None
    # A newer code voids the older unused one.
    first, _ = await links.issue_link_code(rt, actor=you)
    second, _ = await links.issue_link_code(rt, actor=you)
    with pytest.raises(NotFound, match="not valid"):
        await links.redeem_link_code(rt, platform="slack", account_id="U9", display_name="x", code=first)
    assert await links.redeem_link_code(rt, platform="slack", account_id="U9", display_name="x",
                                        code=second) == "you"
    async with rt.read() as s:
        hashes = list((await s.execute(select(LinkCodeRow.code_hash))).scalars())
    assert code not in str(hashes) and len(hashes) == 2


async def test_unlink_own_or_with_admin(store_rt: Runtime) -> None:
    rt = store_rt
    await _users(rt)
    await links.link_account(rt, platform="slack", account_id="U1", display_name="You", user="you")
    you, boss = await _actor(rt, "you"), await _actor(rt, "boss")
    with pytest.raises(PermissionDenied, match="boss may not unlink chat accounts of you"):
        await links.unlink(rt, actor=boss, platform="slack", account_id="U1")
    with pytest.raises(NotFound):
        await links.unlink(rt, actor=SYSTEM, platform="slack", account_id="U1", user="boss")
    assert await links.linked_user(rt, platform="slack", account_id="U1") == "you"
    await links.unlink(rt, actor=you, platform="slack", account_id="U1")
    assert await links.linked_user(rt, platform="slack", account_id="U1") is None
    with pytest.raises(NotFound):
        await links.unlink(rt, actor=you, platform="slack", account_id="U1")
    assert [r.actor for r in await _audit(rt, "chat.unlink")] == ["you"]

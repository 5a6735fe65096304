"""Chat account links: the service on both stores, and linking through a platform-like fake adapter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from opsroom import server
from opsroom.access import links
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM, Actor
from opsroom.access.models import LinkCodeRow
from opsroom.approvals.models import ApprovalRow
from opsroom.audit.models import AuditRecordRow
from opsroom.chat import accounts
from opsroom.chat.fake import FakeAdapter
from opsroom.config import Settings
from opsroom.errors import Conflict, Invalid, NotFound, PermissionDenied
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests.e2e.harness import cli
from tests.factories import PASSWORDS, small_catalog
from tests.inprocess import ask, booted, settle


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
    clock = rt.link_clock = Clock()
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


# --- through a platform whose accounts must be linked ------------------------------------

@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeAdapter, FakeAdapter]]:
    """The web-like fake (its people are opsroom users) and `plat`, a platform of unlinked accounts."""
    rt = await server.open_runtime(Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path)))
    web = FakeAdapter()
    plat = FakeAdapter(name="plat", implicit=True, trusted=False, mirrors=False)
    await server.start(rt, adapters=[web, plat], schedule=False, passwords=PASSWORDS)
    rt.link_clock = Clock()
    try:
        yield rt, web, plat
    finally:
        await settle(rt)
        await server.stop(rt)


async def _executions(rt: Runtime) -> int:
    async with rt.read() as s:
        return len(list((await s.execute(select(ExecutionRow.id))).scalars()))


async def test_an_unlinked_account_has_help_whoami_and_link_only(
        two: tuple[Runtime, FakeAdapter, FakeAdapter]) -> None:
    rt, _web, plat = two
    helped = await ask(plat, "mallory", "help")
    assert helped == accounts.UNLINKED_HELP and "status" not in helped and "run" not in helped
    assert await ask(plat, "mallory", "help run") == accounts.UNLINKED_HELP
    assert "is not linked to an opsroom user" in await ask(plat, "mallory", " !WhoAmI? ")
    for line in ("status", "is svc running", "run echo-args text=hi", "echo hi", "approve 1", "executions"):
        assert await ask(plat, "mallory", line) == accounts.unlinked_reply("plat"), line
    assert "missing the code" in await ask(plat, "mallory", "/link")
    assert "not valid" in await ask(plat, "mallory", "link NOPE2345")
    await plat.click("ops", "mallory", 1)
    assert "not linked" in (await plat.wait_for(lambda m: "not linked" in m.text and m.kind == "bot")).text
    assert await _executions(rt) == 0


async def test_a_code_links_once_and_expires(two: tuple[Runtime, FakeAdapter, FakeAdapter]) -> None:
    rt, web, plat = two
    clock: Clock = rt.link_clock
    code, _ = await links.issue_link_code(rt, actor=await _actor(rt, "you"))
    reply = await ask(plat, "you-on-plat", f"  Link {code.lower()} ")
    assert "now acts as opsroom user you" in reply
    # The room (and every other binding) holds the line with the code masked.
    relayed = [m.text for m in web.sent if m.kind == "person"]
    assert relayed[-1] == "  Link ****" and code not in str([m.text for m in web.sent + plat.sent])
    assert "acts as opsroom user you (operator)" in await ask(plat, "you-on-plat", "whoami")
    assert (await ask(plat, "you-on-plat", "is svc running")).startswith("svc")
    assert (await ask(plat, "you-on-plat", "help")).startswith("commands:")  # a linked person gets the real help
    # Used once: another account typing the same code is refused.
    assert "already used" in await ask(plat, "eve", f"link {code}")
    assert await links.linked_user(rt, platform="plat", account_id="fake:eve") is None
    # Expired: ten minutes later the next code no longer works.
    late, _ = await links.issue_link_code(rt, actor=await _actor(rt, "boss"))
    clock.at += links.CODE_TTL_S + 1
    assert "expired" in await ask(plat, "boss-on-plat", f"link {late}")
    assert await links.linked_user(rt, platform="plat", account_id="fake:boss-on-plat") is None


async def test_linked_on_a_platform_cannot_approve_own_web_request(
        two: tuple[Runtime, FakeAdapter, FakeAdapter]) -> None:
    rt, web, plat = two
    await links.link_account(rt, platform="plat", account_id="fake:lead", display_name="lead", user="lead")
    await links.link_account(rt, platform="plat", account_id="fake:boss", display_name="boss", user="boss")
    before = len(web.sent)
    await web.say("ops", "lead", "run deploy")
    asked = await web.wait_for(lambda m: "needs approval" in m.text and m in web.sent[before:], timeout=5)
    approval_id = int(asked.text.rsplit("#", 1)[1].rstrip("."))
    refused = await ask(plat, "lead", f"approve {approval_id}")
    assert "own request" in refused, refused
    await plat.click("ops", "lead", approval_id, delivery_id="c1")
    clicked = await plat.wait_for(lambda m: m.kind == "bot" and m.text.startswith("lead:"))
    assert "own request" in clicked.text
    async with rt.read() as s:
        assert (await s.get(ApprovalRow, approval_id)).status == "open"  # type: ignore[union-attr]
    await plat.say("ops", "boss", f"approve {approval_id}")  # a linked approver may (announced by the event)
    await settle(rt)
    async with rt.read() as s:
        row = await s.get(ApprovalRow, approval_id)
        assert row is not None and row.status == "approved" and row.decided_by == "boss"


async def test_cli_issues_lists_and_removes_links(tmp_path: Path) -> None:
    data = tmp_path / "data"
    common = ["--data", str(data)]
    rt = await server.open_runtime(Settings(data=data))  # a new store, as a server's first start makes it
    try:
        await access.add_user(rt, actor=SYSTEM, name="carol", roles=["viewer"])
    finally:
        await rt.close()
    issued = cli("user", "link", "Carol", *common)
    assert issued.returncode == 0, issued.stderr
    code = issued.stdout.strip()
    assert len(code) == 8 and f"`link {code}`" in issued.stderr and "works once, until" in issued.stderr
    rt = await server.open_runtime(Settings(data=data))
    try:
        assert await links.redeem_link_code(rt, platform="irc", account_id="carol!c@host", display_name="carol",
                                            code=code) == "carol"
        listed = cli("user", "links", "carol", *common)
        assert listed.returncode == 0 and "carol!c@host" in listed.stdout and "irc" in listed.stdout
        gone = cli("user", "unlink", "carol", "irc", "carol!c@host", *common)
        assert gone.returncode == 0 and "no longer linked to carol" in gone.stdout, gone.stderr
        assert await links.list_links(rt, actor=SYSTEM, user="carol") == []
        assert [r.actor.startswith("local:") for r in await _audit(rt, "chat.unlink")] == [True]
    finally:
        await rt.close()


async def test_a_link_removed_by_the_cli_stops_at_the_running_server_at_once(tmp_path: Path) -> None:
    """The CLI is another process: its removal reaches the server through the outbox, well
    before the server's own cache of links would expire."""
    catalog = small_catalog(tmp_path, platforms=[{"name": "plat", "type": "fake"}],
                            rooms=[{"name": "ops", "bind": ["plat:C1"]}])
    async with booted(tmp_path, catalog) as (rt, _web):
        await links.link_account(rt, platform="plat", account_id="fake:carol", display_name="carol", user="dev")
        assert await links.linked_user(rt, platform="plat", account_id="fake:carol") == "dev"  # now cached
        gone = cli("user", "unlink", "dev", "plat", "fake:carol", "--data", str(tmp_path / "data"))
        assert gone.returncode == 0, gone.stderr
        started = time.monotonic()
        while await links.linked_user(rt, platform="plat", account_id="fake:carol") is not None:
            assert time.monotonic() - started < links.CACHE_TTL_S / 2, "the server kept honouring a removed link"
            await asyncio.sleep(0.05)

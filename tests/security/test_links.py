"""Attacks on chat account linking: guessing codes, reusing them, codes for someone else, codes
leaking into the store, logs or the room, disabled users, removed links, spoofed account ids,
and forged web forms."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import func, select

from opsroom import server
from opsroom.access import links
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM, Actor
from opsroom.access.models import LinkCodeRow
from opsroom.access.views import router as access_router
from opsroom.audit.models import AuditRecordRow
from opsroom.chat import accounts
from opsroom.chat.fake import FakeAdapter
from opsroom.config import Settings
from opsroom.errors import Conflict, Invalid, NotFound, PermissionDenied
from opsroom.rooms.models import RoomMessageRow
from opsroom.runtime import Runtime
from opsroom.web import errors, security, ui
from tests.factories import PASSWORDS, small_catalog
from tests.inprocess import ask, settle

Setup = tuple[Runtime, FakeAdapter, FakeAdapter, FakeAdapter]


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture
async def platforms(tmp_path: Path) -> AsyncIterator[Setup]:
    """The web-like fake and two platforms (`plat`, `other`) whose accounts must be linked."""
    rt = await server.open_runtime(Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path)))
    web = FakeAdapter()
    plat = FakeAdapter(name="plat", implicit=True, trusted=False, mirrors=False)
    other = FakeAdapter(name="other", implicit=True, trusted=False, mirrors=False)
    await server.start(rt, adapters=[web, plat, other], schedule=False, passwords=PASSWORDS)
    rt.link_clock = Clock(1_900_000_000.0)
    try:
        yield rt, web, plat, other
    finally:
        await settle(rt)
        await server.stop(rt)


async def _actor(rt: Runtime, name: str) -> Actor:
    return await access.actor_by_name(rt, name=name, door="web")


async def _audit(rt: Runtime, action: str) -> list[AuditRecordRow]:
    async with rt.read() as s:
        return list((await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == action)
                                     .order_by(AuditRecordRow.seq))).scalars())


class TestCodeBruteForce:
    async def test_guessing_from_one_account_is_throttled_even_for_the_right_code(self, platforms: Setup) -> None:
        rt, _web, plat, _other = platforms
        throttle = links.link_throttle(rt)
        clock = Clock(1000.0)
        throttle.now = clock
        code, _ = await links.issue_link_code(rt, actor=await _actor(rt, "you"))
        for i in range(5):
            assert "not valid" in await ask(plat, "mallory", f"link WRONG{i:03d}")
        refused = await ask(plat, "mallory", f"link {code}")
        assert "too many wrong link codes" in refused and "try again in" in refused
        assert await links.linked_user(rt, platform="plat", account_id="fake:mallory") is None
        throttled = [r for r in await _audit(rt, "chat.link") if r.outcome == "throttled"]
        assert len(throttled) == 1 and throttled[0].details["account"] == "fake:mallory"
        assert code not in str([r.details for r in await _audit(rt, "chat.link")])
        # The lockout ends; the code was never spent by the refused attempt.
        clock.at += 31
        assert "now acts as opsroom user you" in await ask(plat, "mallory", f"link {code}")

    async def test_many_accounts_share_one_budget_per_platform(self, platforms: Setup) -> None:
        rt, _web, plat, other = platforms
        links.link_throttle(rt).now = Clock(1000.0)
        for i in range(30):  # 30 throwaway accounts, one guess each
            assert "not valid" in await ask(plat, f"sock{i}", "link AAAAAAAA")
        code, _ = await links.issue_link_code(rt, actor=await _actor(rt, "you"))
        assert "too many wrong link codes" in await ask(plat, "sock-new", f"link {code}")
        # Another platform's budget is its own.
        assert "now acts as opsroom user you" in await ask(other, "you", f"link {code}")

    def test_codes_are_random_unambiguous_and_long_enough(self) -> None:
        codes = {links.new_code() for _ in range(2000)}
        assert len(codes) == 2000
        assert all(len(c) == 8 and set(c) <= set(links.ALPHABET) for c in codes)
        assert not set("01ILO") & set(links.ALPHABET)
        assert len(links.ALPHABET) ** links.CODE_LEN > 10**11


class TestCodeReuse:
    async def test_a_code_works_once(self, platforms: Setup) -> None:
        rt, _web, plat, other = platforms
        code, _ = await links.issue_link_code(rt, actor=await _actor(rt, "boss"))
        assert "now acts as opsroom user boss" in await ask(plat, "boss", f"link {code}")
        for adapter, who in ((plat, "eve"), (other, "eve"), (plat, "boss")):
            assert "already used" in await ask(adapter, who, f"link {code}")
        assert await links.linked_user(rt, platform="plat", account_id="fake:eve") is None
        assert await links.linked_user(rt, platform="other", account_id="fake:eve") is None
        denied = [r for r in await _audit(rt, "chat.link") if r.outcome == "denied"]
        assert len(denied) == 3

    async def test_concurrent_redeems_link_one_account(self, platforms: Setup) -> None:
        import asyncio

        rt, *_ = platforms
        code, _ = await links.issue_link_code(rt, actor=await _actor(rt, "boss"))
        results = await asyncio.gather(*(links.redeem_link_code(rt, platform="plat", account_id=f"a{i}",
                                                                display_name="x", code=code) for i in range(5)),
                                       return_exceptions=True)
        assert sum(r == "boss" for r in results) == 1
        assert all(isinstance(r, Conflict) for r in results if r != "boss")


class TestExpiredCode:
    async def test_an_expired_code_is_refused(self, platforms: Setup) -> None:
        rt, _web, plat, _other = platforms
        clock: Clock = rt.link_clock
        code, expires = await links.issue_link_code(rt, actor=await _actor(rt, "you"))
        clock.at = expires  # the first instant it no longer works
        reply = await ask(plat, "you", f"link {code}")
        assert "expired" in reply and "get a new code" in reply
        assert await links.linked_user(rt, platform="plat", account_id="fake:you") is None


class TestCodeForAnotherUser:
    async def test_issuing_for_someone_else_needs_user_manage(self, platforms: Setup) -> None:
        rt, *_ = platforms
        with pytest.raises(PermissionDenied, match="you may not issue link codes for boss"):
            await links.issue_link_code(rt, actor=await _actor(rt, "you"), user="boss")
        async with rt.read() as s:
            assert (await s.execute(select(func.count()).select_from(LinkCodeRow))).scalar() == 0
        code, _ = await links.issue_link_code(rt, actor=SYSTEM, user="boss")
        assert await links.redeem_link_code(rt, platform="plat", account_id="B", display_name="b", code=code) == "boss"

    async def test_direct_links_and_others_lists_need_user_manage(self, platforms: Setup) -> None:
        rt, *_ = platforms
        you = await _actor(rt, "you")
        with pytest.raises(PermissionDenied):
            await links.link_account(rt, platform="plat", account_id="X", display_name="x", user="you", actor=you)
        with pytest.raises(PermissionDenied):
            await links.list_links(rt, actor=you, user="boss")


class TestCodeNeverStoredOrShown:
    async def test_only_the_hash_is_stored_and_nothing_logs_or_shows_it(
            self, platforms: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        rt, web, plat, other = platforms
        code, _ = await links.issue_link_code(rt, actor=await _actor(rt, "you"))
        await ask(plat, "you", f"!LINK   {code.lower()}")
        await ask(other, "you", f"/link {code}")  # refused (used), still masked
        await settle(rt)
        async with rt.read() as s:
            stored = list((await s.execute(select(RoomMessageRow.text))).scalars())
        assert "!LINK ****" in stored and "/link ****" in stored
        for blob in (str(stored), str([m.text for a in (web, plat, other) for m in a.sent]),
                     str([(r.target, r.details) for r in await _audit(rt, "chat.link")]),
                     str([(r.target, r.details) for r in await _audit(rt, "chat.link_code")])):
            assert code not in blob and code.lower() not in blob
        captured = capsys.readouterr()
        assert code not in captured.out + captured.err and code.lower() not in captured.out + captured.err
        await rt.engine.dispose()  # the file as an attacker would copy it
        raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("opsroom.db*"))
        assert b"chat_links" in raw  # the store's bytes are what was searched
        assert code.encode() not in raw and code.lower().encode() not in raw

    @pytest.mark.parametrize(("line", "shown"), [
        ("link K7MW3QXA", "link ****"), ("  !Link  k7mw-3qxa ", "  !Link ****"), ("/ link K7MW3QXA", "/ link ****"),
        ("link", "link"), ("linked K7MW3QXA", "linked K7MW3QXA"), ("status", "status"),
        ("link\nK7MW3QXA", "link ****"),
    ])
    def test_redaction_of_the_line(self, line: str, shown: str) -> None:
        assert accounts.redact(line) == shown


class TestDisabledUser:
    async def test_a_disabled_user_is_not_linked_in_effect_at_once(self, platforms: Setup) -> None:
        rt, _web, plat, _other = platforms
        await links.link_account(rt, platform="plat", account_id="fake:you", display_name="you", user="you")
        assert (await ask(plat, "you", "is svc running")).startswith("svc")
        code, _ = await links.issue_link_code(rt, actor=await _actor(rt, "you"))
        await access.disable_user(rt, actor=SYSTEM, name="you")
        await rt.bus.drain()
        assert await ask(plat, "you", "is svc running") == accounts.unlinked_reply("plat")
        assert await links.accounts_of(rt, platform="plat", users=["you"]) == []
        # A code issued before the user was disabled does not link anyone to them.
        assert "is disabled" in await ask(plat, "newphone", f"link {code}")
        with pytest.raises(Invalid, match="disabled"):
            await links.issue_link_code(rt, actor=SYSTEM, user="you")


class TestRemovedLink:
    async def test_unlinking_stops_the_account_at_once(self, platforms: Setup) -> None:
        rt, _web, plat, _other = platforms
        await links.link_account(rt, platform="plat", account_id="fake:you", display_name="you", user="you")
        assert "acts as opsroom user you" in await ask(plat, "you", "whoami")  # cached now
        await links.unlink(rt, actor=await _actor(rt, "you"), platform="plat", account_id="fake:you")
        assert await ask(plat, "you", "run echo-args text=x") == accounts.unlinked_reply("plat")


class TestAccountSpoofing:
    async def test_an_account_id_acts_only_on_its_own_platform(self, platforms: Setup) -> None:
        rt, _web, plat, other = platforms
        await links.link_account(rt, platform="plat", account_id="fake:boss", display_name="boss", user="boss")
        assert "acts as opsroom user boss" in await ask(plat, "boss", "whoami")
        # Same account id, another platform: a stranger there.
        assert "not linked" in await ask(other, "boss", "whoami")
        assert await ask(other, "boss", "approve 1") == accounts.unlinked_reply("other")
        await other.click("ops", "boss", 1, delivery_id="spoof")
        assert "not linked" in (await other.wait_for(lambda m: m.kind == "bot" and "not linked" in m.text)).text

    async def test_the_web_room_identity_cannot_be_linked_over(self, platforms: Setup) -> None:
        rt, web, _plat, _other = platforms
        code, _ = await links.issue_link_code(rt, actor=await _actor(rt, "boss"))
        assert "nothing to link" in await ask(web, "dev", f"link {code}")
        assert await links.linked_user(rt, platform="fake", account_id="fake:dev") is None
        assert await links.redeem_link_code(rt, platform="plat", account_id="B", display_name="b", code=code) == "boss"

    async def test_oversized_account_ids_are_refused(self, platforms: Setup) -> None:
        rt, *_ = platforms
        code, _ = await links.issue_link_code(rt, actor=await _actor(rt, "boss"))
        with pytest.raises(Invalid):
            await links.redeem_link_code(rt, platform="plat", account_id="x" * 256, display_name="b", code=code)


# --- the web page and the API ---------------------------------------------------------------

def _app(rt: Runtime) -> FastAPI:
    app = FastAPI()
    app.state.rt, app.state.demo = rt, False
    errors.install(app)
    app.add_middleware(security.SecurityHeaders)
    api = APIRouter(prefix="/api/v1")
    api.include_router(access_router)
    app.include_router(api)
    app.include_router(ui.router)
    return app


async def _login(http: httpx.AsyncClient, user: str) -> str:
    csrf = (await http.get("/login")).text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    resp = await http.post("/login", data={"username": user, "password": PASSWORDS[user], "csrf": csrf})
    assert resp.status_code == 303, resp.text
    page = await http.get("/me/links")
    assert page.status_code == 200
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def _codes(rt: Runtime) -> int:
    async with rt.read() as s:
        return int((await s.execute(select(func.count()).select_from(LinkCodeRow))).scalar() or 0)


class TestWebAndApi:
    async def test_forms_need_the_session_csrf_token(self, platforms: Setup) -> None:
        rt, _web, plat, _other = platforms
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(rt)), base_url="http://test") as http:
            csrf = await _login(http, "you")
            forged = await http.post("/me/links/code", data={"csrf": "forged"})
            assert forged.status_code == 403 and await _codes(rt) == 0
            made = await http.post("/me/links/code", data={"csrf": csrf})
            assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
            assert "<script" not in made.text and made.headers["content-security-policy"] == security.CSP
            code = made.text.split('<code id="link-code">', 1)[1].split("<", 1)[0]
            assert "now acts as opsroom user you" in await ask(plat, "you", f"link {code}")
            page = await http.get("/me/links")
            assert "fake:you" in page.text and code not in page.text
            kept = await http.post("/me/links/remove", data={"csrf": "forged", "platform": "plat",
                                                             "account_id": "fake:you"})
            assert kept.status_code == 403
            assert await links.linked_user(rt, platform="plat", account_id="fake:you") == "you"
            gone = await http.post("/me/links/remove", data={"csrf": csrf, "platform": "plat",
                                                             "account_id": "fake:you"})
            assert gone.status_code == 200 and "no longer linked" in gone.text
            assert await links.linked_user(rt, platform="plat", account_id="fake:you") is None
            assert (await http.post("/me/links/code", data={"csrf": csrf}, follow_redirects=False)).status_code == 200
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(rt)), base_url="http://test") as anon:
            out = await anon.post("/me/links/code", data={"csrf": "x"})
            assert out.status_code == 303 and out.headers["location"].startswith("/login")

    async def test_markup_in_an_account_name_is_text(self, platforms: Setup) -> None:
        rt, *_ = platforms
        probe = '"><svg onload=alert(1)>'
        await links.link_account(rt, platform="plat", account_id=probe, display_name=probe, user="you")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(rt)), base_url="http://test") as http:
            await _login(http, "you")
            page = (await http.get("/me/links")).text
        assert "<svg" not in page and "&lt;svg onload=alert(1)&gt;" in page

    async def test_api_only_touches_ones_own_links(self, platforms: Setup) -> None:
        rt, *_ = platforms
        await links.link_account(rt, platform="plat", account_id="B1", display_name="boss", user="boss")
        await links.link_account(rt, platform="plat", account_id="Y/1:x", display_name="you", user="you")
        you = await access.create_token(rt, actor=SYSTEM, user="you", name="t")
        auth = {"Authorization": f"Bearer {you}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(rt)), base_url="http://test") as http:
            made = await http.post("/api/v1/me/link-code", headers=auth)
            assert made.status_code == 201 and len(made.json()["code"]) == 8
            mine = (await http.get("/api/v1/me/links", headers=auth)).json()
            assert [(i["platform"], i["account_id"], i["user"]) for i in mine] == [("plat", "Y/1:x", "you")]
            theirs = await http.delete("/api/v1/me/links/plat/B1", headers=auth)
            assert theirs.status_code == 404
            assert await links.linked_user(rt, platform="plat", account_id="B1") == "boss"
            assert (await http.delete("/api/v1/me/links/plat/Y%2F1:x", headers=auth)).status_code == 204
            assert await links.linked_user(rt, platform="plat", account_id="Y/1:x") is None
            # A browser session riding its cookie needs the CSRF header on unsafe methods.
            await _login(http, "you")
            assert (await http.post("/api/v1/me/link-code")).status_code == 403
            assert (await http.get("/api/v1/me/links")).status_code == 200
        with pytest.raises(NotFound):
            await links.unlink(rt, actor=await _actor(rt, "boss"), platform="plat", account_id="B1", user="you")

"""Acceptance 4: boss, on a phone-sized screen, approves from the web room; the room updates live.
Issue 9: a crafted link does not get a request approved."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.e2e.harness import DEMO_PASSWORDS, join, login, start_demo

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


async def test_boss_approves_on_a_phone(tmp_path: Path) -> None:
    assert os.path.exists(CHROMIUM), "make test installs Debian's chromium"
    demo = start_demo(tmp_path)
    try:
        you = await join(demo, "you")  # before the outage: a notice posted earlier is history, not live
        demo.kill_service("service-b")
        await you.wait_for(lambda f: f["type"] == "message" and "is unhealthy" in f["text"])
        asked = await you.ask("start service-b", "needs approval")
        request = re.search(r"Request #(\d+)", asked["text"]).group(1)  # type: ignore[union-attr]

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
            await page.goto(f"{demo.base}/rooms/ops")
            await expect(page).to_have_url(re.compile(r"/login"))
            await page.fill("#username", "boss")
            await page.fill("#password", DEMO_PASSWORDS["boss"])
            await page.click("button[type=submit]")
            await expect(page).to_have_url(re.compile(r"/rooms/ops$"))
            await expect(page.locator(".prod")).to_contain_text("PRODUCTION")
            card = page.locator(f'.req[data-id="{request}"]')
            await expect(card).to_contain_text("start service-b")
            await expect(card).to_contain_text("by you")
            await expect(page.locator("#conn")).to_have_text("live")
            # Nothing on the page is wider than the phone.
            width = await page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, width
            await card.get_by_role("button", name="Approve").click()
            log = page.locator("#log")
            await expect(log).to_contain_text("approved by boss. Running runbook start-service", timeout=15000)
            await expect(log).to_contain_text("service-b started (execution #", timeout=20000)
            await expect(card).to_have_count(0)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "room-boss-390x844.png"))
            await browser.close()
        # The person who asked saw it too, live.
        await you.wait_for(lambda f: f["type"] == "message" and "service-b started" in f["text"])
        await you.close()
    finally:
        demo.stop()


async def test_a_link_to_a_crafted_room_name_gets_nothing_approved(tmp_path: Path) -> None:
    """Issue 9, finding 1: `you` asks for a production change and sends the approver a link whose
    room name is markup with a script. Opened by boss in chromium, the script must not run (the
    name is escaped text and the CSP allows no inline script), and nothing gets approved."""
    demo = start_demo(tmp_path)
    try:
        you = await join(demo, "you")
        asked = await you.ask("start service-b", "needs approval")
        request = int(re.search(r"Request #(\d+)", asked["text"]).group(1))  # type: ignore[union-attr]
        # What the attack script does with boss's cookie: open the room's socket and decide, both
        # as the button's frame and as typed chat. No slash in it: the name is one path segment.
        script = ("window.__pwned=1;document.title=`pwned`;var s=String.fromCharCode(47);"
                  "var w=new WebSocket(location.origin.replace(`http`,`ws`)+s+`rooms`+s+`ops`+s+`ws`);"
                  f"w.onopen=function(){{w.send(JSON.stringify({{type:`decide`,id:{request},decision:`approve`}}));"
                  f"w.send(JSON.stringify({{type:`say`,text:`approve {request}`}}));window.__sent=1}}")
        link = f"{demo.base}/rooms/" + quote(f'<svg onload="{script}">', safe="")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = await browser.new_page()
            await page.goto(f"{demo.base}/login")
            await page.fill("#username", "boss")
            await page.fill("#password", DEMO_PASSWORDS["boss"])
            await page.click("button[type=submit]")
            await expect(page).to_have_url(re.compile(r"/rooms/ops$"))
            await expect(page.locator(f'.req[data-id="{request}"]')).to_be_visible()

            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text))
            attacked = await page.goto(link)
            assert attacked is not None and attacked.status == 404
            await expect(page.locator("p.err")).to_contain_text('<svg onload="window.__pwned=1')  # shown as text
            assert await page.title() != "pwned"
            assert await page.evaluate("[window.__pwned, window.__sent]") == [None, None]
            # Even markup that did slip into a page could not run: the CSP refuses inline handlers.
            refused = await page.evaluate("""() => new Promise(done => {
                document.addEventListener('securitypolicyviolation', e => done(e.violatedDirective));
                document.body.insertAdjacentHTML('beforeend', '<img src="data:," onerror="window.__ran=1">');
            })""")
            assert refused.startswith("script-src") and await page.evaluate("window.__ran") is None

            # Back in the room, the request is still waiting for a real decision.
            await page.goto(f"{demo.base}/rooms/ops")
            await expect(page.locator("#conn")).to_have_text("live")
            await expect(page.locator(f'.req[data-id="{request}"]')).to_contain_text("start service-b")
            await browser.close()
        boss = await login(demo.base, "boss", DEMO_PASSWORDS["boss"])
        assert (await boss.get(f"/api/v1/approvals/{request}")).json()["status"] == "open"
        await boss.aclose()
        assert not any(f["type"] == "message" and "approved by boss" in f["text"] for f in you.frames)
        await you.close()
    finally:
        demo.stop()


class Link:
    """The phone's network: a loopback TCP relay to the demo that can be cut and restored.
    (Chromium's offline emulation leaves open WebSockets up, so it cannot cut a room socket.)"""

    def __init__(self, target_port: int) -> None:
        self.target_port, self.up = target_port, True
        self.pipes: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def open(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()  # no network: the connection drops at once
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.pipes |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            for w in (writer, up_writer):
                w.close()
                self.pipes.discard(w)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.up = False
        for w in list(self.pipes):
            w.transport.abort()
        self.pipes.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def _boss_in_the_room(pw: Any, base: str) -> tuple[Browser, BrowserContext, Page]:
    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = await context.new_page()
    await log_in(page, base, "boss", DEMO_PASSWORDS["boss"])
    return browser, context, page


async def log_in(page: Page, base: str, user: str, password: str, *, room: str = "ops") -> None:
    """Sign in through the login form and wait until the room's socket is live."""
    await page.goto(f"{base}/login?next=/rooms/{room}")
    await page.fill("#username", user)
    await page.fill("#password", password)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(rf"/rooms/{re.escape(room)}$"))
    await expect(page.locator("#conn")).to_have_text("live")


async def _shown(page: Page) -> list[tuple[int, str]]:
    rows: list[tuple[int, str]] = await page.evaluate(
        "[...document.querySelectorAll('#log li[data-id]')].map(li => [+li.dataset.id, li.textContent])")
    return [(i, t) for i, t in rows]


async def test_a_phone_that_loses_its_link_during_a_recovery_misses_nothing(tmp_path: Path) -> None:
    """Issue 10, acceptance 8: boss's phone (390 px) goes offline while `you` asks to start
    service-b and it is approved and runs; back online, the page shows every message it missed,
    in order, without a reload, and the blink posted no "left the room" / "joined the room"."""
    demo = start_demo(tmp_path)
    try:
        you = await join(demo, "you")  # before the outage: a notice posted earlier is history, not live
        demo.kill_service("service-b")
        await you.wait_for(lambda f: f["type"] == "message" and "is unhealthy" in f["text"])
        link = Link(demo.port)
        phone = await link.open()
        async with async_playwright() as pw:
            browser, context, page = await _boss_in_the_room(pw, phone)
            await page.evaluate("window.__same_page = 1")  # gone if the page were reloaded
            link.cut()
            await context.set_offline(True)
            await expect(page.locator("#conn")).to_have_text("reconnecting…", timeout=15000)

            # Meanwhile, on the server: the request, its approval (boss on a laptop, over the API,
            # so no other room socket of boss's hides the phone's presence), the run.
            mark = len(you.frames)
            asked = await you.ask("start service-b", "needs approval")
            request = re.search(r"Request #(\d+)", asked["text"]).group(1)  # type: ignore[union-attr]
            laptop = await login(demo.base, "boss", DEMO_PASSWORDS["boss"])
            room_page = (await laptop.get("/rooms/ops")).text
            csrf = room_page.split('<meta name="csrf" content="', 1)[1].split('"', 1)[0]
            shown = json.loads(html.unescape(room_page.split('id="room-data">', 1)[1].split("</script>", 1)[0]))
            token = next(a["token"] for a in shown["approvals"] if a["id"] == int(request))
            decided = await laptop.post(f"/api/v1/approvals/{request}/decision", json={"decision": "approve"},
                                        headers={"X-CSRF-Token": csrf, "X-Decision-Token": token})
            assert decided.status_code == 200, decided.text
            await you.wait_for(lambda f: f["type"] == "message" and "service-b started" in f["text"], start=mark)
            missed = [(f["id"], f["text"]) for f in you.messages if f in you.frames[mark:]]
            assert len(missed) >= 4  # the request, its reply, the approval, the start at least
            assert await page.locator("#log").get_by_text("service-b started").count() == 0  # really offline

            link.restore()
            await context.set_offline(False)
            await expect(page.locator("#conn")).to_have_text("live", timeout=20000)
            log = page.locator("#log")
            await expect(log).to_contain_text("service-b started (execution #", timeout=20000)
            assert await page.evaluate("window.__same_page") == 1
            shown = await _shown(page)
            ids = [i for i, _t in shown]
            assert ids == sorted(set(ids)), "in id order, nothing twice"
            for msg_id, text in missed:
                assert any(i == msg_id and text in t for i, t in shown), f"missing #{msg_id}: {text}"
            # Against what the server stored: a fresh load of the room shows the same tail.
            fresh = await context.new_page()
            await fresh.goto(f"{phone}/rooms/ops")
            stored = await _shown(fresh)
            assert [row for row in shown if row[0] >= stored[0][0]] == stored
            texts = [t for _i, t in shown]
            assert sum(t.endswith("boss joined the room") for t in texts) == 1  # the first visit only
            assert not any(t.endswith("boss left the room") for t in texts)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "room-after-blink-390x844.png"))
            await laptop.aclose()
            await browser.close()
        await link.close()
        await you.close()
    finally:
        demo.stop()


async def test_approve_and_deny_are_big_enough_for_a_thumb(tmp_path: Path) -> None:
    """Issue 10: tap targets (Approve, Deny, Send, log out) are at least 44 px tall at 390 px wide."""
    demo = start_demo(tmp_path)
    try:
        you = await join(demo, "you")
        asked = await you.ask("start service-b", "needs approval")
        request = re.search(r"Request #(\d+)", asked["text"]).group(1)  # type: ignore[union-attr]
        async with async_playwright() as pw:
            browser, _context, page = await _boss_in_the_room(pw, demo.base)
            card = page.locator(f'.req[data-id="{request}"]')
            await expect(card.get_by_role("button", name="Deny")).to_be_visible()
            # Measured in one go: an approvals frame redraws the cards, so no element is held across awaits.
            sizes = dict(await page.evaluate(
                "sel => [...document.querySelectorAll(sel)].map(b => { const r = b.getBoundingClientRect(); "
                "return [b.textContent, [r.width, r.height]]; })", ".req button, #say button, header button"))
            assert set(sizes) == {"Approve", "Deny", "Send", "log out", "notify me"}, sizes
            for label, (width, height) in sizes.items():
                assert height >= 44 and width >= 44, (label, width, height)
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            await browser.close()
        await you.close()
    finally:
        demo.stop()

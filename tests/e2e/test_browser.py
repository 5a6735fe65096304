"""Acceptance 4: boss, on a phone-sized screen, approves from the web room; the room updates live.
Issue 9: a crafted link does not get a request approved."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.async_api import async_playwright, expect

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
        demo.kill_service("service-b")
        you = await join(demo, "you")
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

"""Acceptance 4: boss, on a phone-sized screen, approves from the web room; the room updates live."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.e2e.harness import DEMO_PASSWORDS, join, start_demo

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

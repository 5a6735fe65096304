"""Issue 10, point 8: an approver with the web room open in a background tab is told by a browser
notification of a request they may decide and of a line that mentions them; a visible tab is not
interrupted, and permission is asked only from the header's "notify me" button."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.e2e.harness import DEMO_PASSWORDS, join, start_demo
from tests.e2e.test_browser import CHROMIUM, FLAGS, log_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# Runs before the page's own script: records every Notification constructed (and still makes the
# real one), lets the test say whether the tab is in the background, and, when __perm is set,
# stands in for the permission the browser would hold.
RECORD = """(() => {
  const Real = window.Notification;
  window.__notes = []; window.__asked = 0; window.__hidden = false; window.__perm = null;
  function Recorded(title, options) {
    window.__notes.push({title: title, body: (options || {}).body, tag: (options || {}).tag});
    try { return new Real(title, options); } catch (e) { return {close() {}}; }
  }
  Object.defineProperty(Recorded, 'permission', {get: () => window.__perm || Real.permission});
  Recorded.requestPermission = () => {
    window.__asked++; window.__perm = 'granted'; return Promise.resolve('granted');
  };
  window.Notification = Recorded;
  Object.defineProperty(document, 'hidden', {get: () => window.__hidden});
  Object.defineProperty(document, 'visibilityState', {get: () => (window.__hidden ? 'hidden' : 'visible')});
})();"""


async def _log_in(page: Page, base: str, user: str) -> None:
    await log_in(page, base, user, DEMO_PASSWORDS[user])


async def _notes(page: Page) -> list[dict[str, Any]]:
    notes: list[dict[str, Any]] = await page.evaluate("window.__notes")
    return notes


async def test_a_background_tab_notifies_its_approver(tmp_path: Path) -> None:
    demo = start_demo(tmp_path)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            context = await browser.new_context(viewport={"width": 390, "height": 844})
            await context.grant_permissions(["notifications"], origin=demo.base)
            await context.add_init_script(RECORD)
            boss = await context.new_page()
            await _log_in(boss, demo.base, "boss")
            assert await boss.evaluate("Notification.permission") == "granted"
            await expect(boss.locator("#notify")).to_be_hidden()  # already granted: nothing to ask

            you = await join(demo, "you")
            # In front of boss: the request shows on the page and nothing pops up.
            await boss.evaluate("window.__hidden = false")
            first = await you.ask("restart service-c", "needs approval")
            first_id = re.search(r"Request #(\d+)", first["text"]).group(1)  # type: ignore[union-attr]
            await expect(boss.locator(f'.req[data-id="{first_id}"]')).to_be_visible()
            assert await _notes(boss) == []

            # Boss switches to another tab: the next request names his role and pops up.
            await boss.evaluate("window.__hidden = true")
            asked = await you.ask("start service-b", "needs approval")
            request = re.search(r"Request #(\d+)", asked["text"]).group(1)  # type: ignore[union-attr]
            await boss.wait_for_function("() => window.__notes.length >= 1", timeout=10000)
            note = (await _notes(boss))[0]
            assert note["title"] == f"opsroom: approval needed #{request}"
            assert "start service-b" in note["body"] and "by you" in note["body"]

            # A line that mentions him as @boss pops up too; one naming someone else does not.
            await you.say("@dev fyi")
            await you.say("@boss could you look at the request?")
            await boss.wait_for_function("() => window.__notes.length >= 2", timeout=10000)
            notes = await _notes(boss)
            assert [n["title"] for n in notes[1:]] == ["opsroom: you in #ops"], notes
            assert notes[1]["body"] == "@boss could you look at the request?"
            await expect(boss.locator("#log")).to_contain_text("@dev fyi")
            assert len(await _notes(boss)) == 2

            # The requester's own tab is not told of a request it cannot decide.
            you_page = await context.new_page()
            await _log_in(you_page, demo.base, "you")
            await you_page.evaluate("window.__hidden = true")
            await you.ask("stop service-c", "needs approval")
            await boss.wait_for_function("() => window.__notes.length >= 3", timeout=10000)
            await expect(you_page.locator(".req")).to_have_count(3)
            assert await _notes(you_page) == []
            await you.close()
            await browser.close()
    finally:
        demo.stop()


async def test_permission_is_asked_from_the_notify_me_button(tmp_path: Path) -> None:
    demo = start_demo(tmp_path)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            context = await browser.new_context(viewport={"width": 390, "height": 844})
            await context.add_init_script(RECORD.replace("window.__perm = null", "window.__perm = 'default'"))
            page = await context.new_page()
            await _log_in(page, demo.base, "boss")
            bell = page.locator("#notify")
            await expect(bell).to_be_visible()
            assert await page.evaluate("window.__asked") == 0  # not on load: only from a gesture
            box = await bell.bounding_box()
            assert box is not None and box["height"] >= 44 and box["width"] >= 44
            await bell.click()
            await expect(bell).to_be_hidden()
            assert await page.evaluate("window.__asked") == 1
            await browser.close()
    finally:
        demo.stop()

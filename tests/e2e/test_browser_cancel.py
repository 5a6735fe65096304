"""Issue 13 point 2, the web room's door: a person cancels a run from the room page in chromium.

A running run: its Cancel button stops the step's whole process group within the grace period
and the room says who cancelled it. A run awaiting approval: cancelled by its requester, the
approver's Approve/Deny card goes away on the approver's open page without a reload.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.runbooks import executor
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from tests.chat.harness import Served, serve
from tests.e2e.test_browser import CHROMIUM, FLAGS, log_in
from tests.factories import PASSWORDS
from tests.integration.test_cancel import _catalog, _gone, _pids

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serve(tmp_path, catalog_path=_catalog(tmp_path)) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert os.path.exists(CHROMIUM), "make test installs Debian's chromium"
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield launched
        await launched.close()


async def _in_the_room(browser: Browser, base: str, user: str) -> Page:
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = await context.new_page()
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))  # "Cancel execution #N?": yes
    await log_in(page, base, user, PASSWORDS[user])
    return page


async def test_a_person_cancels_a_running_step_from_the_web_room(served: Served, browser: Browser,
                                                                 tmp_path: Path) -> None:
    rt = served.rt
    you = await access.actor_by_name(rt, name="you", door="api")
    row = await runbooks.request_run(rt, actor=you, runbook="sleeper", params={"tag": "web"})
    pids = await _pids(tmp_path / "pids-web")  # the step and a grandchild in its group
    page = await _in_the_room(browser, served.base, "you")
    run = page.locator(f'.run[data-id="{row.id}"]')
    await expect(run).to_contain_text("running, by you")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    button = run.get_by_role("button", name="Cancel")
    box = await button.bounding_box()
    assert box is not None and box["height"] >= 44 and box["width"] >= 44, box  # a thumb's size
    pressed = time.monotonic()
    await button.click()
    await expect(page.locator("#log")).to_contain_text(f"execution #{row.id}", timeout=15000)
    await expect(page.locator("#log")).to_contain_text("cancelled by you", timeout=15000)
    while not _gone(pids) and time.monotonic() - pressed < executor.CANCEL_GRACE_S:
        await asyncio.sleep(0.05)
    assert _gone(pids), "the step's process group outlived the grace period"
    await expect(run).to_have_count(0)  # no longer going on: gone from the list without a reload
    async with rt.read() as s:
        done = await s.get_one(ExecutionRow, row.id)
    assert (done.status, done.error) == ("cancelled", "cancelled by you")
    records = await audit.list_records(rt, actor=SYSTEM, action="execution.cancel", limit=20)
    [record] = [r for r in records if r.target == f"execution:{row.id}"]
    assert (record.actor, record.door, record.outcome, record.details["room"]) == ("you", "web", "stopping", "ops")


async def test_cancelling_a_waiting_run_takes_the_approvers_buttons_away(served: Served, browser: Browser) -> None:
    rt = served.rt
    you = await access.actor_by_name(rt, name="you", door="api")
    row = await runbooks.request_run(rt, actor=you, runbook="guarded", params={})
    assert row.status == "awaiting_approval"
    boss = await _in_the_room(browser, served.base, "boss")
    card = boss.locator(f'.req[data-id="{row.approval_id}"]')
    await expect(card.get_by_role("button", name="Approve")).to_be_visible()
    mine = await _in_the_room(browser, served.base, "you")
    run = mine.locator(f'.run[data-id="{row.id}"]')
    await expect(run).to_contain_text("awaiting approval, by you")
    await run.get_by_role("button", name="Cancel").click()
    await expect(card).to_have_count(0, timeout=10000)  # on boss's page, which never reloaded
    await expect(boss.locator(f'.run[data-id="{row.id}"]')).to_have_count(0)
    said = f"execution #{row.id} ({row.summary}) cancelled by you before it started"
    await expect(boss.locator("#log")).to_contain_text(said)
    text = await boss.locator("#log").inner_text()
    assert "expired" not in text, text  # the closed request is not announced as something else

"""Issue 15, acceptance 7: single sign-on with OpenID Connect, end to end in chromium against a
real provider on loopback (`oidc-provider` on Node.js, tests/fixtures/oidc); the IdP's groups
decide the roles: `pat` (group ops-approvers) approves a production change from the room, `olive`
(group ops) sees the request and cannot approve it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.e2e.harness import Demo, join, start_server
from tests.factories import free_port
from tests.fixtures.oidc.idp import Idp, running_idp

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


def _demo(tmp: Path, port: int, idp: Idp) -> Demo:
    env = {"OPSROOM_DEMO_PORT_B": str(free_port()), "OPSROOM_DEMO_PORT_C": str(free_port()),
           "OPSROOM_DEMO_INTERVAL": "1s", "OPSROOM_DEMO_RETRY": "0.5s", "OPSROOM_DEMO_AUTO": "false", **idp.env()}
    return start_server(tmp, ["demo"], port=port, env_extra=env)


async def _sign_in(browser: Browser, base: str, login: str) -> Page:
    """What a person does: open the room, press the SSO button, log in at the IdP's own page."""
    page = await browser.new_page()
    await page.goto(f"{base}/rooms/ops")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Frooms%2Fops"))
    await page.get_by_role("link", name="Sign in with Test IdP").click()
    await page.wait_for_url(re.compile(r"^http://127\.0\.0\.1:\d+/interaction/"))
    assert not page.url.startswith(base)  # at the provider now
    await page.fill("input[name=login]", login)
    await page.fill("input[name=password]", "whatever the IdP checks")
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{base}/rooms/ops")
    await expect(page.locator("#me")).to_have_text(login)
    return page


async def test_sign_in_through_the_idp_and_act_with_the_roles_of_ones_groups(tmp_path: Path) -> None:
    assert os.path.exists(CHROMIUM), "make test installs Debian's chromium"
    port = free_port()
    with running_idp(tmp_path, [f"http://127.0.0.1:{port}/login/oidc/callback"]) as idp:
        demo = _demo(tmp_path, port, idp)
        try:
            you = await join(demo, "you")
            asked = await you.ask("start service-b", "needs approval")
            request = re.search(r"Request #(\d+)", asked["text"]).group(1)  # type: ignore[union-attr]
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
                # olive: group `ops` -> operator. She sees the request, is offered no button, and a
                # typed approval is refused by the service.
                olive = await _sign_in(browser, demo.base, "olive")
                card = olive.locator(f'.req[data-id="{request}"]')
                await expect(card).to_contain_text("start service-b")
                await expect(card.get_by_role("button", name="Approve")).to_have_count(0)
                await expect(olive.locator("#conn")).to_have_text("live")
                await olive.fill("#text", f"approve {request}")
                await olive.press("#text", "Enter")
                await expect(olive.locator("#log")).to_contain_text("olive may not", timeout=10000)
                await expect(card).to_have_count(1)
                # pat: group `ops-approvers` -> approver. One click approves it.
                pat = await _sign_in(browser, demo.base, "pat")
                card = pat.locator(f'.req[data-id="{request}"]')
                await expect(pat.locator("#conn")).to_have_text("live")
                await card.get_by_role("button", name="Approve").click()
                await expect(pat.locator("#log")).to_contain_text("approved by pat", timeout=15000)
                await expect(card).to_have_count(0)
                await browser.close()
            await you.wait_for(lambda f: f["type"] == "message" and "approved by pat" in f["text"])
            await you.close()
            # The server's log said who signed in, and never the client secret.
            assert idp.env()["OPSROOM_OIDC_CLIENT_SECRET"] not in demo.output()
        finally:
            demo.stop()

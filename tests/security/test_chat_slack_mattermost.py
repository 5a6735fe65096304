"""Button clicks an attacker sends to opsroom's Slack and Mattermost action URLs.

Slack signs every request-URL POST (v0 HMAC-SHA256 of `v0:{timestamp}:{body}` with the
signing secret); Mattermost signs nothing, so opsroom puts an HMAC of its own in each button's
context. Whatever is refused is audited as chat.refused and decides nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from sqlalchemy import select

from opsroom.audit.models import AuditRecordRow
from opsroom.chat.platforms.slack.adapter import SlackAdapter, SlackConfig
from opsroom.chat.platforms.slack.fake_server import FakeSlack
from tests.chat.driver import Driver
from tests.chat.drivers.mattermost import MattermostDriver
from tests.chat.drivers.slack import SlackDriver
from tests.chat.harness import Served, serve
from tests.chat.harness import approval_status as _status
from tests.chat.harness import request_approval as _request

TIMEOUT = 20.0


async def _world(tmp: Path, driver: Driver) -> AsyncIterator[tuple[Any, Served]]:
    await driver.start(tmp / "platform")
    try:
        async with serve(tmp, driver) as served:
            await driver.attach(served)
            yield driver, served
    finally:
        await driver.stop()


@pytest.fixture
async def slack(tmp_path: Path) -> AsyncIterator[tuple[SlackDriver, Served]]:
    async for pair in _world(tmp_path, SlackDriver()):
        yield pair


@pytest.fixture
async def mattermost(tmp_path: Path) -> AsyncIterator[tuple[MattermostDriver, Served]]:
    async for pair in _world(tmp_path, MattermostDriver()):
        yield pair


async def _refusals(served: Served) -> list[str]:
    async with served.rt.read() as s:
        rows = (await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == "chat.refused"))).scalars()
        return [str(r.details.get("detail", "")) for r in rows]


async def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers=headers) as resp:
            return resp.status


class TestSlackRequestUrl:
    """Clicks POSTed to /chat/slack/actions as if from Slack."""

    @staticmethod
    def _body(driver: SlackDriver, person: str, approval_id: int, decision: str = "approve") -> bytes:
        payload = driver.fake.click_payload(person, approval_id, decision, driver.channel)
        return urlencode({"payload": json.dumps(payload)}).encode()

    async def _refused(self, driver: SlackDriver, served: Served, approval_id: int, status: int,
                       expected: int, why: str) -> None:
        assert status == expected
        assert await _status(served, approval_id) == "open"
        assert any(why in d for d in await _refusals(served)), await _refusals(served)

    async def test_a_forged_signature_is_refused_and_audited(self, slack: tuple[SlackDriver, Served]) -> None:
        driver, served = slack
        approval_id = await _request(driver)
        body = self._body(driver, "bob", approval_id)
        status = await _post(f"{served.base}/chat/slack/actions", body, driver.fake.signed(body, secret="guess"))
        await self._refused(driver, served, approval_id, status, 401, "bad signature")

    async def test_a_missing_signature_is_refused(self, slack: tuple[SlackDriver, Served]) -> None:
        driver, served = slack
        approval_id = await _request(driver)
        body = self._body(driver, "bob", approval_id)
        status = await _post(f"{served.base}/chat/slack/actions", body,
                             {"Content-Type": "application/x-www-form-urlencoded"})
        await self._refused(driver, served, approval_id, status, 401, "without a signature")

    async def test_a_stale_timestamp_is_refused_even_when_signed(self, slack: tuple[SlackDriver, Served]) -> None:
        driver, served = slack
        approval_id = await _request(driver)
        body = self._body(driver, "bob", approval_id)
        headers = driver.fake.signed(body, timestamp=int(time.time()) - 600)
        status = await _post(f"{served.base}/chat/slack/actions", body, headers)
        await self._refused(driver, served, approval_id, status, 401, "stale timestamp")

    async def test_a_replayed_request_is_refused(self, slack: tuple[SlackDriver, Served]) -> None:
        driver, served = slack
        approval_id = await _request(driver)
        # A deny recorded off the wire, replayed after someone approved... would re-decide.
        body = self._body(driver, "bob", approval_id, "deny")
        headers = driver.fake.signed(body)
        url = f"{served.base}/chat/slack/actions"
        assert await _post(url, body, headers) == 200
        await driver.wait_for(lambda t: "denied" in t.lower(), TIMEOUT)
        assert await _post(url, body, headers) == 401
        assert any("replayed" in d for d in await _refusals(served))

    async def test_a_payload_claiming_another_user_breaks_the_signature(
            self, slack: tuple[SlackDriver, Served]) -> None:
        driver, served = slack
        approval_id = await _request(driver)
        # carol signs nothing: she takes a request Slack signed for her own click and swaps in bob.
        body = self._body(driver, "carol", approval_id)
        headers = driver.fake.signed(body)
        forged = body.replace(b"U0CAROL", b"U0BOB")
        assert forged != body
        status = await _post(f"{served.base}/chat/slack/actions", forged, headers)
        await self._refused(driver, served, approval_id, status, 401, "bad signature")

    async def test_an_oversized_body_is_refused(self, slack: tuple[SlackDriver, Served]) -> None:
        driver, served = slack
        approval_id = await _request(driver)
        body = b"payload=" + b"A" * (200 * 1024)
        status = await _post(f"{served.base}/chat/slack/actions", body, driver.fake.signed(body))
        await self._refused(driver, served, approval_id, status, 413, "too large")

    async def test_a_signed_click_by_someone_who_may_not_decide_decides_nothing(
            self, slack: tuple[SlackDriver, Served]) -> None:
        driver, served = slack
        approval_id = await _request(driver)
        url = f"{served.base}/chat/slack/actions"
        assert await driver.fake.click_http(url, "alice", approval_id, "approve") == 200  # the requester
        await driver.wait_for(lambda t: "own request" in t or "cannot approve" in t or "may not" in t, TIMEOUT)
        assert await driver.fake.click_http(url, "carol", approval_id, "approve") == 200  # not linked
        await driver.wait_for(lambda t: "not linked" in t, TIMEOUT)
        assert await _status(served, approval_id) == "open"

    async def test_a_socket_click_in_an_unbound_channel_is_refused(self, slack: tuple[SlackDriver, Served]) -> None:
        driver, served = slack
        approval_id = await _request(driver)
        await driver.fake.click_socket("bob", approval_id, "approve", channel="C0OTHER")
        await driver.say("alice", "executions")  # barrier
        await driver.wait_for(lambda t: "executions" in t.lower(), TIMEOUT)
        assert await _status(served, approval_id) == "open"
        assert any("channel=C0OTHER" in d for d in await _refusals(served))


class TestMattermostActions:
    """Action POSTs to /chat/mattermost/actions: the context's HMAC is the only proof."""

    async def _refused(self, served: Served, approval_id: int, status: int, expected: int, why: str) -> None:
        assert status == expected
        assert await _status(served, approval_id) == "open"
        assert any(why in d for d in await _refusals(served)), await _refusals(served)

    async def test_a_bad_hmac_is_refused_and_audited(self, mattermost: tuple[MattermostDriver, Served]) -> None:
        driver, served = mattermost
        approval_id = await _request(driver)
        _, action = driver.fake.action(approval_id, "approve")
        context = {**action["integration"]["context"], "sig": "f" * 64}
        status = await driver.fake.click("bob", approval_id, "approve", context=context)
        await self._refused(served, approval_id, status, 403, "bad signature")

    async def test_a_missing_hmac_is_refused(self, mattermost: tuple[MattermostDriver, Served]) -> None:
        driver, served = mattermost
        approval_id = await _request(driver)
        context = {"approval_id": approval_id, "decision": "approve", "channel_id": driver.channel}
        status = await driver.fake.click("bob", approval_id, "approve", context=context)
        await self._refused(served, approval_id, status, 403, "without a signature")

    async def test_a_deny_context_cannot_be_turned_into_an_approve(
            self, mattermost: tuple[MattermostDriver, Served]) -> None:
        driver, served = mattermost
        approval_id = await _request(driver)
        _, deny = driver.fake.action(approval_id, "deny")
        context = {**deny["integration"]["context"], "decision": "approve"}
        status = await driver.fake.click("bob", approval_id, "approve", context=context)
        await self._refused(served, approval_id, status, 403, "bad signature")

    async def test_a_context_cannot_be_renumbered_to_another_request(
            self, mattermost: tuple[MattermostDriver, Served]) -> None:
        driver, served = mattermost
        approval_id = await _request(driver)
        _, action = driver.fake.action(approval_id, "approve")
        # The number is under the HMAC: a genuine context pointed at another request fails it.
        context = {**action["integration"]["context"], "approval_id": approval_id + 1}
        status = await driver.fake.click("bob", approval_id, "approve", context=context)
        await self._refused(served, approval_id, status, 403, "bad signature")

    async def test_an_attacker_posting_as_bob_without_the_secret_is_refused(
            self, mattermost: tuple[MattermostDriver, Served]) -> None:
        driver, served = mattermost
        approval_id = await _request(driver)
        # The user_id is whatever the POST says: only the context's HMAC shows Mattermost sent it.
        body = {"user_id": driver.fake.user("bob").id, "channel_id": driver.channel, "trigger_id": "x",
                "context": {"approval_id": approval_id, "decision": "approve", "channel_id": driver.channel,
                            "sig": "0" * 64}}
        status = await _post(f"{served.base}/chat/mattermost/actions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
        await self._refused(served, approval_id, status, 403, "bad signature")

    async def test_a_genuine_context_replayed_from_another_channel_is_refused(
            self, mattermost: tuple[MattermostDriver, Served]) -> None:
        driver, served = mattermost
        approval_id = await _request(driver)
        _, action = driver.fake.action(approval_id, "approve")
        body = {"user_id": driver.fake.user("bob").id, "channel_id": "z" * 26, "trigger_id": "y",
                "context": action["integration"]["context"]}
        status = await _post(f"{served.base}/chat/mattermost/actions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
        await self._refused(served, approval_id, status, 403, "another channel")

    async def test_a_genuine_click_by_someone_who_may_not_decide_decides_nothing(
            self, mattermost: tuple[MattermostDriver, Served]) -> None:
        driver, served = mattermost
        approval_id = await _request(driver)
        assert await driver.fake.click("alice", approval_id, "approve") == 200  # her own request
        await driver.wait_for(lambda t: "own request" in t or "cannot approve" in t or "may not" in t, TIMEOUT)
        assert await driver.fake.click("carol", approval_id, "approve") == 200  # not linked
        await driver.wait_for(lambda t: "not linked" in t, TIMEOUT)
        assert await _status(served, approval_id) == "open"

    async def test_an_oversized_or_malformed_body_is_refused(self, mattermost: tuple[MattermostDriver, Served]) -> None:
        driver, served = mattermost
        approval_id = await _request(driver)
        url = f"{served.base}/chat/mattermost/actions"
        big = json.dumps({"user_id": "a", "context": {"pad": "A" * (200 * 1024)}}).encode()
        assert await _post(url, big, {"Content-Type": "application/json"}) == 413
        assert await _post(url, b"{not json", {"Content-Type": "application/json"}) == 400
        await self._refused(served, approval_id, 413, 413, "too large")
        assert any("not JSON" in d for d in await _refusals(served))


class TestSlackVerifyAlone:
    """The signature check on its own, for the cases a whole server makes awkward to reach."""

    @staticmethod
    def _adapter(secret: str | None) -> SlackAdapter:
        config = SlackAdapter.Config.model_validate({"app_token": "xapp-x", "bot_token": "xoxb-x",
                                                     "signing_secret": secret})
        assert isinstance(config, SlackConfig)
        return SlackAdapter(config=config)

    def test_without_a_signing_secret_every_request_url_click_is_refused(self) -> None:
        fake = FakeSlack()
        body = b"payload=%7B%7D"
        assert self._adapter(None).verify(headers=fake.signed(body), body=body) == (
            "slack request URL used, but no signing_secret is configured")

    def test_a_timestamp_from_the_future_is_as_stale_as_one_from_the_past(self) -> None:
        fake = FakeSlack()
        body = b"payload=%7B%7D"
        adapter = self._adapter(fake.signing_secret)
        ahead = fake.signed(body, timestamp=int(time.time()) + 600)
        assert adapter.verify(headers=ahead, body=body) == "slack action with a stale timestamp"
        assert adapter.verify(headers={**ahead, "X-Slack-Request-Timestamp": "soon"}, body=body) == (
            "slack action with a bad timestamp")
        fresh = fake.signed(body)
        assert adapter.verify(headers=fresh, body=body) is None
        # A signature over the same body with the timestamp changed no longer matches.
        moved = {**fresh, "X-Slack-Request-Timestamp": str(int(fresh["X-Slack-Request-Timestamp"]) - 1)}
        assert adapter.verify(headers=moved, body=body) == "slack action with a bad signature"

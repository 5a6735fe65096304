"""What a platform POSTs is taken by any server, not only the one holding its connection (issue 14:
"web, API and chat on every one of them, behind any load balancer").

Two real `opsroom serve` processes on one PostgreSQL, room `ops` bound to a Teams conversation of
the local Bot Framework fake (which signs Activities as the channel does). A holds `chat:teams`;
B does not. Activities POSTed to B (a `link CODE`, a command, an Approve click) are verified and
handled by B, and their answers reach Teams through A, the holder: B never fetched a Bot
Framework token. The same Activity POSTed to both servers (the channel's retry after a timeout,
routed elsewhere by the balancer) runs once: the delivery id is claimed in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from sqlalchemy import select

from opsroom.chat.inbound import ChatDirectReply
from opsroom.chat.platforms.teams.fake_server import TeamsFake
from opsroom.eventlog import log as eventlog
from opsroom.eventlog.models import EventRow
from tests.chat.driver import Driver
from tests.chat.drivers.mattermost import MattermostDriver
from tests.chat.drivers.slack import SlackDriver
from tests.chat.drivers.teams import CONVERSATION, TeamsDriver
from tests.chat.drivers.telegram import TelegramDriver
from tests.chat.harness import serve
from tests.cluster.test_announce_once import _env, _serve, _sql, _token, _until
from tests.e2e.harness import Demo
from tests.factories import small_catalog

QUIET_S = 2.0  # a second answer (from the other server) would be here by now


def holder_pid(url: str, platform: str = "teams") -> int | None:
    rows = _sql(url, f"SELECT holder FROM cluster_leases WHERE name = 'chat:{platform}' AND holder IS NOT NULL "
                     "AND expires_at >= extract(epoch from clock_timestamp())")
    return int(rows[0][0].split(":")[1]) if rows else None


def endpoint(server: Demo) -> str:
    return f"{server.base}/chat/teams/messages"


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, url: str, driver: Driver, bind: str) -> AsyncIterator[tuple[Demo, Demo, Path]]:
    """The platform's fake (the driver's); server A (holding chat:<platform>), then B; the catalog,
    room `ops` bound to `bind`, users `you` (operator) and `boss` (approver)."""
    await driver.start(tmp_path / "platform")
    servers: list[Demo] = []
    try:
        catalog = small_catalog(
            tmp_path, platforms=[driver.platform_item()], rooms=[{"name": "ops", "bind": [bind]}],
            users=[{"name": "you", "roles": ["operator"], "password_env": "OPSROOM_TEST_PW_YOU"},
                   {"name": "boss", "roles": ["approver"], "password_env": "OPSROOM_TEST_PW_BOSS"}])
        servers.append(_serve(tmp_path, "a", catalog, _env(url)))
        await _until(f"A holds chat:{driver.name}", lambda: holder_pid(url, driver.name) == servers[0].proc.pid, 15)
        servers.append(_serve(tmp_path, "b", catalog, _env(url)))
        yield servers[0], servers[1], catalog
    finally:
        for server in servers:
            server.stop()
        await driver.stop()


@contextlib.asynccontextmanager
async def teams_cluster(tmp_path: Path, url: str) -> AsyncIterator[tuple[TeamsDriver, Demo, Demo, Path]]:
    driver = TeamsDriver()
    async with cluster(tmp_path, url, driver, f"teams:{CONVERSATION}") as (a, b, catalog):
        yield driver, a, b, catalog


def link_code(server: Demo, catalog: Path, user: str = "boss") -> str:
    token = _token(server, catalog, user)
    made = httpx.post(f"{server.base}/api/v1/me/link-code", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert made.status_code == 201, made.text
    return str(made.json()["code"])


def ask_deploy(server: Demo, catalog: Path) -> None:
    """`you` runs the protected deploy: its request is announced in the room, with buttons."""
    you = _token(server, catalog, "you")
    asked = httpx.post(f"{server.base}/api/v1/runbooks/deploy/run", json={"params": {}, "room": "ops"},
                       headers={"Authorization": f"Bearer {you}"}, timeout=10)
    assert asked.status_code in (200, 201, 202), asked.text


async def post_to(fake: TeamsFake, server: Demo, activity: dict[str, Any], how: str = "valid") -> int:
    fake.endpoint = endpoint(server)
    return await fake.post(activity, how=how)


def said_by(driver: TeamsDriver, needle: str) -> list[str]:
    return [t for t in driver.received() if needle in t]


async def link_bob_through(driver: TeamsDriver, server: Demo, catalog: Path) -> None:
    """bob's Teams account acts as boss: `link CODE` said to `server`."""
    activity = driver.fake.activity(conversation=CONVERSATION, user_id=driver.account_id("bob"), name="bob",
                                    text=f"link {link_code(server, catalog)}", mention_bot=True)
    assert await post_to(driver.fake, server, activity) == 200
    await driver.fake.wait_reply(lambda a: "acts as opsroom user boss" in str(a.get("text")), 15)


async def test_a_delivery_to_the_non_holder_is_handled_once_and_answered_by_the_holder(
        tmp_path: Path, pg_own_url: str) -> None:
    async with teams_cluster(tmp_path, pg_own_url) as (driver, a, b, catalog):
        fake = driver.fake
        await link_bob_through(driver, b, catalog)
        assert holder_pid(pg_own_url) == a.proc.pid

        # A command POSTed to B, and the same Activity again to A (the channel's retry): once.
        mark = len(driver.received())
        status = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("bob"), name="bob",
                               text="status", mention_bot=True)
        assert await post_to(fake, b, status) == 200
        await fake.wait_reply(lambda r: "Sys" in str(r.get("text")), 15)
        assert await post_to(fake, a, status) == 200
        await asyncio.sleep(QUIET_S)
        answered = [t for t in driver.received()[mark:] if "Sys" in t]  # (an announcement may come between)
        assert len(answered) == 1, driver.received()[mark:]
        rows = _sql(pg_own_url, "SELECT count(*) FROM room_messages WHERE room = 'ops' AND text = 'status'")
        assert rows[0][0] == 1, "the retried line was stored twice"

        # A request (asked through B's API) is announced with its card, sent by A. bob clicks
        # Approve; the click reaches B, and its retry A: approved once, announced once.
        ask_deploy(b, catalog)
        card = await fake.wait_reply(lambda r: bool(r.get("attachments")), 15)
        approval_id = int(re.search(r"#(\d+)", card["attachments"][0]["content"]["body"][0]["text"])  # type: ignore[union-attr]
                          .group(1))
        click = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("bob"), name="bob",
                              value={"opsroom": "approval", "approval_id": approval_id, "decision": "approve"})
        assert await post_to(fake, b, click) == 200
        assert await post_to(fake, a, click) == 200
        await fake.wait_reply(lambda r: "approved" in str(r.get("text")).lower() and "boss" in str(r.get("text")), 15)
        await asyncio.sleep(QUIET_S)
        votes = _sql(pg_own_url, f"SELECT count(*) FROM approval_votes WHERE approval_id = {approval_id}")
        assert votes[0][0] == 1, votes
        assert len([t for t in driver.received() if "approved" in t.lower() and "boss" in t]) == 1, driver.received()
        # Nothing was refused as a second vote either (it would be said in the room).
        assert not said_by(driver, "already"), driver.received()

        # B never spoke to Teams itself: the only Bot Framework token is A's.
        assert len(fake.tokens) == 1, "B fetched a token: it sends on its own"
        claimed = _sql(pg_own_url, "SELECT count(*) FROM chat_deliveries WHERE platform = 'teams'")
        assert claimed[0][0] == 3  # link, status, the click: each claimed once


async def test_a_signed_slack_click_to_the_non_holder_approves_once(tmp_path: Path, pg_own_url: str) -> None:
    """Slack through Socket Mode on the holder and its interactivity request URL on every server; the
    binding names the channel (`#ops`), which B, never connected, looks up when a click comes."""
    driver = SlackDriver()
    fake = driver.fake
    async with cluster(tmp_path, pg_own_url, driver, "slack:#ops") as (a, b, catalog):
        await fake.wait(lambda: fake.sockets, timeout=15)
        await fake.say("bob", f"link {link_code(b, catalog)}", "C0OPS")
        await fake.wait(lambda: any("acts as opsroom user boss" in str(p["text"]) for p in fake.bot_posts()), 15)
        ask_deploy(b, catalog)
        await fake.wait(lambda: any(p.get("blocks") for p in fake.bot_posts()), 15)
        approval_id = int(next(p for p in fake.bot_posts() if p.get("blocks"))["blocks"][1]["block_id"].split("-")[1])

        # One click as Slack signs it, POSTed to B (approved by B), then the very same request to A
        # (Slack's retry): nothing more.
        body = urlencode({"payload": json.dumps(fake.click_payload("bob", approval_id, "approve"))}).encode()
        headers = fake.signed(body)

        async def click(server: Demo) -> None:
            # In a thread: B asks the fake (on this loop) who clicked while the request is open.
            got = await asyncio.to_thread(httpx.post, f"{server.base}/chat/slack/actions", content=body,
                                          headers=headers, timeout=10)
            assert got.status_code == 200, (server.base, got.status_code, got.text)

        await click(b)
        await fake.wait(lambda: any("approved" in str(p["text"]).lower() and "boss" in str(p["text"])
                                    for p in fake.bot_posts()), 15)
        await click(a)
        await asyncio.sleep(QUIET_S)
        assert not _sql(pg_own_url, "SELECT details FROM audit_records WHERE action = 'chat.refused'")
        votes = _sql(pg_own_url, f"SELECT count(*) FROM approval_votes WHERE approval_id = {approval_id}")
        assert votes[0][0] == 1, votes
        approved = [p for p in fake.bot_posts() if "approved" in str(p["text"]).lower() and "boss" in str(p["text"])]
        assert len(approved) == 1, [p["text"] for p in fake.bot_posts()]
        assert fake.connections == 1, "B opened a Socket Mode connection"


async def test_a_telegram_webhook_update_to_the_non_holder_is_answered_once(tmp_path: Path, pg_own_url: str) -> None:
    """Webhook mode: the holder sets the webhook (its own URL); a balancer in front of both servers
    sends Telegram's POSTs to either, as the fake does here by moving the URL to B."""
    driver = TelegramDriver(mode="webhook")
    fake = driver.fake
    async with cluster(tmp_path, pg_own_url, driver, f"telegram:{driver.channel}") as (a, b, _catalog):
        await _until("A set the webhook", lambda: fake.webhook is not None, 15)
        assert fake.webhook is not None

        def answers() -> list[str]:  # alice is not linked: told how to link
            return [t for t in fake.texts() if "type `link CODE` here" in t]

        fake.webhook["url"] = f"{b.base}/chat/telegram/webhook"
        assert await fake.say("alice", "/status") == 200
        await _until("the answer", answers, 15)
        fake.webhook["url"] = f"{a.base}/chat/telegram/webhook"
        assert await fake.redeliver() == 200  # the same update_id, to the holder
        await asyncio.sleep(QUIET_S)
        assert len(answers()) == 1, fake.texts()
        assert _sql(pg_own_url, "SELECT count(*) FROM room_messages WHERE text = 'status'")[0][0] == 1

        # Without the secret token B refuses it, and audits that, as the holder would.
        fake.webhook["url"] = f"{b.base}/chat/telegram/webhook"
        assert await fake.say("alice", "/status", header=None) == 401
        refused = _sql(pg_own_url, "SELECT details FROM audit_records WHERE action = 'chat.refused' "
                                   "AND target = 'platform:telegram'")
        assert len(refused) == 1 and "secret token missing" in str(refused[0][0]), refused


async def test_a_mattermost_click_to_the_non_holder_approves(tmp_path: Path, pg_own_url: str) -> None:
    """Mattermost's button POSTs to the integration URL (behind the balancer: any server); the binding
    names TEAM/CHANNEL, which B, never connected, looks up when a click comes."""
    driver = MattermostDriver()
    fake = driver.fake
    async with cluster(tmp_path, pg_own_url, driver, "mattermost:opsroom/ops") as (_a, b, catalog):
        await fake.wait(lambda: fake.sockets, timeout=15)
        await fake.say("bob", f"link {link_code(b, catalog)}")
        await fake.wait(lambda: any("acts as opsroom user boss" in p["message"] for p in fake.bot_posts()), 15)
        ask_deploy(b, catalog)
        await fake.wait(lambda: any(p["props"].get("attachments") for p in fake.bot_posts()), 15)
        post = next(p for p in fake.bot_posts() if p["props"].get("attachments"))
        approval_id = int(post["props"]["attachments"][0]["actions"][0]["integration"]["context"]["approval_id"])

        assert await fake.click("bob", approval_id, "approve", url=f"{b.base}/chat/mattermost/actions") == 200
        await fake.wait(lambda: any("approved" in p["message"].lower() and "boss" in p["message"]
                                    for p in fake.bot_posts()), 15)
        votes = _sql(pg_own_url, f"SELECT user_name, decision FROM approval_votes WHERE approval_id = {approval_id}")
        assert [tuple(v) for v in votes] == [("boss", "approve")], votes
        assert not _sql(pg_own_url, "SELECT details FROM audit_records WHERE action = 'chat.refused'")
        assert fake.connections == 1, "B opened a websocket"


async def test_a_direct_reply_in_the_log_is_sent_by_the_holder(tmp_path: Path) -> None:
    """A reply in a channel bound to no room, made on a server without the connection, is a
    `chat.direct` row of the event log; the holder (here the only server, on SQLite) sends it."""
    driver = TeamsDriver()
    await driver.start(tmp_path / "platform")
    try:
        async with serve(tmp_path, driver) as served:
            await driver.attach(served)
            await eventlog.emit(served.rt, ChatDirectReply(platform="teams", channel="a:direct-chat",
                                                           text="linked, directly"))
            await driver.fake.wait_reply(lambda r: "linked, directly" in str(r.get("text")), 15)
            async with served.rt.read() as s:
                kinds = list((await s.execute(select(EventRow.type).where(EventRow.type == "chat.direct"))).scalars())
            assert kinds == ["chat.direct"]
            assert [r["conversation"] for r in driver.fake.replies if "directly" in str(r["activity"].get("text"))] \
                == ["a:direct-chat"]
    finally:
        await driver.stop()

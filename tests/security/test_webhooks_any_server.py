"""Forged platform deliveries to a server that does not hold the platform's connection
(attack class: spoofed webhook / forged button click, CWE-290 authentication bypass by spoofing,
CWE-345 insufficient verification of data authenticity; and replay, CWE-294).

Every server of a cluster now takes what Teams POSTs, not only the holder of `chat:teams`: the
non-holder must check the Bot Framework token exactly as the holder does. Two real `opsroom
serve` processes on one PostgreSQL and the local Bot Framework fake: each forgery of the fake's
list, POSTed to B (the non-holder), is refused with 401, audited there (`chat.refused`, target
`platform:teams`, outcome denied) and decides nothing; a genuine click then still works, and
its replay to A, within the token's lifetime, decides nothing again.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from opsroom.chat.platforms.teams.fake_server import FORGERIES
from tests.chat.drivers.teams import CONVERSATION
from tests.cluster.test_announce_once import _sql, _token
from tests.cluster.test_webhooks_any_server import holder_pid, link_bob_through, post_to, teams_cluster


async def test_a_forged_delivery_to_the_non_holder_is_refused_and_audited(tmp_path: Path, pg_own_url: str) -> None:
    async with teams_cluster(tmp_path, pg_own_url) as (driver, a, b, catalog):
        fake = driver.fake
        await link_bob_through(driver, b, catalog)
        assert holder_pid(pg_own_url) == a.proc.pid
        you = _token(b, catalog, "you")
        asked = httpx.post(f"{b.base}/api/v1/runbooks/deploy/run", json={"params": {}, "room": "ops"},
                           headers={"Authorization": f"Bearer {you}"}, timeout=10)
        assert asked.status_code in (200, 201, 202), asked.text
        card = await fake.wait_reply(lambda r: bool(r.get("attachments")), 15)
        found = re.search(r"#(\d+)", card["attachments"][0]["content"]["body"][0]["text"])
        assert found is not None
        approval_id = int(found.group(1))

        for how in FORGERIES:
            click = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("bob"), name="bob",
                                  value={"opsroom": "approval", "approval_id": approval_id, "decision": "approve"})
            assert await post_to(fake, b, click, how=how) == 401, how
        # A line with no token at all, and a command under a forged one, are refused too.
        status = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("bob"), name="bob",
                               text="status", mention_bot=True)
        assert await post_to(fake, b, status, how="wrong_key") == 401
        await asyncio.sleep(1.5)
        votes = _sql(pg_own_url, f"SELECT count(*) FROM approval_votes WHERE approval_id = {approval_id}")
        assert votes[0][0] == 0, "a forged click decided"
        assert not _sql(pg_own_url, "SELECT 1 FROM room_messages WHERE text = 'status'")
        refused = _sql(pg_own_url, "SELECT actor, outcome, details FROM audit_records "
                                   "WHERE action = 'chat.refused' AND target = 'platform:teams'")
        assert len(refused) == len(FORGERIES) + 1, refused
        assert {r[1] for r in refused} == {"denied"}
        assert all("Bot Framework token" in str(r[2]) for r in refused), refused

        # The genuine click, to B, decides; replayed to A (same Activity, same token) it does not.
        click = fake.activity(conversation=CONVERSATION, user_id=driver.account_id("bob"), name="bob",
                              value={"opsroom": "approval", "approval_id": approval_id, "decision": "deny"})
        assert await post_to(fake, b, click) == 200
        await fake.wait_reply(lambda r: "denied" in str(r.get("text")).lower(), 15)
        assert await post_to(fake, a, click) == 200
        await asyncio.sleep(1.5)
        votes = _sql(pg_own_url, f"SELECT decision FROM approval_votes WHERE approval_id = {approval_id}")
        assert [v[0] for v in votes] == ["deny"], votes

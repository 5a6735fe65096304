"""The hub's own attack surface, whatever the platform: refusal floods and direct messages."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from opsroom.access import links
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.audit.models import AuditRecordRow
from opsroom.chat.fake import FakeAdapter
from opsroom.chat.hub import REFUSALS_AUDITED
from opsroom.runbooks.models import ExecutionRow
from tests.factories import small_catalog
from tests.inprocess import ask, booted, settle


def _catalog(tmp: Path) -> Path:
    return small_catalog(tmp, platforms=[{"name": "plat", "type": "fake"}],
                         rooms=[{"name": "ops", "bind": ["plat:C1"]}])


async def _refusals(rt: object) -> list[AuditRecordRow]:
    async with rt.read() as s:  # type: ignore[attr-defined]
        return list((await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == "chat.refused"))).scalars())


async def test_a_flood_of_forged_requests_cannot_grow_the_audit_log_at_will(tmp_path: Path) -> None:
    """Class: audit flooding. Whoever knows a platform's public endpoint sends forged clicks."""
    async with booted(tmp_path, _catalog(tmp_path)) as (rt, _web):
        assert rt.rooms is not None
        plat = rt.rooms.adapters["plat"]
        async with rt.read() as s:
            before = (await s.execute(select(func.count()).select_from(AuditRecordRow))).scalar_one()
        for i in range(500):
            await rt.rooms.refused(plat, what="button", detail=f"bad signature {i}")
        assert len(await _refusals(rt)) == REFUSALS_AUDITED
        async with rt.read() as s:
            after = (await s.execute(select(func.count()).select_from(AuditRecordRow))).scalar_one()
        assert after - before == REFUSALS_AUDITED
        # The minute ends: what was only counted is audited as one record with its count.
        rt.rooms._refusals.windows["plat"][0] -= 61
        await rt.rooms.refused(plat, what="button", detail="one more")
        rows = await _refusals(rt)
        summary = [r for r in rows if (r.details or {}).get("what") == "more refusals"]
        assert len(summary) == 1 and summary[0].details["count"] == 500 - REFUSALS_AUDITED


async def test_a_direct_message_links_an_account_and_does_nothing_else(tmp_path: Path) -> None:
    """Class: command scope. A channel no room is bound to takes one's own account commands only."""
    async with booted(tmp_path, _catalog(tmp_path)) as (rt, _web):
        assert rt.rooms is not None
        plat = rt.rooms.adapters["plat"]
        assert isinstance(plat, FakeAdapter)
        admin = await access.actor_by_name(rt, name="you", door="web")
        code, _ = await links.issue_link_code(rt, actor=admin)
        await plat.say("D-alice", "alice", f"link {code}")
        await plat.say("D-alice", "alice", "run deploy")  # linked now, but a DM runs nothing
        await plat.say("D-alice", "alice", "whoami")
        await settle(rt)
        await rt.rooms.queues["plat"].drained()
        dm = [o.text for o in plat.sent if o.channel == "D-alice"]
        assert len(dm) == 2 and "linked" in dm[0] and "you" in dm[1], dm
        assert await links.linked_user(rt, platform="plat", account_id="fake:alice") == "you"
        async with rt.read() as s:
            assert (await s.execute(select(func.count()).select_from(ExecutionRow))).scalar_one() == 0
        assert not [o for o in plat.sent if code in o.text]  # the code is never echoed anywhere


async def test_a_user_disabled_mid_conversation_is_refused_at_the_next_line(tmp_path: Path) -> None:
    """Class: stale authorisation. The hub keeps each person's user between lines; an access
    change must end that at once, not when the cache would expire."""
    async with booted(tmp_path, small_catalog(tmp_path)) as (rt, fake):
        assert "Sys" in await ask(fake, "you", "status")  # `you` is now cached by the hub
        await access.disable_user(rt, actor=SYSTEM, name="you")
        reply = await ask(fake, "you", "status")
        assert "Sys" not in reply and "don't know" in reply, reply

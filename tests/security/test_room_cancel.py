"""The web room's Cancel, by attack class: broken access control (someone who may not cancel is
offered no button and refused on the wire even with a well-made frame), cross-site request
forgery (a frame without this page's cancel token, or with another run's or session's), and
malformed ids (a clear error, the socket stays up)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.runtime import Runtime
from opsroom.web.room_runs import cancel_token
from tests.e2e.harness import RoomClient, login
from tests.factories import PASSWORDS
from tests.integration import test_cancel as base
from tests.integration.test_cancel import Served, _gone, _start, _status

served = base.served  # the whole web app on loopback, with the cancel catalog
OTHER_PW = "other-test-password"


async def _room(served: Served, user: str) -> tuple[RoomClient, str]:
    """`user`'s socket into room ops, and the CSRF secret of that session (what its page holds)."""
    if user == "other":
        await access.set_password(served.rt, actor=SYSTEM, name="other", password=OTHER_PW)
    http = await login(served.base, user, OTHER_PW if user == "other" else PASSWORDS[user])
    page = await http.get("/rooms/ops")
    csrf = re.search(r'<meta name="csrf" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    return await RoomClient.open(served.base, http, user), csrf


def _listed(client: RoomClient, eid: int) -> Any:
    return client.wait_for(lambda f: f["type"] == "executions" and any(x["id"] == eid for x in f["items"]))


async def _refusals(rt: Runtime, eid: int) -> list[tuple[str, str, str]]:
    records = await audit.list_records(rt, actor=SYSTEM, action="execution.cancel", limit=100)
    return sorted((r.actor, r.door, r.details.get("reason", "")) for r in records
                  if r.target == f"execution:{eid}" and r.outcome == "refused")


async def _error(client: RoomClient, mark: int) -> str:
    frame = await client.wait_for(lambda f: f["type"] == "error", start=mark)
    return str(frame["text"])


async def test_broken_access_control_no_button_and_refused_on_the_wire(served: Served, tmp_path: Any) -> None:
    rt = served.rt
    eid, pids = await _start(rt, "you", tmp_path, "roomperm")
    for user in ("dev", "other"):  # a viewer; an operator who did not ask for it
        client, csrf = await _room(served, user)
        shown = await _listed(client, eid)
        [item] = [x for x in shown["items"] if x["id"] == eid]
        assert item["can_cancel"] is False and "token" not in item, item  # no button to press
        # The token is no secret from its own session: a hand-made frame with it is still refused.
        mark = len(client.frames)
        await client.ws.send(f'{{"type": "cancel", "id": {eid}, "token": "{cancel_token(csrf, eid)}"}}')
        text = await _error(client, mark)
        assert f"{user} may not cancel" in text, text
        await client.close()
    assert (await _status(rt, eid)).status == "running" and not _gone(pids)
    refused = await _refusals(rt, eid)
    assert [(a, d) for a, d, _ in refused] == [("dev", "web"), ("other", "web")], refused
    boss, _ = await _room(served, "boss")  # an approver may: offered a button
    [item] = [x for x in (await _listed(boss, eid))["items"] if x["id"] == eid]
    assert item["can_cancel"] is True and item["token"], item
    await boss.ws.send(f'{{"type": "cancel", "id": {eid}, "token": "{item["token"]}"}}')
    await boss.wait_for(lambda f: f["type"] == "message" and f"execution #{eid} cancelled by boss" in f["text"])
    assert _gone(pids)
    await boss.close()


@pytest.mark.parametrize("forged", ["missing", "empty", "wrong", "another run's", "another session's"])
async def test_csrf_a_frame_without_this_pages_token_cancels_nothing(served: Served, tmp_path: Any,
                                                                    forged: str) -> None:
    rt = served.rt
    eid, pids = await _start(rt, "you", tmp_path, "roomcsrf")
    you, csrf = await _room(served, "you")  # the requester: the only thing missing is the token
    _boss, boss_csrf = await _room(served, "boss")
    token = {"missing": None, "empty": "", "wrong": "0" * 32, "another run's": cancel_token(csrf, eid + 1),
             "another session's": cancel_token(boss_csrf, eid)}[forged]
    mark = len(you.frames)
    await you.ws.send(json.dumps({"type": "cancel", "id": eid, **({} if token is None else {"token": token})}))
    text = await _error(you, mark)
    reason = "missing cancel token" if not token else "wrong cancel token"
    assert text.startswith(f"{reason} for execution #{eid}"), text
    assert (await _status(rt, eid)).status == "running" and not _gone(pids)
    assert await _refusals(rt, eid) == [("you", "web", reason)]
    await you.close()
    await _boss.close()


@pytest.mark.parametrize("raw", ['"1"', "true", "0", "-3", "1.5", "null", str(2**31), "1e400", "[1]"])
async def test_malformed_ids_get_a_clear_error_and_the_socket_stays(served: Served, raw: str) -> None:
    you, _csrf = await _room(served, "you")
    mark = len(you.frames)
    await you.ws.send(f'{{"type": "cancel", "id": {raw}, "token": "x"}}')
    text = await _error(you, mark)
    assert text == "`id` must be an execution number from 1 to 2147483647", text
    reply = await you.ask("help", "")  # still served
    assert reply["kind"] == "bot"
    await you.close()

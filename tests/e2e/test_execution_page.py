"""The execution page (/executions/N), where chat platforms link when they cut long output: the
whole output, masked, for a logged-in reader with `execution.read`; who asked and who approved."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Demo, RoomClient, login, start_server
from tests.factories import write_catalog

pytestmark = pytest.mark.e2e
PW = {"OPSROOM_XP_PW_YOU": "you-password-long", "OPSROOM_XP_PW_DEV": "dev-password-long",
      "OPSROOM_XP_PW_BOSS": "boss-password-long", "OPSROOM_XP_PW_NOSY": "nosy-password-long"}
SECRET = "Sekr3t-xp-9c41d7"
LINES = 400  # more than any chat platform shows: the page has them all


def _catalog(tmp: Path) -> Path:
    printer = f"import sys; print(sys.argv[1]); [print('line', i) for i in range({LINES})]"
    return write_catalog(tmp / "catalog", {
        "environments": [{"name": "test"}, {"name": "prod", "protected": True}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "runbooks": [
            {"name": "leak", "approval": "none", "environment": "test",
             "parameters": {"token": {"type": "string", "secret": True}},
             "steps": [{"command": [sys.executable, "-c", printer, "token is {{ params.token }}"]}]},
            {"name": "deploy", "environment": "prod",
             "steps": [{"command": [sys.executable, "-c", "print('deployed <b>v2</b>')"]}]},
        ],
        "rooms": [{"name": "ops"}],
        "roles": [{"name": "outsider", "permissions": ["status.read"]}],
        "users": [{"name": "you", "roles": ["operator"], "password_env": "OPSROOM_XP_PW_YOU"},
                  {"name": "dev", "roles": ["viewer"], "password_env": "OPSROOM_XP_PW_DEV"},
                  {"name": "boss", "roles": ["approver"], "password_env": "OPSROOM_XP_PW_BOSS"},
                  {"name": "nosy", "roles": ["outsider"], "password_env": "OPSROOM_XP_PW_NOSY"}],
    })


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("xpage")
    server = start_server(tmp, ["serve", "--catalog", str(_catalog(tmp))], env_extra=PW)
    yield server
    server.stop()


async def _person(server: Demo, user: str) -> RoomClient:
    http = await login(server.base, user, PW[f"OPSROOM_XP_PW_{user.upper()}"])
    return await RoomClient.open(server.base, http, user)


async def test_a_viewer_reads_the_whole_output_masked(served: Demo) -> None:
    you = await _person(served, "you")
    dev = await login(served.base, "dev", PW["OPSROOM_XP_PW_DEV"])
    try:
        started = await you.ask(f"run leak token={SECRET}", "execution #")
        number = re.search(r"execution #(\d+)", started["text"]).group(1)  # type: ignore[union-attr]
        await you.wait_for(lambda f: f["type"] == "message" and f"#{number}" in f["text"]
                           and "succeeded" in f["text"], timeout=20)
        page = await dev.get(f"/executions/{number}")
        assert page.status_code == 200, page.text
        assert "text/html" in page.headers["content-type"]
        assert SECRET not in page.text and "token is ****" in page.text
        assert f"line {LINES - 1}" in page.text  # all of it, not a chat-sized tail
        assert "succeeded" in page.text and "you via" in page.text
        # Read through the service layer: the view is audited under dev's name.
        admin_view = await you.http.get("/api/v1/executions/" + number)  # type: ignore[union-attr]
        assert SECRET not in admin_view.text
    finally:
        await you.close()
        await dev.aclose()


async def test_the_page_names_the_approver_and_shows_output_as_text(served: Demo) -> None:
    you, boss = await _person(served, "you"), await _person(served, "boss")
    try:
        asked = await you.ask("run deploy", "needs approval")
        request = re.search(r"Request #(\d+)", asked["text"]).group(1)  # type: ignore[union-attr]
        await boss.wait_for(lambda f: f["type"] == "approvals" and any(a["id"] == int(request) for a in f["items"]))
        await boss.say(f"approve {request}")
        done = await you.wait_for(lambda f: f["type"] == "message" and "deploy" in f["text"]
                                  and "succeeded" in f["text"], timeout=20)
        number = re.search(r"#(\d+)", done["text"]).group(1)  # type: ignore[union-attr]
        page = await boss.http.get(f"/executions/{number}")  # type: ignore[union-attr]
        assert page.status_code == 200, page.text
        assert f"request #{request}" in page.text and "approved by boss" in page.text
        assert "deployed &lt;b&gt;v2&lt;/b&gt;" in page.text and "<b>v2" not in page.text
    finally:
        await you.close()
        await boss.close()


async def test_who_may_not_read_executions_gets_nothing(served: Demo) -> None:
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as anonymous:
        resp = await anonymous.get("/executions/1")
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login?next=")
    nosy = await login(served.base, "nosy", PW["OPSROOM_XP_PW_NOSY"])
    try:
        refused = await nosy.get("/executions/1")
        assert refused.status_code == 403 and "may not see executions" in refused.text, refused.text
        assert "line 1" not in refused.text
        missing = await (await login(served.base, "dev", PW["OPSROOM_XP_PW_DEV"])).get("/executions/99999")
        assert missing.status_code == 404 and "no execution #99999" in missing.text
        assert (await nosy.get("/executions/abc")).status_code == 404
    finally:
        await nosy.aclose()

"""Catalog reload on a real server (issue 13, acceptance 4): a catalog with one bad file changes
nothing and says where; a good one adds a check that starts running with no restart, while a
WebSocket to the room stays open and a running execution finishes under the catalog it started
with; SIGHUP does the same; every execution records the catalog version it was requested under."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Demo, RoomClient, cli, login, start_server
from tests.factories import write_catalog

pytestmark = pytest.mark.e2e
PW = {"OPSROOM_RL_PW_ADMIN": "admin-password-long", "OPSROOM_RL_PW_YOU": "you-password-long"}
SLOW_S = 4.0  # the running execution outlives the reload by this much


def _base(tmp: Path) -> Path:
    """A catalog directory of several files, as a team keeps one."""
    root = tmp / "catalog"
    write_catalog(root, {
        "environments": [{"name": "test"}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "rooms": [{"name": "ops"}],
        "users": [{"name": "admin", "roles": ["admin"], "password_env": "OPSROOM_RL_PW_ADMIN"},
                  {"name": "you", "roles": ["operator"], "password_env": "OPSROOM_RL_PW_YOU"}],
    }, name="base.yaml")
    write_catalog(root, {"checks": [_check("first")]}, name="checks.yaml")
    write_catalog(root, {"runbooks": [{
        "name": "slow", "approval": "none", "environment": "test",
        "steps": [{"command": [sys.executable, "-c",
                               f"import time; print('begun', flush=True); time.sleep({SLOW_S}); print('ended')"]}],
    }]}, name="runbooks.yaml")
    return root


def _check(name: str) -> dict[str, Any]:
    return {"name": name, "type": "command", "service": "svc", "interval": "1s",
            "argv": [sys.executable, "-c", f"print('OK - {name} answers')"]}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Demo, Path, dict[str, str]]]:
    catalog = _base(tmp_path)
    server = start_server(tmp_path, ["serve", "--catalog", str(catalog)], env_extra=PW)
    try:
        data = ["--data", str(server.data)]
        tokens = {u: cli("token", "create", u, *data).stdout.strip() for u in ("admin", "you")}
        yield server, catalog, tokens
    finally:
        server.stop()


def _api(server: Demo, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.base + "/api/v1", timeout=20,
                             headers={"Authorization": f"Bearer {token}"})


async def _check_output(api: httpx.AsyncClient, name: str) -> str | None:
    listed = (await api.get("/checks")).json()
    found = [c for c in listed if c["check"] == name]
    return found[0]["output"] if found else None


async def _first_result(api: httpx.AsyncClient, name: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = await _check_output(api, name)
        if output:
            return output
        await asyncio.sleep(0.2)
    raise AssertionError(f"check {name} never produced a result after the reload")


async def _execution(api: httpx.AsyncClient, number: int) -> dict[str, Any]:
    resp = await api.get(f"/executions/{number}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _finished(api: httpx.AsyncClient, number: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await _execution(api, number)
        if row["status"] not in ("pending", "running", "awaiting_approval"):
            return row
        await asyncio.sleep(0.2)
    raise AssertionError(f"execution #{number} did not finish")


async def test_a_bad_file_changes_nothing_a_good_reload_applies_live(
        served: tuple[Demo, Path, dict[str, str]]) -> None:
    server, catalog, tokens = served
    admin, you = _api(server, tokens["admin"]), _api(server, tokens["you"])
    http = await login(server.base, "you", PW["OPSROOM_RL_PW_YOU"])
    room = await RoomClient.open(server.base, http, "you")
    try:
        before = (await admin.get("/catalog")).json()
        assert before["counts"]["checks"] == 1 and len(before["hash"]) == 64
        assert before["loaded_at"].endswith(("Z", "+00:00"))
        await _first_result(admin, "first")

        # One bad file among good ones: refused whole, said at file:line:column, nothing changed.
        write_catalog(catalog, {"checks": [_check("first"), _check("second")]}, name="checks.yaml")
        (catalog / "broken.yaml").write_text("rules:\n  - name: r1\n    when: {check: nowhere}\n"
                                             "    then: {runbook: slow}\n")
        refused = await admin.post("/catalog/reload")
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert body["code"] == "catalog_invalid"
        where = [p for p in body["problems"] if p["file"] and p["file"].endswith("broken.yaml")]
        assert where and where[0]["line"] == 3 and where[0]["column"] > 0, body
        assert "nowhere" in where[0]["message"]
        assert f"{catalog / 'broken.yaml'}:3:" in body["detail"]  # as `catalog validate` renders it
        assert (await admin.get("/catalog")).json()["hash"] == before["hash"]
        await asyncio.sleep(2.5)  # two intervals of the check the refused catalog would have added
        assert await _check_output(admin, "second") is None

        # A run that is still going when the good reload lands.
        started = await you.post("/runbooks/slow/run", json={"params": {}})
        assert started.status_code == 202, started.text
        running = started.json()["id"]
        await asyncio.sleep(0.5)

        (catalog / "broken.yaml").unlink()
        reloaded = await admin.post("/catalog/reload")
        assert reloaded.status_code == 200, reloaded.text
        done = reloaded.json()
        assert done["changes"] == {"checks": {"added": ["second"], "removed": [], "changed": []}}
        assert done["summary"] == "checks +1" and done["old_hash"] == before["hash"]
        new_hash = done["catalog"]["hash"]
        assert new_hash != before["hash"] and done["catalog"]["counts"]["checks"] == 2

        # The new check runs with no restart; the old one keeps running.
        assert await _first_result(admin, "second") == "OK - second answers"
        # The run begun under the old catalog finishes, and says which catalog it ran under.
        finished = await _finished(you, running)
        assert finished["status"] == "succeeded", finished
        assert "ended" in finished["output"]
        assert finished["catalog_hash"] == before["hash"]
        after = await you.post("/runbooks/slow/run", json={"params": {}})
        assert after.json()["catalog_hash"] == new_hash
        await _finished(you, after.json()["id"])

        # The room's socket stayed open all along: it still hears and answers.
        assert room.ws.close_code is None
        await room.ask("status", "sys")
        page = await http.get(f"/executions/{running}")
        assert page.status_code == 200 and before["hash"][:12] in page.text and "since reloaded" in page.text
        audit = cli("audit", "verify", "--data", str(server.data))
        assert audit.returncode == 0, audit.stderr
    finally:
        await room.close()
        await admin.aclose()
        await you.aclose()


async def test_sighup_reloads_and_the_cli_reports(served: tuple[Demo, Path, dict[str, str]]) -> None:
    server, catalog, tokens = served
    admin = _api(server, tokens["admin"])
    try:
        before = (await admin.get("/catalog")).json()
        write_catalog(catalog, {"checks": [_check("first"), _check("by-signal")]}, name="checks.yaml")
        server.proc.send_signal(signal.SIGHUP)
        assert await _first_result(admin, "by-signal") == "OK - by-signal answers"
        assert server.proc.poll() is None  # SIGHUP reloads; it never stops the server
        assert (await admin.get("/catalog")).json()["hash"] != before["hash"]
        assert "catalog reloaded" in server.output()

        # A bad file sent by signal: refused, logged with where, the server keeps going.
        (catalog / "bad.yaml").write_text("checks:\n  - name: Bad Name\n")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "catalog reload on SIGHUP refused" not in server.output() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert "catalog reload on SIGHUP refused" in server.output()
        assert "bad.yaml:2:" in server.output()
        assert server.proc.poll() is None

        # The CLI: 1 with the problems printed when refused, 0 with the summary when applied.
        remote = ["--server", server.base, "--token", tokens["admin"]]
        refused = cli("catalog", "reload", *remote)
        assert refused.returncode == 1, refused
        assert "bad.yaml:2:" in refused.stderr and "running catalog is unchanged" in refused.stderr
        (catalog / "bad.yaml").unlink()
        write_catalog(catalog, {"checks": [_check("by-signal")]}, name="checks.yaml")
        applied = cli("catalog", "reload", *remote)
        assert applied.returncode == 0, applied.stderr
        assert "checks -1" in applied.stdout and "removed: first" in applied.stdout
        as_json = cli("catalog", "reload", "-o", "json", *remote)
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout)["summary"] == "no changes"
        denied = cli("catalog", "reload", "--server", server.base, "--token", tokens["you"])
        assert denied.returncode == 3 and "may not reload the catalog" in denied.stderr
    finally:
        await admin.aclose()

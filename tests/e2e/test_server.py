"""A real `opsroom serve`: API bodies, the viewer's limits on every door, crash recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.harness import Demo, cli, login, start_server
from tests.factories import free_port, write_catalog

pytestmark = pytest.mark.e2e
PW = {"OPSROOM_TEST_PW_YOU": "you-password-long", "OPSROOM_TEST_PW_DEV": "dev-password-long",
      "OPSROOM_TEST_PW_BOSS": "boss-password-long"}


def _catalog(tmp: Path) -> Path:
    marker = tmp / "slow-started.txt"
    return write_catalog(tmp / "catalog", {
        "environments": [{"name": "test"}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "checks": [{"name": "svc-tcp", "type": "tcp", "service": "svc", "host": "127.0.0.1",
                    "port": free_port(), "interval": "30s"}],
        "runbooks": [
            {"name": "slow", "approval": "none", "parameters": {"tag": {"type": "string", "default": "x"}},
             "steps": [{"name": "mark and wait", "timeout": "60s", "command": [
                 sys.executable, "-c",
                 "import sys,time; open(sys.argv[1],'a').write(sys.argv[2]+'\\n'); time.sleep(20)",
                 str(marker), "opsroom-crash-test-{{ params.tag }}"]}]},
            {"name": "hello", "approval": "none", "parameters": {"n": {"type": "int", "default": 1}},
             "steps": [{"command": [sys.executable, "-c", "print('hello')"]}]},
        ],
        "rooms": [{"name": "ops"}],
        "users": [{"name": "you", "roles": ["operator"], "password_env": "OPSROOM_TEST_PW_YOU"},
                  {"name": "dev", "roles": ["viewer"], "password_env": "OPSROOM_TEST_PW_DEV"},
                  {"name": "boss", "roles": ["approver"], "password_env": "OPSROOM_TEST_PW_BOSS"}],
    })


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Demo, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("served")
    catalog = _catalog(tmp)
    server = start_server(tmp, ["serve", "--catalog", str(catalog)], env_extra=PW)
    tokens = {}
    for user in ("you", "dev"):
        made = cli("token", "create", user, "--data", str(server.data), "--catalog", str(catalog))
        assert made.returncode == 0, made.stderr
        tokens[user] = made.stdout.strip()
    tokens["catalog"] = str(catalog)
    yield server, tokens
    server.stop()


def _api(server: Demo, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.base + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10)


BAD_BODIES: list[tuple[str, str, Any]] = [
    ("/runbooks/hello/run", "not json", None),
    ("/runbooks/hello/run", "[1, 2]", None),
    ("/runbooks/hello/run", '{"params": "n=1"}', None),
    ("/runbooks/hello/run", '{"params": {"n": {"deep": 1}}}', None),
    ("/runbooks/hello/run", '{"parms": {}}', None),
    ("/runbooks/hello/run", '{"params": {"n": "abc"}}', "whole number"),
    ("/runbooks/hello/run", '{"params": {"m": "1"}}', "has no parameter 'm'"),
    ("/approvals/1/decision", '{"decision": "maybe"}', None),
    ("/approvals/1/decision", '{}', None),
    ("/approvals/abc/decision", '{"decision": "approve"}', None),
]


@pytest.mark.parametrize(("path", "body", "says"), BAD_BODIES)
def test_invalid_bodies_get_422_with_details(served: tuple[Demo, dict[str, str]], path: str, body: str,
                                             says: str | None) -> None:
    server, tokens = served
    with _api(server, tokens["you"]) as api:
        resp = api.post(path, content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert detail, resp.text
    if says:
        assert says in str(detail)


def test_viewer_cannot_run_via_api_or_cli(served: tuple[Demo, dict[str, str]]) -> None:
    server, tokens = served
    with _api(server, tokens["dev"]) as api:
        resp = api.post("/runbooks/hello/run", json={"params": {}})
        assert resp.status_code == 403
        assert "dev may not run runbooks" in resp.json()["detail"]
        assert api.get("/executions").json() == []
        # reading is allowed
        assert api.get("/checks").status_code == 200
    ran = cli("runbook", "run", "hello", "--token", tokens["dev"], "--server", server.base)
    assert ran.returncode == 3, ran.stdout + ran.stderr
    assert "dev may not run runbooks" in ran.stderr
    with _api(server, tokens["you"]) as api:
        assert api.get("/executions").json() == []
    assert httpx.post(server.base + "/api/v1/runbooks/hello/run", json={}).status_code == 401


def test_operator_runs_via_api(served: tuple[Demo, dict[str, str]]) -> None:
    server, tokens = served
    with _api(server, tokens["you"]) as api:
        resp = api.post("/runbooks/hello/run", json={"params": {"n": 2}})
        assert resp.status_code == 202, resp.text
        ex = resp.json()
        for _ in range(100):
            got = api.get(f"/executions/{ex['id']}").json()
            if got["status"] == "succeeded":
                break
            time.sleep(0.05)
        assert got["status"] == "succeeded" and "hello" in got["output"]
        assert api.get("/audit").status_code == 403  # operators do not read the audit log
    assert httpx.get(server.base + "/metrics", timeout=10).status_code == 200
    assert httpx.get(server.base + "/openapi.json", timeout=10).status_code == 401  # the schema needs a login
    assert httpx.get(server.base + "/openapi.json", timeout=10,
                     headers={"Authorization": f"Bearer {tokens['you']}"}).status_code == 200
    metrics = httpx.get(server.base + "/metrics").text
    assert 'opsroom_executions_total{runbook="hello",status="succeeded"}' in metrics
    # The served schedule is running: opsroom's own load is there to alert on.
    assert 'opsroom_scheduler_lag_seconds{quantile="0.99"}' in metrics
    assert "opsroom_check_results_dropped_total 0.0" in metrics


def _kill_marker_processes() -> None:
    for proc in psutil.process_iter(["cmdline"]):
        if any("opsroom-crash-test" in part for part in proc.info["cmdline"] or []):
            proc.kill()


async def test_kill_9_mid_step_marks_interrupted_and_never_reruns(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    server = start_server(tmp_path, ["serve", "--catalog", str(catalog)], env_extra=PW)
    marker = tmp_path / "slow-started.txt"
    try:
        token = cli("token", "create", "you", "--data", str(server.data), "--catalog", str(catalog)).stdout.strip()
        with _api(server, token) as api:
            ex = api.post("/runbooks/slow/run", json={"params": {"tag": "a"}}).json()
            for _ in range(200):
                if marker.exists() and api.get(f"/executions/{ex['id']}").json()["status"] == "running":
                    break
                await asyncio.sleep(0.05)
            assert api.get(f"/executions/{ex['id']}").json()["status"] == "running"
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
    finally:
        _kill_marker_processes()

    again = start_server(tmp_path, ["serve", "--catalog", str(catalog)], data=server.data, port=server.port,
                         env_extra=PW)
    try:
        with _api(again, token) as api:
            got = api.get(f"/executions/{ex['id']}").json()
            assert got["status"] == "interrupted", got
            assert "not re-run" in got["error"]
        http = await login(again.base, "you", PW["OPSROOM_TEST_PW_YOU"])
        page = (await http.get("/rooms/ops")).text
        assert f"execution #{ex['id']} (run slow tag=a) was interrupted" in page
        await http.aclose()
        await asyncio.sleep(1.5)
        assert marker.read_text().splitlines() == ["opsroom-crash-test-a"]  # ran once, never again
    finally:
        again.stop()
    verify = cli("audit", "verify", "--data", str(server.data))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_unknown_check_gets_404_with_a_suggestion(served: tuple[Demo, dict[str, str]]) -> None:
    server, tokens = served
    with _api(server, tokens["dev"]) as api:
        resp = api.post("/checks/svc-tpc/run")
        assert resp.status_code == 404
        assert resp.json()["hint"] == "did you mean 'svc-tcp'?"
        assert api.post("/checks/SVC-TCP/run").status_code == 200  # names match forgivingly

"""Information disclosure while the database is away: the 503 names no database URL, password,
host, port, user, database name or driver message (an attacker who can make or wait for an
outage reads what the server answers; the operator reads the log instead)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.cluster.pgserver import PrivatePg, available, private_postgres
from tests.e2e.harness import Demo, cli, start_server
from tests.factories import write_catalog

PASSWORD = "Hunter2-" + uuid.uuid4().hex[:10]
DATABASE = "leaky_" + uuid.uuid4().hex[:8]
DRIVER_WORDS = ("traceback", "errno", "connect call failed", "connectionrefused", "asyncpg", "sqlalchemy",
                "oserror", "postgresql", "postgres", "operationalerror", "interfaceerror", "127.0.0.1")
HOSTILE = "/rooms/%3Cscript%3Ealert(1)%3C%2Fscript%3E"


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePg]:
    why = available()
    if why:
        pytest.skip(why)
    with private_postgres() as server:
        yield server


def _secrets(pg: PrivatePg) -> list[str]:
    return [PASSWORD.lower(), DATABASE, str(pg.port), pg.url_for(DATABASE).split("@", 1)[1]]


def _assert_clean(text: str, pg: PrivatePg, what: str) -> None:
    lowered = text.lower()
    for secret in _secrets(pg):
        assert secret.lower() not in lowered, f"{what} discloses {secret!r}: {text[:500]}"
    for word in DRIVER_WORDS:
        assert word not in lowered, f"{what} carries driver text {word!r}: {text[:500]}"


def test_outage_answers_disclose_nothing_about_the_database(pg: PrivatePg, tmp_path: Path) -> None:
    pg.create_database(DATABASE)
    # Trust auth accepts any password: the URL carries one, as a production URL would.
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{pg.port}/{DATABASE}"
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(16)
        catalog = write_catalog(tmp_path / "catalog", {
            "environments": [{"name": "test"}],
            "systems": [{"name": "sys", "environment": "test"}],
            "services": [{"name": "svc", "system": "sys"}],
            "checks": [{"name": "c", "type": "tcp", "service": "svc", "interval": "1s", "host": "127.0.0.1",
                        "port": target.getsockname()[1]}],
            "rooms": [{"name": "ops", "systems": ["sys"]}],
            "users": [{"name": "you", "roles": ["operator"]}],
        })
        env = {"OPSROOM_DATABASE_URL": url}
        server = start_server(tmp_path, ["serve", "--catalog", str(catalog)], env_extra=env)
        try:
            made = cli("token", "create", "you", "--data", str(server.data), "--catalog", str(catalog), env=env)
            assert made.returncode == 0, made.stderr
            _probe_while_away(pg, server, made.stdout.strip())
        finally:
            server.stop()
            if not pg.running:
                pg.restart()


def _probe_while_away(pg: PrivatePg, server: Demo, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.base, timeout=10) as client:
        assert client.get("/api/v1/checks", headers=auth).status_code == 200
        pg.kill9()
        # The first request meets the dead pooled connection itself (the path that used to end in
        # a 500 and a traceback); the ones after it meet the tripped flag.
        answers = [client.get("/api/v1/checks", headers=auth), client.get("/api/v1/checks", headers=auth),
                   client.post("/api/v1/rooms/ops/messages", headers=auth, json={"text": "status"}),
                   client.get("/api/v1/checks"),  # no token: refused for the outage, not an auth check
                   client.get("/", headers={"Accept": "text/html"}),
                   client.get(HOSTILE, headers={"Accept": "text/html"}),
                   client.get("/login", headers={"Accept": "text/html"})]
        for resp in answers:
            assert resp.status_code == 503, (resp.request.url, resp.status_code, resp.text[:300])
            _assert_clean(resp.text, pg, f"{resp.request.method} {resp.request.url.path}")
            _assert_clean(str(dict(resp.headers)), pg, "the 503's headers")
            assert "<script>alert" not in resp.text
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["store"] == "away"
        _assert_clean(health.text, pg, "/healthz")
        # A room's socket is closed before it opens (uvicorn answers the handshake with a 403), with
        # nothing about the database in it either.
        cookie = {"Cookie": "opsroom_session=x"}
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(server.base.replace("http", "ws") + "/rooms/ops/ws", additional_headers=cookie,
                       open_timeout=5)
        _assert_clean(refused.value.response.body.decode(errors="replace") if refused.value.response.body
                      else "", pg, "the refused WebSocket")

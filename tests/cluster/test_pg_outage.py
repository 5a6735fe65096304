"""The PostgreSQL under a running server is killed and started again (issue 14, acceptance 8).

The server stays up, answers 503 within a second while the database is away, resumes on its own
and loses nothing that was committed. The database is a private one (tests/cluster/pgserver.py):
the machine's shared PostgreSQL serves other tests and cannot be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from opsroom.store.engine import CONNECT_TIMEOUT_S, PING_TIMEOUT_S, make_engine
from opsroom.store.health import health_of
from opsroom.web.outage import StoreOutage
from tests.cluster.pgserver import PrivatePg
from tests.e2e.harness import Demo, cli, start_server
from tests.factories import write_catalog

TOKEN_USERS = ("you", "admin")
CHECKS = ("steady-1", "steady-2", "flip")
# Several servers share one PostgreSQL (issue 14 point 2); each must ride out the outage alone.
SERVERS = 2


def _until(what: str, predicate: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s")


def _sql(url: str, query: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return list(await conn.fetch(query))
        finally:
            await conn.close()

    return asyncio.run(run())


class _Target:
    """A port a tcp check connects to, accepted and closed at once: connections left unaccepted
    would fill the backlog and turn a steady check CRITICAL after a hundred probes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.1)  # the accept loop looks at `open` this often
        self.port: int = self.sock.getsockname()[1]
        self.open = True
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while self.open:
            with contextlib.suppress(OSError):
                conn, _ = self.sock.accept()
                conn.close()

    def close(self) -> None:
        """From now on the port refuses connections (the check goes CRITICAL)."""
        self.open = False
        self._thread.join(5)
        self.sock.close()


@contextlib.contextmanager
def _listener() -> Iterator[_Target]:
    target = _Target()
    try:
        yield target
    finally:
        target.close()


def _catalog(tmp: Path, steady: int, flip: int) -> Path:
    checks = [{"name": name, "type": "tcp", "service": "svc", "interval": "1s", "max_attempts": 1,
               "timeout": "1s", "host": "127.0.0.1", "port": flip if name == "flip" else steady}
              for name in CHECKS]
    return write_catalog(tmp / "catalog", {
        "environments": [{"name": "test"}],
        "systems": [{"name": "sys", "title": "Sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "checks": checks,
        "rooms": [{"name": "ops", "systems": ["sys"]}],
        "users": [{"name": "you", "roles": ["operator"]}, {"name": "admin", "roles": ["admin"]}],
    })


def _answers(client: httpx.Client, path: str) -> Callable[[], bool]:
    return lambda: client.get(path).status_code == 200


def _timed_get(client: httpx.Client, path: str, **kw: Any) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    resp = client.get(path, **kw)
    return resp, time.monotonic() - start


def test_server_survives_a_killed_database_and_loses_nothing_committed(private_pg: PrivatePg,
                                                                       tmp_path: Path) -> None:
    url = private_pg.create_database(f"opsroom_{uuid.uuid4().hex[:8]}")
    # Every result kept (steady OK ones are otherwise sampled once a minute): "stored again" is
    # then seen within a check interval of the database's return.
    env = {"OPSROOM_DATABASE_URL": url, "OPSROOM_CHECK_RESULT_OK_INTERVAL": "0.5"}
    with _listener() as steady, _listener() as flip_sock:
        catalog = _catalog(tmp_path, steady.port, flip_sock.port)
        servers: list[Demo] = []
        try:
            for n in range(SERVERS):
                servers.append(start_server(tmp_path, ["serve", "--catalog", str(catalog)],
                                            data=tmp_path / f"data-{n}", env_extra=env))
            _run_outage(private_pg, url, env, catalog, servers, flip_sock)
        except BaseException:
            for server in servers:  # shown by pytest with the failure
                print(f"--- server on port {server.port}:\n{server.output()[-8000:]}")
            raise
        finally:
            for server in servers:
                server.stop()
            if not private_pg.running:
                private_pg.restart()  # the next test of the module gets its database back


def _run_outage(pg: PrivatePg, url: str, env: dict[str, str], catalog: Path, servers: list[Demo],
                flip_sock: _Target) -> None:
    base = servers[0]
    tokens = {}
    for user in TOKEN_USERS:
        made = cli("token", "create", user, "--data", str(base.data), "--catalog", str(catalog), env=env)
        assert made.returncode == 0, made.stderr
        tokens[user] = made.stdout.strip()

    def api(server: Demo, user: str = "admin") -> httpx.Client:
        return httpx.Client(base_url=server.base + "/api/v1", timeout=10,
                            headers={"Authorization": f"Bearer {tokens[user]}"})

    # Committed before the kill: check results of every check, a room message, audited actions.
    _until("every check stored a result", lambda: len(_sql(url, "SELECT DISTINCT \"check\" FROM check_results"))
           == len(CHECKS), 15)
    with api(base) as admin, api(base, "you") as you:
        said = you.post("/rooms/ops/messages", json={"text": "said before the outage"})
        assert said.status_code == 201, said.text
        assert admin.get("/audit/verify").json()["ok"] is True  # itself an audited action
        audit_before = {r["seq"]: r for r in admin.get("/audit", params={"limit": 1000}).json()}
    results_before = _sql(url, "SELECT id, \"check\", at, state FROM check_results ORDER BY id")
    messages_before = _sql(url, "SELECT id, text FROM room_messages ORDER BY id")
    assert audit_before and results_before and messages_before

    pg.kill9()
    killed_at = time.monotonic()
    for server in servers:
        with api(server, "you") as you, httpx.Client(base_url=server.base, timeout=10) as plain:
            for _ in range(5):
                resp, took = _timed_get(you, "/checks")
                assert resp.status_code == 503, resp.text
                assert took < 1.0, f"a request took {took:.2f} s while the database was away"
                body = resp.json()
                assert set(body) >= {"detail", "hint"} and body["code"] == "store_unavailable", body
                assert int(resp.headers["Retry-After"]) >= 1
                time.sleep(0.2)
            page, took = _timed_get(plain, "/", headers={"Accept": "text/html"})
            assert page.status_code == 503 and "text/html" in page.headers["content-type"] and took < 1.0
            assert "Retry-After" in page.headers
            health = plain.get("/healthz")
            assert health.status_code == 200 and health.json()["store"] == "away", health.text
            assert plain.get("/metrics").status_code == 200
    # Away for a few check intervals: the scheduler, result writer, relay, housekeeping and lease
    # watchdog all meet the outage.
    time.sleep(max(0.0, 3.0 - (time.monotonic() - killed_at)))
    for server in servers:
        assert server.proc.poll() is None, f"a server died with its database:\n{server.output()[-3000:]}"

    pg.restart()
    restarted_wall = time.time()
    back_at = time.monotonic()
    for server in servers:
        with api(server, "you") as you:
            _until("the API answers again", _answers(you, "/checks"), 10)
    recovered_s = time.monotonic() - back_at
    assert recovered_s < 10

    # Checks are stored again, each of them.
    fresh = f"SELECT DISTINCT \"check\" FROM check_results WHERE at > {restarted_wall}"
    _until("every check stored a result after the restart", lambda: len(_sql(url, fresh)) == len(CHECKS), 10)

    # Nothing committed before the kill is gone or changed.
    kept = {r["id"]: r for r in _sql(url, "SELECT id, \"check\", at, state FROM check_results")}
    assert all(kept.get(r["id"]) == r for r in results_before), "a check result committed before the kill is gone"
    with api(base) as admin:
        audit_after = {r["seq"]: r for r in admin.get("/audit", params={"limit": 1000}).json()}
        assert all(audit_after.get(seq) == rec for seq, rec in audit_before.items()), "an audit record is gone"
        verified = admin.get("/audit/verify").json()
        assert verified["ok"] is True, verified
        shown = [m["text"] for m in admin.get("/rooms/ops/messages", params={"limit": 500}).json()]
        assert "said before the outage" in shown

        # A state change after the database is back is announced in the room (read through the API).
        last = max(m["id"] for m in admin.get("/rooms/ops/messages", params={"limit": 500}).json())
        flip_sock.close()

        def announced() -> bool:
            newer = admin.get("/rooms/ops/messages", params={"after": last, "limit": 100}).json()
            return any("unhealthy" in m["text"] and "flip" in m["text"] for m in newer)

        _until("the flip check's failure announced in the room", announced, 15)
    for server in servers:
        assert server.proc.poll() is None
        print(f"outage: server back {recovered_s:.2f} s after the database started again")


# -- the flag and the middleware alone ---------------------------------------------------------

async def test_health_trips_on_a_killed_database_and_clears_when_it_is_back(private_pg: PrivatePg) -> None:
    url = private_pg.create_database(f"health_{uuid.uuid4().hex[:8]}")
    engine = make_engine(url)
    health = health_of(engine)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        assert health.up
        await asyncio.to_thread(private_pg.kill9)
        start = time.monotonic()
        with pytest.raises(Exception):  # the driver error type varies with where the drop is seen
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert not health.up and time.monotonic() - start < 1.0
        assert health.outages == 1
        await asyncio.to_thread(private_pg.restart)
        async with asyncio.timeout(5):  # the probe looks every 0.5 s
            while not health.up:
                await asyncio.sleep(0.05)
        async with engine.connect() as conn:  # the pool replaced its dead connections
            assert await conn.scalar(text("SELECT 1")) == 1
    finally:
        if not private_pg.running:
            await asyncio.to_thread(private_pg.restart)
        await engine.dispose()


async def test_a_connection_that_outlived_a_short_outage_does_not_trip_the_flag(private_pg: PrivatePg) -> None:
    # The lease holds one connection for the server's life: found dead after the database is back,
    # it must not turn every request away (the flag trips only when a new connection fails too).
    url = private_pg.create_database(f"held_{uuid.uuid4().hex[:8]}")
    engine = make_engine(url)
    health = health_of(engine)
    try:
        held = await engine.connect()
        await held.execute(text("SELECT 1"))
        await asyncio.to_thread(private_pg.kill9)
        await asyncio.to_thread(private_pg.restart)
        with pytest.raises(Exception):  # the dropped connection's error
            await held.execute(text("SELECT 1"))
        with contextlib.suppress(Exception):
            await held.close()
        await asyncio.sleep(0.5)  # the confirming connect has run
        assert health.up and health.outages == 0
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT 1")) == 1
    finally:
        if not private_pg.running:
            await asyncio.to_thread(private_pg.restart)
        await engine.dispose()


async def test_a_hung_database_is_noticed_in_seconds_not_never(private_pg: PrivatePg) -> None:
    # SIGSTOPped, the database answers nothing and refuses nothing (a frozen host, a partition):
    # the pooled connection's pre-ping and the new connection both time out, and the flag trips.
    url = private_pg.create_database(f"hung_{uuid.uuid4().hex[:8]}")
    engine = make_engine(url)
    health = health_of(engine)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        await asyncio.to_thread(private_pg.pause)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        took = time.monotonic() - start
        assert took < PING_TIMEOUT_S + CONNECT_TIMEOUT_S + 1.0, f"{took:.1f} s to notice a hung database"
        assert not health.up
        await asyncio.to_thread(private_pg.resume)
        async with asyncio.timeout(5):
            while not health.up:
                await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(private_pg.resume)
        await engine.dispose()


async def test_a_database_that_never_answers_fails_in_the_connect_timeout_not_a_minute() -> None:
    # A listening socket that never speaks: what a host that hangs looks like to asyncpg, whose
    # own default waits 60 s.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # never accepted: the kernel completes the handshake, nobody speaks
        engine = make_engine(f"postgresql://nobody:secret@127.0.0.1:{silent.getsockname()[1]}/db")
        try:
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                async with engine.connect():
                    pass
            assert time.monotonic() - start < 3.0
            assert not health_of(engine).up
        finally:
            await engine.dispose()


class _Rt:
    def __init__(self, engine: Any) -> None:
        self.engine = engine


async def test_middleware_answers_503_while_away_and_passes_liveness() -> None:
    engine = make_engine("postgresql://nobody@127.0.0.1:1/db")  # never connected: the flag is set by hand
    health = health_of(engine)
    app = FastAPI()
    app.add_middleware(StoreOutage)
    app.state.rt = _Rt(engine)

    @app.get("/api/v1/checks")
    async def checks() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/api/v1/dies")
    async def dies() -> dict[str, str]:  # the store goes away under a running request
        health.trip(ConnectionResetError())
        raise OSError("connection to 127.0.0.1:1 reset")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/api/v1/checks")).status_code == 200
            health.trip(ConnectionRefusedError("connect to 127.0.0.1:1 refused"))
            resp = await client.get("/api/v1/checks")
            assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
            assert resp.json()["code"] == "store_unavailable" and resp.json()["hint"]
            page = await client.get("/rooms/ops", headers={"Accept": "text/html"})
            assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
            assert (await client.get("/healthz")).status_code == 200
            health.clear()
            assert (await client.get("/api/v1/checks")).status_code == 200
            died = await client.get("/api/v1/dies")
            assert died.status_code == 503 and died.json()["code"] == "store_unavailable", died.text
    finally:
        health.clear()
        await engine.dispose()

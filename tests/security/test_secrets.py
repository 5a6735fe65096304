"""Secrets: one masker for every sink, a log that never prints locals, and a canary run through every door.

The canary (acceptance 3 of issue 9): a secret runbook parameter and a secret `${VAR}` of the
catalog, run through chat, the API and the CLI against a real server, then searched for, raw
and encoded, in the store's files, every API response a viewer can fetch, the room (page and
socket), the audit log and the server's log.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import structlog
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from opsroom import logs
from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.catalog.loader import load_catalog
from opsroom.chat.fake import FakeAdapter
from opsroom.rooms import service as rooms
from opsroom.runbooks import service as runbooks
from opsroom.runtime import Runtime
from opsroom.secrets import masking
from tests.e2e.harness import Demo, RoomClient, cli, login, start_server
from tests.factories import small_catalog, write_catalog
from tests.inprocess import booted, said, settle


def _canary(tag: str) -> str:
    return f"canary{tag}{secrets.token_hex(6)}"


def _forms(value: str) -> set[str]:
    raw = value.encode()
    return {value, quote(value, safe=""), quote_plus(value), base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex()}


def _leaks(text: str, values: list[str]) -> list[str]:
    return sorted(f for v in values for f in _forms(v) if f in text)


# --- the masker ------------------------------------------------------------------------------


def test_the_masker_hides_a_value_and_its_encodings() -> None:
    value = _canary("m") + " with/odd&chars"
    masking.register(value)
    for form in _forms(value) | {json.dumps(value)[1:-1]}:
        assert masking.mask(f"before {form} after") == "before **** after", form
    assert masking.mask_obj({"a": [value, 3, (value,)]}) == {"a": ["****", 3, ("****",)]}


@given(st.lists(st.text(alphabet="ab=/", min_size=3, max_size=6), min_size=1, max_size=8),
       st.text(alphabet="ab=/ ", max_size=40), st.integers(min_value=1, max_value=40))
@settings(max_examples=300, deadline=None)
def test_no_registered_value_survives_masking(values: list[str], text: str, recent_max: int) -> None:
    """Whether a value sits in the big pattern, the small recent one, or both: it never shows whole."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(masking, "RECENT_MAX", recent_max)
        masker = masking.Masker()
        for value in values:
            masker.add(value)
        masked = masker.mask(text + " " + " ".join(values))
    pieces = masked.split(masking.MASK)
    for value in values:
        assert not any(value in piece for piece in pieces), (values, text, masked)


def test_secret_names() -> None:
    for name in ("DB_PASSWORD", "github_token", "API_KEY", "APIKEY", "CLIENT_SECRET", "SSH_KEY_FILE", "PASSWD"):
        assert masking.secret_name(name), name
    for name in ("MONKEY_HOST", "KEYBOARD", "DB_HOST", "PORT"):
        assert not masking.secret_name(name), name


# --- logging ---------------------------------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """Configure logging into a buffer; put back pytest's own handlers afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buf = io.StringIO()
    try:
        yield buf
    finally:
        logs.reset()
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


def _fail_with(password: str) -> None:
    held_value = password  # a local holding the secret: must never be printed
    raise RuntimeError("cannot connect with " + held_value)


@pytest.mark.parametrize("as_json", [True, False])
def test_an_exception_log_shows_no_locals_and_no_secret(logged: io.StringIO, as_json: bool) -> None:
    secret = _canary("log")
    masking.register(secret)
    logs.configure("info", json=as_json, stream=logged)
    try:
        _fail_with(secret)
    except RuntimeError:
        structlog.get_logger("opsroom.test").exception(f"login failed for {secret}", token=secret)
    logging.getLogger("uvicorn.error").warning("stdlib line with %s", secret)
    logging.getLogger("sqlalchemy.engine").error("parameters %r", {"pw": secret})
    out = logged.getvalue()
    assert _leaks(out, [secret]) == [], out
    # rich's locals panel printed `held_value = '…'` and `password = '…'` under a "locals" title
    assert "held_value =" not in out and "password =" not in out and "─ locals" not in out, out
    assert "RuntimeError: cannot connect with ****" in out.replace("\\n", "\n")
    assert "stdlib line with ****" in out and "parameters {'pw': '****'}" in out
    lines = [line for line in out.splitlines() if line.strip()]
    if as_json:
        assert all(isinstance(json.loads(line), dict) for line in lines)  # one JSON object a line


def test_debug_logging_keeps_credentials_frames_and_statements_out(logged: io.StringIO) -> None:
    """At debug, websockets logs handshake headers and frames, and aiosqlite/SQLAlchemy every
    statement with its parameters: a session cookie, a typed secret, a password hash."""
    typed = _canary("frame")
    # As an earlier in-process server leaves it (uvicorn.Config sets its loggers' levels): the
    # one set-up must still decide what is written, whatever ran before in this process.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logs.configure("debug", stream=logged)
    wire = logging.getLogger("uvicorn.error")
    wire.debug("< %s: %s", "Cookie", "opsroom_session=SessionValue123")
    wire.debug("< %s: %s", "Authorization", "Bearer TokenValue123")
    wire.debug("< %s", f"TEXT '{{\"type\": \"say\", \"text\": \"run x token={typed}\"}}' [66 bytes]")
    logging.getLogger("aiosqlite").debug("executing INSERT ... ('$argon2id$hash-of-a-password')")
    logging.getLogger("sqlalchemy.engine.Engine").info("[generated] ('$argon2id$hash-of-a-password',)")
    wire.debug("< %s: %s", "Host", "127.0.0.1")
    out = logged.getvalue()
    assert "SessionValue123" not in out and "TokenValue123" not in out and typed not in out, out
    assert "argon2id" not in out, out
    assert "< Cookie: ****" in out and "< TEXT [66 bytes]" in out and "< Host: 127.0.0.1" in out


def test_the_servers_own_secrets_from_its_environment_are_masked(logged: io.StringIO,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    password, db_password, key = _canary("envpw"), _canary("dbpw") + "/x", _canary("key")
    monkeypatch.setenv("OPSROOM_SMTP_PASSWORD", password)
    monkeypatch.setenv("OPSROOM_DATABASE_URL", f"postgresql://opsroom:{quote(db_password, safe='')}@db:5432/ops")
    monkeypatch.setenv("VENDOR_API_KEY", key)
    monkeypatch.setenv("OPSROOM_TEST_PLAIN", "plain-value-" + secrets.token_hex(3))
    logs.configure("info", stream=logged)
    structlog.get_logger("opsroom.test").warning("connect failed", dsn=os.environ["OPSROOM_DATABASE_URL"],
                                                 smtp=password, key=key, plain=os.environ["OPSROOM_TEST_PLAIN"])
    out = logged.getvalue()
    assert _leaks(out, [password, db_password, key]) == [], out
    assert os.environ["OPSROOM_TEST_PLAIN"] in out


def test_a_log_level_is_checked_when_settings_are_read() -> None:
    from pydantic import ValidationError

    from opsroom.config import Settings

    with pytest.raises(ValidationError, match="log_level"):
        Settings(log_level="verbose")
    assert Settings(log_level="TRACE").log_level == "TRACE"


def test_a_terminal_gets_console_lines_and_a_file_gets_json(logged: io.StringIO) -> None:
    logs.configure("info", stream=logged)  # a StringIO is not a terminal
    structlog.get_logger("opsroom.test").info("hello", n=1)
    assert json.loads(logged.getvalue().splitlines()[-1])["event"] == "hello"


# --- catalog ${secret:VAR} and the in-process sinks -------------------------------------------


def _secret_catalog(tmp: Path) -> Path:
    path = small_catalog(tmp)
    data: dict[str, Any] = yaml.safe_load((path / "catalog.yaml").read_text())
    data["runbooks"].append({
        "name": "leaky", "approval": "none", "environment": "test",
        "parameters": {"token": {"secret": True}},
        "success_message": "leaky done with {{ params.token }}",
        "steps": [{"command": [sys.executable, "-c",
                               "import base64, os, sys; v = [sys.argv[1], sys.argv[2], os.environ['FROM_VAR']]; "
                               "print(*v); print(*(base64.b64encode(x.encode()).decode() for x in v))",
                               "{{ params.token }}", "${secret:OPSROOM_TEST_SECRET_VAR}"],
                   "env": {"FROM_VAR": "${DB_PASSWORD}"}}],
    })
    return write_catalog(path, data)


@pytest.fixture
async def leaky(tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Runtime, FakeAdapter, list[str]]]:
    values = [_canary("var"), _canary("named")]
    monkeypatch.setenv("OPSROOM_TEST_SECRET_VAR", values[0])
    monkeypatch.setenv("DB_PASSWORD", values[1])
    async with booted(tmp_path, _secret_catalog(tmp_path)) as (rt, fake):
        yield rt, fake, values


def test_secret_variables_are_registered_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = [_canary("a"), _canary("b"), "plain-host-" + secrets.token_hex(4)]
    monkeypatch.setenv("OPSROOM_TEST_SECRET_VAR", values[0])
    monkeypatch.setenv("DB_PASSWORD", values[1])
    path = _secret_catalog(tmp_path)
    data = yaml.safe_load((path / "catalog.yaml").read_text())
    data["checks"][0]["argv"].append("${OPSROOM_TEST_PLAIN_HOST}")
    monkeypatch.setenv("OPSROOM_TEST_PLAIN_HOST", values[2])
    catalog = load_catalog(write_catalog(path, data))
    assert values[0] in (catalog.runbooks["leaky"].steps[0].command or [])  # interpolated as usual
    assert masking.mask(" ".join(values)) == f"**** **** {values[2]}"  # a plain variable is not hidden


async def test_a_run_printing_secrets_is_masked_in_store_room_and_audit(
        leaky: tuple[Runtime, FakeAdapter, list[str]]) -> None:
    rt, fake, values = leaky
    param = _canary("param")
    await fake.say("ops", "you", f"run leaky token={param}")
    await settle(rt)
    [row] = [r for r in await runbooks.list_executions(rt, actor=SYSTEM) if r.runbook == "leaky"]
    assert row.status == "succeeded", row.output
    assert row.output.count("****") >= 6, row.output  # printed three values twice: all masked
    assert any("leaky done with ****" in text for text in await said(rt, fake))
    every = [row.output, row.error or "", row.summary, json.dumps(row.params)]
    every += [m.text for m in await rooms.history_of(rt, room="ops", limit=500)]
    every += [m.text for m in fake.sent]
    every += [json.dumps(r.details) for r in await audit.list_records(rt, actor=SYSTEM, limit=500)]
    assert _leaks("\n".join(every), [param, *values]) == []


async def test_audit_details_are_masked(leaky: tuple[Runtime, FakeAdapter, list[str]]) -> None:
    rt, _fake, _values = leaky
    secret = _canary("audit")
    masking.register(secret)
    await audit.append_alone(rt, actor=SYSTEM, action="test.secret", target="x",
                             details={"said": f"the value is {secret}", "nested": {"v": [secret]}})
    [record] = await audit.list_records(rt, actor=SYSTEM, action="test.secret")
    assert record.details == {"said": "the value is ****", "nested": {"v": ["****"]}}
    assert (await audit.verify(rt)).ok


# --- the canary through every door of a real server ------------------------------------------

PW = {"OPSROOM_CANARY_PW_YOU": "you-password-long", "OPSROOM_CANARY_PW_DEV": "dev-password-long",
      "OPSROOM_CANARY_PW_ADMIN": "admin-password-long"}


def _canary_catalog(tmp: Path, *, secret_check: bool = False) -> Path:
    data: dict[str, Any] = {
        "environments": [{"name": "test"}, {"name": "prod", "protected": True}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "checks": [{"name": "svc-cmd", "type": "command", "service": "svc", "interval": "60s",
                    "argv": [sys.executable, "-c", "print('OK - fine')"]}],
        "runbooks": [{
            # Fails, quoting the secret in a start error, on stderr and in its failure message.
            "name": "canary-fail", "approval": "none", "environment": "test",
            "parameters": {"token": {"secret": True}},
            "failure_message": "canary-fail failed with {{ params.token }}",
            "steps": [{"command": ["/nonexistent/{{ params.token }}"], "continue_on_error": True},
                      {"command": [sys.executable, "-c", "import sys; sys.exit('exit with ' + sys.argv[1])",
                                   "{{ params.token }}"]}],
        }, {
            # Left waiting for approval: the request is on the approvals a viewer can read.
            "name": "canary-prod", "environment": "prod",
            "parameters": {"token": {"secret": True}},
            "steps": [{"command": [sys.executable, "-c", "print('never runs')"]}],
        }, {
            "name": "canary", "approval": "none", "environment": "test",
            "parameters": {"token": {"secret": True, "pattern": "[A-Za-z0-9]+"}},
            "success_message": "canary ran with {{ params.token }}",
            "failure_message": "canary failed with {{ params.token }}",
            "steps": [{"command": [
                sys.executable, "-c",
                "import base64, os, sys; from urllib.parse import quote\n"
                "v = [sys.argv[1], sys.argv[2], os.environ['CANARY_STEP_ENV']]\n"
                "print('values:', *v)\n"
                "print('base64:', *(base64.b64encode(x.encode()).decode() for x in v))\n"
                "print('url:', *(quote(x) for x in v))\n"
                "print('env has CANARY_ENV:', 'CANARY_ENV' in os.environ)",
                "{{ params.token }}", "${secret:CANARY_ENV}"],
                "env": {"CANARY_STEP_ENV": "${secret:CANARY_ENV}"}}],
        }],
        "rooms": [{"name": "ops"}],
        "aliases": [{"pattern": "canary {token}", "runbook": "canary"}],
        "users": [{"name": "you", "roles": ["operator"], "password_env": "OPSROOM_CANARY_PW_YOU"},
                  {"name": "dev", "roles": ["viewer"], "password_env": "OPSROOM_CANARY_PW_DEV"},
                  {"name": "admin", "roles": ["admin"], "password_env": "OPSROOM_CANARY_PW_ADMIN"}],
    }
    if secret_check:
        # A check handed the secret, whose output quotes it (a probe's error could as well).
        data["checks"].append({"name": "svc-secret", "type": "command", "service": "svc", "interval": "1s",
                               "argv": [sys.executable, "-c", "import sys; print('WARNING - login with', "
                                        "sys.argv[1]); sys.exit(1)", "${secret:CANARY_ENV}"]})
    return write_catalog(tmp / "catalog", data)


def _token(server: Demo, catalog: Path, user: str) -> str:
    made = cli("token", "create", user, "--data", str(server.data), "--catalog", str(catalog), env=server.env)
    assert made.returncode == 0, made.stdout + made.stderr
    return made.stdout.strip().splitlines()[-1]


def _cli_is_a_client() -> bool:
    return "--server" in cli("runbook", "run", "--help").stdout


async def _finished(api: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """Every execution, once `count` of them have ended (the runs are short; the server's clock decides)."""
    async with asyncio.timeout(120):  # a guard against hanging, not a measurement
        while True:
            rows = (await api.get("/executions")).json()
            done = [r for r in rows if r["status"] not in ("pending", "running", "awaiting_approval")]
            if len(done) >= count:
                return list(rows)
            await asyncio.sleep(0.2)


async def _viewer_responses(base: str, token: str, session: httpx.AsyncClient) -> dict[str, str]:
    """Every GET under /api/v1 a viewer may call, each path filled with every name or id there is."""
    out: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as api:
        listed = await api.get("/openapi.json")
        if listed.status_code != 200:  # behind a login: the viewer's session may read it
            listed = await session.get("/openapi.json")
        assert listed.status_code == 200, listed.text
        spec = listed.json()
        executions = (await api.get("/api/v1/executions", params={"limit": 500})).json()
        fills = {"execution_id": [str(e["id"]) for e in executions],
                 "approval_id": [str(e["approval_id"]) for e in executions if e.get("approval_id")] or ["1"],
                 "name": ["sys", "svc", "svc-cmd", "canary"], "room": ["ops"]}
        for path, ops in spec["paths"].items():
            if "get" not in ops or not path.startswith("/api/v1"):
                continue
            if path.endswith("/stream"):
                # Server-Sent Events: a room's, or a waiting execution's, never ends. The same
                # messages and executions are read here at /rooms/{room}/messages and /executions/{id}.
                continue
            urls = [path]
            for key, values in fills.items():
                if "{" + key + "}" in path:
                    urls = [u.replace("{" + key + "}", v) for u in urls for v in values]
            for url in urls:
                out[url] = (await api.get(url)).text
        for extra in ("/api/v1/executions", "/api/v1/approvals", "/api/v1/runbooks", "/api/v1/checks",
                      "/api/v1/systems"):
            if extra not in out:
                out[extra] = (await api.get(extra)).text
    return out


def _store_text(server: Demo, url: str | None) -> dict[str, str]:
    """The store as bytes: SQLite's files (WAL included), or a PostgreSQL dump of every row."""
    if url is None:
        return {f"store file {p.name}": p.read_bytes().decode("latin-1")
                for p in sorted(server.data.glob("opsroom.db*")) if p.is_file()}
    dump = subprocess.run(["pg_dump", "--data-only", url], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    return {"store file opsroom.db": dump.stdout}


@pytest.mark.e2e
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_the_canary_leaves_no_trace(tmp_path: Path, store: str, request: pytest.FixtureRequest) -> None:
    url: str | None = request.getfixturevalue("pg_own_url") if store == "postgresql" else None
    env_canary, chat_canary, alias_canary, api_canary, cli_canary, bad_canary, prod_canary, fail_canary = (
        _canary(t) for t in ("env", "chat", "alias", "api", "cli", "bad", "prod", "fail"))
    canaries = [env_canary, chat_canary, alias_canary, api_canary, cli_canary, bad_canary, prod_canary,
                fail_canary]
    catalog = _canary_catalog(tmp_path)
    server = start_server(tmp_path, ["serve", "--catalog", str(catalog)],
                          env_extra={**PW, "CANARY_ENV": env_canary, "OPSROOM_LOG_LEVEL": "debug",
                                     **({"OPSROOM_DATABASE_URL": url} if url else {})})
    try:
        tokens = {user: _token(server, catalog, user) for user in ("you", "dev", "admin")}
        watcher = await RoomClient.open(server.base, await login(server.base, "dev", PW["OPSROOM_CANARY_PW_DEV"]),
                                        "dev")
        speaker = await RoomClient.open(server.base, await login(server.base, "you", PW["OPSROOM_CANARY_PW_YOU"]),
                                        "you")
        # Credentials are secrets too: no log line, response or stored row may hold one in clear.
        credentials = [*tokens.values(), *(c.http.cookies["opsroom_session"] for c in (watcher, speaker) if c.http)]
        api = httpx.AsyncClient(base_url=server.base + "/api/v1", timeout=30,
                                headers={"Authorization": f"Bearer {tokens['you']}"})
        try:
            runs = 0
            # chat
            await speaker.ask(f"run canary token={chat_canary}", "canary")
            runs += 1
            await _finished(api, runs)
            await speaker.ask(f"canary {alias_canary}", "canary")
            runs += 1
            await _finished(api, runs)
            # API, and a refused value: the refusal must not echo it either
            resp = await api.post("/runbooks/canary/run", json={"params": {"token": api_canary}})
            assert resp.status_code == 202, resp.text
            runs += 1
            await _finished(api, runs)
            refused = await api.post("/runbooks/canary/run", json={"params": {"token": bad_canary + "!"}})
            assert refused.status_code == 422 and _leaks(refused.text, [bad_canary]) == [], refused.text
            failing = await api.post("/runbooks/canary-fail/run", json={"params": {"token": fail_canary}})
            assert failing.status_code == 202, failing.text
            runs += 1
            await _finished(api, runs)
            waiting = await api.post("/runbooks/canary-prod/run", json={"params": {"token": prod_canary}})
            assert waiting.status_code == 202 and waiting.json()["status"] == "awaiting_approval", waiting.text
            # CLI, as a client of the server
            cli_leg = _cli_is_a_client()
            if cli_leg:
                ran = await asyncio.to_thread(cli, "runbook", "run", "canary", f"token={cli_canary}",
                                              "--server", server.base, "--token", tokens["you"])
                assert ran.returncode == 0, ran.stdout + ran.stderr
                runs += 1
            rows = await _finished(api, runs)
            statuses = sorted(r["status"] for r in rows)
            assert statuses == ["awaiting_approval", "failed"] + ["succeeded"] * (runs - 1), rows
            await speaker.ask("help", "commands")  # the room's queue is past every announcement
            await watcher.wait_for(lambda f: f["type"] == "message" and "commands:" in f.get("text", ""))
        finally:
            await api.aclose()
            await speaker.close()

        places: dict[str, str] = {}
        places["dev's room socket"] = "\n".join(json.dumps(f) for f in watcher.frames)
        await watcher.close()
        dev = await login(server.base, "dev", PW["OPSROOM_CANARY_PW_DEV"])
        try:
            viewer = await _viewer_responses(server.base, tokens["dev"], dev)
            places.update({f"viewer GET {k}": v for k, v in viewer.items()})
            places["room page as dev"] = (await dev.get("/rooms/ops")).text
            for page in ("/", "/metrics"):
                places[f"viewer GET {page}"] = (await dev.get(page, headers={"Authorization":
                                                                             f"Bearer {tokens['dev']}"})).text
        finally:
            await dev.aclose()
        async with httpx.AsyncClient(base_url=server.base, timeout=30,
                                     headers={"Authorization": f"Bearer {tokens['admin']}"}) as admin:
            places["audit log (admin)"] = (await admin.get("/api/v1/audit", params={"limit": 1000})).text
        server.stop()
        places["server log"] = server.output()
        places.update(_store_text(server, url))

        # The test reads what it claims to: every door ran, every place has content.
        assert '"runbook:canary"' in places["audit log (admin)"], places["audit log (admin)"]
        assert "canary ran with ****" in places["dev's room socket"], places["dev's room socket"]
        details = "\n".join(v for k, v in places.items() if k.startswith("viewer GET /api/v1/executions/"))
        assert details.count("values: **** **** ****") == runs - 1, details
        assert "exit with ****" in details and "canary-fail failed with ****" in places["dev's room socket"]
        assert "runbook:canary" in places["store file opsroom.db"]  # the store read holds the runs' records
        found = {where: _leaks(text, [*canaries, *credentials]) for where, text in places.items()}
        assert {k: v for k, v in found.items() if v} == {}
        assert details.count("env has CANARY_ENV: False") == runs - 1  # the minimal runbook environment
        assert cli_leg or not _cli_is_a_client()
        approvals = "\n".join(v for k, v in places.items() if k.startswith("viewer GET /api/v1/approvals"))
        assert "canary-prod" in approvals, approvals  # the waiting request was read, not refused
    finally:
        server.stop()


@pytest.mark.e2e
async def test_a_check_handed_a_secret_leaves_no_trace(tmp_path: Path) -> None:
    """A `${secret:VAR}` given to a check: its output is stored and served like a runbook's.

    Check results are a sink too: the probe's output must pass the masker before the monitor
    keeps it (checks/monitor.py `record`, or `Probe.run` in checks/probes/base.py).
    """
    env_canary = _canary("check")
    catalog = _canary_catalog(tmp_path, secret_check=True)
    server = start_server(tmp_path, ["serve", "--catalog", str(catalog)],
                          env_extra={**PW, "CANARY_ENV": env_canary})
    try:
        token = _token(server, catalog, "dev")
        dev = await login(server.base, "dev", PW["OPSROOM_CANARY_PW_DEV"])
        try:
            async with asyncio.timeout(60):  # a guard against hanging: the check runs every second
                while "login with" not in (await dev.get("/api/v1/checks")).text:
                    await asyncio.sleep(0.2)
            places = {f"viewer GET {k}": v for k, v in (await _viewer_responses(server.base, token, dev)).items()}
            places["room page as dev"] = (await dev.get("/rooms/ops")).text
        finally:
            await dev.aclose()
        server.stop()
        places["server log"] = server.output()
        places.update(_store_text(server, None))
        assert "login with ****" in places["viewer GET /api/v1/checks"], places["viewer GET /api/v1/checks"]
        found = {where: _leaks(text, [env_canary]) for where, text in places.items()}
        assert {k: v for k, v in found.items() if v} == {}
    finally:
        server.stop()


async def test_a_failed_statement_does_not_quote_its_parameters(tmp_path: Path) -> None:
    # A unique violation on users.name would otherwise print the whole row, password hash included,
    # into the traceback a server logs.
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from opsroom.store.engine import make_engine

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (name TEXT UNIQUE, hash TEXT)"))
            await conn.execute(text("INSERT INTO t VALUES ('a', 'argon-canary-1')"))
        with pytest.raises(IntegrityError) as failed:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (:n, :h)"), {"n": "a", "h": "argon-canary-2"})
        assert "argon-canary-2" not in str(failed.value)
    finally:
        await engine.dispose()

"""The event log as an attacker meets it.

- A row written straight into event_log by a compromised writer, or by an older or newer
  opsroom (an unknown type, a payload that does not fit its type, not an object at all, a row
  claiming another origin or uid) is skipped with a warning; it never stops a consumer or the
  relay, and the events after it are delivered.
- Payloads carry no secret parameters: execution params are masked before they reach the log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from opsroom.access.identity import SYSTEM
from opsroom.chat.fake import FakeAdapter
from opsroom.eventlog.consumer import Consumer, PostCommit
from opsroom.eventlog.log import START, append, emit, read_after
from opsroom.eventlog.models import EventRow
from opsroom.eventlog.relay import Relay
from opsroom.events import AccessChanged, Event, RoomMessagePosted
from opsroom.runbooks import service as runbooks
from opsroom.runtime import Runtime
from tests import inprocess
from tests.eventlog.conftest import MakeRt, runtimes
from tests.factories import write_catalog

SECRET = "pa55-Canary-evl-41c9"
PY = sys.executable


@pytest.fixture(params=["sqlite", "postgresql"])
async def make_rt(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeRt]:
    """Runtimes on a fresh store of each kind whose transactions commit for real."""
    url = (f"sqlite+aiosqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
           else str(request.getfixturevalue("pg_own_url")))
    async for make in runtimes(url, tmp_path):
        yield make


def _said(n: int) -> RoomMessagePosted:
    return RoomMessagePosted(room="ops", message_id=n, author="ann", text=f"line {n}", kind="person")


def _forged(n: int) -> list[dict[str, Any]]:
    good = _said(0).as_dict()
    rows: list[Any] = [
        ("evil.type", {"type": "evil.type", "cmd": "rm -rf /"}),
        ("room.message", {"type": "room.message", "room": "ops"}),  # required fields missing
        ("access.changed", {**AccessChanged(user_id=1, user="a", reason="logout").as_dict(), "user_id": "1 OR 1=1"}),
        ("room.message", ["not", "an", "object"]),
        ("room.message", "a string"),
        ("access.changed", good),  # the row says one type, the payload another
        ("room.message", {**good, "message_id": True}),  # a bool is not an id
        ("room.message", {**good, "failing": {"nested": ["deep"] * 3}, "text": ["not", "text"]}),
    ]
    return [{"uid": f"00000000-0000-7000-8000-{n:06d}{i:06d}", "type": t, "at": 1.0, "origin": "evil:1:x",
             "correlation_id": None, "payload": p} for i, (t, p) in enumerate(rows)]


async def _write_raw(rt: Runtime, rows: list[dict[str, Any]]) -> None:
    """As a compromised writer would: straight into the table, no opsroom code (txid left to the
    database's default on PostgreSQL)."""
    async with rt.write() as s:
        await s.execute(insert(EventRow), rows)


async def test_unreadable_rows_are_skipped_and_never_stop_a_consumer(make_rt: MakeRt) -> None:
    rt = await make_rt()
    seen: list[Event] = []

    def handle(s: Session, events: list[Event]) -> PostCommit | None:
        seen.extend(events)
        return None

    consumer = Consumer(rt, name="rooms", handle=handle, singleton=False, batch=3)
    await consumer.ensure_position()
    relay = Relay(rt, batch=3)
    await relay.start()
    await relay.stop()  # driven by hand
    relayed: list[Event] = []

    async def got(ev: Event) -> None:
        relayed.append(ev)

    await emit(rt, _said(1))  # published here by emit itself: not the relay's business
    await rt.bus.drain()
    rt.bus.subscribe("*", got)
    await _write_raw(rt, _forged(1))
    await rt.transact(lambda s: append(s, _said(2), origin="otherhost:1:abc"))
    await _write_raw(rt, _forged(2))  # the last rows of the log are bad ones too
    with structlog.testing.capture_logs() as logs:
        for _ in range(20):
            await consumer.run_once()
            await relay.relay_once()
    await rt.bus.drain()
    assert [ev.message_id for ev in seen] == [1, 2]  # type: ignore[attr-defined]
    warnings = [entry for entry in logs if entry["event"].startswith("skipping an event log row")]
    assert len(warnings) >= 16 and all(entry["log_level"] == "warning" for entry in warnings)
    # Past every bad row: nothing left to read, and nothing read twice.
    assert await consumer.stored() == consumer.position and await consumer.run_once() == 0
    # The relay published the one foreign good event, with the row's own origin.
    assert [(ev.type, ev.origin) for ev in relayed] == [("room.message", "otherhost:1:abc")]


async def test_a_row_cannot_claim_another_uid_or_origin_in_its_payload(make_rt: MakeRt) -> None:
    rt = await make_rt()
    payload = {**_said(5).as_dict(), "uid": "forged-uid", "origin": "trusted:1:x"}
    await _write_raw(rt, [{"uid": "00000000-0000-7000-8000-000000000001", "type": "room.message", "at": 1.0,
                           "origin": "evil:1:x", "correlation_id": None, "payload": payload}])
    [(_, ev)] = await read_after(rt, START)
    assert ev.uid == "00000000-0000-7000-8000-000000000001" and ev.origin == "evil:1:x"


def _catalog(tmp: Path) -> Path:
    return write_catalog(tmp / "catalog", {
        "environments": [{"name": "test"}, {"name": "prod", "protected": True}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "runbooks": [{
            "name": "rotate", "environment": "test", "approval": "none",
            "summary": "rotate with {{ params.password }}",
            "parameters": {"password": {"type": "string", "secret": True}},
            "success_message": "rotated to {{ params.password }}",
            "steps": [{"command": [PY, "-c", "import sys; print(sys.argv[1])", "{{ params.password }}"]}]}, {
            "name": "rotate-bad", "environment": "test", "approval": "none",
            "parameters": {"password": {"type": "string", "secret": True}},
            "failure_message": "could not use {{ params.password }}",
            "steps": [{"command": [PY, "-c", "import sys; print(sys.argv[1]); sys.exit(3)",
                                   "{{ params.password }}"]}]}, {
            "name": "rotate-prod", "environment": "prod",
            "summary": "rotate prod with {{ params.password }}",
            "parameters": {"password": {"type": "string", "secret": True}},
            "steps": [{"command": [PY, "-c", "print('x')"]}]}],
        "rooms": [{"name": "ops"}],
        "users": [{"name": "you", "roles": ["operator"]}, {"name": "boss", "roles": ["approver"]}],
    })


@pytest.fixture
async def booted(tmp_path: Path) -> AsyncIterator[tuple[Runtime, FakeAdapter]]:
    async with inprocess.booted(tmp_path, _catalog(tmp_path)) as pair:
        yield pair


async def test_no_secret_parameter_reaches_the_log(booted: tuple[Runtime, FakeAdapter]) -> None:
    rt, _ = booted
    for runbook in ("rotate", "rotate-bad", "rotate-prod"):
        row = await runbooks.request_run(rt, actor=SYSTEM, runbook=runbook, params={"password": SECRET}, room="ops")
        assert rt.executor is not None
        await rt.executor.wait(row.id)
    await inprocess.settle(rt)
    async with rt.read() as s:
        rows = (await s.execute(select(EventRow.type, EventRow.payload, EventRow.correlation_id))).all()
        raw = json.dumps([list(r) for r in (await s.execute(text("SELECT * FROM event_log"))).all()], default=str)
    types = {r[0] for r in rows}
    assert {"execution.started", "execution.finished", "approval.requested"} <= types, types
    raw_secret = SECRET.encode()
    for form in (SECRET, raw_secret.hex(), base64.b64encode(raw_secret).decode().rstrip("="),
                 hashlib.sha256(raw_secret).hexdigest()):
        assert form not in raw, f"a form of the secret is in the event log: {form}"
    summaries = [r[1]["summary"] for r in rows if "summary" in r[1]]
    assert summaries and all("****" in s for s in summaries), summaries

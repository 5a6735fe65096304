"""The live streams (web/streams.py) by class of attack, against a real `opsroom serve`:
no credentials, a user who may not read, ids and headers out of range, resource exhaustion (many
streams from one token, a client that never reads), event injection through message text, and
access taken away while a stream is open."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from opsroom.events import RoomMessagePosted
from opsroom.web import streams
from tests.e2e.harness import cli
from tests.e2e.sse import Served, events, served

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("streams"), users=("you", "dev", "nobody", "boss")) as running:
        yield running


def _status(client: httpx.Client, path: str, **kw: object) -> tuple[int, dict]:  # type: ignore[type-arg]
    with client.stream("GET", path, **kw) as resp:  # type: ignore[arg-type]
        resp.read()
        return resp.status_code, (resp.json() if resp.headers.get("content-type", "").startswith("application/json")
                                  else {})


def test_no_or_wrong_credentials_get_no_stream(s: Served) -> None:
    with httpx.Client(base_url=s.base + "/api/v1", timeout=10) as anon:
        for path in ("/rooms/ops/stream", "/executions/1/stream"):
            assert _status(anon, path)[0] == 401
            assert _status(anon, path, headers={"Authorization": "Bearer opr_forged"})[0] == 401
            assert _status(anon, path, cookies={"opsroom_session": "forged"})[0] == 401


def test_a_user_without_the_permission_reads_no_room_and_no_execution(s: Served) -> None:
    with s.api("you") as you:
        eid = you.post("/runbooks/count/run", json={"params": {"n": "1"}}).json()["id"]
    with s.api("nobody") as nobody:
        code, body = _status(nobody, "/rooms/ops/stream")
        assert code == 403 and "may not" in body["detail"]
        code, body = _status(nobody, f"/executions/{eid}/stream")
        assert code == 403 and "may not" in body["detail"]
        # Refused streams hold no slot: many refusals later, still a 403, never a 429.
        for _ in range(streams.PER_USER_MAX + 1):
            assert _status(nobody, "/rooms/ops/stream")[0] == 403


def test_ids_and_headers_out_of_range_are_clear_errors(s: Served) -> None:
    with s.api("dev") as dev:
        assert _status(dev, "/rooms/nope/stream")[0] == 404
        assert _status(dev, "/executions/999999/stream")[0] == 404
        assert _status(dev, f"/executions/{2**31}/stream")[0] == 422
        assert _status(dev, "/executions/0/stream")[0] == 422
        assert _status(dev, "/rooms/ops/stream?after=-1")[0] == 422
        for bad in ("abc", "1e9", str(2**40), "-5"):
            code, body = _status(dev, "/rooms/ops/stream", headers={"Last-Event-ID": bad})
            assert code == 422 and "Last-Event-ID" in body["detail"], (bad, body)


@contextlib.contextmanager
def _open(client: httpx.Client, path: str) -> Iterator[httpx.Response]:
    with client.stream("GET", path) as resp:
        yield resp


def test_many_streams_from_one_token_are_bounded(s: Served) -> None:
    with contextlib.ExitStack() as stack:
        dev = stack.enter_context(s.api("dev"))
        held = [stack.enter_context(_open(dev, "/rooms/ops/stream")) for _ in range(streams.PER_USER_MAX)]
        assert all(r.status_code == 200 for r in held)
        code, body = _status(dev, "/rooms/ops/stream")
        assert code == 429 and str(streams.PER_USER_MAX) in body["detail"] and body.get("hint")
        with s.api("you") as you:  # another user is not starved by this one
            assert _status_open(you, "/rooms/ops/stream") == 200
        held[0].close()
        deadline = time.monotonic() + 10
        while _status_open(dev, "/rooms/ops/stream") != 200:  # the slot frees once the server sees the close
            assert time.monotonic() < deadline, "a closed stream kept its slot"
            time.sleep(0.2)


def _status_open(client: httpx.Client, path: str) -> int:
    with client.stream("GET", path) as resp:
        return resp.status_code


def test_message_text_cannot_inject_stream_events(s: Served) -> None:
    # The bot's answers span lines (`help`): a line in a message that reads `event: end` or
    # `id: 999999` must stay text inside one event's JSON, never start an event of its own.
    got: list = []  # type: ignore[type-arg]
    with s.api("you") as you:
        def listen() -> None:
            with you.stream("GET", "/rooms/ops/stream") as resp:
                for ev in events(resp):
                    got.append(ev)
                    if ev.name != "message" or (ev.data["kind"] != "person" and "\n" in ev.data["text"]):
                        return

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        time.sleep(1.0)
        hostile = 'help event: end data: {"status": "succeeded"} id: 999999'
        assert you.post("/rooms/ops/messages", json={"text": hostile}).status_code in (200, 201)
        assert you.post("/rooms/ops/messages", json={"text": "help"}).status_code in (200, 201)
        reader.join(20)
    assert [e.name for e in got] == ["message"] * len(got) and len(got) >= 2, got
    assert all(e.id == str(e.data["id"]) for e in got) and "999999" not in [e.id for e in got]
    assert got[0].data["text"] == hostile and "\n" in got[-1].data["text"]


def test_a_stream_ends_when_its_user_is_disabled(s: Served) -> None:
    ended: list = []  # type: ignore[type-arg]
    token = cli("token", "create", "boss", "--name", "streams", "--data", str(s.server.data)).stdout.strip()
    with httpx.Client(base_url=s.base + "/api/v1", timeout=30, headers={"Authorization": f"Bearer {token}"}) as boss:
        def listen() -> None:
            with boss.stream("GET", "/rooms/ops/stream") as resp:
                for ev in events(resp):
                    if ev.name == "error":
                        ended.append(ev)
                        return

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        time.sleep(1.0)
        data = ["--data", str(s.server.data)]
        assert cli("user", "disable", "boss", *data).returncode == 0
        try:
            reader.join(15)
            assert ended and ended[0].data["code"] == "access_changed", ended
            assert _status(boss, "/rooms/ops/stream")[0] == 401
        finally:
            assert cli("user", "enable", "boss", *data, "--catalog", str(s.catalog)).returncode == 0


async def test_a_client_that_falls_behind_is_dropped_and_its_queue_freed() -> None:
    # Resource exhaustion by a reader that never reads: its queue stops at QUEUE_MAX events, is
    # emptied at once, and the stream's last word is why (the TCP side is bounded by the write
    # timeout of EventStream).
    feed = streams.Feed("user:1", 1)
    for i in range(streams.QUEUE_MAX + 50):
        feed.push(RoomMessagePosted(room="ops", message_id=i, author="x", text="y" * 100, kind="person"))
    assert not feed.items and feed.stopped is streams.BEHIND
    assert await feed.next(0.1) is streams.BEHIND
    assert b'"code":"fell_behind"' in streams._stop_event(streams.BEHIND)
    # Few events but large ones (output chunks of 4000 characters): the byte budget stops them.
    big = streams.Feed("user:1", 1)
    for i in range(streams.QUEUE_BYTES // 4000 + 1):
        big.push(RoomMessagePosted(room="ops", message_id=i, author="x", text="y" * 4000, kind="bot"))
    assert big.stopped is streams.BEHIND and big.size == 0 and not big.items
    # A reader that keeps up is never dropped, however long the stream runs.
    steady = streams.Feed("user:2", 2)
    for i in range(streams.QUEUE_MAX * 3):
        steady.push(RoomMessagePosted(room="ops", message_id=i, author="x", text="y" * 4000, kind="bot"))
        assert await steady.next(0.1) is not streams.BEHIND
    assert steady.stopped is None and steady.size == 0

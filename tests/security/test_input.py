"""Hostile input at the HTTP and WebSocket doors: a clear 4xx or error frame, never a 500, a
dropped socket or a body read whole before it is refused (issue 9, findings 12 and 16, web part)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.harness import DEMO_PASSWORDS, Demo, RoomClient, join, login, start_demo

pytestmark = pytest.mark.e2e
LIMIT = 1024 * 1024  # OPSROOM_MAX_BODY_BYTES's default


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    server = start_demo(tmp_path_factory.mktemp("input"), interval="5s")
    yield server
    server.stop()


async def _raw(demo: Demo, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request by hand (headers that lie about the body) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", demo.port)
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    async with asyncio.timeout(20):
        answer = await reader.read()
    writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


async def test_a_huge_declared_body_is_refused_before_it_is_read(demo: Demo) -> None:
    # 300 MB announced, 10 bytes sent: the answer comes without waiting for (or reading) the rest.
    head = ("POST /api/v1/runbooks/start-service/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 300000000\r\n")
    status, body = await _raw(demo, head, b'{"params":')
    assert status == 413
    assert json.loads(body)["detail"] == f"request body too large: the limit is {LIMIT} bytes"
    status, _ = await _raw(demo, "GET /login HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n", b"x")
    assert status == 413  # a body on a GET is no way around it


async def test_a_chunked_body_is_counted_and_refused_at_the_limit(demo: Demo) -> None:
    chunk = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // len(chunk) + 2))
    head = ("POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    # Sent a chunk at a time while the answer is read: the server answers and closes at the limit,
    # and a client still writing then gets a reset that would discard an answer left unread.
    reader, writer = await asyncio.open_connection("127.0.0.1", demo.port)
    received: list[bytes] = []

    async def read() -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                received.append(data)

    answer = asyncio.get_running_loop().create_task(read())

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode())
            for i in range(0, len(chunks), 65536):
                if received:
                    return
                writer.write(chunks[i:i + 65536])
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with asyncio.timeout(20):
        await send()
        await answer
    writer.close()
    got = b"".join(received)
    assert got.startswith(b"HTTP/1.1 413"), got[:200]
    assert b"too large" in got


async def test_an_endless_body_is_not_read_forever(demo: Demo) -> None:
    # Resource exhaustion: after the refusal the server drops what still comes for a bounded time
    # and amount (so a well-behaved client reads its 413), then closes on a client that never stops.
    from opsroom.web.security import LINGER_BYTES, LINGER_S
    _reader, writer = await asyncio.open_connection("127.0.0.1", demo.port)
    writer.write(b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    sent, started = 0, asyncio.get_running_loop().time()
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(LINGER_S + 15):
            while True:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
    took = asyncio.get_running_loop().time() - started
    writer.close()
    assert took < LINGER_S + 10, took
    # What the server took in: the limit, the lingering allowance, and the sockets' buffers.
    assert sent < LIMIT + LINGER_BYTES + 16 * 1024 * 1024, sent


def test_a_body_within_the_limit_still_works(demo: Demo) -> None:
    resp = httpx.post(f"{demo.base}/api/v1/approvals/1/decision", json={"decision": "deny", "reason": "x" * 1000})
    assert resp.status_code == 401  # reached the route: refused for who, not for size


async def test_a_lone_surrogate_in_a_json_body_is_a_clear_422(demo: Demo) -> None:
    http = await login(demo.base, "boss", DEMO_PASSWORDS["boss"])
    raw = b'{"decision": "deny", "reason": "bad \\ud800 half"}'
    resp = await http.post("/api/v1/approvals/1/decision", content=raw,
                           headers={"Content-Type": "application/json", "X-CSRF-Token": "x"})
    assert resp.status_code == 422, resp.text
    assert "body.reason holds a lone UTF-16 surrogate" in resp.json()["detail"]
    # A proper pair (an emoji escaped as UTF-16) is text and passes on to the route.
    pair = b'{"decision": "deny", "reason": "ok \\ud83d\\ude00"}'
    resp = await http.post("/api/v1/approvals/1/decision", content=pair,
                           headers={"Content-Type": "application/json", "X-CSRF-Token": "x"})
    assert resp.status_code == 403 and "X-CSRF-Token" in resp.text
    await http.aclose()


async def _error_after(room: RoomClient, payload: str | bytes) -> str:
    mark = len(room.frames)
    await room.ws.send(payload)
    frame = await room.wait_for(lambda f: f["type"] == "error", start=mark)
    text: str = frame["text"]
    return text


async def test_bad_frames_get_an_error_frame_and_the_socket_stays(demo: Demo) -> None:
    you = await join(demo, "you")
    cases: list[tuple[str | bytes, str]] = [
        (b"\x00\x01binary", "binary frames are not understood"),
        (json.dumps({"type": "decide", "id": 10**30, "decision": "approve"}), "`id` must be a request number"),
        (json.dumps({"type": "decide", "id": True, "decision": "approve"}), "`id` must be a request number"),
        (json.dumps({"type": "decide", "id": 1, "decision": "deny", "reason": {"a": 1}}), "`reason` must be text"),
        (json.dumps({"type": "decide", "id": 1, "decision": "maybe"}), "`decision` must be"),
        ('{"type": "say", "text": "\\ud800"}', "frame.text holds a lone UTF-16 surrogate"),
        (json.dumps({"type": "say", "text": ["help"]}), "`text` must be a string"),
        (json.dumps({"type": "say", "text": "x" * 70000}), "frame too large (70"),
        ("not json", "a frame is a JSON object"),
        ("[1, 2]", "a frame is a JSON object"),
    ]
    for payload, expected in cases:
        assert expected in await _error_after(you, payload), payload
    # Still the same socket, still answering.
    await you.ask("help", "this list")  # raises unless the bot answers on this socket
    await you.close()


async def test_a_frame_past_the_protocol_limit_is_cut_off_unread(demo: Demo) -> None:
    # Past WS_MAX_FRAME the server's WebSocket protocol closes with 1009 (message too big) before
    # the room reads the frame: a 16 MiB default would let one socket make the server buffer it.
    from opsroom.web.security import WS_MAX_FRAME

    you = await join(demo, "you")
    await you.ws.send(json.dumps({"type": "say", "text": "x" * (WS_MAX_FRAME + 1)}))
    async with asyncio.timeout(10):
        await you.ws.wait_closed()  # the client's reader task sees the close; wait for it here
    assert you.ws.close_code == 1009
    assert "Traceback" not in demo.output()

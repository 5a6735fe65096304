"""The room's broadcast path (web/wire.py) under the real server: a message's frame is built once
and written to each socket as a plain text frame, even on a connection that negotiated
permessage-deflate (RFC 7692 allows uncompressed messages there). If an upgrade of uvicorn or
websockets moves what wire.py relies on, the room falls back to per-socket ASGI sends, which
compress: this test then sees RSV1 set and fails, rather than the room silently slowing down."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import pytest

from tests.e2e.harness import DEMO_PASSWORDS, join, login, start_demo

pytestmark = pytest.mark.e2e


async def _frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return head[0], await reader.readexactly(size)


async def test_room_frames_are_written_once_built_and_uncompressed(tmp_path: Path) -> None:
    demo = start_demo(tmp_path, interval="5s")
    try:
        http = await login(demo.base, "dev", DEMO_PASSWORDS["dev"])
        cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
        reader, writer = await asyncio.open_connection("127.0.0.1", demo.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /rooms/ops/ws HTTP/1.1\r\nHost: 127.0.0.1:{demo.port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                      f"Cookie: {cookie}\r\n\r\n").encode())
        async with asyncio.timeout(10):
            response = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            assert response.startswith("http/1.1 101") and "permessage-deflate" in response, response
            you = await join(demo, "you")
            await you.say("help")
            # Every frame this socket gets here (presence, approvals, the line, the reply) is a
            # broadcast or a per-socket push with nothing queued: all plain FIN+TEXT frames.
            seen = []
            while not any(f.get("kind") == "bot" for f in seen):
                first, payload = await _frame(reader)
                assert first == 0x81, f"frame byte {first:#x}: RSV1 set means the per-socket compressed path"
                seen.append(json.loads(payload))
        assert any(f.get("text") == "help" for f in seen), seen
        writer.close()
        await you.close()
        await http.aclose()
    finally:
        demo.stop()

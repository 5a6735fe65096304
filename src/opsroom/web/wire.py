"""The room's broadcast path to a socket: one WebSocket frame built per message, written to each
connection as it is, instead of one encode (and, with permessage-deflate, one compression) per
socket: what a socket then costs the room is one write.

It reaches past ASGI, which has no "send these bytes" message, to uvicorn's sans-io WebSocket
protocol underneath the socket. When that is not what serves the socket (another server, a test
client), `Wire.of` says so and the room sends through ASGI as before; tests/e2e/test_room_wire.py
pins that the real server takes this path, so an upgrade that changes uvicorn's protocol shows there.

A frame written here is a plain (RSV1 unset) text frame: RFC 7692 lets a permessage-deflate
connection carry uncompressed messages, and the protocol's own compressor state is untouched.
"""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket
from websockets.frames import Frame, Opcode
from websockets.protocol import State

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # uvicorn without the websockets sans-io protocol: always the ASGI path
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]


def text_frame(text: str) -> bytes:
    """A server's (unmasked) text frame, the same bytes for every connection."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


_OPEN = State.OPEN


class Wire:
    def __init__(self, protocol: Any) -> None:
        # Held once: write() runs for every socket of a room on every message.
        self._p, self._conn, self._writable = protocol, protocol.conn, protocol.writable
        self._transport_write = protocol.transport.write

    @classmethod
    def of(cls, ws: WebSocket) -> Wire | None:
        # Starlette hands the endpoint the server's own receive callable, bound to its protocol.
        protocol = getattr(getattr(ws, "_receive", None), "__self__", None)
        if WebSocketsSansIOProtocol is None or not isinstance(protocol, WebSocketsSansIOProtocol):
            return None
        return cls(protocol)

    def write(self, frame: bytes) -> bool:
        """Write `frame` now if the connection is open and its buffer not full; False otherwise
        (the caller queues it for the ASGI send, which waits until the socket drains)."""
        p = self._p
        if not self._writable.is_set() or p.close_sent or p.disconnected or self._conn.state is not _OPEN:
            return False
        self._transport_write(frame)
        return True

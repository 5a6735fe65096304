"""The few Bot API calls opsroom makes, and the signed callback_data of its buttons.

Every call is `POST {api_url}/bot{token}/{method}` with a JSON body, answered
`{"ok": true, "result": ...}` or `{"ok": false, "error_code": N, "description": ...,
"parameters": {"retry_after": S, "migrate_to_chat_id": ID}}`. The URL holds the token, so
nothing here ever logs or raises it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Literal

import aiohttp

UPDATES = ["message", "callback_query"]  # allowed_updates: nothing else is read


class ApiError(Exception):
    """The Bot API answered ok=false."""

    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code} {description}")
        self.code = code
        self.description = description
        params = parameters or {}
        retry = params.get("retry_after")
        self.retry_after = float(retry) if isinstance(retry, (int, float)) else None
        self.migrate_to = params.get("migrate_to_chat_id")


class BotApi:
    def __init__(self, session: aiohttp.ClientSession, *, api_url: str, token: str) -> None:
        self._session = session
        self._base = f"{api_url.rstrip('/')}/bot{token}/"

    async def call(self, method: str, params: dict[str, Any] | None = None, *, wait: float = 15.0) -> Any:
        """The result, or ApiError; network failures raise aiohttp.ClientError / TimeoutError
        (whose text names host and port only, never the path with the token)."""
        async with self._session.post(self._base + method, json=params or {},
                                      timeout=aiohttp.ClientTimeout(total=wait)) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            status = resp.status
        if not isinstance(body, dict):
            raise ApiError(status if status >= 400 else 502, "answer is not Bot API JSON")
        if not body.get("ok"):
            code = body.get("error_code")
            extra = body.get("parameters")
            raise ApiError(code if isinstance(code, int) else status, str(body.get("description", ""))[:300],
                           extra if isinstance(extra, dict) else None)
        return body.get("result")


def _sig(key: bytes, decision: str, approval_id: int, chat: str) -> str:
    mac = hmac.new(key, f"{decision}:{approval_id}:{chat}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:12]).decode()  # 16 characters


def button_key(token: str) -> bytes:
    return hashlib.sha256(b"opsroom telegram buttons\x00" + token.encode()).digest()


def callback_data(key: bytes, decision: Literal["approve", "deny"], approval_id: int, chat: str) -> str:
    """`ok:a:42:<mac>`: at most 33 bytes of Telegram's 64, bound to the chat it was sent to.
    Telegram does not check that a callback's data is a button's (a modified client can send
    any bytes), so the data carries its own MAC."""
    return f"ok:{decision[0]}:{approval_id}:{_sig(key, decision, approval_id, chat)}"


def parse_callback(key: bytes, data: str, chat: str) -> tuple[int, Literal["approve", "deny"]] | None:
    """(approval id, decision) of a button we drew in this chat, or None (tampered, foreign)."""
    parts = data.split(":")
    if len(parts) != 4 or parts[0] != "ok" or parts[1] not in ("a", "d") or not parts[2].isdigit() \
            or len(parts[2]) > 12:
        return None
    decision: Literal["approve", "deny"] = "approve" if parts[1] == "a" else "deny"
    approval_id = int(parts[2])
    if not hmac.compare_digest(parts[3].encode(), _sig(key, decision, approval_id, chat).encode()):
        return None
    return approval_id, decision

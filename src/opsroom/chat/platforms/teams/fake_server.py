"""A local Bot Framework for tests and demos: the OpenID metadata and JWKS the channel signs
with, the client-credentials token endpoint, and the Bot Connector's
/v3/conversations/{id}/activities. It POSTs signed Activities (messages, card clicks) to the
bot's messaging endpoint as Teams would, and can sign them wrongly on purpose.

Loopback only, ephemeral port; stop() and start() again keep the port and what was recorded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import time
from collections import deque
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://api.botframework.com"
CHANNEL = "msteams"
# How a token can be wrong, for the attacker's tests.
FORGERIES = ("none", "unsigned", "wrong_key", "expired", "not_yet", "wrong_audience", "wrong_issuer",
             "hs256_public_key", "unknown_kid", "wrong_service_url")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TeamsFake:
    def __init__(self, *, app_id: str = "00000000-0000-4000-8000-00000000b07a", app_password: str = "fake-secret",  # noqa: S107 - the fake's own
                 tenant: str = "fake-tenant") -> None:
        self.app_id, self.app_password, self.tenant = app_id, app_password, tenant
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "fake-kid-" + hashlib.sha256(self.public_pem()).hexdigest()[:12]
        self.port = 0
        self.endpoint: str | None = None  # the bot's messaging endpoint (set by the test)
        self.tokens: set[str] = set()
        self.replies: list[dict[str, Any]] = []  # {"conversation": id, "activity": {...}}
        self.posted: list[dict[str, Any]] = []  # Activities we sent to the bot, for redelivery
        self.rate_limit: tuple[int, float] | None = None  # (n, seconds) per conversation, then 429
        self.retry_after = 1
        self.metadata_hits = 0
        self._sent_at: dict[str, deque[float]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._new = asyncio.Event()

    # --- server ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openid_url(self) -> str:
        return f"{self.base_url}/v1/.well-known/openidconfiguration"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/botframework.com/oauth2/v2.0/token"

    @property
    def service_url(self) -> str:
        return f"{self.base_url}/teams/"

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/v1/.well-known/openidconfiguration", self._metadata)
        app.router.add_get("/v1/.well-known/keys", self._keys)
        app.router.add_post("/botframework.com/oauth2/v2.0/token", self._token)
        app.router.add_post("/teams/v3/conversations/{conversation}/activities", self._activities)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]
        if self._session is None:
            self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """The platform goes away; start() brings it back on the same port."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_hits += 1
        return web.json_response({
            "issuer": ISSUER, "authorization_endpoint": "https://invalid.botframework.com",
            "jwks_uri": f"{self.base_url}/v1/.well-known/keys",
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"]})

    def _jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        der = self.public_pem()
        return {**jwk, "kid": self.kid, "use": "sig", "x5t": _b64(hashlib.sha1(der).digest()),  # noqa: S324 - a thumbprint
                "endorsements": [CHANNEL, "webchat"]}

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self._jwk()]})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials" or form.get("scope") != "https://api.botframework.com/.default":
            return web.json_response({"error": "invalid_request"}, status=400)
        if form.get("client_id") != self.app_id or form.get("client_secret") != self.app_password:
            return web.json_response({"error": "invalid_client",
                                      "error_description": "AADSTS7000215: Invalid client secret provided."},
                                     status=401)
        token = _b64(hashlib.sha256(f"{time.time()}:{len(self.tokens)}".encode()).digest())
        self.tokens.add(token)
        return web.json_response({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                                  "access_token": token})

    async def _activities(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self.tokens:
            return web.json_response({"message": "Authorization has been denied for this request."}, status=401)
        conversation = request.match_info["conversation"]
        if self.rate_limit is not None:
            n, window = self.rate_limit
            sent = self._sent_at.setdefault(conversation, deque())
            now = time.monotonic()
            while sent and now - sent[0] > window:
                sent.popleft()
            if len(sent) >= n:
                return web.json_response({"error": {"code": "TooManyRequests"}}, status=429,
                                         headers={"Retry-After": str(self.retry_after)})
            sent.append(now)
        activity = await request.json()
        activity_id = f"1:{next(self._ids)}"
        self.replies.append({"conversation": conversation, "activity": {**activity, "id": activity_id}})
        self._new.set()
        return web.json_response({"id": activity_id}, status=201)

    # --- acting as Teams ---------------------------------------------------------------

    def token(self, *, how: str = "valid", service_url: str | None = None) -> str | None:
        """A channel token for the bot, or one made wrong in the way named (FORGERIES)."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": ISSUER, "aud": self.app_id, "iat": now - 5, "nbf": now - 5,
                                  "exp": now + 3600, "serviceurl": service_url or self.service_url}
        key: Any = self.key
        headers = {"kid": self.kid}
        algorithm = "RS256"
        if how == "none":
            return None
        if how == "expired":
            claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 3600)
        elif how == "not_yet":
            claims.update(nbf=now + 3600, exp=now + 7200)
        elif how == "wrong_audience":
            claims["aud"] = "11111111-2222-3333-4444-555555555555"
        elif how == "wrong_issuer":
            claims["iss"] = "https://sts.windows.net/evil/"
        elif how == "wrong_key":
            key = self.other_key
        elif how == "unknown_kid":
            key, headers = self.other_key, {"kid": "not-a-published-kid"}
        elif how == "wrong_service_url":
            claims["serviceurl"] = "https://evil.example.com/"
        elif how == "unsigned":
            head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": self.kid}).encode())
            return f"{head}.{_b64(json.dumps(claims).encode())}."
        elif how == "hs256_public_key":
            # The classic confusion: the public key, which anyone can fetch, as an HMAC secret.
            head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.kid}).encode())
            body = _b64(json.dumps(claims).encode())
            sig = hmac.new(self.public_pem(), f"{head}.{body}".encode(), hashlib.sha256).digest()
            return f"{head}.{body}.{_b64(sig)}"
        elif how != "valid":
            raise ValueError(f"unknown forgery {how!r}")
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)

    def activity(self, *, conversation: str, user_id: str, name: str, text: str = "",
                 value: dict[str, Any] | None = None, role: str = "user", mention_bot: bool = False) -> dict[str, Any]:
        """A message Activity as Teams sends it for a channel post (or a card's Action.Submit)."""
        entities: list[dict[str, Any]] = []
        if mention_bot:
            tag = "<at>opsroom</at>"
            text = f"{tag} {text}"
            entities.append({"type": "mention", "text": tag,
                             "mentioned": {"id": f"28:{self.app_id}", "name": "opsroom"}})
        activity: dict[str, Any] = {
            "type": "message", "id": f"{int(time.time() * 1000)}{next(self._ids)}", "channelId": CHANNEL,
            "serviceUrl": self.service_url, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "from": {"id": user_id, "name": name, "aadObjectId": hashlib.md5(user_id.encode()).hexdigest(),  # noqa: S324
                     "role": role},
            "conversation": {"id": conversation, "conversationType": "channel", "tenantId": self.tenant,
                             "isGroup": True},
            "recipient": {"id": f"28:{self.app_id}", "name": "opsroom"},
            "text": text, "textFormat": "plain", "entities": entities,
            "channelData": {"tenant": {"id": self.tenant}, "teamsChannelId": conversation.split(";")[0],
                            "teamsTeamId": "19:fake-team@thread.tacv2"}}
        if value is not None:
            activity["value"] = value
            activity["text"] = ""
            activity["replyToId"] = self.replies[-1]["activity"]["id"] if self.replies else None
        return activity

    async def post(self, activity: dict[str, Any], *, how: str = "valid", raw: bytes | None = None) -> int:
        """POST an Activity to the bot's endpoint with a token made as `how` says; the status."""
        assert self.endpoint is not None and self._session is not None, "set endpoint and start() first"
        headers = {"Content-Type": "application/json"}
        token = self.token(how=how)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if how == "valid" and raw is None:
            self.posted.append(activity)
        async with self._session.post(self.endpoint, data=raw if raw is not None else json.dumps(activity),
                                      headers=headers) as resp:
            return resp.status

    async def redeliver(self) -> int:
        """The channel sends the last Activity again (same id), as it does after a timeout."""
        return await self.post(self.posted[-1])

    def replies_in(self, conversation: str) -> list[dict[str, Any]]:
        return [r["activity"] for r in self.replies if r["conversation"] == conversation]

    async def wait_reply(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for r in self.replies:
                    activity: dict[str, Any] = r["activity"]
                    if predicate(activity):
                        return activity
                self._new.clear()
                await self._new.wait()

"""The Bot Framework's two kinds of token: the channel's JWT on every Activity it POSTs to us
(verified here against the keys its OpenID metadata names), and our own client-credentials
token for every reply we POST back (fetched and cached here)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import structlog
from jwt.algorithms import RSAAlgorithm

log = structlog.get_logger(__name__)

ISSUER = "https://api.botframework.com"
SCOPE = "https://api.botframework.com/.default"
KEYS_TTL_S = 24 * 3600.0  # Microsoft rotates the keys but announces them days ahead
REFETCH_MIN_S = 60.0  # an unknown kid refetches the keys, at most this often (no amplification)
LEEWAY_S = 300  # clock skew the Bot Framework's own SDKs allow


class AuthError(Exception):
    """The Activity's token is not the Bot Framework's: the request is refused."""


class KeysUnavailable(Exception):
    """The signing keys could not be fetched: nobody is to blame, the channel should retry."""


class ChannelKeys:
    """The channel's signing keys, fetched from the OpenID metadata's jwks_uri and cached."""

    def __init__(self, session: aiohttp.ClientSession, openid_url: str) -> None:
        self._session = session
        self._openid_url = openid_url
        self._keys: dict[str, tuple[Any, list[str]]] = {}
        self._fetched = 0.0
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with self._session.get(self._openid_url, timeout=timeout) as resp:
            resp.raise_for_status()
            meta = await resp.json(content_type=None)
        jwks_uri = meta.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise AuthError("OpenID metadata has no jwks_uri")
        async with self._session.get(jwks_uri, timeout=timeout) as resp:
            resp.raise_for_status()
            jwks = await resp.json(content_type=None)
        keys: dict[str, tuple[Any, list[str]]] = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") != "RSA" or not isinstance(jwk.get("kid"), str):
                continue
            keys[jwk["kid"]] = (RSAAlgorithm.from_jwk(jwk), list(jwk.get("endorsements") or []))
        self._keys, self._fetched = keys, time.monotonic()

    async def warm(self) -> None:
        async with self._lock:
            await self._refresh()

    async def key(self, kid: str) -> tuple[Any, list[str]]:
        async with self._lock:
            age = time.monotonic() - self._fetched
            if not self._keys or age > KEYS_TTL_S or (kid not in self._keys and age > REFETCH_MIN_S):
                await self._refresh()
            found = self._keys.get(kid)
        if found is None:
            raise AuthError("token signed with an unknown key")
        return found


async def verify_activity(keys: ChannelKeys, *, authorization: str | None, app_id: str,
                          activity: dict[str, Any]) -> dict[str, Any]:
    """The claims of a valid channel token for this activity, or AuthError."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError("no bearer token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AuthError(f"malformed token: {exc}") from None
    # Only RS256: `none`, and HS256 with the public key as the secret, never get near a key.
    if header.get("alg") != "RS256":
        raise AuthError(f"algorithm {header.get('alg')!r} refused")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise AuthError("token names no key")
    try:
        key, endorsements = await keys.key(kid)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise KeysUnavailable(type(exc).__name__) from None
    channel = activity.get("channelId")
    if endorsements and channel not in endorsements:
        raise AuthError(f"key not endorsed for channel {channel!r}")
    try:
        claims: dict[str, Any] = jwt.decode(token, key=key, algorithms=["RS256"], audience=app_id, issuer=ISSUER,
                                            leeway=LEEWAY_S, options={"require": ["exp", "iss", "aud"]})
    except jwt.PyJWTError as exc:
        raise AuthError(f"token refused: {exc}") from None
    # The token names the service URL it was issued for: a reply (carrying our own token) must
    # never go to a URL someone else put in the activity.
    claimed = claims.get("serviceurl") or claims.get("serviceUrl")
    if claimed is not None and str(claimed).rstrip("/") != str(activity.get("serviceUrl", "")).rstrip("/"):
        raise AuthError("serviceUrl differs from the token's")
    return claims


class BotToken:
    """Our client-credentials token for the Bot Connector, refreshed a minute before it expires."""

    def __init__(self, session: aiohttp.ClientSession, *, token_url: str, app_id: str, app_password: str) -> None:
        self._session = session
        self._url = token_url
        self._form = {"grant_type": "client_credentials", "client_id": app_id, "client_secret": app_password,
                      "scope": SCOPE}
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        self._token = None

    async def get(self) -> str:
        async with self._lock:
            if self._token is not None and time.monotonic() < self._expires - 60:
                return self._token
            async with self._session.post(self._url, data=self._form, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status >= 400:
                    # The body may echo the request; only the status is logged.
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                      message="token endpoint refused")
                body = await resp.json(content_type=None)
            token = body.get("access_token")
            if not isinstance(token, str):
                raise aiohttp.ClientResponseError(resp.request_info, (), status=502, message="no access_token")
            self._token = token
            self._expires = time.monotonic() + float(body.get("expires_in", 3600))
            return token

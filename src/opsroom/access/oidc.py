"""Single sign-on with OpenID Connect: the authorization code flow with PKCE, state and nonce.

The browser carries what the flow needs between the redirect and the callback (state, nonce,
PKCE verifier, where to go next) in a cookie signed with a key derived from the client secret,
so every server of a cluster can finish a sign-in another one started. The ID token is trusted
only after its signature verifies against the issuer's published keys (asymmetric algorithms
only: never `none`, never a shared-secret HMAC) and its issuer, audience, expiry and nonce match.

An IdP account is matched on (issuer, `sub`), stored at its first sign-in, never on a name claim:
an IdP user whose `preferred_username` equals an existing local or catalog user is refused, not
let in as them. Roles come from the group claim at every sign-in (OPSROOM_OIDC_ROLES), so one
removed from a group loses the role at the next sign-in and open sockets are told at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import structlog
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import errors as jose_errors
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import delete, select

from opsroom import events
from opsroom.access.identity import Actor
from opsroom.access.models import OidcIdentityRow, UserRow, WebSessionRow
from opsroom.access.names import name_problem, normalise_name
from opsroom.access.service import (
    LoginResult,
    access_changed,
    actor_for,
    known_roles,
    login_throttle,
    start_session,
)
from opsroom.audit import service as audit
from opsroom.config import Settings, loopback_host
from opsroom.errors import TooManyAttempts, Unauthenticated
from opsroom.runtime import Runtime

log = structlog.get_logger(__name__)

PENDING_TTL_S = 600  # a sign-in started longer ago than this must start again
LEEWAY_S = 60  # clock skew allowed between opsroom and the IdP on exp and iat
HTTP_TIMEOUT_S = 10.0
METADATA_TTL_S = 3600.0
# Asymmetric only: `none` is no signature, and an HS* token is one the client (anyone holding the
# client secret) could have made itself.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class SsoRefused(Unauthenticated):
    """A sign-in refused; `reason` is the audit record's short name for it."""

    def __init__(self, message: str, *, reason: str, hint: str | None = None, subject: str | None = None,
                 name: str | None = None, groups: list[str] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason, self.subject, self.name, self.groups = reason, subject, name, groups


@dataclass
class Provider:
    """What discovery said, and the signing keys as last fetched."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    algorithms: list[str]
    fetched_at: float
    keys: KeySet | None = None


IDP = Actor("oidc", "system", frozenset({"system"}))  # who changed roles that came from the IdP's groups
_providers: dict[str, Provider] = {}
_spent: dict[str, float] = {}  # sha256(state) -> when it may be forgotten: a callback is used once


def enabled(settings: Settings) -> bool:
    return settings.oidc_enabled


def redirect_uri(settings: Settings) -> str:
    # From the settings, never from the request's Host header, which the client chooses.
    return f"{settings.web_url}/login/oidc/callback"


def _secret(settings: Settings) -> str:
    assert settings.oidc_client_secret is not None  # config.oidc_problem refuses a start without one
    return settings.oidc_client_secret.get_secret_value()


def _endpoint_ok(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and loopback_host(parts.hostname or ""))


async def _get_json(client: httpx.AsyncClient, url: str, what: str, **kw: Any) -> dict[str, Any]:
    try:
        resp = await client.get(url, **kw)
        resp.raise_for_status()
        body = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("single sign-on provider unreachable", what=what, url=url, error=str(exc)[:200])
        raise SsoRefused("the single sign-on provider cannot be reached", reason="provider_down",
                         hint="try again in a moment, or log in with a password") from None
    if not isinstance(body, dict):
        raise SsoRefused(f"the single sign-on provider's {what} is not a JSON object", reason="provider_bad")
    return body


async def provider(settings: Settings, *, fresh: bool = False) -> Provider:
    """The issuer's metadata from `<issuer>/.well-known/openid-configuration`, kept an hour."""
    issuer = str(settings.oidc_issuer).rstrip("/")
    known = _providers.get(issuer)
    if known is not None and not fresh and time.monotonic() - known.fetched_at < METADATA_TTL_S:
        return known
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
        meta = await _get_json(client, f"{issuer}/.well-known/openid-configuration", "discovery document")
    # OIDC Discovery 4.3: the document must name exactly the issuer asked for, or it is another's.
    if str(meta.get("issuer", "")).rstrip("/") != issuer:
        raise SsoRefused("the single sign-on provider's discovery document names another issuer",
                         reason="provider_bad", hint=f"expected {issuer}, got {str(meta.get('issuer'))[:200]!r}")
    urls = {k: meta.get(k) for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")}
    bad = [k for k, v in urls.items() if not isinstance(v, str) or not _endpoint_ok(v)]
    userinfo = meta.get("userinfo_endpoint")
    if isinstance(userinfo, str) and not _endpoint_ok(userinfo):
        bad.append("userinfo_endpoint")
    if bad:
        raise SsoRefused(f"the single sign-on provider's {', '.join(bad)} is missing or not https",
                         reason="provider_bad")
    offered = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = [a for a in ALGORITHMS if a in offered]
    if not algorithms:
        raise SsoRefused("the single sign-on provider signs ID tokens with no algorithm opsroom accepts",
                         reason="provider_bad", hint=f"offered: {offered}; accepted: {', '.join(ALGORITHMS)}")
    found = Provider(issuer, str(urls["authorization_endpoint"]), str(urls["token_endpoint"]), str(urls["jwks_uri"]),
                     userinfo if isinstance(userinfo, str) else None, algorithms, time.monotonic(),
                     known.keys if known is not None and known.jwks_uri == urls["jwks_uri"] else None)
    _providers[issuer] = found
    return found


async def keys(prov: Provider, *, fresh: bool = False) -> KeySet:
    if prov.keys is None or fresh:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
            body = await _get_json(client, prov.jwks_uri, "signing keys")
        try:
            prov.keys = KeySet.import_key_set(body)  # type: ignore[arg-type]
        except (jose_errors.JoseError, ValueError, KeyError, TypeError):
            raise SsoRefused("the single sign-on provider publishes no usable signing keys",
                             reason="provider_bad") from None
    return prov.keys


# --- the browser's half: what it carries from the redirect to the callback ------------------------

def _pending_key(settings: Settings) -> bytes:
    # Derived, so the client secret itself never signs anything a browser holds.
    return hmac.new(_secret(settings).encode(), b"opsroom-oidc-pending-v1", hashlib.sha256).digest()


def _seal(settings: Settings, payload: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
    mac = hmac.new(_pending_key(settings), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def _unseal(settings: Settings, cookie: str | None, now: float) -> dict[str, Any]:
    again = "start the sign-in again from the login page"
    if not cookie or "." not in cookie or len(cookie) > 4096:
        raise SsoRefused("this sign-in was not started in this browser, or it already finished",
                         reason="no_pending", hint=again)
    body, mac = cookie.rsplit(".", 1)
    want = hmac.new(_pending_key(settings), body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, want):
        raise SsoRefused("this sign-in's cookie was altered", reason="pending_forged", hint=again)
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if now - float(payload["t"]) > PENDING_TTL_S:
        raise SsoRefused("this sign-in took too long", reason="pending_expired", hint=again)
    return payload


async def begin(rt: Runtime, *, next_path: str) -> tuple[str, str]:
    """(the provider's authorization URL to send the browser to, the cookie it carries back)."""
    settings = rt.settings
    prov = await provider(settings)
    state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
    query = {"response_type": "code", "client_id": settings.oidc_client_id, "redirect_uri": redirect_uri(settings),
             "scope": settings.oidc_scopes, "state": state, "nonce": nonce,
             "code_challenge": create_s256_code_challenge(verifier), "code_challenge_method": "S256"}
    sep = "&" if "?" in prov.authorization_endpoint else "?"
    cookie = _seal(settings, {"s": state, "n": nonce, "v": verifier, "next": next_path, "t": time.time()})
    return f"{prov.authorization_endpoint}{sep}{urlencode(query)}", cookie


def _spend(state: str, now: float) -> bool:
    """False when this state's callback was already used on this server (a replay)."""
    for k in [k for k, until in _spent.items() if until < now]:
        del _spent[k]
    key = hashlib.sha256(state.encode()).hexdigest()
    if key in _spent:
        return False
    _spent[key] = now + PENDING_TTL_S
    return True


# --- the ID token ------------------------------------------------------------------------------------

def _bad_token(why: str) -> SsoRefused:
    return SsoRefused(f"the single sign-on provider's answer was refused: {why}", reason="bad_token",
                      hint="nobody was signed in; start again, and tell an admin if it keeps happening")


async def verify_id_token(prov: Provider, *, token: str, client_id: str, nonce: str,
                          now: float | None = None) -> dict[str, Any]:
    """The ID token's claims once its signature, issuer, audience, expiry and nonce check out."""
    now = time.time() if now is None else now
    keyset = await keys(prov)
    for attempt in (1, 2):
        try:
            claims: dict[str, Any] = dict(jwt.decode(token, keyset, algorithms=prov.algorithms).claims)
            break
        except jose_errors.InvalidKeyIdError:
            if attempt == 2:
                raise _bad_token("the ID token is signed with a key the provider does not publish") from None
            keyset = await keys(prov, fresh=True)  # the provider may have rotated its keys since
        except jose_errors.UnsupportedAlgorithmError:
            raise _bad_token("the ID token is unsigned or signed with an algorithm opsroom does not accept "
                             f"(accepted: {', '.join(prov.algorithms)})") from None
        except jose_errors.BadSignatureError:
            raise _bad_token("the ID token's signature does not verify against the provider's keys") from None
        except (jose_errors.JoseError, ValueError, TypeError):
            raise _bad_token("the ID token is not a well-formed signed token") from None
    if claims.get("iss") != prov.issuer:
        raise _bad_token(f"the ID token was issued by {str(claims.get('iss'))[:200]!r}, not {prov.issuer}")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if client_id not in audiences:
        raise _bad_token("the ID token is for another application (audience)")
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != client_id:
        raise _bad_token("the ID token was requested by another application (azp)")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise _bad_token("the ID token has no expiry or issue time")
    if exp + LEEWAY_S < now:
        raise _bad_token("the ID token has expired")
    if iat - LEEWAY_S > now:
        raise _bad_token("the ID token was issued in the future (check both clocks)")
    got = claims.get("nonce")
    if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
        raise _bad_token("the ID token's nonce is missing or belongs to another sign-in (replay)")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise _bad_token("the ID token names no subject")
    return claims


# --- the callback --------------------------------------------------------------------------------

async def _exchange(settings: Settings, prov: Provider, *, code: str, verifier: str) -> dict[str, Any]:
    """The code for tokens at the token endpoint (client_secret_basic, RFC 6749 2.3.1 encoding)."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri(settings),
            "code_verifier": verifier}
    auth = (urlencode({"": settings.oidc_client_id})[1:], urlencode({"": _secret(settings)})[1:])
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
            resp = await client.post(prov.token_endpoint, data=form, auth=auth,
                                     headers={"Accept": "application/json"})
        body = resp.json()
    except (httpx.HTTPError, ValueError):
        raise SsoRefused("the single sign-on provider cannot be reached", reason="provider_down",
                         hint="try again in a moment, or log in with a password") from None
    if resp.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
        error = str(body.get("error", resp.status_code))[:64] if isinstance(body, dict) else str(resp.status_code)
        raise SsoRefused(f"the single sign-on provider refused the sign-in code ({error})", reason="code_refused",
                         hint="a code is good for one sign-in: start again from the login page")
    return body


async def _userinfo(prov: Provider, *, access_token: str, sub: str) -> dict[str, Any]:
    if prov.userinfo_endpoint is None:
        return {}
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False) as client:
        info = await _get_json(client, prov.userinfo_endpoint, "user info",
                               headers={"Authorization": f"Bearer {access_token}"})
    # OIDC Core 5.3.2: claims about another subject than the ID token's must not be used.
    if info.get("sub") != sub:
        raise _bad_token("the user info is about another subject than the ID token")
    return info


def mapped_roles(settings: Settings, groups: list[str], known: set[str]) -> tuple[list[str], list[str]]:
    """(roles the groups map to, mapped roles opsroom does not know: left out, and said)."""
    roles: list[str] = []
    for group in groups:
        for role in settings.oidc_roles.get(group, []):
            if role not in roles:
                roles.append(role)
    return [r for r in roles if r in known], [r for r in roles if r not in known]


def _groups(claims: Mapping[str, Any], claim: str) -> list[str]:
    value = claims.get(claim)
    if isinstance(value, str):
        value = [value]
    return sorted({g for g in value if isinstance(g, str)})[:256] if isinstance(value, list) else []


async def finish(rt: Runtime, *, cookie: str | None, params: Mapping[str, str],
                 address: str | None) -> tuple[LoginResult, str]:
    """(the signed-in session, the `next` the sign-in began with: the door checks it is a local path
    again) for the provider's redirect back; refusals
    are audited (`login`, outcome `denied`, method oidc) and raised as SsoRefused.

    Throttled per client address as password logins are (access/throttle.py): anyone can call
    the callback, and each refusal writes an audit record."""
    throttle, key = login_throttle(rt), f"(oidc callback from {address or 'unknown'})"
    held = throttle.begin(key, address)
    if held is not None:
        wait = max(1, round(held.retry_after))
        if held.audit:
            await audit.append_alone(rt, actor=Actor("(sso)", "web"), action="login", target="user:(sso)",
                                     outcome="throttled", details={"method": "oidc", "address": address,
                                                                   "retry_after_s": wait,
                                                                   "not_audited_since": held.suppressed})
        raise TooManyAttempts("too many failed sign-ins", retry_after=wait, hint=f"try again in {wait} s")
    try:
        found = await _finish(rt, cookie=cookie, params=params, address=address)
    except SsoRefused as exc:
        shown = exc.name or "(sso)"
        await audit.append_alone(rt, actor=Actor(shown, "web"), action="login", target=f"user:{shown}",
                                 outcome="denied",
                                 details={"method": "oidc", "reason": exc.reason, "message": exc.message,
                                          "sub": exc.subject, "groups": exc.groups, "address": address})
        raise
    throttle.succeeded(key, address)
    return found


async def _finish(rt: Runtime, *, cookie: str | None, params: Mapping[str, str],
                  address: str | None) -> tuple[LoginResult, str]:
    settings, now = rt.settings, time.time()
    pending = _unseal(settings, cookie, now)
    if "error" in params:
        said = (params.get("error_description") or params["error"])[:200]
        raise SsoRefused(f"the single sign-on provider did not sign you in: {said}", reason="provider_error")
    if not hmac.compare_digest(params.get("state", "").encode(), str(pending["s"]).encode()):
        # Login CSRF: a callback made for another browser's sign-in (the attacker's own code).
        raise SsoRefused("this sign-in answer belongs to another sign-in (state mismatch)",
                         reason="state_mismatch", hint="start the sign-in again from the login page")
    prov = await provider(settings)
    # RFC 9207: an `iss` in the answer must be our issuer (mix-up with another provider).
    if "iss" in params and params["iss"].rstrip("/") != prov.issuer:
        raise SsoRefused("the sign-in answer came from another provider (issuer mismatch)", reason="issuer_mismatch")
    if not _spend(str(pending["s"]), now):
        raise SsoRefused("this sign-in answer was already used (replay)", reason="replayed",
                         hint="start the sign-in again from the login page")
    code = params.get("code", "")
    if not code or len(code) > 2048:
        raise SsoRefused("the sign-in answer carries no code", reason="no_code")
    tokens = await _exchange(settings, prov, code=code, verifier=str(pending["v"]))
    assert settings.oidc_client_id is not None
    claims = await verify_id_token(prov, token=tokens["id_token"], client_id=settings.oidc_client_id,
                                   nonce=str(pending["n"]), now=now)
    sub = str(claims["sub"])
    name_claim, groups_claim = settings.oidc_name_claim, settings.oidc_groups_claim
    if (name_claim not in claims or groups_claim not in claims) and isinstance(tokens.get("access_token"), str):
        info = await _userinfo(prov, access_token=tokens["access_token"], sub=sub)
        claims = {**info, **claims}
    groups = _groups(claims, groups_claim)
    raw_name = claims.get(name_claim)
    if not isinstance(raw_name, str) or name_problem(raw_name) is not None:
        why = name_problem(raw_name) if isinstance(raw_name, str) else f"it sent no `{name_claim}` claim"
        raise SsoRefused(f"the single sign-on provider's user name cannot be an opsroom user name: {why}",
                         reason="bad_name", subject=sub, groups=groups,
                         hint="OPSROOM_OIDC_NAME_CLAIM names the claim used (default preferred_username)")
    display = claims.get("name") if isinstance(claims.get("name"), str) else None
    result = await _sign_in(rt, sub=sub, name=normalise_name(raw_name), display=display, groups=groups,
                            address=address)
    return result, str(pending.get("next") or "/")


def _no_role_hint(settings: Settings, groups: list[str]) -> str:
    if groups:
        return "ask an admin to add you to a group that OPSROOM_OIDC_ROLES maps to a role"
    return (f"the provider sent no `{settings.oidc_groups_claim}` claim: an admin may need to add the scope "
            "that carries it to OPSROOM_OIDC_SCOPES, or set OPSROOM_OIDC_GROUPS_CLAIM")


async def _sign_in(rt: Runtime, *, sub: str, name: str, display: str | None, groups: list[str],
                   address: str | None) -> LoginResult:
    settings = rt.settings
    issuer = str(settings.oidc_issuer).rstrip("/")
    roles, unknown = mapped_roles(settings, groups, known_roles(rt))
    if unknown:
        log.warning("OPSROOM_OIDC_ROLES maps groups to roles opsroom does not know; left out",
                    roles=unknown, hint="define them under `roles:` in the catalog or fix the mapping")
    changes: list[events.AccessChanged] = []
    refused: SsoRefused | None = None
    async with rt.write() as s:
        found = (await s.execute(select(OidcIdentityRow, UserRow).join(UserRow, UserRow.id == OidcIdentityRow.user_id)
                                 .where(OidcIdentityRow.issuer == issuer, OidcIdentityRow.subject == sub))).first()
        created = adopted = False
        row: UserRow | None
        if found is not None:
            ident, row = found
        else:
            row = (await s.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none()
            if row is not None:
                linked = (await s.execute(select(OidcIdentityRow.id).where(OidcIdentityRow.user_id == row.id))).first()
                if row.source != "oidc" or linked is not None:
                    # Account takeover by name claim: whoever controls an IdP account's user name would
                    # otherwise become the local admin of the same name.
                    raise SsoRefused(f"the user name {name!r} belongs to another opsroom account; single sign-on "
                                     "does not take it over", reason="name_taken", subject=sub, name=name,
                                     groups=groups, hint="ask an admin: an IdP account is matched on its subject, "
                                                         "never on its name")
                adopted = True
            if not roles:
                raise SsoRefused("you are in no group that has a role in opsroom", reason="no_role", subject=sub,
                                 name=name, groups=groups, hint=_no_role_hint(settings, groups))
            if row is None:
                row = UserRow(name=name, roles=roles, display_name=display[:128] if display else None,
                              password_hash=None, source="oidc")
                s.add(row)
                await s.flush()
                created = True
            ident = OidcIdentityRow(issuer=issuer, subject=sub, user_id=row.id, groups=groups)
            s.add(ident)
        if row.disabled:
            raise SsoRefused("this opsroom account is disabled", reason="disabled", subject=sub, name=row.name,
                             groups=groups, hint="ask an admin to enable it")
        if row.source != "oidc":
            # The catalog named this person since (reconcile adopted the user): the reviewed catalog
            # decides their roles, the IdP only who they are.
            roles = list(row.roles)
        old = list(row.roles)
        ident.groups, ident.last_login_at = groups, time.time()
        if old != roles and not created:
            row.roles = roles
            await audit.append(s, actor=IDP, action="user.roles",
                               target=f"user:{row.name}",
                               details={"method": "oidc", "old": old, "new": roles, "groups": groups})
            changes.append(access_changed(rt, s, user_id=row.id, user=row.name, reason="roles"))
        if not roles:
            # Out of every mapped group: the roles are gone (above) and so are the open sessions.
            await s.execute(delete(WebSessionRow).where(WebSessionRow.user_id == row.id))
            refused = SsoRefused("you are in no group that has a role in opsroom", reason="no_role", subject=sub,
                                 name=row.name, groups=groups, hint=_no_role_hint(settings, groups))
        else:
            actor = actor_for(rt, row, "web")
            session_token, csrf = start_session(rt, s, user_id=row.id)
            await audit.append(s, actor=actor, action="login", target=f"user:{row.name}",
                               details={"method": "oidc", "sub": sub, "groups": groups, "roles": roles,
                                        "created": created, "adopted": adopted, "address": address,
                                        **({"unknown_roles": unknown} if unknown else {})})
    for change in changes:
        rt.bus.publish(change)
    if refused is not None:
        raise refused
    return LoginResult(actor, session_token, csrf)

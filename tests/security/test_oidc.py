"""Attacks on single sign-on (issue 15, point 9), against a real OpenID Connect provider
(`oidc-provider` on Node.js, tests/fixtures/oidc) and the real login routes in-process.

Each test names the class of attack it plays; every refusal ends on the login page with its
reason (never a traceback) and, where a sign-in was attempted, a `login` audit record
(outcome `denied`, method oidc, its reason, the IdP subject and groups)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from sqlalchemy import select

from opsroom import events, server
from opsroom.access import oidc
from opsroom.access import service as access
from opsroom.access.identity import SYSTEM
from opsroom.access.models import OidcIdentityRow, UserRow
from opsroom.audit.models import AuditRecordRow
from opsroom.chat.fake import FakeAdapter
from opsroom.config import Settings
from opsroom.errors import Unauthenticated
from opsroom.runtime import Runtime
from opsroom.web import errors, ui
from opsroom.web.deps import SESSION_COOKIE
from tests.factories import PASSWORDS, small_catalog
from tests.fixtures.oidc.idp import CLIENT_ID, CLIENT_SECRET, Idp, running_idp, sign_in_at_idp

pytestmark = [pytest.mark.e2e]
BASE = "http://127.0.0.1:8080"  # Settings' default web_url: the redirect URI registered at the provider
CALLBACK = f"{BASE}/login/oidc/callback"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    with running_idp(tmp_path_factory.mktemp("idp"), [CALLBACK]) as found:
        yield found


def _app(rt: Runtime) -> FastAPI:
    """The login routes as the server mounts them, on this runtime."""
    app = FastAPI()
    app.state.rt, app.state.demo = rt, False
    errors.install(app)
    app.include_router(ui.router)
    return app


@pytest.fixture
async def sso(tmp_path: Path, idp: Idp) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    idp.set_groups("pat", ["ops-approvers", "staff"])  # each test starts from the same directory
    oidc._providers.clear()
    oidc._spent.clear()
    settings = Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path), **idp.settings())
    rt = await server.open_runtime(settings)
    await server.start(rt, adapters=[FakeAdapter()], schedule=False, passwords=PASSWORDS)
    rt.bus.keep_history = True
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(rt), client=("10.9.0.1", 4321)),
                                     base_url=BASE) as browser:
            yield rt, browser
    finally:
        await server.stop(rt)


async def _start(browser: httpx.AsyncClient, next_path: str = "/") -> str:
    resp = await browser.get("/login/oidc", params={"next": next_path})
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"].startswith(oidc._providers[next(iter(oidc._providers))].authorization_endpoint)
    return resp.headers["location"]


async def _callback(browser: httpx.AsyncClient, url: str) -> httpx.Response:
    parts = urlsplit(url)
    return await browser.get(f"{parts.path}?{parts.query}")


async def _sign_in(browser: httpx.AsyncClient, login: str, next_path: str = "/") -> httpx.Response:
    return await _callback(browser, await sign_in_at_idp(await _start(browser, next_path), login, CALLBACK))


def _refusal(resp: httpx.Response) -> str:
    assert resp.status_code == 303, resp.text
    location = urlsplit(resp.headers["location"])
    assert location.path == "/login", resp.headers["location"]
    return parse_qs(location.query)["error"][0]


async def _denied(rt: Runtime) -> list[dict[str, Any]]:
    async with rt.read() as s:
        rows = (await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == "login",
                                                              AuditRecordRow.outcome == "denied")
                                .order_by(AuditRecordRow.seq))).scalars()
        return [r.details for r in rows if r.details.get("method") == "oidc"]


async def _user(rt: Runtime, name: str) -> UserRow | None:
    async with rt.read() as s:
        row: UserRow | None = (await s.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none()
        return row


# --- the way it should work (so that every refusal below is one) ----------------------------------


async def test_a_person_signs_in_gets_roles_from_groups_and_is_audited(sso: tuple[Runtime, httpx.AsyncClient],
                                                                        idp: Idp) -> None:
    rt, browser = sso
    page = await browser.get("/login")
    assert 'href="/login/oidc?next=/"' in page.text.replace("%2F", "/") and "Sign in with Test IdP" in page.text
    resp = await _sign_in(browser, "pat", "/rooms/ops")
    assert resp.status_code == 303 and resp.headers["location"] == "/rooms/ops"
    token = browser.cookies[SESSION_COOKIE]
    actor, _csrf = await access.session_actor(rt, session_token=token, door="web")
    assert actor.name == "pat" and actor.roles == {"approver"} and actor.can("approval.decide")
    assert not actor.can("runbook.run")
    row = await _user(rt, "pat")
    assert row is not None and row.source == "oidc" and row.password_hash is None
    async with rt.read() as s:
        ident = (await s.execute(select(OidcIdentityRow))).scalar_one()
        record = (await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == "login")
                                  .order_by(AuditRecordRow.seq.desc()))).scalars().first()
    assert (ident.issuer, ident.subject, ident.user_id) == (idp.issuer, "pat", row.id)
    assert record is not None and record.outcome == "ok" and record.actor == "pat"
    assert record.details["method"] == "oidc" and record.details["sub"] == "pat"
    assert record.details["groups"] == ["ops-approvers", "staff"] and record.details["address"] == "10.9.0.1"


async def test_roles_follow_the_groups_at_every_sign_in_and_open_doors_are_told(
        sso: tuple[Runtime, httpx.AsyncClient], idp: Idp) -> None:
    """Stale privilege: removed from a group at the IdP, the role goes at the next sign-in."""
    rt, browser = sso
    await _sign_in(browser, "pat")
    first = browser.cookies[SESSION_COOKIE]
    idp.set_groups("pat", ["ops"])
    browser.cookies.clear()
    await _sign_in(browser, "pat")
    second = browser.cookies[SESSION_COOKIE]
    actor, _ = await access.session_actor(rt, session_token=second, door="web")
    assert actor.roles == {"operator"} and not actor.can("approval.decide")
    # The first session now acts with the new roles too (roles are read per request), and open
    # sockets hear of the change at once.
    assert (await access.session_actor(rt, session_token=first, door="web"))[0].roles == {"operator"}
    changed = [e for e in rt.bus.history if isinstance(e, events.AccessChanged) and e.user == "pat"]
    assert [e.reason for e in changed] == ["roles"]
    async with rt.read() as s:
        roles = (await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == "user.roles"))).scalar_one()
    assert roles.actor == "oidc" and roles.details["old"] == ["approver"] and roles.details["new"] == ["operator"]
    # Out of every mapped group: refused, and the sessions still open end too.
    idp.set_groups("pat", ["staff"])
    browser.cookies.clear()
    assert "no group that has a role" in _refusal(await _sign_in(browser, "pat"))
    for token in (first, second):
        with pytest.raises(Unauthenticated):
            await access.session_actor(rt, session_token=token, door="web")
    assert (await _user(rt, "pat")).roles == []  # type: ignore[union-attr]
    assert [e.reason for e in rt.bus.history if isinstance(e, events.AccessChanged) and e.user == "pat"] == [
        "roles", "roles"]
    assert (await _denied(rt))[-1]["reason"] == "no_role"


async def test_once_the_catalog_names_an_sso_user_the_catalog_decides_the_roles(
        sso: tuple[Runtime, httpx.AsyncClient], tmp_path: Path) -> None:
    """Privilege escalation through the IdP: a person the reviewed catalog names as a viewer does
    not become an approver because a group at the IdP says so."""
    from opsroom.access.reconcile import reconcile_users
    from opsroom.catalog.loader import load_catalog

    rt, browser = sso
    await _sign_in(browser, "pat")
    users = [{"name": "boss", "roles": ["approver"]}, {"name": "pat", "roles": ["viewer"]}]
    rt.catalog = load_catalog(small_catalog(tmp_path / "reviewed", users=users))
    assert (await reconcile_users(rt)).adopted == ["pat"]
    browser.cookies.clear()
    assert (await _sign_in(browser, "pat")).headers["location"] == "/"
    actor, _ = await access.session_actor(rt, session_token=browser.cookies[SESSION_COOKIE], door="web")
    assert actor.roles == {"viewer"} and not actor.can("approval.decide")


async def test_a_disabled_user_cannot_sign_in_through_the_idp(sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """Bypass of an admin's disable: the IdP still knows the person, opsroom does not let them in."""
    rt, browser = sso
    await _sign_in(browser, "pat")
    await access.disable_user(rt, actor=SYSTEM, name="pat")
    browser.cookies.clear()
    assert "disabled" in _refusal(await _sign_in(browser, "pat"))
    assert (await _denied(rt))[-1]["reason"] == "disabled"


async def test_someone_in_no_mapped_group_gets_no_account(sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """Default deny: being known to the company IdP is not being an opsroom user."""
    rt, browser = sso
    message = _refusal(await _sign_in(browser, "nogroup"))
    assert "no group that has a role" in message and "OPSROOM_OIDC_ROLES maps" in message
    assert await _user(rt, "nogroup") is None
    assert (await _denied(rt))[-1] == {**(await _denied(rt))[-1], "reason": "no_role", "groups": ["staff"]}


# --- the callback -----------------------------------------------------------------------------------


async def test_a_callback_for_another_sign_in_is_refused(sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """Login CSRF: the attacker signs in at the IdP as herself and gets the victim's browser to
    open her callback URL, so the victim would work in the attacker's account. The state differs."""
    rt, browser = sso
    async with httpx.AsyncClient(transport=browser._transport, base_url=BASE) as attacker:
        attackers_callback = await sign_in_at_idp(await _start(attacker), "olive", CALLBACK)
    await _start(browser)  # the victim has a sign-in of her own under way
    message = _refusal(await _callback(browser, attackers_callback))
    assert "state mismatch" in message and SESSION_COOKIE not in browser.cookies
    assert (await _denied(rt))[-1]["reason"] == "state_mismatch"


async def test_a_callback_opened_in_a_browser_that_started_nothing_is_refused(
        sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """Login CSRF without a sign-in under way: no signed pending cookie, nothing to match."""
    rt, browser = sso
    async with httpx.AsyncClient(transport=browser._transport, base_url=BASE) as attacker:
        attackers_callback = await sign_in_at_idp(await _start(attacker), "olive", CALLBACK)
    assert "not started in this browser" in _refusal(await _callback(browser, attackers_callback))
    assert (await _denied(rt))[-1]["reason"] == "no_pending"


async def test_an_altered_pending_cookie_is_refused(sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """Tampering: the cookie carries state, nonce, verifier and `next`; a changed byte voids it."""
    rt, browser = sso
    url = await sign_in_at_idp(await _start(browser), "pat", CALLBACK)
    body, mac = browser.cookies[ui.OIDC_PENDING].rsplit(".", 1)
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["next"] = "https://evil.example/"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    browser.cookies.set(ui.OIDC_PENDING, f"{forged}.{mac}", domain="127.0.0.1", path="/login/oidc")
    assert "altered" in _refusal(await _callback(browser, url))
    assert (await _denied(rt))[-1]["reason"] == "pending_forged"


async def test_a_replayed_callback_is_refused_here_and_by_the_provider(sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """Replay: a callback URL and pending cookie captured (proxy log, browser history, shoulder)
    and played again. This server remembers the state; another server of the cluster would
    send the code to the provider, which serves a code once."""
    rt, browser = sso
    url = await sign_in_at_idp(await _start(browser), "pat", CALLBACK)
    pending = browser.cookies[ui.OIDC_PENDING]
    assert (await _callback(browser, url)).headers["location"] == "/"
    browser.cookies.clear()
    browser.cookies.set(ui.OIDC_PENDING, pending, domain="127.0.0.1", path="/login/oidc")
    assert "already used (replay)" in _refusal(await _callback(browser, url))
    assert SESSION_COOKIE not in browser.cookies
    oidc._spent.clear()  # as another server, which never saw this state
    browser.cookies.set(ui.OIDC_PENDING, pending, domain="127.0.0.1", path="/login/oidc")
    assert "refused the sign-in code (invalid_grant)" in _refusal(await _callback(browser, url))
    assert [d["reason"] for d in (await _denied(rt))[-2:]] == ["replayed", "code_refused"]


async def test_an_answer_claiming_another_issuer_is_refused(sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """IdP mix-up (RFC 9207): an answer saying it came from another provider is not exchanged."""
    rt, browser = sso
    url = await sign_in_at_idp(await _start(browser), "pat", CALLBACK)
    forged = url.replace("iss=http", "iss=https%3A%2F%2Fevil.example%2F&x=http")
    assert "issuer mismatch" in _refusal(await _callback(browser, forged))
    assert (await _denied(rt))[-1]["reason"] == "issuer_mismatch"


async def test_what_the_provider_says_is_shown_as_text(sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """Reflected XSS: `error_description` of a callback is the attacker's text when she crafts the link."""
    rt, browser = sso
    probe = '"><svg onload=alert(1)>'
    await _start(browser)
    resp = await browser.get("/login/oidc/callback", params={"error": "access_denied", "error_description": probe})
    assert probe in _refusal(resp) and probe not in resp.headers["location"]
    page = await browser.get(resp.headers["location"])
    assert "did not sign you in: &#34;&gt;&lt;svg onload=alert(1)&gt;" in page.text and "<svg" not in page.text
    assert (await _denied(rt))[-1]["reason"] == "provider_error"


async def test_a_flood_of_forged_callbacks_is_throttled(sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """Audit flooding and code guessing: the callback is open to anyone, so its refusals are
    counted per address as failed password logins are, and a flood is audited with a count."""
    from opsroom.access.throttle import USER_FAILURES

    rt, browser = sso
    answers = [_refusal(await browser.get("/login/oidc/callback", params={"state": f"s{i}", "code": "c"}))
               for i in range(USER_FAILURES + 3)]
    assert all("not started in this browser" in a for a in answers[:USER_FAILURES])
    assert all("too many failed sign-ins" in a for a in answers[USER_FAILURES:])
    assert len(await _denied(rt)) == USER_FAILURES
    async with rt.read() as s:
        held = (await s.execute(select(AuditRecordRow).where(AuditRecordRow.outcome == "throttled"))).scalars().all()
    assert len(held) == 1 and held[0].details["address"] == "10.9.0.1"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "\\\\evil"])
async def test_next_never_leaves_the_site(sso: tuple[Runtime, httpx.AsyncClient], target: str) -> None:
    """Open redirect: a link to /login/oidc?next=<elsewhere> must not bounce a fresh sign-in off-site."""
    _rt, browser = sso
    resp = await _sign_in(browser, "pat", target)
    assert resp.status_code == 303 and resp.headers["location"] == "/", resp.headers["location"]
    assert SESSION_COOKIE in browser.cookies


# --- who the IdP account is -------------------------------------------------------------------------


async def test_an_idp_account_named_like_a_local_user_does_not_become_them(
        sso: tuple[Runtime, httpx.AsyncClient]) -> None:
    """Account takeover by name claim: mallory sets her IdP `preferred_username` to `boss`, an
    opsroom user of the catalog. Accounts are matched on the IdP subject, and a name claim never
    adopts an account that single sign-on did not create."""
    rt, browser = sso
    before = await _user(rt, "boss")
    message = _refusal(await _sign_in(browser, "mallory"))
    assert "'boss' belongs to another opsroom account" in message and SESSION_COOKIE not in browser.cookies
    after = await _user(rt, "boss")
    assert after is not None and before is not None and after.roles == before.roles == ["approver"]
    async with rt.read() as s:
        assert (await s.execute(select(OidcIdentityRow))).first() is None
    denied = (await _denied(rt))[-1]
    assert (denied["reason"], denied["sub"], denied["groups"]) == ("name_taken", "mallory", ["ops-approvers"])


async def test_a_second_idp_account_cannot_take_over_an_sso_user_by_name(
        sso: tuple[Runtime, httpx.AsyncClient], idp: Idp) -> None:
    """Account takeover by a recycled or renamed IdP user name: `pat2` calls herself `pat`."""
    rt, browser = sso
    await _sign_in(browser, "pat")
    accounts = json.loads(idp.accounts_file.read_text())
    accounts["pat2"] = {"preferred_username": "pat", "groups": ["ops-approvers", "ops"]}
    idp.accounts_file.write_text(json.dumps(accounts))
    browser.cookies.clear()
    try:
        assert "belongs to another opsroom account" in _refusal(await _sign_in(browser, "pat2"))
    finally:
        accounts.pop("pat2")
        idp.accounts_file.write_text(json.dumps(accounts))
    assert (await _user(rt, "pat")).roles == ["approver"]  # type: ignore[union-attr]


# --- the ID token ------------------------------------------------------------------------------------


def _claims(idp: Idp, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": idp.issuer, "aud": CLIENT_ID, "sub": "pat", "nonce": "n-1", "iat": now, "exp": now + 300}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _part(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")


def _unsigned(claims: dict[str, Any]) -> str:
    return f"{_part({'alg': 'none', 'typ': 'JWT'})}.{_part(claims)}."


BAD_TOKENS: dict[str, tuple[str, Callable[[Idp], str]]] = {
    # attack class -> (what the refusal says, how the token is made from (idp, claims))
    "token for another application (audience)": (
        "for another application", lambda i: i.sign(_claims(i, aud="some-other-app"))),
    "token obtained by another client, listing us too (azp)": (
        "another application (azp)", lambda i: i.sign(_claims(i, aud=[CLIENT_ID, "other"], azp="other"))),
    "unsigned token (alg none)": ("unsigned", lambda i: _unsigned(_claims(i))),
    "algorithm confusion: HS256 with the client secret": (
        "unsigned or signed with an algorithm", lambda i: jwt.encode(
            {"alg": "HS256"}, _claims(i), OctKey.import_key(CLIENT_SECRET), algorithms=["HS256"])),
    "token signed by a key the provider does not publish": (
        "does not publish", lambda i: jwt.encode(
            {"alg": "RS256", "kid": "attacker"}, _claims(i), RSAKey.generate_key(2048, private=True))),
    "forged signature under the provider's key id": (
        "signature does not verify", lambda i: jwt.encode(
            {"alg": "RS256", "kid": i.key.kid}, _claims(i), RSAKey.generate_key(2048, private=True))),
    "expired token (replayed later)": ("expired", lambda i: i.sign(_claims(i, iat=1, exp=int(time.time()) - 3600))),
    "token from another issuer": ("issued by", lambda i: i.sign(_claims(i, iss="https://evil.example"))),
    "missing nonce (token not bound to this sign-in)": ("nonce", lambda i: i.sign(_claims(i, nonce=None))),
    "wrong nonce (token replayed from another sign-in)": ("nonce", lambda i: i.sign(_claims(i, nonce="n-2"))),
    "no subject": ("no subject", lambda i: i.sign(_claims(i, sub=None))),
    "garbage": ("not a well-formed", lambda i: "not.a.token"),
}


@pytest.mark.parametrize("attack", list(BAD_TOKENS))
async def test_an_id_token_that_should_not_be_trusted_is_refused(idp: Idp, tmp_path: Path, attack: str) -> None:
    """ID token forgery and substitution, checked against the real provider's discovery and keys."""
    oidc._providers.clear()
    settings = Settings(data=tmp_path, **idp.settings())
    prov = await oidc.provider(settings)
    assert prov.issuer == idp.issuer and prov.algorithms == ["RS256"]
    # The positive control: a token as the provider makes it passes.
    good = await oidc.verify_id_token(prov, token=idp.sign(_claims(idp)), client_id=CLIENT_ID, nonce="n-1")
    assert good["sub"] == "pat"
    said, make = BAD_TOKENS[attack]
    with pytest.raises(oidc.SsoRefused) as refused:
        await oidc.verify_id_token(prov, token=make(idp), client_id=CLIENT_ID, nonce="n-1")
    assert said in refused.value.message and refused.value.reason == "bad_token"


# --- the settings and the provider ----------------------------------------------------------------


@pytest.mark.parametrize(("given", "said"), [
    ({"oidc_issuer": "http://idp.example.com"}, "uses http: use https"),
    ({"oidc_issuer": "ftp://idp.example.com"}, "is not an https URL"),
    ({"oidc_issuer": "https://idp.example.com/?a=b"}, "no query"),
    ({"oidc_client_id": None}, "OPSROOM_OIDC_CLIENT_ID is not set"),
    ({"oidc_client_secret": None}, "OPSROOM_OIDC_CLIENT_SECRET is not set"),
    ({"oidc_roles": {}}, "maps no group to a role"),
    ({"oidc_scopes": "profile email"}, "lacks `openid`"),
    ({"oidc_issuer": None}, "OPSROOM_OIDC_ISSUER is not set"),
])
def test_an_insecure_or_incomplete_configuration_is_refused_at_start(tmp_path: Path, given: dict[str, Any],
                                                                      said: str) -> None:
    """Downgrade by misconfiguration: keys fetched over plain http can be swapped on the path."""
    wanted = {"oidc_issuer": "https://idp.example.com", "oidc_client_id": "opsroom",
              "oidc_client_secret": "a-very-secret-client-secret", "oidc_roles": {"ops": ["operator"]}, **given}
    with pytest.raises(ValueError, match="single sign-on refused") as refused:
        Settings(data=tmp_path, **wanted)
    assert said in str(refused.value)
    assert "a-very-secret-client-secret" not in str(refused.value)  # a refusal never shows the secret


def test_the_client_secret_is_never_shown(tmp_path: Path) -> None:
    settings = Settings(data=tmp_path, oidc_issuer="https://idp.example.com", oidc_client_id="opsroom",
                        oidc_client_secret="a-very-secret-client-secret", oidc_roles={"ops": ["operator"]})
    assert "a-very-secret-client-secret" not in repr(settings) and "a-very-secret" not in str(settings)


async def test_a_provider_that_is_down_ends_on_the_login_page(tmp_path: Path) -> None:
    """Availability: an unreachable IdP is a message on the login page, never a traceback."""
    from tests.factories import free_port

    oidc._providers.clear()
    settings = Settings(data=tmp_path / "data", catalog=small_catalog(tmp_path),
                        oidc_issuer=f"http://127.0.0.1:{free_port()}", oidc_client_id=CLIENT_ID,
                        oidc_client_secret=CLIENT_SECRET, oidc_roles={"ops": ["operator"]})
    rt = await server.open_runtime(settings)
    await server.start(rt, adapters=[FakeAdapter()], schedule=False, passwords=PASSWORDS)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(rt)), base_url=BASE) as browser:
            resp = await browser.get("/login/oidc", params={"next": "/rooms/ops"})
            assert "cannot be reached" in _refusal(resp)
            assert parse_qs(urlsplit(resp.headers["location"]).query)["next"] == ["/rooms/ops"]
            page = await browser.get(resp.headers["location"])
            assert page.status_code == 200 and "cannot be reached" in page.text
    finally:
        await server.stop(rt)

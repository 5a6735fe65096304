"""Alert sources prove who sent a request before its body is read: bearer tokens, HMAC
signatures (ours and Grafana's), freshness and replay, by attack class."""

from __future__ import annotations

import hashlib
import hmac
import json
import tracemalloc
from typing import Any

import pytest

from opsroom.alerts.sources import ReplayMemory
from opsroom.alerts.sources.alertmanager import AlertmanagerConfig, AlertmanagerSource
from opsroom.alerts.sources.grafana import GrafanaConfig, GrafanaSource
from opsroom.alerts.sources.webhook import WebhookConfig, WebhookSource
from opsroom.errors import TooManyAttempts, Unauthenticated

TOKEN = "t0ken-of-sixteen-chars"
SECRET = "s3cret-of-sixteen-chars"
NOW = 1_750_000_000.0
BODY = json.dumps({"name": "disk-full", "status": "firing"}).encode()


def sign(body: bytes, stamp: int | str, secret: str = SECRET, sep: bytes = b".") -> str:
    return hmac.new(secret.encode(), str(stamp).encode() + sep + body, hashlib.sha256).hexdigest()


def webhook(**settings: Any) -> WebhookSource:
    config = {"hmac_secret": SECRET, "fields": {"name": "{{ alert.name }}"}} | settings
    return WebhookSource(name="mon", config=WebhookConfig.model_validate(config))


def signed(body: bytes = BODY, stamp: int = int(NOW), **extra: str) -> dict[str, str]:
    return {"x-opsroom-signature": "sha256=" + sign(body, stamp), "x-opsroom-timestamp": str(stamp)} | extra


def alertmanager() -> AlertmanagerSource:
    return AlertmanagerSource(name="prom", config=AlertmanagerConfig(token=TOKEN))


# --- bearer token -----------------------------------------------------------------------------

BAD_BEARERS = {
    "missing": {},
    "empty": {"authorization": ""},
    "scheme alone": {"authorization": "Bearer"},
    "scheme and space": {"authorization": "Bearer "},
    "wrong token": {"authorization": "Bearer " + "x" * len(TOKEN)},
    "token prefix": {"authorization": "Bearer " + TOKEN[:-1]},
    "token plus more": {"authorization": "Bearer " + TOKEN + "x"},
    "other scheme": {"authorization": "Basic " + TOKEN},
    "token without scheme": {"authorization": TOKEN},
    "non-ASCII": {"authorization": "Bearer tökén-öf-sixteen-chärs"},
    "latin-1 bytes": {"authorization": "Bearer \xff\xfe\x00" + TOKEN},
    "token in another header": {"x-token": TOKEN},
}


@pytest.mark.parametrize("headers", BAD_BEARERS.values(), ids=BAD_BEARERS.keys())
def test_bearer_refused(headers: dict[str, str]) -> None:
    with pytest.raises(Unauthenticated, match="bearer token"):
        alertmanager().authenticate(headers=headers, body=b"{}", now=NOW)
    with pytest.raises(Unauthenticated, match="bearer token"):
        GrafanaSource(name="g", config=GrafanaConfig(token=TOKEN)).authenticate(headers=headers, body=b"{}", now=NOW)


@pytest.mark.parametrize("auth", ["Bearer " + TOKEN, "bearer " + TOKEN, "BEARER  " + TOKEN + " "])
def test_bearer_accepted(auth: str) -> None:
    alertmanager().authenticate(headers={"authorization": auth}, body=b"{}", now=NOW)


# --- our signed webhook: forgery ----------------------------------------------------------------

FORGED = {
    "wrong secret": {"x-opsroom-signature": "sha256=" + sign(BODY, int(NOW), secret="another-secret-0000"),
                     "x-opsroom-timestamp": str(int(NOW))},
    "truncated signature": {"x-opsroom-signature": "sha256=" + sign(BODY, int(NOW))[:40],
                            "x-opsroom-timestamp": str(int(NOW))},
    "signature over another body": {"x-opsroom-signature": "sha256=" + sign(b'{"name": "x"}', int(NOW)),
                                    "x-opsroom-timestamp": str(int(NOW))},
    "signature of the body alone": {"x-opsroom-signature": "sha256=" + hmac.new(SECRET.encode(), BODY,
                                                                                   hashlib.sha256).hexdigest(),
                                    "x-opsroom-timestamp": str(int(NOW))},
    "timestamp swapped after signing": {"x-opsroom-signature": "sha256=" + sign(BODY, int(NOW) - 1000),
                                        "x-opsroom-timestamp": str(int(NOW))},
    "signature not hex": {"x-opsroom-signature": "sha256=" + "z" * 64, "x-opsroom-timestamp": str(int(NOW))},
    "signature non-ASCII": {"x-opsroom-signature": "sha256=" + "é" * 64, "x-opsroom-timestamp": str(int(NOW))},
    "signature of another algorithm": {"x-opsroom-signature": "sha256=" + hashlib.sha256(BODY).hexdigest(),
                                       "x-opsroom-timestamp": str(int(NOW))},
}


@pytest.mark.parametrize("headers", FORGED.values(), ids=FORGED.keys())
def test_forged_signature_refused(headers: dict[str, str]) -> None:
    source = webhook()
    with pytest.raises(Unauthenticated, match="signature does not match"):
        source.authenticate(headers=headers, body=BODY, now=NOW)
    assert len(source.replay) == 0  # nothing a forger sends is remembered


MALFORMED = {
    "signature header missing": ({"x-opsroom-timestamp": str(int(NOW))}, "no x-opsroom-signature header"),
    "prefix missing": ({"x-opsroom-signature": sign(BODY, int(NOW)), "x-opsroom-timestamp": str(int(NOW))},
                       "must read sha256="),
    "timestamp missing": ({"x-opsroom-signature": "sha256=" + sign(BODY, int(NOW))}, "missing or not unix seconds"),
    "timestamp not a number": ({"x-opsroom-signature": "sha256=" + sign(BODY, "soon"), "x-opsroom-timestamp": "soon"},
                               "not unix seconds"),
    "timestamp fractional": ({"x-opsroom-signature": "sha256=" + sign(BODY, "1750000000.5"),
                              "x-opsroom-timestamp": "1750000000.5"}, "not unix seconds"),
    "timestamp negative": ({"x-opsroom-signature": "sha256=" + sign(BODY, "-1"), "x-opsroom-timestamp": "-1"},
                           "not unix seconds"),
    "timestamp huge": ({"x-opsroom-signature": "sha256=" + sign(BODY, "9" * 40), "x-opsroom-timestamp": "9" * 40},
                       "not unix seconds"),
}


@pytest.mark.parametrize(("headers", "message"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_signature_headers_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        webhook().authenticate(headers=headers, body=BODY, now=NOW)


def test_valid_signature_accepted_with_configured_header_names() -> None:
    webhook().authenticate(headers=signed(), body=BODY, now=NOW)
    source = webhook(signature_header="X-Sig", timestamp_header="X-Time")
    stamp = int(NOW)
    source.authenticate(headers={"x-sig": "sha256=" + sign(BODY, stamp).upper(), "x-time": str(stamp)},
                        body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="no x-sig header"):  # the default names no longer count
        source.authenticate(headers=signed(stamp=stamp + 1), body=BODY, now=NOW)


def test_webhook_with_a_token_needs_both() -> None:
    source = webhook(token=TOKEN)
    with pytest.raises(Unauthenticated, match="bearer token"):
        source.authenticate(headers=signed(), body=BODY, now=NOW)
    source.authenticate(headers=signed() | {"authorization": "Bearer " + TOKEN}, body=BODY, now=NOW)


# --- freshness and replay -----------------------------------------------------------------------


def test_replay_of_the_same_request_refused() -> None:
    source = webhook()
    source.authenticate(headers=signed(), body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="already received"):
        source.authenticate(headers=signed(), body=BODY, now=NOW + 5)
    # The same body signed anew (a new timestamp) is a new request.
    source.authenticate(headers=signed(stamp=int(NOW) + 1), body=BODY, now=NOW + 5)


@pytest.mark.parametrize(("offset", "where"), [(-301, "past"), (-10_000_000, "past"), (301, "future")])
def test_stale_or_future_timestamp_refused(offset: int, where: str) -> None:
    stamp = int(NOW) + offset
    with pytest.raises(Unauthenticated, match=f"s in the {where}; at most 300 s"):
        webhook().authenticate(headers=signed(stamp=stamp), body=BODY, now=NOW)


@pytest.mark.parametrize("offset", [-300, -1, 0, 120, 300])
def test_clock_skew_within_the_window_accepted(offset: int) -> None:
    webhook().authenticate(headers=signed(stamp=int(NOW) + offset), body=BODY, now=NOW)


def test_replay_after_the_window_is_refused_as_stale_not_forgotten() -> None:
    source = webhook(max_age=60)
    source.authenticate(headers=signed(), body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="in the past"):
        source.authenticate(headers=signed(), body=BODY, now=NOW + 61)
    # Pruned (at the next accepted request) once no replay of it can pass the timestamp check.
    source.authenticate(headers=signed(stamp=int(NOW) + 61), body=BODY, now=NOW + 61)
    assert len(source.replay) == 1


def test_replay_memory_flood_stays_bounded_and_refuses_when_full() -> None:
    source = webhook(replay_capacity=500)
    tracemalloc.start()
    try:
        for i in range(500):  # 500 distinct, validly signed requests fill the memory ...
            body = b'{"name": "%d"}' % i
            source.authenticate(headers=signed(body), body=body, now=NOW)
        with pytest.raises(TooManyAttempts) as full:  # ... and the next is refused, none forgotten early
            source.authenticate(headers=signed(b'{"name": "x"}'), body=b'{"name": "x"}', now=NOW)
        assert 1 <= full.value.retry_after <= 300
        with pytest.raises(Unauthenticated, match="already received"):
            source.authenticate(headers=signed(b'{"name": "0"}'), body=b'{"name": "0"}', now=NOW)
        for i in range(5000):  # forged unique signatures are never stored at all
            with pytest.raises(Unauthenticated):
                source.authenticate(headers={"x-opsroom-signature": f"sha256={i:064x}",
                                             "x-opsroom-timestamp": str(int(NOW))}, body=BODY, now=NOW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(source.replay) == 500 and peak < 2 << 20
    # Once the window has passed, the memory empties and takes new requests again.
    later = NOW + 301
    source.authenticate(headers=signed(stamp=int(later)), body=BODY, now=later)
    assert len(source.replay) == 1


def test_replay_memory_prunes_out_of_order_expiries() -> None:
    memory = ReplayMemory(capacity=10)
    memory.remember("b", until=200, now=0, source="s")
    memory.remember("a", until=100, now=0, source="s")
    memory.remember("c", until=150, now=120, source="s")  # prunes "a" only
    assert len(memory) == 2
    with pytest.raises(Unauthenticated):
        memory.remember("b", until=200, now=199, source="s")


# --- Grafana's HMAC -----------------------------------------------------------------------------


def grafana(**settings: Any) -> GrafanaSource:
    return GrafanaSource(name="graf", config=GrafanaConfig.model_validate({"hmac_secret": SECRET} | settings))


def test_grafana_signature_over_the_body_alone() -> None:
    source = grafana()
    good = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    source.authenticate(headers={"x-grafana-alerting-signature": good}, body=BODY, now=NOW)
    # Without a timestamp header there is nothing to tell a replay from a repeat: accepted twice.
    source.authenticate(headers={"x-grafana-alerting-signature": good}, body=BODY, now=NOW)
    for bad in (good[:-1], "sha256=" + good, sign(BODY, int(NOW), sep=b":"), "",
                hmac.new(b"another-secret-0000", BODY, hashlib.sha256).hexdigest()):
        with pytest.raises(Unauthenticated, match="signature does not match"):
            source.authenticate(headers={"x-grafana-alerting-signature": bad}, body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="no x-grafana-alerting-signature header"):
        source.authenticate(headers={}, body=BODY, now=NOW)


def test_grafana_signature_with_timestamp_is_fresh_and_new() -> None:
    source = grafana(timestamp_header="X-Grafana-Alerting-Timestamp")

    def headers(stamp: int, sep: bytes = b":") -> dict[str, str]:
        return {"x-grafana-alerting-signature": sign(BODY, stamp, sep=sep), "x-grafana-alerting-timestamp": str(stamp)}

    source.authenticate(headers=headers(int(NOW)), body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="already received"):
        source.authenticate(headers=headers(int(NOW)), body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="signature does not match"):  # Grafana joins with ":", not "."
        source.authenticate(headers=headers(int(NOW) + 1, sep=b"."), body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="in the past"):
        source.authenticate(headers=headers(int(NOW) - 301), body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="in the future"):
        source.authenticate(headers=headers(int(NOW) + 301), body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="not unix seconds"):
        source.authenticate(headers={"x-grafana-alerting-signature": sign(BODY, int(NOW), sep=b":")}, body=BODY,
                            now=NOW)


def test_grafana_with_token_and_secret_needs_both() -> None:
    source = grafana(token=TOKEN)
    sig = {"x-grafana-alerting-signature": hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()}
    with pytest.raises(Unauthenticated, match="bearer token"):
        source.authenticate(headers=sig, body=BODY, now=NOW)
    with pytest.raises(Unauthenticated, match="no x-grafana-alerting-signature"):
        source.authenticate(headers={"authorization": "Bearer " + TOKEN}, body=BODY, now=NOW)
    source.authenticate(headers=sig | {"authorization": "Bearer " + TOKEN}, body=BODY, now=NOW)


def test_grafana_token_only_ignores_signature_headers() -> None:
    source = GrafanaSource(name="g", config=GrafanaConfig(token=TOKEN))
    with pytest.raises(Unauthenticated, match="bearer token"):  # a signature is no substitute for the token
        source.authenticate(headers={"x-grafana-alerting-signature": "0" * 64}, body=BODY, now=NOW)

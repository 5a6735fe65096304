"""The three built-in alert source kinds read their documented payloads into AlertIn, and refuse
anything else with an Invalid that names the JSON field."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from opsroom.alerts.base import AlertIn
from opsroom.alerts.sources import MAX_ALERTS, FieldInvalid, parse_time
from opsroom.alerts.sources.alertmanager import AlertmanagerConfig, AlertmanagerSource
from opsroom.alerts.sources.grafana import GrafanaConfig, GrafanaSource
from opsroom.alerts.sources.webhook import WebhookConfig, WebhookSource
from opsroom.errors import Invalid

FIXTURES = Path(__file__).parent.parent / "fixtures" / "alerts"
TOKEN = "t0ken-of-sixteen-chars"
SECRET = "s3cret-of-sixteen-chars"
T0 = 1704164645.0  # 2024-01-02T03:04:05Z


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def am() -> AlertmanagerSource:
    return AlertmanagerSource(name="prom", config=AlertmanagerConfig(token=TOKEN, api_url="http://am.example:9093/"))


def grafana() -> GrafanaSource:
    return GrafanaSource(name="graf", config=GrafanaConfig(token=TOKEN))


WEBHOOK_FIELDS = {
    "name": "{{ alert.check }}", "status": "{{ alert.state }}", "severity": "{{ alert.level }}",
    "summary": "{{ alert.message }}", "starts_at": "{{ alert.time }}", "ends_at": "{{ alert.cleared | default('') }}",
    "url": "{{ alert.link | default('') }}", "labels": {"host": "{{ alert.host }}"},
}


def webhook(**settings: Any) -> WebhookSource:
    config = {"hmac_secret": SECRET, "fields": WEBHOOK_FIELDS} | settings
    return WebhookSource(name="mon", config=WebhookConfig.model_validate(config))


# --- the documented payloads ------------------------------------------------------------------


def test_alertmanager_firing_fixture() -> None:
    alerts = am().parse(fixture("alertmanager_firing.json"))
    group = '{}/{team="shop"}:{alertname="HighLatency"}'
    assert alerts[0] == AlertIn(
        fingerprint="a1b2c3d4e5f60718", status="firing", name="HighLatency", starts_at=pytest.approx(T0 + 0.123456789),
        labels={"alertname": "HighLatency", "instance": "web-1:8080", "job": "shop", "severity": "page",
                "team": "shop"},
        annotations={"summary": "p99 latency above 500 ms on web-1",
                     "description": "The p99 has been above 500 ms for 5 minutes.",
                     "runbook_url": "https://runbooks.example.com/high-latency"},
        ends_at=None, severity="page", summary="p99 latency above 500 ms on web-1",
        url="http://prometheus.example.com:9090/graph?g0.expr=latency_p99+%3E+0.5", group_key=group)
    second = alerts[1]
    # +02:00 offset; a firing alert's future endsAt is kept as sent and does not make it resolved.
    assert second.starts_at == T0 + 1 and second.ends_at == T0 + 301 and second.status == "firing"
    assert second.summary == "The p99 has been above 500 ms for 5 minutes."  # description when no summary
    assert len(alerts) == 2


def test_alertmanager_resolved_fixture_and_silence_api() -> None:
    source = am()
    [alert] = source.parse(fixture("alertmanager_resolved.json"))
    assert alert.status == "resolved" and alert.ends_at == T0 + 1800.5
    assert alert.fingerprint == "a1b2c3d4e5f60718"
    assert source.silence_api() == "http://am.example:9093"


def test_grafana_firing_fixture() -> None:
    alerts = grafana().parse(fixture("grafana_firing.json"))
    memory, cpu = alerts
    assert memory.name == "High memory usage" and memory.status == "firing" and memory.fingerprint == "c6eadffa33fcdf37"
    assert memory.starts_at == pytest.approx(1709538663.157076) and memory.ends_at is None
    assert memory.summary == "Memory above 90% in zone us-1" and memory.severity is None
    assert memory.url == "https://grafana.example.com/alerting/grafana/1afz29v7z/view"
    assert "B" not in memory.labels and memory.labels["grafana_folder"] == "Shop"  # values are not labels
    assert cpu.url == "https://grafana.example.com/d/shop-cpu"  # dashboardURL when generator and panel are empty
    assert cpu.severity == "warning" and cpu.group_key == "{}:{}"


def test_grafana_resolved_fixture() -> None:
    [alert] = grafana().parse(fixture("grafana_resolved.json"))
    assert alert.status == "resolved" and alert.ends_at == pytest.approx(1709539263.157076)


def test_webhook_single_object_body_is_one_alert() -> None:
    [alert] = webhook().parse(fixture("webhook_single.json"))
    assert alert.name == "disk-full" and alert.status == "firing" and alert.severity == "critical"
    assert alert.starts_at == T0 and alert.labels == {"host": "db-1"} and alert.summary == "Disk / at 97%"
    assert alert.url == "https://monitor.example.com/checks/disk-full?host=db-1"
    assert alert.fingerprint == webhook().parse(fixture("webhook_single.json"))[0].fingerprint  # stable default


def test_webhook_batch_with_path_fingerprint_and_body_context() -> None:
    fields = WEBHOOK_FIELDS | {"fingerprint": "{{ alert.id }}", "labels": {"host": "{{ alert.host }}",
                                                                          "sender": "{{ body.sender }}"}}
    resolved, firing = webhook(alerts="data.items", fields=fields).parse(fixture("webhook_batch.json"))
    assert resolved.status == "resolved" and resolved.ends_at == T0 + 2400.25
    assert resolved.fingerprint == "disk-full/db-1"
    assert firing.status == "firing" and firing.starts_at == T0 - 245
    assert firing.labels == {"host": "db-2", "sender": "monitor.example.com"}


def test_webhook_default_status_and_starts_at_now() -> None:
    source = webhook(fields={"name": "{{ alert.what }}"})
    before = time.time()
    [alert] = source.parse(b'{"what": "x"}')
    assert alert.status == "firing" and before <= alert.starts_at <= time.time()
    [closed] = source.parse(b'[{"what": "x", "status": "RESOLVED"}]')
    assert closed.status == "resolved" and closed.fingerprint == alert.fingerprint


@pytest.mark.parametrize(("word", "status"), [("ok", "resolved"), ("Closed", "resolved"), ("resolved", "resolved"),
                                             ("alerting", "firing"), ("TRIGGERED", "firing"), ("problem", "firing")])
def test_webhook_status_spellings(word: str, status: str) -> None:
    [alert] = webhook(fields={"name": "n", "status": "{{ alert.s }}"}).parse(json.dumps({"s": word}).encode())
    assert alert.status == status


def test_webhook_output_is_bounded_and_stripped_of_controls() -> None:
    source = webhook(fields={"name": "{{ alert.n }}", "summary": "{{ alert.s }}", "labels": {"l": "{{ alert.l }}"}})
    [alert] = source.parse(json.dumps({"n": "a\x1b[31mb\u202ec\nd", "s": "line1\nline2\x07" + "x" * 5000,
                                       "l": "v\x00"}).encode())
    assert alert.name == "a [31mb c d" and alert.labels == {"l": "v"}
    assert alert.summary.startswith("line1\nline2x") and len(alert.summary) == 2000 and alert.summary.endswith("…")
    with pytest.raises(FieldInvalid, match=r"body\[0\] \(fields\.labels\.l\): rendered to 300 characters; at most 256"):
        source.parse(json.dumps({"n": "a", "l": "v" * 300}).encode())


@pytest.mark.parametrize("value", ["2024-01-02T03:04:05Z", "2024-01-02T03:04:05.000000000Z", "2024-01-02t03:04:05z",
                                   "2024-01-02T05:04:05+02:00", "2024-01-01T22:34:05-04:30", "2024-01-02 03:04:05Z"])
def test_rfc3339_times_and_offsets(value: str) -> None:
    assert parse_time(value, "t") == T0


def test_rfc3339_nanoseconds_and_leap_second() -> None:
    assert parse_time("2024-01-02T03:04:05.123456789Z", "t") == pytest.approx(T0 + 0.123456789, abs=1e-6)
    assert parse_time("2016-12-31T23:59:60Z", "t") == parse_time("2017-01-01T00:00:00Z", "t")


# --- what is refused, and where it says the fault is ------------------------------------------

AM_DOC = json.loads(fixture("alertmanager_firing.json"))


def am_with(change: Callable[[dict[str, Any]], Any]) -> bytes:
    doc = copy.deepcopy(AM_DOC)
    change(doc)
    return json.dumps(doc).encode()


BAD_AM: list[tuple[str, bytes, str]] = [
    ("missing alerts", am_with(lambda d: d.pop("alerts")), r"^alerts: missing"),
    ("alerts not a list", am_with(lambda d: d.update(alerts={"a": 1})),
     r"^alerts: expected a list of alerts, got an object"),
    ("alert not an object", am_with(lambda d: d["alerts"].append("x")),
     r"^alerts\[2\]: expected an object, got a string"),
    ("label value a number", am_with(lambda d: d["alerts"][1]["labels"].update(port=8080)),
     r"^alerts\[1\]\.labels\.port: expected a string, got a number"),
    ("labels a list", am_with(lambda d: d["alerts"][0].update(labels=["a"])),
     r"^alerts\[0\]\.labels: expected an object"),
    ("annotation null", am_with(lambda d: d["alerts"][0]["annotations"].update(summary=None)),
     r"^alerts\[0\]\.annotations\.summary: expected a string, got null"),
    ("bad time", am_with(lambda d: d["alerts"][1].update(startsAt="yesterday")),
     r"^alerts\[1\]\.startsAt: 'yesterday' is not an RFC 3339 time"),
    ("impossible date", am_with(lambda d: d["alerts"][0].update(startsAt="2024-04-31T00:00:00Z")),
     r"^alerts\[0\]\.startsAt: .* is not a valid time"),
    ("time a number", am_with(lambda d: d["alerts"][0].update(endsAt=1704164645)),
     r"^alerts\[0\]\.endsAt: expected an RFC 3339 time string, got a number"),
    ("missing startsAt", am_with(lambda d: d["alerts"][0].pop("startsAt")), r"^alerts\[0\]\.startsAt: missing"),
    ("unknown status", am_with(lambda d: d["alerts"][0].update(status="pending")),
     r"^alerts\[0\]\.status: expected 'firing' or 'resolved', got a string \('pending'\)"),
    ("group status wrong", am_with(lambda d: d.update(status=True)),
     r"^status: expected 'firing' or 'resolved', got true/false"),
    ("no alertname", am_with(lambda d: d["alerts"][0]["labels"].pop("alertname")),
     r"^alerts\[0\]\.labels\.alertname: missing"),
    ("version 3", am_with(lambda d: d.update(version="3")), r"^version: a string \('3'\), not supported; .*'4'"),
    ("version missing", am_with(lambda d: d.pop("version")), r"^version: missing"),
    ("too many alerts", am_with(lambda d: d.update(alerts=d["alerts"] * (MAX_ALERTS // 2 + 1))),
     rf"^alerts: {MAX_ALERTS + 2} alerts in one request; at most {MAX_ALERTS}"),
    ("too many labels", am_with(lambda d: d["alerts"][0]["labels"].update({f"l{i}": "v" for i in range(200)})),
     r"^alerts\[0\]\.labels: 205 entries; at most 128"),
    ("huge label value", am_with(lambda d: d["alerts"][0]["labels"].update(big="x" * 100_000)),
     r"^alerts\[0\]\.labels\.'big': name of 3 or value of 100000 characters"),
    ("huge fingerprint", am_with(lambda d: d["alerts"][0].update(fingerprint="f" * 1000)),
     r"^alerts\[0\]\.fingerprint: 1000 characters; at most 256"),
    ("javascript url", am_with(lambda d: d["alerts"][0].update(generatorURL="javascript:alert(1)")),
     r"^alerts\[0\]\.generatorURL: 'javascript:alert\(1\)' is not an http\(s\) URL"),
    ("deeply nested junk in a label", am_with(lambda d: d["alerts"][0]["labels"].update(x=[[[[[[{"a": [1]}]]]]]])),
     r"^alerts\[0\]\.labels\.x: expected a string, got a list"),
    ("truncatedAlerts negative", am_with(lambda d: d.update(truncatedAlerts=-1)),
     r"^truncatedAlerts: expected a whole"),
    ("commonLabels a string", am_with(lambda d: d.update(commonLabels="a=b")), r"^commonLabels: expected an object"),
    ("non-JSON", b"alertname=HighLatency", r"^body is not JSON: Expecting value: line 1 column 1"),
    ("not UTF-8", b'{"version": "4", "x": "\xff\xfe"}', r"^body is not JSON"),
    ("NaN", b'{"version": "4", "truncatedAlerts": NaN}', r"^body is not JSON: NaN is not JSON"),
    ("JSON a list", b"[1, 2]", r"^body: expected a JSON object .*, got a list"),
    ("JSON a string", b'"firing"', r"^body: expected a JSON object .*, got a string"),
    ("deeply nested JSON", b"[" * 200_000 + b"]" * 200_000, r"^body is JSON nested too deeply"),
    ("huge integer", b'{"version": "4", "truncatedAlerts": ' + b"9" * 5000 + b"}", r"^body is not JSON"),
    ("empty body", b"", r"^body is not JSON"),
]


@pytest.mark.parametrize(("body", "message"), [(b, m) for _, b, m in BAD_AM], ids=[i for i, _, _ in BAD_AM])
def test_alertmanager_refuses_with_the_field_named(body: bytes, message: str) -> None:
    with pytest.raises(FieldInvalid, match=message) as err:
        am().parse(body)
    assert isinstance(err.value, Invalid) and len(str(err.value)) < 600  # an error never echoes the payload


def test_body_over_the_size_limit_is_refused_unread() -> None:
    with pytest.raises(Invalid, match="bytes; at most"):
        am().parse(b" " * (17 << 20))


GRAFANA_DOC = json.loads(fixture("grafana_firing.json"))


def grafana_with(change: Callable[[dict[str, Any]], Any]) -> bytes:
    doc = copy.deepcopy(GRAFANA_DOC)
    change(doc)
    return json.dumps(doc).encode()


BAD_GRAFANA: list[tuple[str, bytes, str]] = [
    ("values not an object", grafana_with(lambda d: d["alerts"][0].update(values=[1])),
     r"^alerts\[0\]\.values: expected an object"),
    ("panelURL a number", grafana_with(lambda d: d["alerts"][1].update(panelURL=3)),
     r"^alerts\[1\]\.panelURL: expected a string"),
    ("orgId a string", grafana_with(lambda d: d.update(orgId="1")), r"^orgId: expected a number"),
    ("version 2", grafana_with(lambda d: d.update(version="2")), r"^version: a string \('2'\), not supported"),
    ("legacy alerting", b'{"ruleName": "cpu", "state": "alerting", "evalMatches": []}',
     r"^alerts: missing: this is a legacy"),
    ("label value true", grafana_with(lambda d: d["alerts"][0]["labels"].update(zone=True)),
     r"^alerts\[0\]\.labels\.zone: expected a string, got true/false"),
    ("bad endsAt", grafana_with(lambda d: d["alerts"][0].update(endsAt="2024-13-01T00:00:00Z")),
     r"^alerts\[0\]\.endsAt:"),
]


@pytest.mark.parametrize(("body", "message"), [(b, m) for _, b, m in BAD_GRAFANA], ids=[i for i, _, _ in BAD_GRAFANA])
def test_grafana_refuses_with_the_field_named(body: bytes, message: str) -> None:
    with pytest.raises(FieldInvalid, match=message):
        grafana().parse(body)


BAD_WEBHOOK: list[tuple[str, dict[str, Any], bytes, str]] = [
    ("path missing", {"alerts": "data.items"}, b'{"data": {}}', r"^data\.items: missing"),
    ("path not a list", {"alerts": "data.items"}, b'{"data": {"items": "x"}}',
     r"^data\.items: expected a list of alerts"),
    ("item not an object", {}, b'[1]', r"^body\[0\]: expected an object, got a number"),
    ("scalar body", {}, b'42', r"^body: expected a JSON object or a list"),
    ("template fails", {}, b'{"check": "x"}',
     r"^body\[0\]: fields\.labels\.host: template .* failed: "
     r".dict object. has no attribute .host."),
    ("unknown status", {}, b'{"check": "x", "state": "maybe", "host": "h", "level": "l", "message": "", "time": 1}',
     r"^body\[0\] \(fields\.status\): rendered to 'maybe', which is neither firing nor resolved"),
    ("bad time", {}, b'{"check": "x", "state": "ok", "host": "h", "level": "l", "message": "", "time": "noon"}',
     r"^body\[0\] \(fields\.starts_at\): 'noon' is not an RFC 3339 time"),
    ("milliseconds", {},
     b'{"check": "x", "state": "ok", "host": "h", "level": "l", "message": "", "time": 1704164645000}',
     r"^body\[0\] \(fields\.starts_at\): '1704164645000' is not epoch seconds"),
    ("empty name", {}, b'{"check": "", "state": "ok", "host": "h", "level": "l", "message": "", "time": 1}',
     r"^body\[0\]: fields\.name rendered empty"),
    ("too many alerts", {}, json.dumps([{}] * (MAX_ALERTS + 1)).encode(), r"^body: 1001 alerts in one request"),
    ("url not http", {}, b'{"check": "x", "state": "ok", "host": "h", "level": "l", "message": "", "time": 1, '
     b'"link": "data:text/html,x"}', r"^body\[0\] \(fields\.url\): 'data:text/html,x' is not an http\(s\) URL"),
]


@pytest.mark.parametrize(("settings", "body", "message"), [(s, b, m) for _, s, b, m in BAD_WEBHOOK],
                         ids=[i for i, _, _, _ in BAD_WEBHOOK])
def test_webhook_refuses_with_the_field_named(settings: dict[str, Any], body: bytes, message: str) -> None:
    with pytest.raises(FieldInvalid, match=message):
        webhook(**settings).parse(body)


# --- settings checked when the catalog loads --------------------------------------------------


@pytest.mark.parametrize(("config", "settings", "loc", "message"), [
    (AlertmanagerConfig, {}, ("token",), "Field required"),
    (AlertmanagerConfig, {"token": "short"}, ("token",), "at least 16"),
    (AlertmanagerConfig, {"token": TOKEN, "api_url": "ftp://am"}, ("api_url",), "not an http"),
    (AlertmanagerConfig, {"token": TOKEN, "tokn": "x"}, ("tokn",), "Extra inputs"),
    (GrafanaConfig, {}, (), "needs `token:`"),
    (GrafanaConfig, {"hmac_secret": SECRET, "signature_header": "X Sig"}, ("signature_header",), "not an HTTP header"),
    (WebhookConfig, {"fields": {"name": "n"}}, ("hmac_secret",), "Field required"),
    (WebhookConfig, {"hmac_secret": "short", "fields": {"name": "n"}}, ("hmac_secret",), "at least 16"),
    (WebhookConfig, {"hmac_secret": SECRET}, ("fields",), "Field required"),
    (WebhookConfig, {"hmac_secret": SECRET, "fields": {"name": "{{ alert.x "}}, ("fields", "name"), "template line 1"),
    (WebhookConfig, {"hmac_secret": SECRET, "fields": {"name": "{{ alert.x | nosuch }}"}}, ("fields", "name"),
     "No filter named 'nosuch'"),
    (WebhookConfig, {"hmac_secret": SECRET, "fields": {"name": "{{ alerts.x }}"}}, ("fields", "name"),
     "uses alerts; a webhook template sees `alert`"),
    (WebhookConfig, {"hmac_secret": SECRET, "fields": {"name": "n", "labels": {"bad-name": "x"}}}, ("fields", "labels"),
     "not a label name"),
    (WebhookConfig, {"hmac_secret": SECRET, "fields": {"name": "n", "labels": {"a": "{% if %}"}}}, ("fields", "labels"),
     "template"),
    (WebhookConfig, {"hmac_secret": SECRET, "fields": {"name": "n", "colour": "x"}},
     ("fields", "colour"), "Extra inputs"),
    (WebhookConfig, {"hmac_secret": SECRET, "fields": {"name": "n"}, "alerts": "data..items"}, ("alerts",),
     "not a dotted path"),
    (WebhookConfig, {"hmac_secret": SECRET, "fields": {"name": "n"}, "max_age": 1}, ("max_age",), "greater than"),
])
def test_config_errors_name_the_setting(config: type[Any], settings: dict[str, Any], loc: tuple[str, ...],
                                        message: str) -> None:
    with pytest.raises(ValidationError) as err:
        config.model_validate(settings)
    [e] = err.value.errors()
    assert tuple(str(p) for p in e["loc"]) == loc and message in e["msg"]


def test_parse_of_ten_alertmanager_alerts_is_fast() -> None:
    doc = copy.deepcopy(AM_DOC)
    doc["alerts"] = [dict(doc["alerts"][0], fingerprint=f"{i:016x}") for i in range(10)]
    body, source = json.dumps(doc).encode(), am()
    start = time.perf_counter()
    for _ in range(200):
        assert len(source.parse(body)) == 10
    per_parse = (time.perf_counter() - start) / 200
    assert per_parse < 2e-3  # measured ~120 us; 2 ms leaves room for a loaded CI host


def test_a_bad_template_in_the_catalog_is_a_file_line_error(tmp_path: Path) -> None:
    from opsroom.catalog.errors import CatalogError
    from opsroom.catalog.loader import load_catalog

    (tmp_path / "alerts.yaml").write_text(
        "alert_sources:\n"
        "  - name: mon\n"
        "    kind: webhook\n"
        f"    hmac_secret: {SECRET}\n"
        "    fields:\n"
        '      name: "{{ alert.x "\n', encoding="utf-8")
    with pytest.raises(CatalogError) as err:
        load_catalog(tmp_path)
    rendered = err.value.render()
    assert f"{tmp_path / 'alerts.yaml'}:6:" in rendered and "fields.name" in rendered and "template line 1" in rendered

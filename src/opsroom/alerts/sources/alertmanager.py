"""Prometheus Alertmanager's webhook receiver, payload version "4", with a bearer token.

The format is Alertmanager's documented `webhook_config` body
(https://prometheus.io/docs/alerting/latest/configuration/#webhook_config). Grafana's unified
alerting sends the same alert shape, so `read_alert` serves both.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from opsroom.alerts.base import AlertIn, AlertSourceKind, SourceConfig
from opsroom.alerts.sources import (
    MAX_ANNOTATION_VALUE,
    MAX_LABEL_VALUE,
    ZERO_TIME,
    FieldInvalid,
    alert_list,
    http_url,
    kind_of,
    label_fingerprint,
    load_json,
    obj,
    parse_time,
    status,
    str_map,
    text,
    wrong,
)

VERSION = "4"


class AlertmanagerConfig(SourceConfig):
    """An Alertmanager source: its receiver's bearer token, and where its API v2 answers."""

    token: str = Field(min_length=16)  # required here, optional in general
    # Base URL of that Alertmanager (e.g. http://alertmanager:9093) for silences over API v2.
    api_url: str | None = None

    @field_validator("api_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http(s) URL; write the Alertmanager base URL, "
                             "e.g. http://alertmanager:9093")
        if parts.query or parts.fragment:
            raise ValueError("the Alertmanager base URL takes no query or fragment")
        return v.rstrip("/")


def read_alert(item: Any, path: str, *, group_key: str | None, extra_urls: tuple[str, ...] = ()) -> AlertIn:
    """One Alertmanager-shaped alert (status, labels, annotations, startsAt, endsAt,
    generatorURL, fingerprint); `extra_urls` are fields tried when generatorURL is empty."""
    a = obj(item, path)
    labels = str_map(a, "labels", path, value_limit=MAX_LABEL_VALUE)
    annotations = str_map(a, "annotations", path, value_limit=MAX_ANNOTATION_VALUE)
    name = labels.get("alertname")
    if not name:
        raise FieldInvalid(f"{path}.labels.alertname", "missing or empty",
                           hint="every alert carries its name in the alertname label")
    if "startsAt" not in a:
        raise FieldInvalid(f"{path}.startsAt", "missing", hint="every alert says when it started")
    starts_at = parse_time(a["startsAt"], f"{path}.startsAt")
    ends = a.get("endsAt")
    # Go's zero time means "not set". A firing alert may carry a future endsAt (its resolve
    # timeout): it is kept as sent, and only `status` says whether the alert is resolved.
    ends_at = None if ends is None or ends == ZERO_TIME or ends == "" else parse_time(ends, f"{path}.endsAt")
    url = http_url(text(a, "generatorURL", path), f"{path}.generatorURL")
    for key in extra_urls:
        if url is None:
            url = http_url(text(a, key, path), f"{path}.{key}")
    return AlertIn(
        fingerprint=text(a, "fingerprint", path, limit=256) or label_fingerprint(name, labels),
        status=status(a.get("status"), f"{path}.status"),
        name=name,
        starts_at=starts_at,
        labels=labels,
        annotations=annotations,
        ends_at=ends_at,
        severity=labels.get("severity") or None,
        summary=annotations.get("summary") or annotations.get("description") or "",
        url=url,
        group_key=group_key,
    )


def read_group(payload: dict[str, Any]) -> str | None:
    """Check the group fields every notification has (Alertmanager's and Grafana's alike)."""
    group_key = text(payload, "groupKey", "")
    status(payload.get("status"), "status")
    text(payload, "receiver", "")
    text(payload, "externalURL", "")
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        str_map(payload, key, "", value_limit=MAX_ANNOTATION_VALUE)
    truncated = payload.get("truncatedAlerts", 0)
    if type(truncated) is not int or truncated < 0:
        wrong("truncatedAlerts", "a whole number, 0 or more", truncated)
    return group_key


class AlertmanagerSource(AlertSourceKind):
    """Alertmanager's webhook_config: `Authorization: Bearer` from http_config.authorization."""

    kind: ClassVar[str] = "alertmanager"
    Config: ClassVar[type[SourceConfig]] = AlertmanagerConfig

    def __init__(self, *, name: str, config: SourceConfig) -> None:
        if not isinstance(config, AlertmanagerConfig):
            config = AlertmanagerConfig.model_validate(config.model_dump(exclude_unset=True))
        super().__init__(name=name, config=config)
        self.settings: AlertmanagerConfig = config

    def parse(self, body: bytes) -> list[AlertIn]:
        payload = load_json(body, sender="Alertmanager webhook")
        if not isinstance(payload, dict):
            wrong("body", "a JSON object (Alertmanager's webhook payload)", payload)
        version = payload.get("version")
        if version != VERSION:
            got = "missing" if version is None else f"{kind_of(version)}, not supported"
            raise FieldInvalid("version", f"{got}; opsroom reads Alertmanager's webhook payload version {VERSION!r}",
                               hint="point an Alertmanager webhook_config at this URL (Alertmanager 0.x sends "
                                    f"version {VERSION!r}); other senders use kind: webhook")
        group_key = read_group(payload)
        items = alert_list(payload.get("alerts"), "alerts")
        return [read_alert(item, f"alerts[{i}]", group_key=group_key) for i, item in enumerate(items)]

    def silence_api(self) -> str | None:
        return self.settings.api_url

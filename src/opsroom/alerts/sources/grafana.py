"""Grafana unified alerting's webhook contact point, with a bearer token, an HMAC signature, or both.

Payload as documented on Grafana's "Configure webhook notifications" page
(https://grafana.com/docs/grafana/latest/alerting/configure-notifications/manage-contact-points/integrations/webhook-notifier/):
Alertmanager's group fields plus orgId, title, state, message, version "1", and per alert
silenceURL, dashboardURL, panelURL, values and valueString.

HMAC, from the same page ("HMAC signature"): Grafana signs with HMAC-SHA256 and the shared
secret, sends the hex signature in the configured header (default X-Grafana-Alerting-Signature),
and, when a timestamp header is configured, puts unix seconds in it and signs
`timestamp + ":" + body` instead of the body alone. Without a timestamp header a signature can
be neither fresh nor new, so set one: then stale, future and replayed requests are refused too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from opsroom.alerts.base import AlertIn, AlertSourceKind, SourceConfig, require_bearer
from opsroom.alerts.sources import (
    FieldInvalid,
    ReplayMemory,
    Signing,
    alert_list,
    header_name,
    kind_of,
    load_json,
    text,
    verify_signature,
    wrong,
)
from opsroom.alerts.sources.alertmanager import read_alert, read_group

VERSION = "1"
_LEGACY = ("ruleName", "evalMatches", "ruleId")  # Grafana's old (pre-9) alerting notification


class GrafanaConfig(SourceConfig):
    """A Grafana contact point: `token` (Authorization header), `hmac_secret`, or both."""

    hmac_secret: str | None = Field(default=None, min_length=16)
    signature_header: str = Field(default="X-Grafana-Alerting-Signature", validate_default=True)  # Grafana's
    timestamp_header: str | None = None  # Grafana has no default; set the same name on both sides
    max_age: int = Field(default=300, ge=10, le=3600)  # seconds, either way of our clock
    replay_capacity: int = Field(default=100_000, ge=100, le=1_000_000)

    @field_validator("signature_header", "timestamp_header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return None if v is None else header_name(v)

    @model_validator(mode="after")
    def _some_credential(self) -> GrafanaConfig:
        if self.token is None and self.hmac_secret is None:
            raise ValueError("a grafana source needs `token:` (the contact point's Authorization header "
                             "credentials), `hmac_secret:` (its HMAC signature secret), or both")
        return self


class GrafanaSource(AlertSourceKind):
    """Grafana's webhook contact point; a token and a secret, when both are set, are both required."""

    kind: ClassVar[str] = "grafana"
    Config: ClassVar[type[SourceConfig]] = GrafanaConfig

    def __init__(self, *, name: str, config: SourceConfig) -> None:
        if not isinstance(config, GrafanaConfig):
            config = GrafanaConfig.model_validate(config.model_dump(exclude_unset=True))
        super().__init__(name=name, config=config)
        self.settings: GrafanaConfig = config
        self.signing: Signing | None = None
        if config.hmac_secret is not None:
            self.signing = Signing(
                secret=config.hmac_secret, signature_header=config.signature_header,
                timestamp_header=config.timestamp_header, separator=b":", max_age=float(config.max_age),
                replay=ReplayMemory(config.replay_capacity) if config.timestamp_header else None)

    def authenticate(self, *, headers: Mapping[str, str], body: bytes, now: float) -> None:
        if self.settings.token is not None:
            require_bearer(self.settings.token, headers, source=self.name)
        if self.signing is not None:
            verify_signature(self.signing, headers, body, now=now, source=self.name)

    def parse(self, body: bytes) -> list[AlertIn]:
        payload = load_json(body, sender="Grafana webhook contact point")
        if not isinstance(payload, dict):
            wrong("body", "a JSON object (Grafana's webhook payload)", payload)
        if "alerts" not in payload and any(k in payload for k in _LEGACY):
            raise FieldInvalid("alerts", "missing: this is a legacy Grafana alerting notification",
                               hint="use Grafana unified alerting (Grafana 9 and later) with a webhook contact point")
        version = payload.get("version", VERSION)
        if version != VERSION:
            raise FieldInvalid("version", f"{kind_of(version)}, not supported; opsroom reads Grafana's "
                               f"webhook payload version {VERSION!r}")
        group_key = read_group(payload)
        org = payload.get("orgId", 0)
        if type(org) is not int:
            wrong("orgId", "a number", org)
        for key in ("title", "state", "message"):
            text(payload, key, "", limit=1 << 20)
        items = alert_list(payload.get("alerts"), "alerts")
        alerts = []
        for i, item in enumerate(items):
            path = f"alerts[{i}]"
            alert = read_alert(item, path, group_key=group_key, extra_urls=("panelURL", "dashboardURL"))
            values = item.get("values")
            if values is not None and not isinstance(values, dict):  # metric values: not labels, not kept
                wrong(f"{path}.values", "an object of query values", values)
            text(item, "valueString", path, limit=1 << 16)
            text(item, "silenceURL", path)
            alerts.append(alert)
        return alerts

"""Any sender of JSON, signed with HMAC-SHA256 and mapped to alerts by templates in the catalog.

Signature: `X-Opsroom-Signature: sha256=<hex HMAC-SHA256 of timestamp + "." + raw body>` with
`X-Opsroom-Timestamp: <unix seconds>`; a request older or newer than `max_age` seconds, or one
already received, is refused. Mapping: `alerts:` is a dotted path to the list in the body (none:
the body is one alert, or a list of them), and `fields:` are sandboxed templates over
{"alert": the item, "body": the whole body}.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from jinja2 import TemplateSyntaxError, meta
from pydantic import BaseModel, ConfigDict, Field, field_validator

from opsroom.alerts.base import AlertIn, AlertSourceKind, SourceConfig, Status, require_bearer
from opsroom.alerts.sources import (
    MAX_LABELS,
    FieldInvalid,
    ReplayMemory,
    Signing,
    alert_list,
    header_name,
    http_url,
    label_fingerprint,
    load_json,
    parse_time,
    show,
    verify_signature,
    wrong,
)
from opsroom.automation.templates import GLOBALS, parse_template, render
from opsroom.errors import Invalid

FIRING = frozenset({"firing", "alerting", "triggered", "problem", "open", "active", "critical", "down"})
RESOLVED = frozenset({"resolved", "ok", "closed", "recovered", "normal", "up", "inactive"})
# Longest each rendered field may be: names and labels are identity, refused when longer; the
# summary and annotations are prose, cut with an ellipsis.
LIMITS = {"name": 256, "fingerprint": 256, "severity": 64, "status": 64, "url": 2048, "label": 256,
          "summary": 2000, "annotation": 8000, "starts_at": 64, "ends_at": 64}
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
# C0, DEL and C1 controls, and the bidi overrides that make a line read other than it is.
_CONTROL_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]+")
_CONTROL_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]+")  # keeps \t and \n
_CONTEXT = {"alert", "body"}
_EPOCH = re.compile(r"\d{1,11}(?:\.\d{1,9})?\Z")


def _check_template(source: str) -> str:
    try:
        tree = parse_template(source)
    except TemplateSyntaxError as exc:
        raise ValueError(f"template {show(source, 60)}: {exc.message} (template line {exc.lineno})") from None
    unknown = meta.find_undeclared_variables(tree) - _CONTEXT - GLOBALS
    if unknown:
        raise ValueError(f"template {show(source, 60)} uses {', '.join(sorted(unknown))}; a webhook template "
                         "sees `alert` (the item) and `body` (the whole request body)")
    return source


class WebhookFields(BaseModel):
    """How an item of the body becomes an alert: one template per AlertIn field."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    status: str = "{{ alert.status | default('firing') }}"
    fingerprint: str | None = None  # default: a hash of the name and the labels
    severity: str | None = None
    summary: str | None = None
    starts_at: str | None = None  # RFC 3339 or epoch seconds; default: when received
    ends_at: str | None = None
    url: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    @field_validator("name", "status", "fingerprint", "severity", "summary", "starts_at", "ends_at", "url")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return None if v is None else _check_template(v)

    @field_validator("labels", "annotations")
    @classmethod
    def _templates(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_LABELS:
            raise ValueError(f"{len(v)} entries; at most {MAX_LABELS}")
        for key, source in v.items():
            if not _LABEL_NAME.match(key):
                raise ValueError(f"{key!r} is not a label name (letters, digits, _; not starting with a digit)")
            _check_template(source)
        return v


class WebhookConfig(SourceConfig):
    """A signed webhook: its secret, header names, replay window and field templates."""

    hmac_secret: str = Field(min_length=16)
    signature_header: str = Field(default="X-Opsroom-Signature", validate_default=True)
    timestamp_header: str = Field(default="X-Opsroom-Timestamp", validate_default=True)
    max_age: int = Field(default=300, ge=10, le=3600)  # seconds, either way of our clock
    replay_capacity: int = Field(default=100_000, ge=100, le=1_000_000)
    alerts: str | None = None  # dotted path to the list of alerts in the body, e.g. data.items
    fields: WebhookFields

    @field_validator("signature_header", "timestamp_header")
    @classmethod
    def _header(cls, v: str) -> str:
        return header_name(v)

    @field_validator("alerts")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not all(part for part in v.split(".")):
            raise ValueError(f"{v!r} is not a dotted path (e.g. data.items)")
        return v


def _clean(value: str, limit: int, where: str, *, prose: bool = False) -> str:
    """A rendered value without control characters, refused (or, for prose, cut) past `limit`."""
    value = (_CONTROL_TEXT.sub("", value) if prose else _CONTROL_LINE.sub(" ", value)).strip()
    if len(value) > limit:
        if prose:
            return value[: limit - 1] + "…"
        raise FieldInvalid(where, f"rendered to {len(value)} characters; at most {limit}",
                           hint="shorten the template's output (e.g. | truncate(100))")
    return value


def _status(value: str, where: str) -> Status:
    word = value.lower()
    if word in RESOLVED:
        return "resolved"
    if word in FIRING:
        return "firing"
    raise FieldInvalid(where, f"rendered to {show(value)}, which is neither firing nor resolved",
                       hint=f"map it in the template; firing: {', '.join(sorted(FIRING))}; "
                            f"resolved: {', '.join(sorted(RESOLVED))}")


def _time(value: str, where: str) -> float:
    if _EPOCH.match(value):  # up to 11 digits: seconds until the year 5138
        return float(value)
    if value.isdigit():
        raise FieldInvalid(where, f"{show(value)} is not epoch seconds (milliseconds?)",
                           hint="divide by 1000 in the template: {{ (alert.ts / 1000) | int }}")
    return parse_time(value, where)


class WebhookSource(AlertSourceKind):
    """A generic JSON sender: HMAC signature with timestamp, replay memory, template mapping."""

    kind: ClassVar[str] = "webhook"
    Config: ClassVar[type[SourceConfig]] = WebhookConfig

    def __init__(self, *, name: str, config: SourceConfig) -> None:
        if not isinstance(config, WebhookConfig):
            config = WebhookConfig.model_validate(config.model_dump(exclude_unset=True))
        super().__init__(name=name, config=config)
        self.settings: WebhookConfig = config
        self.replay = ReplayMemory(config.replay_capacity)
        self.signing = Signing(secret=config.hmac_secret, signature_header=config.signature_header,
                               timestamp_header=config.timestamp_header, separator=b".", prefix="sha256=",
                               max_age=float(config.max_age), replay=self.replay)
        self._path = config.alerts.split(".") if config.alerts else []

    def authenticate(self, *, headers: Mapping[str, str], body: bytes, now: float) -> None:
        if self.settings.token is not None:  # optional extra: a bearer token as well as the signature
            require_bearer(self.settings.token, headers, source=self.name)
        verify_signature(self.signing, headers, body, now=now, source=self.name)

    def _items(self, body: Any) -> tuple[str, list[Any]]:
        if not self._path:
            if isinstance(body, dict):
                return "body", [body]
            return "body", alert_list(body, "body")
        node = body
        for depth, part in enumerate(self._path):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(self._path[: depth + 1])
                raise FieldInvalid(where, "missing", hint=f"the source's `alerts: {self.settings.alerts}` names "
                                   "a list in the body; check the sender's payload")
            node = node[part]
        where = self.settings.alerts or "body"
        return where, alert_list(node, where)

    def parse(self, body: bytes) -> list[AlertIn]:
        data = load_json(body, sender="webhook")
        if not isinstance(data, dict | list):
            wrong("body", "a JSON object or a list of objects", data)
        where, items = self._items(data)
        now = time.time()
        return [self._alert(item, f"{where}[{i}]", data, now) for i, item in enumerate(items)]

    def _alert(self, item: Any, path: str, data: Any, now: float) -> AlertIn:
        if not isinstance(item, dict):
            wrong(path, "an object", item)
        f = self.settings.fields
        context = {"alert": item, "body": data}

        def out(field: str, source: str | None, limit_key: str | None = None, *, prose: bool = False) -> str:
            if source is None:
                return ""
            try:
                rendered = render(source, context)
            except Invalid as exc:
                raise FieldInvalid(path, f"fields.{field}: {exc.message}", hint=exc.hint) from None
            return _clean(rendered, LIMITS[limit_key or field], f"{path} (fields.{field})", prose=prose)

        name = out("name", f.name)
        if not name:
            raise FieldInvalid(path, "fields.name rendered empty", hint="every alert needs a name")
        labels = {k: out(f"labels.{k}", v, "label") for k, v in f.labels.items()}
        labels = {k: v for k, v in labels.items() if v}  # an empty label is no label, as in Prometheus
        annotations = {k: out(f"annotations.{k}", v, "annotation", prose=True) for k, v in f.annotations.items()}
        starts = out("starts_at", f.starts_at)
        ends = out("ends_at", f.ends_at)
        starts_at = _time(starts, f"{path} (fields.starts_at)") if starts else now
        ends_at = _time(ends, f"{path} (fields.ends_at)") if ends else None
        if not math.isfinite(starts_at) or (ends_at is not None and not math.isfinite(ends_at)):
            raise FieldInvalid(path, "times must be finite")
        return AlertIn(
            fingerprint=out("fingerprint", f.fingerprint) or label_fingerprint(name, labels),
            status=_status(out("status", f.status), f"{path} (fields.status)"),
            name=name,
            starts_at=starts_at,
            labels=labels,
            annotations=annotations,
            ends_at=ends_at,
            severity=out("severity", f.severity) or None,
            summary=out("summary", f.summary, prose=True),
            url=http_url(out("url", f.url), f"{path} (fields.url)"),
            group_key=None,
        )

"""The alert source contract: what every sender kind (Alertmanager, Grafana, a signed webhook)
turns a request into, and how it proves who sent it.

A kind is a class registered through the `opsroom_alert_source_kinds` hook. The server builds
one instance per `alert_sources:` item of the catalog as `cls(name=..., config=...)`, `config`
being the item's settings checked by the kind's own `Config` (errors at file:line). For every
POST to /api/v1/alerts/NAME it calls `authenticate` on the raw request first (a refusal is a 401,
audited, before the body is even parsed), then `parse`, which returns the alerts in the body or
raises Invalid naming the field (a 422; nothing of the request is stored).
"""

from __future__ import annotations

import hmac
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from opsroom.errors import Unauthenticated

Status = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class AlertIn:
    """One alert as a sender reported it, whatever its wire format."""

    # Stable identity of the alert within its source (Alertmanager's fingerprint). With starts_at
    # it names one occurrence: a repeat carries both unchanged, a new occurrence a new starts_at.
    fingerprint: str
    status: Status
    name: str  # alertname
    starts_at: float  # epoch seconds
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    ends_at: float | None = None  # set when resolved (Alertmanager also sends a future one while firing)
    severity: str | None = None  # labels.severity where the sender has it
    summary: str = ""  # annotations.summary / description, or the sender's message
    url: str | None = None  # generatorURL: where the sender shows it
    group_key: str | None = None

    def context(self) -> dict[str, Any]:
        """What a source's `service:`/`system:` template and a rule's condition see."""
        return {"labels": self.labels, "annotations": self.annotations, "name": self.name,
                "alertname": self.name, "status": self.status, "severity": self.severity or "",
                "fingerprint": self.fingerprint, "summary": self.summary}


class SourceConfig(BaseModel):
    """A source's settings from its `alert_sources:` item; each kind subclasses it.

    `name`, `kind`, `service` and `system` are read by opsroom itself and never reach here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Bearer token the sender puts in `Authorization: Bearer ...` (through ${VAR}, never in YAML).
    token: str | None = Field(default=None, min_length=16)


class AlertSourceKind(ABC):
    """One kind of alert sender. Subclasses set `kind`, `Config` and implement the rest."""

    kind: ClassVar[str] = "abstract"
    Config: ClassVar[type[SourceConfig]] = SourceConfig

    def __init__(self, *, name: str, config: SourceConfig) -> None:
        self.name = name
        self.config = config

    def authenticate(self, *, headers: Mapping[str, str], body: bytes, now: float) -> None:
        """Raise Unauthenticated unless the request proves it comes from this source.

        The default checks the bearer token; kinds with signatures override it. `headers` has
        lower-case names. Never says which part was wrong beyond what the sender can fix.
        """
        require_bearer(self.config.token, headers, source=self.name)

    @abstractmethod
    def parse(self, body: bytes) -> list[AlertIn]:
        """The alerts in the body, or Invalid naming the field that is wrong (and where)."""

    def silence_api(self) -> str | None:
        """Base URL of the sender's silence API (Alertmanager API v2) or None if it has none."""
        return None


def require_bearer(token: str | None, headers: Mapping[str, str], *, source: str) -> None:
    if token is None:
        raise Unauthenticated(f"alert source {source!r} has no credentials configured",
                              hint="set `token:` (or `hmac_secret:` for a signed webhook) on the source")
    auth = headers.get("authorization", "")
    scheme, _, sent = auth.partition(" ")
    # Compared as bytes: compare_digest refuses non-ASCII str, and a header can carry any byte.
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip().encode(), token.encode()):
        raise Unauthenticated(f"wrong or missing bearer token for alert source {source!r}",
                              hint="send `Authorization: Bearer <the source's token>`")

"""Pydantic models of the catalog's YAML, one class per kind of object.

Field names are what people write in the YAML; errors from these models are
mapped back to file:line:column by the loader.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from opsroom.catalog.durations import Duration

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]
STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
State = Literal["OK", "WARNING", "CRITICAL", "UNKNOWN"]


class Obj(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Fields added after stores held hashes: left out while at their default, so an upgrade
    # does not void the approvals (and quarantine) of every runbook that does not use them.
    _HASH_UNLESS_SET: ClassVar[tuple[str, ...]] = ()

    @property
    def content_hash(self) -> str:
        """sha256 of the object's canonical JSON: detects unapproved edits and binds approvals."""
        data = self.model_dump(mode="json")
        for name in self._HASH_UNLESS_SET:
            if name in data and data[name] == type(self).model_fields[name].default:
                del data[name]
        body = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()


class Environment(Obj):
    name: Name
    title: str | None = None
    protected: bool = False

    @property
    def label(self) -> str:
        return (self.title or self.name).upper()


class System(Obj):
    name: Name
    title: str | None = None
    environment: Name
    description: str | None = None

    @property
    def display(self) -> str:
        return self.title or self.name


class Service(Obj):
    name: Name
    title: str | None = None
    system: Name
    environment: Name | None = None  # defaults to the system's
    depends_on: list[Name] = []
    aliases: list[str] = []  # other names people use in chat
    description: str | None = None


class Host(Obj):
    """A machine runbooks and checks reach over SSH. The host key is pinned: a changed or unknown
    key is refused, never learned. The private key comes from a secret (`${secret:NAME}`) or a
    file readable by its owner only (0600)."""

    name: Name
    address: str = Field(min_length=1, max_length=255)
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    # `ssh-ed25519 AAAA...` (as in known_hosts, without the host name) or `SHA256:...`.
    host_key: str = Field(min_length=8)
    key: str | None = None  # the private key itself, from ${secret:NAME}: never written in the YAML
    key_file: str | None = None  # or a path to it (refused unless mode 0600 or stricter)
    passphrase: str | None = None  # for an encrypted key, from ${secret:NAME}
    jump: Name | None = None  # another host to connect through
    groups: list[Name] = []
    environment: Name | None = None
    max_sessions: int = Field(default=4, ge=1, le=64)  # at most this many at once to this host
    connect_timeout: Duration = 10.0
    description: str | None = None

    @model_validator(mode="after")
    def _one_key(self) -> Host:
        if (self.key is None) == (self.key_file is None):
            raise ValueError("a host needs exactly one of key (from ${secret:NAME}) or key_file (a 0600 file)")
        return self


class _CheckBase(Obj):
    name: Name
    service: Name | None = None
    system: Name | None = None  # for checks of a whole system (synthetic); else the service's
    environment: Name | None = None
    interval: Duration = 60.0
    retry_interval: Duration | None = None  # while soft non-OK; defaults to interval
    timeout: Duration = 10.0
    max_attempts: int = Field(default=3, ge=1, le=100)
    flap_low: float = Field(default=0.25, ge=0.0, le=1.0)
    flap_high: float = Field(default=0.5, ge=0.0, le=1.0)
    enabled: bool = True
    description: str | None = None

    @model_validator(mode="after")
    def _flap_order(self) -> _CheckBase:
        if self.flap_low > self.flap_high:
            raise ValueError("flap_low must not be above flap_high (they are the clear and raise thresholds)")
        return self


class HttpCheck(_CheckBase):
    type: Literal["http"]
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT"] = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    expect_status: list[int] = [200]
    body_match: str | None = None  # a regular expression the body must match
    latency_warning_ms: float | None = None
    latency_critical_ms: float | None = None
    verify_tls: bool = True
    # A new TCP (and TLS) connection for every probe, as blackbox_exporter and check_http do: a
    # service that stops accepting connections cannot hide behind a kept-alive one.
    fresh_connection: bool = False
    # https: the certificate's days left turn WARNING / CRITICAL below these (0 turns it off).
    cert_warning_days: float = Field(default=14.0, ge=0)
    cert_critical_days: float = Field(default=3.0, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://", v):
            raise ValueError("url must start with http:// or https://")
        return v

    @field_validator("body_match")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"body_match is not a valid regular expression: {exc}") from exc
        return v


class TcpCheck(_CheckBase):
    type: Literal["tcp"]
    host: str
    port: int = Field(ge=1, le=65535)


class ProcessCheck(_CheckBase):
    type: Literal["process"]
    via: Name | None = None  # a host: look there over SSH (no agent), not on opsroom's machine
    process_name: str | None = None
    pidfile: str | None = None
    cmdline_match: str | None = None  # a regular expression over the joined command line
    min_count: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _one_way(self) -> ProcessCheck:
        if not (self.process_name or self.pidfile or self.cmdline_match):
            raise ValueError("a process check needs process_name, pidfile or cmdline_match")
        return self


class CommandCheck(_CheckBase):
    type: Literal["command"]
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = {}
    via: Name | None = None  # a host: run the plugin there over SSH, each argv element quoted


class SyntheticStep(Obj):
    """One HTTP request of a synthetic transaction; `{{ vars.NAME }}` in url, headers and body."""

    name: str = Field(min_length=1, max_length=64)
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    json_body: Any = None  # sent as JSON (templated strings inside)
    expect_status: list[int] = [200]
    body_match: str | None = None  # a regular expression the body must match
    body_not_match: str | None = None  # ... and one it must not (an error page served with 200)
    latency_warning_ms: float | None = None
    latency_critical_ms: float | None = None
    # name -> where its value comes from: `json:$.data.token`, `header:X-Request-Id`, `regex:id=(\d+)`.
    extract: dict[str, str] = {}

    @model_validator(mode="after")
    def _one_body(self) -> SyntheticStep:
        if self.body is not None and self.json_body is not None:
            raise ValueError("a step sends body or json_body, not both")
        for pattern in (self.body_match, self.body_not_match):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from exc
        for name, source in self.extract.items():
            kind, sep, _ = source.partition(":")
            if not sep or kind not in ("json", "header", "regex"):
                raise ValueError(f"extract {name}: {source!r} must start with json:, header: or regex:")
        return self


class SyntheticCheck(_CheckBase):
    """A transaction as a user makes it: steps in order, sharing cookies and variables."""

    type: Literal["synthetic"]
    steps: list[SyntheticStep] = Field(min_length=1, max_length=50)
    # Starting variables; secrets through ${secret:NAME} (masked in every result).
    variables: dict[str, str] = {}
    budget_ms: float | None = None  # the whole transaction: WARNING above it
    verify_tls: bool = True


Check = Annotated[HttpCheck | TcpCheck | ProcessCheck | CommandCheck | SyntheticCheck,
                  Field(discriminator="type")]
CHECK_TYPES = ("http", "tcp", "process", "command", "synthetic")


class Parameter(Obj):
    type: Literal["string", "int", "bool", "service", "choice"] = "string"
    description: str | None = None
    required: bool = True
    default: Any = None
    choices: list[str] | None = None
    pattern: str | None = None
    secret: bool = False
    # Longest value accepted, in characters: input reaches argv, rows and the audit log.
    max_length: int = Field(default=1024, ge=1, le=65536)
    # A string value starting with '-' is refused unless the runbook means it as an option.
    allow_options: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Parameter:
        if self.type == "choice" and not self.choices:
            raise ValueError("a parameter of type choice needs a list of choices")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc
        return self


class HttpCall(Obj):
    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    expect_status: list[int] = [200, 201, 202, 204]


class Step(Obj):
    name: str | None = None
    command: list[str] | None = None
    check: str | None = None  # a check name (templated); waits until OK or the deadline
    http: HttpCall | None = None
    timeout: Duration = 60.0
    deadline: Duration = 30.0  # for check steps
    poll: Duration = 0.5  # for check steps
    env: dict[str, str] = {}
    cwd: str | None = None
    continue_on_error: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("command", "check", "http") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "a step needs exactly one of command (an argv list), check (a check name) or http"
                + (f"; this one has {', '.join(kinds)}" if kinds else "")
            )
        if self.command is not None and not self.command:
            raise ValueError("command must be a non-empty argv list, e.g. [systemctl, restart, nginx]")
        return self

    @property
    def kind(self) -> str:
        return "command" if self.command is not None else "check" if self.check is not None else "http"

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.command is not None:
            return " ".join(self.command[:3])
        return f"check {self.check}" if self.check else f"http {self.http.url if self.http else ''}"


Approval = Annotated[str, Field(pattern=r"^(none|auto|role [a-z0-9_-]+(,\s*[a-z0-9_-]+)*)$")]


def approval_roles(policy: str | None) -> list[str] | None:
    """'role approver, admin' -> ['approver', 'admin']; 'none' -> []; 'auto'/None -> None."""
    if policy is None or policy == "auto":
        return None
    if policy == "none":
        return []
    return [r.strip() for r in policy.removeprefix("role ").split(",") if r.strip()]


class Runbook(Obj):
    name: Name
    title: str | None = None
    description: str | None = None
    environment: Name | None = None
    # local: child processes of the server; ssh: command steps run on `hosts` / `group` over SSH.
    target: Literal["local", "ssh"] = "local"
    hosts: list[str] = []  # host names, or templates such as "{{ params.host }}"
    group: Name | None = None  # every host of this group
    parallel: int = Field(default=1, ge=1, le=200)  # hosts at once (fan-out)
    max_failures: int = Field(default=0, ge=0)  # stop starting hosts once more than this failed
    parameters: dict[str, Parameter] = {}
    steps: list[Step] = Field(min_length=1)
    timeout: Duration = 600.0
    # Who must approve a run a person asks for. 'auto' = role approver on protected
    # environments, none elsewhere (none for a readonly runbook: it changes nothing).
    approval: Approval = "auto"
    # A reviewed claim that it only reads (`tail-log service-b`): running it needs execution.read,
    # what a viewer holds, instead of runbook.run (docs/access.md, "Read-only production").
    readonly: bool = False
    _HASH_UNLESS_SET: ClassVar[tuple[str, ...]] = ("readonly",)
    summary: str | None = None  # e.g. "start {{ params.service }}"
    success_message: str | None = None
    failure_message: str | None = None
    # Server environment variables its commands receive; they get a minimal environment otherwise.
    inherit_env: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = []

    @model_validator(mode="after")
    def _target(self) -> Runbook:
        if self.target == "ssh" and not (self.hosts or self.group):
            raise ValueError("target ssh needs hosts (names or templates) or group")
        if self.target == "local" and (self.hosts or self.group):
            raise ValueError("hosts and group are for target: ssh")
        return self


class RuleWhen(Obj):
    check: str | None = None
    service: Name | None = None
    system: Name | None = None
    # Label matchers over a received alert: `alertname=~"HighLatency.*", severity="page"` (or a
    # list of such). With it, service/system only narrow which alerts; state does not apply.
    alert: str | list[str] | None = None
    state: list[State] = ["CRITICAL"]
    state_type: Literal["hard", "soft", "any"] = "hard"
    attempt: int | None = Field(default=None, ge=1)  # only on this soft attempt (Nagios event handler style)
    condition: str | None = None  # a sandboxed Jinja expression over the event

    @field_validator("state", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("alert")
    @classmethod
    def _matchers(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is not None:
            from opsroom.alerts.matchers import parse_matchers

            parse_matchers(v)  # ValueError says which matcher and why
        return v

    @model_validator(mode="after")
    def _one_subject(self) -> RuleWhen:
        subjects = [k for k in ("check", "service", "system") if getattr(self, k)]
        if self.alert is not None:
            if self.check is not None:
                raise ValueError("when has both alert and check: a rule reacts to one kind of event; "
                                 "narrow alerts with service or system")
            if self.attempt is not None:
                raise ValueError("attempt counts a check's soft results; an alert has none")
            return self
        if len(subjects) != 1:
            raise ValueError("when needs exactly one of check, service or system (or alert matchers)")
        return self

    @property
    def alert_matchers(self) -> tuple[Any, ...]:
        """The parsed `alert:` matchers (alerts.matchers.Matcher), () for a check rule."""
        if self.alert is None:
            return ()
        from opsroom.alerts.matchers import parse_matchers

        return parse_matchers(self.alert)


class RuleThen(Obj):
    runbook: Name
    params: dict[str, str] = {}


class Verify(Obj):
    check: str | None = None  # defaults to the check that triggered the rule
    deadline: Duration = 60.0


class Policy(Obj):
    approval: Approval = "none"
    max_runs: int = Field(default=3, ge=1)
    window: Duration = 3600.0
    cooldown: Duration = 60.0
    verify: Verify | None = Verify()
    escalate: bool = True


class Rule(Obj):
    name: Name
    enabled: bool = True
    description: str | None = None
    when: RuleWhen
    then: RuleThen
    policy: Policy = Policy()


class Room(Obj):
    name: Name
    title: str | None = None
    platform: Literal["web"] = "web"  # every room is in the web UI; other platforms are bound
    systems: list[Name] = []
    # Channels on other platforms that are this same conversation: `slack:#ops`, `irc:"#ops"`.
    bind: list[str] = []

    @field_validator("bind")
    @classmethod
    def _bindings(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for text in v:
            platform, sep, channel = text.partition(":")
            if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", platform) or not channel.strip():
                raise ValueError(f"{text!r} is not PLATFORM:CHANNEL; write e.g. `slack:#ops` or "
                                 "`matrix:!abc:example.org`")
            if text in seen:
                raise ValueError(f"{text!r} is bound twice")
            seen.add(text)
        return v


class Platform(Obj):
    """A chat platform the server connects to; its other fields are the adapter's settings
    (tokens through ${VAR}, never written in the YAML), checked by the adapter's Config."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: Name  # what bindings name: `bind: [slack:#ops]`
    type: str | None = None  # the adapter kind (slack, irc, ...); defaults to the name

    @property
    def kind(self) -> str:
        return self.type or self.name

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AlertSource(Obj):
    """A sender of alerts (POST /api/v1/alerts/NAME); its other fields are the kind's settings
    (token, hmac_secret, api_url ...), checked by the kind's Config at load."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: Name
    kind: str  # alertmanager | grafana | webhook, or a plugin's
    # How an alert maps to the catalog: templates over labels/annotations, e.g. "{{ labels.service }}".
    service: str | None = None
    system: str | None = None
    environment: Name | None = None  # for alerts that map to no service or system

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Alias(Obj):
    pattern: str  # e.g. "start {service}"
    runbook: Name
    params: dict[str, str] = {}
    help: str | None = None

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if not v.strip() or v.strip().startswith("{"):
            raise ValueError("an alias pattern starts with a word, e.g. 'start {service}'")
        return " ".join(v.split())

    @property
    def placeholders(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.pattern)


class Role(Obj):
    name: Name
    permissions: list[str] = []
    inherits: list[Name] = []


class RoleBinding(Obj):
    """`{role: operator, environment: test}`: the role in that environment (and system) only."""

    role: Name
    environment: Name
    system: Name | None = None


def _role_entry(v: Any) -> str:
    return "binding" if isinstance(v, dict | RoleBinding) else "role"


# A plain name is an unscoped role (every environment, as before scopes); a mapping is a
# RoleBinding. The tags keep pydantic's error paths pointing at the entry (catalog/errors.py).
RoleEntry = Annotated[Annotated[Name, Tag("role")] | Annotated[RoleBinding, Tag("binding")],
                      Discriminator(_role_entry)]


class User(Obj):
    name: str
    roles: list[RoleEntry] = ["viewer"]
    display_name: str | None = None
    password_env: str | None = None  # bootstrap password from this variable, never from the YAML

    @field_validator("name")
    @classmethod
    def _normal_name(cls, v: str) -> str:
        # The same rule as every other door (access/names.py), written in its stored form.
        from opsroom.access.names import ALLOWED, name_problem, normalise_name

        problem = name_problem(v)
        if problem is not None:
            raise ValueError(f"{problem}; user names are {ALLOWED}")
        if normalise_name(v) != v:
            raise ValueError(f"write the user name as {normalise_name(v)!r}: names are stored case-folded")
        return v

    @property
    def unscoped_roles(self) -> list[str]:
        return [r for r in self.roles if isinstance(r, str)]

    @property
    def bindings(self) -> list[RoleBinding]:
        return [r for r in self.roles if isinstance(r, RoleBinding)]


KINDS: dict[str, str] = {
    "environments": "environment",
    "systems": "system",
    "services": "service",
    "checks": "check",
    "runbooks": "runbook",
    "rules": "rule",
    "rooms": "room",
    "aliases": "alias",
    "roles": "role",
    "users": "user",
    "platforms": "platform",
    "alert_sources": "alert_source",
    "hosts": "host",
}

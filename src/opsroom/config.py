"""Process settings from OPSROOM_* environment variables.

The catalog (systems, checks, runbooks...) is config-as-code and lives in YAML;
this module only holds what differs per deployment: where data lives, how to
reach the database, how the server listens. There is no default password or
secret here: web sessions are random tokens stored hashed, and users get
passwords only from `opsroom user passwd`, a `password_env` variable, or the demo.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting's message must not echo the others (a client secret).
    model_config = SettingsConfigDict(env_prefix="OPSROOM_", extra="ignore", hide_input_in_errors=True)

    data: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("opsroom")))
    database_url: str | None = None
    catalog: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    demo: bool = False
    # None: automatic (Secure over https or when listening beyond loopback); true/false forces it.
    secure_cookies: bool | None = None
    # Request bodies over this are refused (413) before anything reads them.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    session_hours: float = 12.0
    check_result_retention: int = 200
    # An OK check that stays OK keeps one result per this many seconds (0: every result); every
    # non-OK result and every state change is kept. 20,000 checks would otherwise write ~430
    # million rows a day to keep 200 each: 13 minutes of history for a 4 s check, not 3 hours.
    check_result_ok_interval: float = 60.0
    log_level: str = Field(default="info", pattern=r"(?i)^(critical|error|warning|info|debug|trace)$")
    # Where the CLI's person-acting commands (`runbook run`, `check run`) send their requests.
    url: str = "http://127.0.0.1:8080"
    # How people reach the web UI: chat messages cut short link here. Default: host and port.
    public_url: str | None = None
    # Runbook steps on Celery workers (docs/workers.md): the broker for every environment, and
    # per environment (OPSROOM_BROKERS='{"prod": "amqp://prod:...@mq/opsroom"}'), which wins.
    # None of either: every step runs in the server's own process.
    broker_url: str | None = None
    brokers: dict[str, str] = Field(default_factory=dict)
    # Several servers on one PostgreSQL (docs/cluster.md): checks are shared out in this many
    # shards; a server heartbeats this often and is dead (its shards taken over) after dead_after.
    cluster_shards: int = Field(default=64, ge=1, le=4096)
    cluster_heartbeat: float = Field(default=1.0, gt=0, le=60)
    cluster_dead_after: float = Field(default=3.0, gt=0, le=600)
    # The event log (docs/events.md) keeps this long what every consumer has read: the incident
    # timeline and audit correlation read it.
    event_log_keep_days: float = Field(default=30.0, gt=0)
    # Single sign-on with OpenID Connect (docs/access.md): all unset, the login page has no SSO
    # button. The client secret is a SecretStr: printed as ********** in any repr or log line.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_provider_name: str = Field(default="single sign-on", max_length=64)
    oidc_scopes: str = "openid profile email"
    oidc_groups_claim: str = "groups"
    oidc_name_claim: str = "preferred_username"
    # IdP group -> opsroom roles, as JSON: {"ops-approvers": ["approver"], "ops": ["operator"]}.
    oidc_roles: dict[str, list[str]] = Field(default_factory=dict)
    # File integrity (docs/integrity.md): the catalog and its runbooks' scripts are always watched;
    # these paths too (JSON list: OPSROOM_INTEGRITY_PATHS='["/etc/opsroom", "/opt/ops/bin"]').
    integrity_paths: list[Path] = Field(default_factory=list)
    # The full rescan that catches what inotify dropped (queue overflow, network filesystems).
    integrity_scan_minutes: float = Field(default=15.0, gt=0, le=1440)
    integrity_watch: bool = True  # false: rescans only (no inotify watches)
    # Files are hashed up to this many bytes (a larger one: its head, plus size, mtime and ctime).
    integrity_max_hash_bytes: int = Field(default=256 * 1024 * 1024, ge=4096)
    # Text files up to this size are kept with the baseline, so a change comes with a diff.
    integrity_max_diff_bytes: int = Field(default=256 * 1024, ge=0, le=16 * 1024 * 1024)
    integrity_max_files: int = Field(default=20_000, ge=1)  # per watched tree
    # Audit checkpoints (docs/audit.md): signed (log name, size, head) kept off the database, so
    # a cut tail or a rewritten chain is seen. 0 switches a trigger off; both 0: on demand only.
    audit_log_name: str = Field(default="opsroom", min_length=1, max_length=128)
    audit_checkpoint_every: int = Field(default=1000, ge=0)  # records
    audit_checkpoint_seconds: float = Field(default=300.0, ge=0)
    audit_checkpoint_dir: Path | None = None  # default DATA/audit-checkpoints; a git work tree: committed
    audit_syslog: str | None = None  # udp://host:514, tcp://host:514 or /dev/log (RFC 5424)
    audit_key_file: Path | None = None  # default DATA/audit-signing.key (0600, made on first use)

    @model_validator(mode="after")
    def _oidc_complete_and_safe(self) -> Settings:
        problem = oidc_problem(self)
        if problem:
            raise ValueError(f"single sign-on refused: {problem}")
        return self

    @property
    def oidc_enabled(self) -> bool:
        return self.oidc_issuer is not None

    def broker_for(self, environment: str) -> str | None:
        """The broker whose queue `opsroom.<environment>` carries that environment's steps, if any."""
        return self.brokers.get(environment) or self.broker_url or None

    @property
    def web_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data / 'opsroom.db'}"


def loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def oidc_problem(s: Settings) -> str | None:
    """Why the OIDC settings are unsafe or incomplete (refused at start, never at the first login)."""
    given = [n for n in ("oidc_issuer", "oidc_client_id", "oidc_client_secret") if getattr(s, n)]
    if not given and not s.oidc_roles:
        return None
    if s.oidc_issuer is None:
        named = ", ".join("OPSROOM_" + n.upper() for n in given) or "OPSROOM_OIDC_ROLES"
        return f"OPSROOM_OIDC_ISSUER is not set (given: {named})"
    url = urlsplit(s.oidc_issuer)
    if url.scheme not in ("https", "http") or not url.hostname:
        return f"OPSROOM_OIDC_ISSUER {s.oidc_issuer!r} is not an https URL"
    # Discovery, keys and the code exchange travel to the issuer: over plain http anyone on the path
    # could swap the signing keys and sign in as anyone. Only loopback (a provider on this host) may.
    if url.scheme == "http" and not loopback_host(url.hostname):
        return f"OPSROOM_OIDC_ISSUER {s.oidc_issuer!r} uses http: use https (plain http only on loopback)"
    if url.query or url.fragment or url.username or url.password:
        return "OPSROOM_OIDC_ISSUER must be the issuer URL alone (no query, fragment or credentials)"
    if not s.oidc_client_id:
        return "OPSROOM_OIDC_CLIENT_ID is not set"
    if s.oidc_client_secret is None or not s.oidc_client_secret.get_secret_value():
        return "OPSROOM_OIDC_CLIENT_SECRET is not set (opsroom is a confidential client)"
    if "openid" not in s.oidc_scopes.split():
        return f"OPSROOM_OIDC_SCOPES {s.oidc_scopes!r} lacks `openid`"
    if not s.oidc_roles:
        return ("OPSROOM_OIDC_ROLES maps no group to a role: nobody could sign in "
                '(e.g. OPSROOM_OIDC_ROLES=\'{"ops-approvers": ["approver"]}\')')
    if not s.oidc_groups_claim or not s.oidc_name_claim:
        return "OPSROOM_OIDC_GROUPS_CLAIM and OPSROOM_OIDC_NAME_CLAIM must name claims"
    return None

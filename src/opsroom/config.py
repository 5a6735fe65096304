"""Process settings from OPSROOM_* environment variables.

The catalog (systems, checks, runbooks...) is config-as-code and lives in YAML;
this module only holds what differs per deployment: where data lives, how to
reach the database, how the server listens. There is no default password or
secret here: web sessions are random tokens stored hashed, and users get
passwords only from `opsroom user passwd`, a `password_env` variable, or the demo.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSROOM_", extra="ignore")

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

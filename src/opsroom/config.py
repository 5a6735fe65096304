"""Process settings from OPSROOM_* environment variables.

The catalog (systems, checks, runbooks...) is config-as-code and lives in YAML;
this module only holds what differs per deployment: where data lives, how to
reach the database, and the secret that signs sessions.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import platformdirs
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class InsecureSettings(ValueError):
    """Raised when a production setting would be guessable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSROOM_", extra="ignore")

    data: Path = Field(default_factory=lambda: Path(platformdirs.user_data_dir("opsroom")))
    database_url: str | None = None
    catalog: Path | None = None
    secret_key: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    demo: bool = False
    # Sessions behind TLS must set this; plain-http loopback (the demo, tests) cannot.
    secure_cookies: bool = False
    session_hours: float = 12.0
    check_result_retention: int = 200
    log_level: str = "info"

    @model_validator(mode="after")
    def _refuse_insecure(self) -> Settings:
        if self.secret_key is not None and len(self.secret_key) < 32 and not self.demo:
            raise InsecureSettings(
                "OPSROOM_SECRET_KEY is shorter than 32 characters; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return self

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data / 'opsroom.db'}"

    def resolved_secret(self) -> str:
        """Return the signing secret, creating one in the data dir on first use.

        A per-install random secret is never a default password: it is made here,
        stored 0600, and never printed.
        """
        if self.secret_key:
            return self.secret_key
        self.data.mkdir(parents=True, exist_ok=True)
        path = self.data / "secret.key"
        if not path.exists():
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()

"""One real server for the typed-API tests: a small catalog, users of several roles, their tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.harness import Served, served_with_tokens
from tests.factories import write_catalog

DEV_PASSWORD = "dev-api-test-password"
CATALOG = {
    "environments": [{"name": "test"}, {"name": "prod", "protected": True}],
    "systems": [{"name": "sys", "environment": "test"}, {"name": "live", "environment": "prod"}],
    "services": [{"name": "svc", "system": "sys"}, {"name": "web", "system": "live"}],
    "checks": [{"name": "svc-tcp", "type": "tcp", "service": "svc", "host": "127.0.0.1", "port": 9,
                "interval": "60s", "timeout": "200ms"}],
    "runbooks": [
        {"name": "noop", "approval": "none", "environment": "test",
         "parameters": {"n": {"type": "int", "default": 1}}, "steps": [{"command": ["true"]}]},
        {"name": "guarded", "approval": "role approver", "environment": "test",
         "parameters": {"n": {"type": "int", "default": 1}}, "steps": [{"command": ["true"]}]},
    ],
    "rules": [{"name": "kick", "when": {"check": "svc-tcp"}, "then": {"runbook": "noop"}}],
    "rooms": [{"name": "ops", "title": "Operations"}, {"name": "opsprod", "systems": ["live"]}],
    "roles": [{"name": "auditor", "permissions": ["audit.read"]}],
    "users": [{"name": "root-admin", "roles": ["admin"]},
              {"name": "dev", "roles": ["viewer"], "password_env": "OPSROOM_TEST_DEV_PW"},
              {"name": "op", "roles": ["operator"]},
              {"name": "aud", "roles": ["auditor"]}],
}


Api = Served  # the typed-API tests' server: this catalog, a token for each of its users


@contextmanager
def api_server(tmp: Path) -> Iterator[Api]:
    catalog = write_catalog(tmp / "catalog", CATALOG)
    with served_with_tokens(tmp, catalog, ("root-admin", "dev", "op", "aud"),
                            env_extra={"OPSROOM_TEST_DEV_PW": DEV_PASSWORD}) as served:
        yield served

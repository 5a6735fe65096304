"""A catalog with role bindings scoped by environment and system (docs/access.md, "Roles and scopes")."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.factories import small_catalog

OK = [sys.executable, "-c", "print('OK - fine')"]

# name -> roles as the catalog writes them
USERS: dict[str, list[Any]] = {
    "you": ["operator"],
    "boss": ["approver"],
    "dev": ["viewer", {"role": "operator", "environment": "test"}],  # the example
    "tester": [{"role": "operator", "environment": "test"}, {"role": "approver", "environment": "test"}],
    "prodapp": [{"role": "approver", "environment": "prod"}],
    "sysa": [{"role": "operator", "environment": "prod", "system": "sys-a"},
             {"role": "approver", "environment": "prod", "system": "sys-a"}],
    "admin": ["admin"],
}


def scoped_catalog(tmp: Path, users: dict[str, list[Any]] | None = None) -> Path:
    """Environments test and prod (protected); prod has systems sys-a and sys-b.

    `poke SERVICE` runs at once in the service's environment; `guarded SERVICE` waits for an
    approver there; `tail SERVICE` is readonly."""
    # `tag` tells otherwise identical runs apart (one active run per runbook and parameters).
    params = {"service": {"type": "service"}, "tag": {"type": "string", "required": False, "default": ""}}
    step = [{"command": [sys.executable, "-c", "import sys; print('poked', sys.argv[1])", "{{ params.service }}"]}]
    return small_catalog(
        tmp,
        systems=[{"name": "sys", "environment": "test"}, {"name": "sys-a", "environment": "prod"},
                 {"name": "sys-b", "environment": "prod"}],
        services=[{"name": "svc", "system": "sys"}, {"name": "svc-a", "system": "sys-a"},
                  {"name": "svc-b", "system": "sys-b"}],
        checks=[{"name": f"{s}-cmd", "type": "command", "service": s, "interval": "60s", "argv": OK}
                for s in ("svc", "svc-a", "svc-b")],
        runbooks=[{"name": "poke", "approval": "none", "parameters": params, "steps": step},
                  {"name": "guarded", "approval": "role approver", "parameters": params, "steps": step},
                  # Read-only production: a viewer's `tail SERVICE` (no approval on prod either).
                  {"name": "tail", "readonly": True, "parameters": params, "steps": step}],
        aliases=[],
        rooms=[{"name": "ops"}],
        users=[{"name": n, "roles": r} for n, r in (users or USERS).items()],
    )

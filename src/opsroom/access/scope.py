"""Where an action lands (environment, system), for the scoped role bindings of access/identity.py.

The services ask here so every door answers for the same scope: a run's is the service it acts
on (else the runbook's own environment), an execution's is what its row recorded, a check's
is its service's or system's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opsroom.catalog.catalog import Catalog
from opsroom.catalog.schema import Runbook


@dataclass(frozen=True)
class Scope:
    environment: str | None
    system: str | None = None

    @property
    def label(self) -> str:
        if self.environment is None:
            return "no environment"
        return f"environment {self.environment}" + (f", system {self.system}" if self.system else "")


def run_system(catalog: Catalog, runbook: Runbook | None, params: Mapping[str, Any]) -> str | None:
    """The system of the service a run acts on; None when it names no service (a system binding
    then does not cover it: default deny)."""
    if runbook is None:
        return None
    for pname, spec in runbook.parameters.items():
        if spec.type == "service" and isinstance(params.get(pname), str):
            svc = catalog.services.get(params[pname])
            if svc is not None:
                return svc.system
    return None


def execution_scope(catalog: Catalog, *, runbook: str, params: Mapping[str, Any] | None,
                    environment: str | None) -> Scope:
    """An execution's scope: the environment stored with it (never recomputed from a catalog that
    may have changed since), and the system of the service it acted on."""
    return Scope(environment, run_system(catalog, catalog.runbooks.get(runbook), params or {}))


def check_scope(catalog: Catalog, check: str) -> Scope:
    if check not in catalog.checks:
        return Scope(None)
    return Scope(catalog.check_environment(check), catalog.check_system(check))

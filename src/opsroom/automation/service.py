"""Automation service: the catalog's rules as a person reads them, with what each has done lately."""

from __future__ import annotations

import time
from typing import Any

from opsroom.access.identity import Actor
from opsroom.audit import service as audit
from opsroom.runtime import Runtime


async def list_rules(rt: Runtime, *, actor: Actor) -> list[dict[str, Any]]:
    """Every rule: when it acts, what it runs, its policy, and its runs in the current window."""
    actor.require("status.read", what="list rules")
    engine = rt.rules
    now = time.time()
    out = []
    for name, rule in rt.catalog.rules.items():
        runs = [at for at in engine.runs.get(name, ()) if at >= now - rule.policy.window] if engine else []
        out.append({"name": name, "enabled": rule.enabled, "description": rule.description,
                    "when": rule.when.model_dump(mode="json", exclude_none=True),
                    "runbook": rule.then.runbook, "params": dict(rule.then.params),
                    "approval": rule.policy.approval, "max_runs": rule.policy.max_runs,
                    "window_s": rule.policy.window, "cooldown_s": rule.policy.cooldown,
                    "runs_in_window": len(runs), "last_run_at": max(runs) if runs else None,
                    "suspended": getattr(engine, "suspended", None)})
    await audit.append_alone(rt, actor=actor, action="rule.list", target="rules", details={"count": len(out)})
    return out

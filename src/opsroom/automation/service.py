"""Automation service: the catalog's rules as a person reads them, with what each has done lately."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from sqlalchemy import select

from opsroom.access.identity import Actor
from opsroom.audit import service as audit
from opsroom.automation.models import RuleRunRow
from opsroom.runtime import Runtime


async def list_rules(rt: Runtime, *, actor: Actor) -> list[dict[str, Any]]:
    """Every rule: when it acts, what it runs, its policy, and its runs in the current window.

    The runs are read from the store: they are the cluster's, whichever server ran them.
    """
    actor.require("status.read", what="list rules")
    engine = rt.rules
    now = time.time()
    horizon = now - max((r.policy.window for r in rt.catalog.rules.values()), default=0.0)
    runs: dict[str, list[float]] = defaultdict(list)
    async with rt.read() as s:
        for rule_name, at in await s.execute(select(RuleRunRow.rule, RuleRunRow.at).where(
                RuleRunRow.outcome == "triggered", RuleRunRow.at >= horizon)):
            runs[rule_name].append(at)
    out = []
    for name, rule in rt.catalog.rules.items():
        recent = [at for at in runs.get(name, ()) if at >= now - rule.policy.window]
        out.append({"name": name, "enabled": rule.enabled, "description": rule.description,
                    "when": rule.when.model_dump(mode="json", exclude_none=True),
                    "runbook": rule.then.runbook, "params": dict(rule.then.params),
                    "approval": rule.policy.approval, "max_runs": rule.policy.max_runs,
                    "window_s": rule.policy.window, "cooldown_s": rule.policy.cooldown,
                    "runs_in_window": len(recent), "last_run_at": max(recent) if recent else None,
                    "suspended": getattr(engine, "suspended", None)})
    await audit.append_alone(rt, actor=actor, action="rule.list", target="rules", details={"count": len(out)})
    return out

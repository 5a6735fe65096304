"""`opsroom access explain USER ACTION TARGET`: which role or binding allows an action, or why none does.

It answers with the same facts the services decide on (access/identity.py Actor.can, the scope of
access/scope.py, approvals' may_vote, runbooks' may_cancel), for the user as stored now, so an
admin sees what the next request would meet. Asking about someone else needs user.manage or
audit.read; every question is audited.
"""

from __future__ import annotations

import time
from typing import Any

from opsroom.access import scope
from opsroom.access import service as access
from opsroom.access.identity import Actor, Binding, permissions_for
from opsroom.access.names import normalise_name
from opsroom.access.schemas import ExplainOut, GroundOut

__all__ = ["ACTIONS", "ExplainOut", "explain"]
from opsroom.approvals.models import ApprovalRow
from opsroom.audit import service as audit
from opsroom.catalog.schema import Runbook
from opsroom.domain.approval import may_vote
from opsroom.errors import Invalid, NotFound, Unauthenticated
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime

# What people ask about -> the permission the service checks (docs/access.md, "Roles and scopes").
ACTIONS: dict[str, str] = {"view": "execution.read", "view-output": "execution.read", "run": "runbook.run",
                           "approve": "approval.decide", "deny": "approval.decide", "cancel": "runbook.run",
                           "check": "check.run"}
TARGETS = {"view": "EXECUTION-ID", "view-output": "EXECUTION-ID", "run": "RUNBOOK [SERVICE | name=value ...]",
           "approve": "REQUEST-ID", "deny": "REQUEST-ID", "cancel": "EXECUTION-ID", "check": "CHECK"}


async def explain(rt: Runtime, *, actor: Actor, user: str, action: str, target: str) -> ExplainOut:
    """Allowed or denied for `user` doing `action` on `target`, with the deciding role or binding."""
    action = action.strip().lower()
    if action not in ACTIONS:
        raise Invalid(f"unknown action {action[:32]!r}",
                      hint="one of: " + ", ".join(f"{a} {t}" for a, t in TARGETS.items()))
    try:
        asked = normalise_name(user)
    except Invalid:
        asked = user[:64]
    # Decided before the lookup: whether someone else exists is not told to whoever may not ask.
    if asked != actor.name or actor.user_id is None:
        if not (actor.can("user.manage") or actor.can("audit.read")):
            await audit.append_alone(rt, actor=actor, action="access.explain", target=f"user:{asked}",
                                     outcome="refused", details={"reason": "missing permission user.manage"})
            actor.require("user.manage", what=f"see what {asked} may do")
    try:
        who = await access.actor_by_name(rt, name=user, door="api")
    except Unauthenticated:
        raise NotFound(f"there is no active user {asked!r}", hint="see them with `opsroom user list`") from None
    out = await _answer(rt, who, action, target.strip())
    await audit.append_alone(rt, actor=actor, action="access.explain", target=f"user:{who.name}",
                             details={"action": action, "target": out.target, "allowed": out.allowed,
                                      "decided_by": out.decided_by})
    return out


async def _answer(rt: Runtime, who: Actor, action: str, target: str) -> ExplainOut:
    permission = ACTIONS[action]
    extra: str | None = None  # a further condition that decided, beside the permission
    if action == "run":
        rb, params = _runbook_target(rt, target)
        where = _run_scope(rt, rb, params)
        shown = " ".join([rb.name, *(f"{k}={v}" for k, v in params.items())])
        # A readonly runbook: runbook.run or the read it needs (runbooks.run_permission) will do.
        if rb.readonly and not who.can("runbook.run", environment=where.environment, system=where.system):
            permission = runbooks.run_permission(rb)
    elif action == "check":
        name, suggestions = rt.catalog.find_check(target)
        if name is None:
            raise NotFound(f"there is no check {target[:64]!r}", hint=_maybe(suggestions))
        where, shown = scope.check_scope(rt.catalog, name), name
    elif action in ("approve", "deny"):
        approval, execution = await _request(rt, target)
        where = _execution_scope(rt, execution)
        shown = f"request #{approval.id} ({execution.summary})"
        verdict = may_vote(status=approval.status, requester_id=approval.requester_id,
                           requester=approval.requester, voter_id=who.user_id, voter=who.name,
                           expired=approval.expires_at < time.time(),
                           voter_roles=who.roles_in(where.environment, where.system), roles=approval.roles)
        extra = None if verdict.allowed else verdict.reason
    else:
        row = await _execution(rt, target)
        where, shown = _execution_scope(rt, row), f"execution #{row.id} ({row.summary})"
        if action == "cancel":
            return _cancel(rt, who, row, where, shown)
    return _verdict(rt, who, action, shown, permission, where, extra)


def _verdict(rt: Runtime, who: Actor, action: str, shown: str, permission: str, where: scope.Scope,
             extra: str | None) -> ExplainOut:
    grounds = _grounds(rt, who, permission, where)
    deciding = who.deciding(permission, environment=where.environment, system=where.system)
    unscoped = [g.role for g in grounds if g.environment is None and g.grants]
    decided_by = (f"unscoped role {unscoped[0] if unscoped else ', '.join(sorted(who.roles))}"
                  if deciding == "unscoped" else f"binding {deciding.label}" if isinstance(deciding, Binding) else None)
    if deciding is None:
        why = _none_covers(who, permission, where)
    elif extra is not None:
        why, decided_by = f"{decided_by} grants {permission} in {where.label}, but {extra}", None
    else:
        why = f"{decided_by} grants {permission} in {where.label}"
    return ExplainOut(user=who.name, action=action, target=shown, permission=permission,
                      environment=where.environment, system=where.system, allowed=decided_by is not None,
                      decided_by=decided_by, why=why, grounds=grounds)


def _cancel(rt: Runtime, who: Actor, row: ExecutionRow, where: scope.Scope, shown: str) -> ExplainOut:
    """Its requester with runbook.run there, or anyone with approval.decide there (runbooks.may_cancel)."""
    own = row.requester_id is not None and row.requester_id == who.user_id
    decide = _verdict(rt, who, "cancel", shown, "approval.decide", where, None)
    if decide.allowed:
        return decide
    run = _verdict(rt, who, "cancel", shown, "runbook.run", where, None if own else
                   f"{row.requested_by} asked for it, and only its requester or an approver may cancel it")
    # The service's own rule has the last word; the grounds above say why (tests keep them agreeing).
    run.allowed = runbooks.may_cancel(who, row, rt.catalog)
    if not run.allowed and "requester" not in run.why:
        run.why = f"{run.why}; nor does any grant approval.decide there"
    return run


def _grounds(rt: Runtime, who: Actor, permission: str, where: scope.Scope) -> list[GroundOut]:
    defined = {n: r.permissions for n, r in rt.catalog.roles.items()}
    inherits = {n: r.inherits for n, r in rt.catalog.roles.items()}

    def role_grants(role: str) -> bool:
        perms = permissions_for([role], defined, inherits)
        return "*" in perms or permission in perms

    out = [GroundOut(role=r, environment=None, system=None, grants=role_grants(r), covers=True,
                     why="unscoped: every environment") for r in sorted(who.roles)]
    for b in who.bindings:
        covers = b.covers(where.environment, where.system)
        grants = "*" in b.permissions or permission in b.permissions
        why = "covers the target" if covers else _miss(b, where)
        out.append(GroundOut(role=b.role, environment=b.environment, system=b.system, grants=grants,
                             covers=covers, why=why))
    return out


def _miss(b: Binding, where: scope.Scope) -> str:
    if where.environment is None:
        return "the target names no environment: only unscoped roles count"
    if b.environment != where.environment:
        return f"bound to environment {b.environment}, the target is in {where.environment}"
    if where.system is None:
        return f"bound to system {b.system}, the target names no system"
    return f"bound to system {b.system}, the target is in system {where.system}"


def _none_covers(who: Actor, permission: str, where: scope.Scope) -> str:
    holding = [b for b in who.bindings if "*" in b.permissions or permission in b.permissions]
    if not holding:
        roles = ", ".join(sorted(who.roles)) or "none"
        return f"no role grants {permission} (unscoped roles: {roles}; no binding with it either)"
    return f"no role grants {permission} in {where.label}: " + "; ".join(
        f"{b.label}: {_miss(b, where)}" for b in holding)


def _maybe(suggestions: list[str]) -> str:
    return f"did you mean {', '.join(suggestions[:3])}?" if suggestions else "see the catalog's names"


def _runbook_target(rt: Runtime, target: str) -> tuple[Runbook, dict[str, Any]]:
    """'poke svc-a' or 'poke service=svc-a': the runbook and the parameters that place it."""
    words = target.split()
    if not words:
        raise Invalid("name the runbook", hint="e.g. `explain dev run restart-service service-b`")
    name, suggestions = rt.catalog.find_runbook(words[0])
    if name is None:
        raise NotFound(f"there is no runbook {words[0][:64]!r}", hint=_maybe(suggestions))
    rb = rt.catalog.runbooks[name]
    params: dict[str, Any] = {}
    positional = iter(rb.parameters)
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq:
            key, value = next(positional, ""), word
        if key not in rb.parameters:
            raise Invalid(f"runbook {rb.name} has no parameter {key[:64]!r}" if key else
                          f"runbook {rb.name} takes no more values than its parameters",
                          hint=f"its parameters: {', '.join(rb.parameters) or 'none'}")
        params[key] = value
    for key, value in params.items():
        if rb.parameters[key].type == "service" and value not in rt.catalog.services:
            found, suggestions = rt.catalog.find_service(value)
            if found is None:
                raise NotFound(f"there is no service {value[:64]!r}", hint=_maybe(suggestions))
            params[key] = found
    return rb, params


def _run_scope(rt: Runtime, rb: Runbook, params: dict[str, Any]) -> scope.Scope:
    for pname, spec in rb.parameters.items():
        if spec.type == "service" and pname in params:
            return scope.Scope(rt.catalog.service_environment(params[pname]), scope.run_system(rt.catalog, rb, params))
    if any(spec.type == "service" for spec in rb.parameters.values()):
        raise Invalid(f"where runbook {rb.name} runs depends on the service it acts on",
                      hint=f"name it, e.g. `{rb.name} <service>`")
    env = rb.environment or (next(iter(rt.catalog.environments)) if len(rt.catalog.environments) == 1 else None)
    return scope.Scope(env)


def _execution_scope(rt: Runtime, row: ExecutionRow) -> scope.Scope:
    return scope.execution_scope(rt.catalog, runbook=row.runbook, params=row.params, environment=row.environment)


def _id(target: str, what: str) -> int:
    text = target.removeprefix("#")
    if not text.isdigit() or len(text) > 9:
        raise Invalid(f"{target[:32]!r} is not {what} number", hint=f"e.g. `17` for {what} #17")
    return int(text)


async def _execution(rt: Runtime, target: str) -> ExecutionRow:
    async with rt.read() as s:
        row = await s.get(ExecutionRow, _id(target, "an execution"))
    if row is None:
        raise NotFound(f"there is no execution #{target.removeprefix('#')}", hint="list them with `executions`")
    return row


async def _request(rt: Runtime, target: str) -> tuple[ApprovalRow, ExecutionRow]:
    async with rt.read() as s:
        approval = await s.get(ApprovalRow, _id(target, "a request"))
        execution = await s.get(ExecutionRow, approval.execution_id) if approval is not None else None
    if approval is None or execution is None:
        raise NotFound(f"there is no request #{target.removeprefix('#')}", hint="see open requests with `status`")
    return approval, execution


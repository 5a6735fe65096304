"""Runbook parameters as attack input: options, length, control characters, environment, refusals audited.

On both real stores (store_rt): PostgreSQL's varchar(255) gave a 500 where SQLite did not care.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from opsroom.access.identity import SYSTEM, Actor, permissions_for
from opsroom.audit.models import AuditRecordRow
from opsroom.catalog.loader import load_catalog
from opsroom.errors import Invalid, NotFound, PermissionDenied
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests.factories import small_catalog, write_catalog

PY = sys.executable
SECRET = "Hunter2-canary-for-params"
OPERATOR = Actor("you", "api", frozenset({"operator"}), permissions_for(["operator"]), user_id=1)
VIEWER = Actor("dev", "api", frozenset({"viewer"}), permissions_for(["viewer"]), user_id=3)
NOBODY = Actor("guest", "api", frozenset(), frozenset(), user_id=9)


def _use(rt: Runtime, tmp: Path, runbooks_yaml: list[dict[str, Any]]) -> None:
    """Swap the runtime's catalog for the small catalog with these extra runbooks."""
    base = yaml.safe_load((small_catalog(tmp / "base") / "catalog.yaml").read_text())
    base["runbooks"] += runbooks_yaml
    rt.catalog = load_catalog(write_catalog(tmp / "swapped", base))


def _step(param: str = "x") -> list[dict[str, Any]]:
    return [{"command": [PY, "-c", "print(1)", "--", f"{{{{ params.{param} }}}}"]}]


async def _records(rt: Runtime, action: str) -> list[AuditRecordRow]:
    async with rt.read() as s:
        return list((await s.execute(select(AuditRecordRow).where(AuditRecordRow.action == action)
                                     .order_by(AuditRecordRow.seq))).scalars())


async def test_a_value_starting_with_a_dash_is_refused_unless_allowed(store_rt: Runtime, tmp_path: Path) -> None:
    _use(store_rt, tmp_path, [{"name": "ls-opt", "environment": "test", "approval": "none",
                               "parameters": {"x": {"type": "string", "allow_options": True}}, "steps": _step()}])
    for value in ("--version", "-la", "  -rf"):
        with pytest.raises(Invalid) as refused:
            await runbooks.request_run(store_rt, actor=OPERATOR, runbook="echo-args", params={"text": value})
        assert "starts with '-'" in refused.value.message and "'text'" in refused.value.message
        assert "allow_options: true" in str(refused.value.hint) and "`--`" in str(refused.value.hint)
    # Inside the value, a dash is just a character.
    row = await runbooks.request_run(store_rt, actor=OPERATOR, runbook="echo-args", params={"text": "a-b --c"})
    assert row.params == {"text": "a-b --c"}
    allowed = await runbooks.request_run(store_rt, actor=OPERATOR, runbook="ls-opt", params={"x": "-la"})
    assert allowed.params == {"x": "-la"}


async def test_a_long_value_is_stored_with_a_summary_that_fits(store_rt: Runtime) -> None:
    long = "x" * 600  # under the 1024 default; over the String(255) summary column
    row = await runbooks.request_run(store_rt, actor=OPERATOR, runbook="echo-args", params={"text": long})
    async with store_rt.read() as s:
        stored = await s.get(ExecutionRow, row.id)
    assert stored is not None and stored.params == {"text": long}
    assert len(stored.summary) == 255 and stored.summary.endswith("…")
    assert stored.summary.startswith("run echo-args text=xxx")


async def test_a_value_over_its_max_length_is_refused_without_being_echoed(store_rt: Runtime,
                                                                           tmp_path: Path) -> None:
    with pytest.raises(Invalid) as refused:
        await runbooks.request_run(store_rt, actor=OPERATOR, runbook="echo-args", params={"text": "y" * 30_000})
    assert refused.value.message == "parameter 'text' is 30000 characters long; the limit is 1024"
    assert "max_length" in str(refused.value.hint)
    _use(store_rt, tmp_path, [{"name": "big", "environment": "test", "approval": "none",
                               "parameters": {"x": {"max_length": 5000}}, "steps": _step()}])
    row = await runbooks.request_run(store_rt, actor=OPERATOR, runbook="big", params={"x": "y" * 4000})
    assert len(row.params["x"]) == 4000
    async with store_rt.read() as s:
        assert (await s.execute(select(ExecutionRow.id))).scalars().all() == [row.id]  # the refused one: no row


@pytest.mark.parametrize("value", ["a\x00b", "line\nforged", "esc\x1b[2J", "del\x7f", "csi\x9bm", "\ud800"])
async def test_control_characters_are_refused_clearly(store_rt: Runtime, value: str) -> None:
    with pytest.raises(Invalid) as refused:
        await runbooks.request_run(store_rt, actor=OPERATOR, runbook="echo-args", params={"text": value})
    assert refused.value.message.startswith("parameter 'text' ")
    assert value not in str(refused.value)


async def test_a_tab_is_text(store_rt: Runtime) -> None:
    row = await runbooks.request_run(store_rt, actor=OPERATOR, runbook="echo-args", params={"text": "a\tb"})
    assert row.params == {"text": "a\tb"}


async def test_errors_about_a_secret_never_quote_it(store_rt: Runtime, tmp_path: Path) -> None:
    _use(store_rt, tmp_path, [{"name": "login", "environment": "test", "approval": "none", "parameters": {
        "token": {"secret": True, "pattern": "[a-z]+"},
        "pin": {"type": "int", "secret": True, "required": False},
        "mode": {"type": "choice", "choices": ["a", "b"], "secret": True, "required": False}},
        "steps": _step("token")}])
    for params in ({"token": SECRET}, {"token": "ok", "pin": SECRET}, {"token": "ok", "mode": SECRET}):
        with pytest.raises(Invalid) as refused:
            await runbooks.request_run(store_rt, actor=OPERATOR, runbook="login", params=params)
        assert SECRET not in str(refused.value)
    # A non-secret value is still quoted: that helps the person fix it.
    with pytest.raises(Invalid) as refused:
        await runbooks.request_run(store_rt, actor=OPERATOR, runbook="count", params={"n": "12345"})
    assert "'12345'" in refused.value.message


async def test_the_environment_is_never_the_catalogs_first(store_rt: Runtime, tmp_path: Path) -> None:
    # Environments are [prod (protected), test]: the old fallback made this run as prod.
    _use(store_rt, tmp_path, [
        {"name": "vague", "environment": "test", "approval": "none", "steps": _step(),
         "parameters": {"x": {"required": False}}},
        {"name": "on-svc", "parameters": {"service": {"type": "service"}}, "steps": _step("service")}])
    # `catalog validate` refuses such a runbook; the run refuses it too should one get past.
    vague = store_rt.catalog.runbooks["vague"]
    store_rt.catalog.runbooks["vague"] = vague.model_copy(update={"environment": None})
    with pytest.raises(Invalid) as refused:
        await runbooks.request_run(store_rt, actor=OPERATOR, runbook="vague", params={})
    assert "does not say which environment" in refused.value.message
    assert "`environment:`" in str(refused.value.hint)
    row = await runbooks.request_run(store_rt, actor=OPERATOR, runbook="on-svc", params={"service": "svc"})
    assert row.environment == "test" and row.status == "pending"  # svc is in test: no approval
    row = await runbooks.request_run(store_rt, actor=OPERATOR, runbook="echo-args", params={"text": "a"})
    assert row.environment == "test"


async def test_refused_runs_and_reads_are_audited(store_rt: Runtime) -> None:
    with pytest.raises(PermissionDenied):
        await runbooks.request_run(store_rt, actor=VIEWER, runbook="echo-args", params={"text": "a"})
    with pytest.raises(PermissionDenied):
        await runbooks.list_executions(store_rt, actor=NOBODY)
    with pytest.raises(PermissionDenied):
        await runbooks.get_execution(store_rt, actor=NOBODY, execution_id=1)
    with pytest.raises(PermissionDenied):
        await runbooks.list_runbooks(store_rt, actor=NOBODY)
    run = await _records(store_rt, "runbook.run")
    assert [(r.actor, r.outcome, r.target) for r in run] == [("dev", "refused", "runbook:echo-args")]
    reads = await _records(store_rt, "execution.read")
    assert [(r.actor, r.outcome, r.target) for r in reads] == [("guest", "refused", "executions"),
                                                               ("guest", "refused", "execution:1")]
    listed = await runbooks.list_runbooks(store_rt, actor=VIEWER)
    assert {r.name for r in listed} >= {"echo-args", "count", "deploy"}
    records = await _records(store_rt, "runbook.list")
    assert [(r.actor, r.outcome) for r in records] == [("guest", "refused"), ("dev", "ok")]
    assert records[-1].details == {"count": len(listed)}
    rows = await runbooks.list_executions(store_rt, actor=SYSTEM)
    assert rows == []  # nothing refused left a row behind


async def test_an_unknown_runbook_name_is_quoted_back_bounded(store_rt: Runtime) -> None:
    with pytest.raises(NotFound) as refused:
        await runbooks.request_run(store_rt, actor=OPERATOR, runbook="z" * 10_000, params={})
    assert len(refused.value.message) < 120 and "zzz…'" in refused.value.message

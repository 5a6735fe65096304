"""The rules engine on a running opsroom: triggers, policy (cooldown, rate limit, approval), verify, escalation."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from opsroom.access.identity import SYSTEM
from opsroom.checks.probes.base import ProbeResult
from opsroom.events import Event, RuleEscalated, RuleHeld, RuleTriggered
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests.factories import small_catalog
from tests.inprocess import booted as _boot
from tests.inprocess import said as _said
from tests.inprocess import settle as _settle

T0 = 1_700_000_000.0
NO_VERIFY: dict[str, Any] = {"verify": None}


def _catalog(tmp: Path, rules: list[dict[str, Any]], *, max_attempts: int = 1, check: str = "svc-cmd") -> Path:
    """One service with a command check that is OK while tmp/up exists, and runbooks that leave traces."""
    up = tmp / "up"
    log = tmp / "runs.jsonl"
    append = "import json,sys; open(sys.argv[1],'a').write(json.dumps(sys.argv[2:])+chr(10))"
    return small_catalog(
        tmp,
        checks=[{"name": check, "type": "command", "service": "svc", "max_attempts": max_attempts,
                 "argv": [sys.executable, "-c",
                          "import os,sys; ok=os.path.exists(sys.argv[1]); print('OK' if ok else 'DOWN - no file');"
                          "sys.exit(0 if ok else 2)", str(up)]}],
        runbooks=[
            {"name": "record", "approval": "none", "environment": "test", "parameters": {"text": {"type": "string"}},
             "steps": [{"command": [sys.executable, "-c", append, str(log), "{{ params.text }}"]}]},
            {"name": "fix", "approval": "none", "environment": "test",
             "steps": [{"command": [sys.executable, "-c", "import sys; open(sys.argv[1],'w').close()", str(up)]}]},
            {"name": "broken", "approval": "none", "environment": "test",
             "steps": [{"command": [sys.executable, "-c", "import sys; print('no luck'); sys.exit(3)"]}]},
        ],
        rules=rules,
        aliases=[],
    )


def _rule(name: str = "heal", *, runbook: str = "record", params: dict[str, str] | None = None,
          when: dict[str, Any] | None = None, policy: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "when": {"check": "svc-cmd", **(when or {})},
            "then": {"runbook": runbook, "params": {"text": "{{ check }}"} if params is None else params},
            "policy": {**NO_VERIFY, **(policy or {})}, **extra}


async def _feed(rt: Runtime, states: list[str], *, check: str = "svc-cmd", output: str = "HTTP 500",
                start: float = 0.0) -> None:
    """Feed results one by one, letting the rules react to each (as they would between real checks)."""
    assert rt.monitor is not None
    for i, state in enumerate(states):
        rt.monitor.record(check, ProbeResult(state=state, output=output, long_output="", latency_ms=1.0,
                                             perfdata={}, down=False), now=T0 + start + i)
        await _settle(rt)


def _runs(tmp: Path) -> list[list[str]]:
    log = tmp / "runs.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def _executions(rt: Runtime) -> list[ExecutionRow]:
    return sorted(await runbooks.list_executions(rt, actor=SYSTEM), key=lambda r: r.id)


async def _runs_in_window(rt: Runtime, rule: str = "heal") -> int:
    """The rule's budget spent, as the store counts it (every server's runs)."""
    from opsroom.automation import service as automation

    return int(next(r for r in await automation.list_rules(rt, actor=SYSTEM) if r["name"] == rule)["runs_in_window"])


def _events(rt: Runtime, kind: type[Event]) -> list[Any]:
    return [e for e in rt.bus.history if isinstance(e, kind)]


async def test_hard_critical_runs_runbook_with_templated_params(tmp_path: Path) -> None:
    rule = _rule(params={"text": "{{ service }}/{{ check }}/{{ state }}/{{ state_type }}"})
    async with _boot(tmp_path, _catalog(tmp_path, [rule], max_attempts=2)) as (rt, fake):
        await _feed(rt, ["CRITICAL"])
        assert _runs(tmp_path) == []  # soft: the hard rule waits
        await _feed(rt, ["CRITICAL"], start=1)
        assert _runs(tmp_path) == [["svc/svc-cmd/CRITICAL/hard"]]
        [ex] = await _executions(rt)
        assert (ex.status, ex.rule, ex.requested_by, ex.door) == ("succeeded", "heal", "rule:heal", "rule")
        assert ex.correlation_id == f"check:svc-cmd:{T0:.3f}"
        said = await _said(rt, fake)
        assert said[0].startswith("Sys is unhealthy: svc is critical (check svc-cmd CRITICAL since")
        assert said[1] == f"recovery runbook record triggered for svc-cmd (rule heal, execution #{ex.id})"
        assert len(said) == 2  # a rule's success is not announced: the health notice says it


async def test_a_suspended_engine_acts_on_nothing(tmp_path: Path) -> None:
    async with _boot(tmp_path, _catalog(tmp_path, [_rule()])) as (rt, _fake):
        rt.bus.keep_history = True
        rt.rules.suspend("server lease lost to another server")
        await _feed(rt, ["CRITICAL"])
        assert _runs(tmp_path) == [] and await _executions(rt) == []
        assert not [e for e in rt.bus.history if isinstance(e, RuleTriggered | RuleHeld | RuleEscalated)]


async def test_soft_attempt_rule_fires_before_hard_and_before_any_notice(tmp_path: Path) -> None:
    rule = _rule(when={"state_type": "soft", "attempt": 2})
    async with _boot(tmp_path, _catalog(tmp_path, [rule], max_attempts=3)) as (rt, fake):
        assert rt.monitor is not None
        await _feed(rt, ["CRITICAL"])
        assert _runs(tmp_path) == []
        await _feed(rt, ["CRITICAL"], start=1)
        assert _runs(tmp_path) == [["svc-cmd"]]
        st = rt.monitor.status["svc-cmd"]
        assert (st.state, st.state_type, st.attempt) == ("CRITICAL", "soft", 2)
        said = await _said(rt, fake)
        assert not [t for t in said if "unhealthy" in t], said
        assert said == ["recovery runbook record triggered for svc-cmd (rule heal, execution #1)"]
        await _feed(rt, ["CRITICAL", "CRITICAL"], start=2)  # hard now, and stays: the soft rule is done
        assert _runs(tmp_path) == [["svc-cmd"]]


async def test_cooldown_holds_a_second_trigger(tmp_path: Path) -> None:
    rule = _rule(policy={"cooldown": "10m", "max_runs": 10})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, fake):
        await _feed(rt, ["CRITICAL", "OK", "CRITICAL"])
        assert _runs(tmp_path) == [["svc-cmd"]]
        assert len(await _executions(rt)) == 1
        [held] = _events(rt, RuleHeld)
        assert held.rule == "heal" and held.reason.startswith("cooldown: last run")
        assert _events(rt, RuleEscalated) == []
        assert not [t for t in await _said(rt, fake) if "needs a human" in t]


async def test_max_runs_per_window_holds_and_escalates(tmp_path: Path) -> None:
    rule = _rule(policy={"cooldown": "1ms", "max_runs": 2, "window": "1h"})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, fake):
        await _feed(rt, ["CRITICAL", "OK", "CRITICAL", "OK", "CRITICAL"])
        assert len(_runs(tmp_path)) == 2
        assert len(await _executions(rt)) == 2
        [held] = _events(rt, RuleHeld)
        assert held.reason == "ran 2 times in the last 3600s (max 2)"
        said = await _said(rt, fake)
        assert said.count("automatic recovery needs a human: rule heal: not retrying: "
                          "ran 2 times in the last 3600s (max 2)") == 1


async def test_failing_recovery_runbook_escalates(tmp_path: Path) -> None:
    rule = _rule(runbook="broken", params={})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, fake):
        await _feed(rt, ["CRITICAL"])
        [ex] = await _executions(rt)
        assert ex.status == "failed" and ex.error == "exit code 3"
        said = await _said(rt, fake)
        assert f"automatic recovery needs a human: rule heal: recovery runbook broken failed (execution #{ex.id})" \
            in said
        assert any("execution #1 failed" in t and "exit code 3" in t for t in said)


async def test_verify_escalates_when_the_check_stays_critical(tmp_path: Path) -> None:
    rule = _rule(policy={"verify": {"deadline": "1s"}})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, fake):
        assert rt.monitor is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert (await rt.monitor.run_check("svc-cmd")).state == "CRITICAL"
        await _settle(rt)
        assert _runs(tmp_path) == [["svc-cmd"]]
        assert loop.time() - started >= 1.0  # it kept looking until the deadline
        [esc] = _events(rt, RuleEscalated)
        assert esc.reason == "svc-cmd is not OK 1s after the recovery runbook ran"
        said = await _said(rt, fake)
        assert said[-1] == "automatic recovery needs a human: rule heal: svc-cmd is not OK 1s after the " \
                           "recovery runbook ran"
        assert rt.monitor.status["svc-cmd"].state == "CRITICAL"


async def test_verify_passes_when_the_runbook_fixes_it(tmp_path: Path) -> None:
    rule = _rule(runbook="fix", params={}, policy={"verify": {"deadline": "3s"}})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, fake):
        assert rt.monitor is not None
        assert (await rt.monitor.run_check("svc-cmd")).state == "CRITICAL"
        await _settle(rt)
        assert rt.monitor.status["svc-cmd"].state == "OK"  # verify re-ran the check
        assert _events(rt, RuleEscalated) == []
        said = await _said(rt, fake)
        assert said[0].startswith("Sys is unhealthy")
        assert said[1].startswith("recovery runbook fix triggered for svc-cmd")
        assert said[2:] == ["Sys is healthy again"]


async def test_flapping_check_holds_the_rule_and_the_room_hears_only_flapping(tmp_path: Path) -> None:
    # The check's name contains "max": holds for flapping must not pass for rate-limit holds.
    rule = _rule(when={"check": "max-conns"})
    async with _boot(tmp_path, _catalog(tmp_path, [rule], max_attempts=2, check="max-conns")) as (rt, fake):
        assert rt.monitor is not None
        await _feed(rt, ["CRITICAL", "OK"] * 7, check="max-conns")  # soft flips only
        assert rt.monitor.status["max-conns"].flapping
        await _feed(rt, ["CRITICAL", "CRITICAL", "OK"] * 3, check="max-conns", start=20)  # hard, while flapping
        assert _runs(tmp_path) == []
        assert await _executions(rt) == []
        held = _events(rt, RuleHeld)
        assert len(held) == 3 and all(h.reason == "max-conns is flapping" for h in held)
        assert _events(rt, RuleEscalated) == []
        said = await _said(rt, fake)
        assert len(said) == 1 and said[0].startswith("max-conns is flapping (")
        assert "notices and rules for it are held until it settles" in said[0]


async def test_rule_gets_its_chance_when_flapping_settles_into_a_problem(tmp_path: Path) -> None:
    rule = _rule(policy={"max_runs": 10, "cooldown": "1ms"})
    async with _boot(tmp_path, _catalog(tmp_path, [rule], max_attempts=2)) as (rt, fake):
        assert rt.monitor is not None
        await _feed(rt, ["CRITICAL", "OK"] * 7 + ["CRITICAL", "CRITICAL"])
        assert rt.monitor.status["svc-cmd"].flapping
        assert _runs(tmp_path) == []
        await _feed(rt, ["CRITICAL"] * 20, start=20)  # stuck: it stops flapping, still CRITICAL
        assert not rt.monitor.status["svc-cmd"].flapping
        assert _runs(tmp_path) == [["svc-cmd"]]
        said = await _said(rt, fake)
        assert said[1:3] == ["svc-cmd stopped flapping", said[2]]
        assert said[2].startswith("Sys is unhealthy: svc is critical")
        assert said[3].startswith("recovery runbook record triggered for svc-cmd (rule heal")


async def test_rule_with_approval_asks_instead_of_running(tmp_path: Path) -> None:
    rule = _rule(policy={"approval": "role approver"})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, fake):
        await _feed(rt, ["CRITICAL"])
        assert _runs(tmp_path) == []
        [ex] = await _executions(rt)
        assert ex.status == "awaiting_approval"
        [trig] = _events(rt, RuleTriggered)
        assert trig.needs_approval and trig.execution_id == ex.id
        said = await _said(rt, fake)
        asks = [t for t in said if "needs approval" in t]
        assert len(asks) == 1 and "(asked by rule:heal)" in asks[0]
        assert "asking boss, lead" in asks[0] and asks[0].endswith(f"Request #{ex.approval_id}.")
        assert not [t for t in said if t.startswith("recovery runbook")]
        await fake.say("ops", "boss", f"approve {ex.approval_id}")
        await _settle(rt)
        assert _runs(tmp_path) == [["svc-cmd"]]
        assert [e.status for e in await _executions(rt)] == ["succeeded"]


async def test_false_condition_does_not_fire(tmp_path: Path) -> None:
    rules = [_rule("on-disk", params={"text": "disk"}, when={"condition": "'disk full' in output"}),
             _rule("on-500", params={"text": "500"}, when={"condition": "'HTTP 500' in output and attempt == 1"})]
    async with _boot(tmp_path, _catalog(tmp_path, rules)) as (rt, _fake):
        await _feed(rt, ["CRITICAL"], output="HTTP 500 from /health")
        assert _runs(tmp_path) == [["500"]]
        assert [t.rule for t in _events(rt, RuleTriggered)] == ["on-500"]
        assert _events(rt, RuleHeld) == []


async def test_broken_condition_escalates_instead_of_guessing(tmp_path: Path) -> None:
    # Names and syntax are checked at load now; a type error only shows with the event's values.
    rule = _rule(when={"condition": "attempt > 'three'"})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, fake):
        await _feed(rt, ["CRITICAL"])
        assert _runs(tmp_path) == []
        said = await _said(rt, fake)
        assert any(t.startswith("automatic recovery needs a human: rule heal: condition") for t in said)


async def test_disabled_rule_never_fires(tmp_path: Path) -> None:
    rule = _rule(enabled=False, policy={"cooldown": "1ms"})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, fake):
        await _feed(rt, ["CRITICAL", "OK", "CRITICAL", "WARNING", "CRITICAL"])
        assert _runs(tmp_path) == []
        assert await _executions(rt) == []
        assert _events(rt, RuleTriggered) == [] and _events(rt, RuleHeld) == []
        assert not [t for t in await _said(rt, fake) if "rule" in t]


async def test_denied_rule_request_is_forgotten_and_refused_duplicates_do_not_count(tmp_path: Path) -> None:
    """Bookkeeping: a denied approval clears the pending verify; a refused duplicate uses no run."""
    from opsroom.access import service as access
    from opsroom.approvals import service as approvals_service

    rule = _rule(policy={"approval": "role approver", "cooldown": "1ms", "max_runs": 5})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, _fake):
        engine = rt.rules
        assert engine is not None
        await _feed(rt, ["CRITICAL"])
        assert await _runs_in_window(rt) == 1 and len(engine.pending_verify) == 1
        # The same problem again while the first request is open: refused as a duplicate, not counted.
        await _feed(rt, ["OK", "CRITICAL"], start=1)
        assert await _runs_in_window(rt) == 1
        assert len(await _executions(rt)) == 1
        approval_id = (await approvals_service.list_open(rt, actor=SYSTEM))[0].id
        boss = await access.actor_by_name(rt, name="boss", door="chat")
        await approvals_service.decide(rt, actor=boss, approval_id=approval_id, approve=False, reason="not now")
        await _settle(rt)
        assert engine.pending_verify == {}


async def test_a_rules_notices_are_in_the_event_log_with_their_published_ids(tmp_path: Path) -> None:
    """Triggered and held notices reach the log (the cluster's announcer reads them from there, and
    a server that dies after publishing one does not lose it), with the uid the bus copy carries."""
    from sqlalchemy import select

    from opsroom.eventlog.models import EventRow

    rule = _rule(policy={"cooldown": "10m", "max_runs": 10})
    async with _boot(tmp_path, _catalog(tmp_path, [rule])) as (rt, _fake):
        await _feed(rt, ["CRITICAL", "OK", "CRITICAL"])
        [triggered], [held] = _events(rt, RuleTriggered), _events(rt, RuleHeld)
        async with rt.read() as s:
            logged = {r.uid: r for r in (await s.execute(select(EventRow).where(
                EventRow.type.in_(["rule.triggered", "rule.held"])))).scalars()}
        assert set(logged) == {triggered.uid, held.uid}
        assert logged[held.uid].payload["reason"].startswith("cooldown")
        assert logged[triggered.uid].origin == rt.node_id

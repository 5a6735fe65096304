"""Rules on alerts, end to end: alerts posted to the real endpoint set off (or do not set off) real
runbook runs; the room is the fake platform."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from opsroom.automation.models import RuleRunRow
from opsroom.catalog.errors import CatalogError
from opsroom.catalog.loader import load_catalog
from tests.alerts.helpers import am_alert, catalog, count, post_am, runs, until
from tests.chat.drivers.fake import FakeDriver
from tests.chat.harness import Served, serve
from tests.factories import small_catalog

NO_VERIFY: dict[str, Any] = {"verify": None, "cooldown": "1ms"}


def _rule(name: str, alert: str | list[str], **when: Any) -> dict[str, Any]:
    policy = when.pop("policy", NO_VERIFY)
    return {"name": name, "when": {"alert": alert, **when},
            "then": {"runbook": "note", "params": {"text": "{{ alertname }}:{{ labels.instance }}"}},
            "policy": policy}


async def _outcomes(served: Served, outcome: str) -> int:
    return await count(served, select(func.count()).select_from(RuleRunRow).where(RuleRunRow.outcome == outcome))


async def test_matchers_narrowing_and_condition_pick_exactly_the_alerts_they_say(tmp_path: Path) -> None:
    rules = [
        _rule("eq", 'alertname="EqA"'),
        _rule("neq", ['alertname="NeqA"', 'team!="db"']),
        _rule("re", 'alertname=~"Re[0-9]+"'),
        _rule("nre", 'alertname="NreA", env!~"dev|test"'),
        _rule("svc", 'alertname="SvcA"', service="service-c"),
        _rule("sys", 'alertname="SysA"', system="system-b"),
        _rule("cond", 'alertname="CondA"', condition="labels.region == 'eu' and severity == 'page'"),
    ]
    sent = [
        ({"alertname": "EqA", "instance": "1"}, True),
        ({"alertname": "EqAB", "instance": "2"}, False),
        ({"alertname": "NeqA", "instance": "1", "team": "web"}, True),
        ({"alertname": "NeqA", "instance": "2", "team": "db"}, False),
        ({"alertname": "Re12", "instance": "1"}, True),
        ({"alertname": "Re", "instance": "2"}, False),
        ({"alertname": "XRe1", "instance": "3"}, False),  # anchored: no match in the middle
        ({"alertname": "NreA", "instance": "1", "env": "prod"}, True),
        ({"alertname": "NreA", "instance": "2", "env": "dev"}, False),
        ({"alertname": "SvcA", "instance": "1", "service": "service-c"}, True),
        ({"alertname": "SvcA", "instance": "2", "service": "service-b"}, False),
        ({"alertname": "SysA", "instance": "1", "service": "db-2"}, True),
        ({"alertname": "SysA", "instance": "2", "service": "service-b"}, False),
        ({"alertname": "CondA", "instance": "1", "region": "eu", "severity": "page"}, True),
        ({"alertname": "CondA", "instance": "2", "region": "us", "severity": "page"}, False),
        ({"alertname": "CondA", "instance": "3", "region": "eu", "severity": "info"}, False),
    ]
    async with serve(tmp_path, None, **catalog(tmp_path, rules=rules)) as served:
        r = await post_am(served, [am_alert(labels) for labels, _ in sent])
        assert r.status_code == 200 and r.json()["fired"] == len(sent), r.text
        expected = sorted(f"{labels['alertname']}:{labels['instance']}" for labels, hit in sent if hit)

        async def all_ran() -> bool:
            return len(runs(tmp_path)) >= len(expected)
        await until(all_ran, timeout=30, what="the runs")
        await served.settle()
        await asyncio.sleep(0.3)  # a wrong extra run would have landed by now
        assert sorted(runs(tmp_path)) == expected
        assert await _outcomes(served, "triggered") == len(expected)
        # The same rule again for another alert (after its 1 ms cooldown); no team matches as "".
        r = await post_am(served, [am_alert({"alertname": "NeqA", "instance": "3"})])
        assert r.json()["fired"] == 1, r.text
        expected = sorted([*expected, "NeqA:3"])
        await until(all_ran, timeout=30, what="the run without a team label")
        # A repeat of the same alerts is no new alert: no rule runs again.
        r = await post_am(served, [am_alert(labels) for labels, _ in sent])
        assert r.json()["repeats"] == len(sent)
        await served.settle()
        await asyncio.sleep(0.3)
        assert sorted(runs(tmp_path)) == expected


async def test_a_silenced_alert_runs_no_rule_is_not_announced_but_is_listed(tmp_path: Path) -> None:
    driver = FakeDriver()
    async with serve(tmp_path, driver, **catalog(tmp_path, rules=[_rule("eq", 'alertname="EqA"')])) as served:
        await driver.attach(served)
        await driver.say("alice", "silence service-b 1h because deploy")
        await served.settle()
        assert any("silenced service-b" in t for t in driver.received()), driver.received()
        r = await post_am(served, [am_alert({"alertname": "EqA", "instance": "1", "service": "service-b"},
                                            summary="p99 2 s")])
        assert r.status_code == 200 and r.json()["fired"] == 1, r.text
        await served.settle()
        await asyncio.sleep(0.3)
        assert runs(tmp_path) == [] and await _outcomes(served, "triggered") == 0
        assert not [t for t in driver.received() if "ALERT firing" in t], driver.received()
        await driver.say("alice", "alerts")
        await served.settle()
        listed = driver.received()[-1]
        assert "1 firing" in listed and "EqA on service-b" in listed and "silenced #1" in listed, listed
        # Another service is not covered: it is announced and runs the rule.
        r = await post_am(served, [am_alert({"alertname": "EqA", "instance": "2", "service": "service-c"})])
        await until(lambda: _ran(tmp_path, 1), what="the unsilenced run")
        await served.settle()
        assert runs(tmp_path) == ["EqA:2"]
        assert len([t for t in driver.received() if "ALERT firing" in t]) == 1


async def _ran(tmp: Path, n: int) -> bool:
    return len(runs(tmp)) >= n


async def test_cooldown_and_max_runs_hold_a_second_alert(tmp_path: Path) -> None:
    driver = FakeDriver()
    rules = [_rule("cool", 'alertname="CoolA"', policy={"verify": None, "cooldown": "1h", "max_runs": 5}),
             _rule("once", 'alertname="OnceA"', policy={"verify": None, "cooldown": "1ms", "max_runs": 1,
                                                          "window": "1h"})]
    async with serve(tmp_path, driver, **catalog(tmp_path, rules=rules)) as served:
        await driver.attach(served)
        for name in ("CoolA", "OnceA"):
            r = await post_am(served, [am_alert({"alertname": name, "instance": "1"})])
            assert r.json()["fired"] == 1
            first = f"{name}:1"
            await until(lambda: _has_run(tmp_path, first), what=f"{name}'s first run")
            r = await post_am(served, [am_alert({"alertname": name, "instance": "2"})])
            assert r.json()["fired"] == 1
        await served.settle()
        await until(lambda: _outcomes_are(served, "held", 2), what="two held rule runs")
        await asyncio.sleep(0.3)
        assert sorted(runs(tmp_path)) == ["CoolA:1", "OnceA:1"]
        assert await _outcomes(served, "triggered") == 2
        said = driver.received()
        # max_runs reached needs a human; a cooldown only waits.
        assert any("rule once" in t and "not retrying: ran 1 times" in t for t in said), said
        assert not any("rule cool" in t and "needs a human" in t for t in said), said


async def _has_run(tmp: Path, line: str) -> bool:
    return line in runs(tmp)


async def _outcomes_are(served: Served, outcome: str, n: int) -> bool:
    return await _outcomes(served, outcome) >= n


async def test_verify_waits_for_the_alert_to_resolve_and_escalates_when_it_does_not(tmp_path: Path) -> None:
    driver = FakeDriver()
    rules = [_rule("slow", 'alertname="SlowA"', policy={"cooldown": "1ms", "verify": {"deadline": "1s"}}),
             _rule("fast", 'alertname="FastA"', policy={"cooldown": "1ms", "verify": {"deadline": "3s"}})]
    async with serve(tmp_path, driver, **catalog(tmp_path, rules=rules)) as served:
        await driver.attach(served)
        fast = am_alert({"alertname": "FastA", "instance": "1"})
        r = await post_am(served, [am_alert({"alertname": "SlowA", "instance": "1"}), fast])
        assert r.json()["fired"] == 2
        await until(lambda: _ran(tmp_path, 2), what="both runs")
        r = await post_am(served, [{**fast, "status": "resolved", "endsAt": "2026-11-30T05:01:00Z"}])
        assert r.json()["resolved"] == 1, r.text

        async def escalated() -> bool:
            await served.settle()
            return any("has not resolved" in t for t in driver.received())
        await until(escalated, timeout=10, what="the escalation")
        await asyncio.sleep(3.5)  # past fast's deadline: it resolved in time, so nothing more
        await served.settle()
        said = [t for t in driver.received() if "needs a human" in t]
        assert len(said) == 1, driver.received()
        assert "rule slow" in said[0] and "alert #1 SlowA has not resolved 1s after the recovery runbook ran" \
            in said[0], said


@pytest.mark.parametrize("when, problem", [
    ({"alert": 'alertname="X"', "check": "svc-cmd"}, "both alert and check"),
    ({"alert": 'alertname=~"("'}, "not a valid regular expression"),
    ({"alert": "alertname~~X"}, "cannot read a label matcher"),
    ({"alert": 'alertname="X"', "attempt": 2}, "attempt"),
])
def test_the_catalog_refuses_bad_alert_rules_at_file_and_line(tmp_path: Path, when: dict[str, Any],
                                                              problem: str) -> None:
    path = small_catalog(tmp_path, rules=[{"name": "bad", "when": when, "then": {"runbook": "echo-args"}}])
    text = (path / "catalog.yaml").read_text().splitlines()
    rule_line = next(i for i, line in enumerate(text, 1) if "name: bad" in line)
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    message = str(caught.value)
    assert problem in message, message
    lines = {int(x.split(":")[0]) for x in message.split("catalog.yaml:")[1:]}
    assert lines and all(rule_line <= n <= rule_line + 6 for n in lines), (rule_line, message)

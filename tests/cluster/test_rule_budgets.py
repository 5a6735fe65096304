"""Rule budgets are the cluster's: several servers (Runtimes with their own engine and pool) on one
PostgreSQL race hard CRITICALs at the same rule, and max_runs and the cooldown still hold exactly.

Each Runtime here is what a server is to the rules: its own bus, RulesEngine and connections;
only the database is shared (the single-server lease is not taken: the rules are under test).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select

from opsroom.access.identity import SYSTEM
from opsroom.audit import service as audit
from opsroom.automation.models import RuleBudgetRow, RuleRunRow
from opsroom.automation.rules import RulesEngine
from opsroom.catalog.loader import load_catalog
from opsroom.config import Settings
from opsroom.events import CheckStateChanged, RuleHeld, RuleTriggered
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from opsroom.store.engine import make_engine
from opsroom.store.migrate import upgrade
from tests.factories import small_catalog

HELD_3 = "ran 3 times in the last 3600s (max 3)"
NO_COOLDOWN = 0.000001  # the catalog wants a duration longer than zero: a microsecond is none


def rule(name: str, **policy: Any) -> dict[str, Any]:
    # The rule and the output are in the parameters: every trigger is a different run, so the lock
    # on identical active runs (a Conflict) never stands in for the budget under test.
    return {"name": name, "when": {"check": "svc-cmd"},
            "then": {"runbook": "echo-args", "params": {"text": name + ":{{ output }}"}},
            "policy": {"verify": None, "max_runs": 3, "window": "1h", "cooldown": NO_COOLDOWN, **policy}}


@asynccontextmanager
async def servers(url: str, tmp: Path, rules: list[dict[str, Any]], n: int = 3) -> AsyncIterator[list[Runtime]]:
    """n servers' rules on one store: no executor, so a run stays `pending` (it is counted, not run)."""
    engine = make_engine(url)
    await upgrade(engine)
    await engine.dispose()
    catalog = small_catalog(tmp, rules=rules, aliases=[])
    rts = []
    try:
        for i in range(n):
            rt = Runtime(settings=Settings(data=tmp / f"data{i}", database_url=url, demo=False),
                         catalog=load_catalog(catalog))
            rts.append(rt)
            rt.bus.keep_history = True
            rt.rules = RulesEngine(rt)
            await rt.rules.load()
            rt.rules.attach()
        # A server writes audit records from its start; the first one of an empty store is a race
        # of its own (two transactions creating the chain's head), not this test's subject.
        await audit.append_alone(rts[0], actor=SYSTEM, action="test.start", target="store")
        yield rts
    finally:
        for rt in rts:
            await rt.bus.drain()
            await rt.close()


def critical(output: str, *, at: float = 1_700_000_000.0) -> CheckStateChanged:
    return CheckStateChanged(check="svc-cmd", service="svc", system="sys", environment="test", old_state="OK",
                             new_state="CRITICAL", state_type="hard", attempt=1, max_attempts=1, output=output,
                             since=at, correlation_id=f"check:svc-cmd:{output}", source="check:svc-cmd")


async def race(rts: list[Runtime], per_server: int, tag: str) -> None:
    """Every server gets `per_server` hard CRITICALs at once, all handled concurrently."""
    handlers = []
    for i, rt in enumerate(rts):
        assert rt.rules is not None
        handlers += [rt.rules.on_state_changed(critical(f"{tag}-{i}-{k}")) for k in range(per_server)]
    await asyncio.gather(*handlers)
    for rt in rts:
        await rt.bus.drain()


async def outcomes(rt: Runtime, rule_name: str) -> dict[str, int]:
    async with rt.read() as s:
        rows = await s.execute(select(RuleRunRow.outcome, func.count()).where(RuleRunRow.rule == rule_name)
                               .group_by(RuleRunRow.outcome))
        return {outcome: n for outcome, n in rows}


async def executions(rt: Runtime, rule_name: str) -> list[ExecutionRow]:
    async with rt.read() as s:
        return list((await s.execute(select(ExecutionRow).where(ExecutionRow.rule == rule_name)
                                     .order_by(ExecutionRow.id))).scalars())


def events(rts: list[Runtime], kind: type[RuleHeld] | type[RuleTriggered], rule_name: str) -> list[Any]:
    return [e for rt in rts for e in rt.bus.history if isinstance(e, kind) and e.rule == rule_name]


async def test_max_runs_holds_across_three_servers(pg_own_url: str, tmp_path: Path) -> None:
    names = [f"heal-{k}" for k in range(4)]
    async with servers(pg_own_url, tmp_path, [rule(n) for n in names]) as rts:
        # Every trigger sets off all four rules: each rule races 3 servers x 6 triggers, four times over.
        for round_ in range(3):
            await race(rts, 6, f"r{round_}")
        for name in names:
            found = await executions(rts[0], name)
            assert len(found) == 3, f"{name} ran {len(found)} times in the cluster (max 3)"
            assert await outcomes(rts[1], name) == {"triggered": 3, "held": 3 * 6 * 3 - 3}
            # The budget rows are the executions', written in the same transactions.
            async with rts[2].read() as s:
                recorded = set((await s.execute(select(RuleRunRow.execution_id).where(
                    RuleRunRow.rule == name, RuleRunRow.outcome == "triggered"))).scalars())
                budget = await s.get(RuleBudgetRow, name)
            assert recorded == {e.id for e in found}
            assert budget is not None and budget.holder in {rt.node_id for rt in rts}
            held = events(rts, RuleHeld, name)
            assert len(held) == 3 * 6 * 3 - 3 and {h.reason for h in held} == {HELD_3}
            assert len(events(rts, RuleTriggered, name)) == 3


async def test_a_cooldown_holds_on_every_server(pg_own_url: str, tmp_path: Path) -> None:
    async with servers(pg_own_url, tmp_path, [rule("cool", max_runs=50, cooldown="1h")], n=2) as rts:
        await race(rts, 5, "a")
        assert len(await executions(rts[0], "cool")) == 1
        # Later, on the other server alone: still within the cooldown the first run started.
        assert rts[1].rules is not None
        await rts[1].rules.on_state_changed(critical("later"))
        assert len(await executions(rts[1], "cool")) == 1
        held = events(rts, RuleHeld, "cool")
        assert len(held) == 2 * 5 - 1 + 1 and all(h.reason.startswith("cooldown: last run") for h in held)


async def test_the_window_is_the_stores_and_frees_up_on_every_server(pg_own_url: str, tmp_path: Path) -> None:
    async with servers(pg_own_url, tmp_path, [rule("short", max_runs=2, window="2s")], n=2) as rts:
        await race(rts, 4, "first")
        assert len(await executions(rts[0], "short")) == 2
        await asyncio.sleep(2.2)
        await race(rts, 4, "second")
        assert len(await executions(rts[1], "short")) == 4
        assert await outcomes(rts[0], "short") == {"triggered": 4, "held": 12}


async def test_one_sqlite_server_racing_itself_keeps_the_budget(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    async with servers(url, tmp_path, [rule("solo")], n=1) as rts:
        await race(rts, 12, "s")
        assert len(await executions(rts[0], "solo")) == 3
        assert await outcomes(rts[0], "solo") == {"triggered": 3, "held": 9}


async def test_a_flood_of_one_rule_takes_one_connection_per_server(pg_own_url: str, tmp_path: Path) -> None:
    """A mass outage: while one trigger holds the rule's lock, a server's others wait in the server,
    not in the store with a pooled connection each (that starved the pool: 5 s, then errors)."""
    async with servers(pg_own_url, tmp_path, [rule("mass")], n=2) as rts:
        in_use, most = [0], [0]

        def checkout(*_: Any) -> None:
            in_use[0] += 1
            most[0] = max(most[0], in_use[0])

        def checkin(*_: Any) -> None:
            in_use[0] -= 1

        pool = rts[0].engine.sync_engine.pool
        event.listen(pool, "checkout", checkout)
        event.listen(pool, "checkin", checkin)
        await race(rts, 30, "m")
        event.remove(pool, "checkout", checkout)
        event.remove(pool, "checkin", checkin)
        assert len(await executions(rts[1], "mass")) == 3
        assert await outcomes(rts[1], "mass") == {"triggered": 3, "held": 57}
        # One for the rule's claims, one for logging its notices (triggered, held) in batches.
        assert most[0] <= 2, f"{most[0]} connections of one server were taken by one rule's flood"


HOLD_LOCK = """
import asyncio, sys
import asyncpg

async def main():
    conn = await asyncpg.connect(sys.argv[1])
    await conn.execute("BEGIN")
    await conn.execute("SELECT rule FROM rule_budgets WHERE rule = $1 FOR UPDATE", sys.argv[2])
    print("locked", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_server_killed_holding_a_rules_lock_frees_it_at_once(pg_own_url: str, tmp_path: Path) -> None:
    """kill -9 of a server in the middle of a rule's claim: its transaction dies with its connection,
    nothing of it is counted, and the next hard CRITICAL on another server fires the rule once."""
    async with servers(pg_own_url, tmp_path, [rule("heal", max_runs=1)], n=2) as rts:
        async with rts[0].write() as s:  # the rule's lock row, as its first claim leaves it
            s.add(RuleBudgetRow(rule="heal", claimed_at=0.0, holder="a server about to die"))
        dying = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_LOCK, pg_own_url, "heal", stdout=asyncio.subprocess.PIPE)
        try:
            assert dying.stdout is not None
            assert await asyncio.wait_for(dying.stdout.readline(), 20) == b"locked\n"
            assert rts[1].rules is not None
            waiting = asyncio.create_task(rts[1].rules.on_state_changed(critical("after the kill")))
            await asyncio.sleep(0.5)
            assert not waiting.done(), "the claim did not wait for the lock another server held"
            dying.kill()
            await dying.wait()
            await asyncio.wait_for(waiting, 10)
        finally:
            if dying.returncode is None:
                dying.kill()
                await dying.wait()
        [ran] = await executions(rts[0], "heal")
        assert ran.params == {"text": "heal:after the kill"}
        assert await outcomes(rts[0], "heal") == {"triggered": 1}

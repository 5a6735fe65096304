"""SSH fan-out: one command step on 50 hosts, opsroom against a bare asyncssh loop, same run.

A real OpenSSH sshd on loopback (tests/ssh/sshd.py: key-only, its own config, MaxStartups and
MaxSessions raised for 50 at once) stands for 50 hosts: the catalog names it 50 times
(h00..h49), so opsroom opens 50 connections, one per host, as it would to 50 machines.

  opsroom   a whole in-process opsroom (server.start without the scheduler) on a fresh
            SQLite store; one `target: ssh` runbook with `group: all`, `parallel: 50`,
            one step `[true]`. Timed from request_run (execution row, audit record) to the
            execution's end (stored finished). Its SSH pool is closed before every round,
            so each round connects afresh, as the baseline does.
  baseline  asyncio.gather of 50 x (asyncssh.connect with the same pinned key and client
            key, conn.run("true")), from the same event loop; the connections are closed
            after the timing, as opsroom's stay open in its pool.

Rounds alternate (baseline, opsroom) so both see the same machine; the figure is the ratio
of the medians, opsroom / baseline (target <= 1.3).

    .venv/bin/python bench/ssh_fanout.py --quick    # 3 rounds
    .venv/bin/python bench/ssh_fanout.py            # 10 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh
import structlog
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, info, loadavg, percentile, r, repo_on_path

repo_on_path()
from tests.ssh import sshd  # noqa: E402

from opsroom import server  # noqa: E402
from opsroom.access.identity import SYSTEM  # noqa: E402
from opsroom.config import Settings  # noqa: E402
from opsroom.runbooks import service as runbooks  # noqa: E402
from opsroom.runbooks.models import ExecutionRow  # noqa: E402
from opsroom.runtime import Runtime  # noqa: E402

TARGET_RATIO = 1.3
HOSTS = 50


def _catalog(path: Path, srv: sshd.Sshd) -> None:
    path.mkdir(parents=True)
    (path / "catalog.yaml").write_text(yaml.safe_dump({
        "environments": [{"name": "bench"}],
        "hosts": [srv.host(f"h{i:02d}", groups=["all"], max_sessions=4) for i in range(HOSTS)],
        "runbooks": [{"name": "fan", "approval": "none", "target": "ssh", "group": "all", "parallel": HOSTS,
                      "steps": [{"command": ["true"], "timeout": "60s"}]}],
    }, sort_keys=False))


async def _opsroom_round(rt: Runtime) -> float:
    assert rt.executor is not None
    target = rt.executor._targets.get("ssh")
    if target is not None:
        await target.pool.close()  # cold: every round opens its 50 connections, as the baseline
    started = time.perf_counter()
    row = await runbooks.request_run(rt, actor=SYSTEM, runbook="fan", params={}, room=None)
    await rt.executor.wait(row.id)
    elapsed = time.perf_counter() - started
    async with rt.read() as s:
        done = await s.get(ExecutionRow, row.id)
    if done is None or done.status != "succeeded":
        raise SystemExit(f"the opsroom run failed: {done.error if done else 'no row'}")
    return elapsed


async def _baseline_round(srv: sshd.Sshd) -> float:
    pinned = asyncssh.import_public_key(srv.host_key)
    key = asyncssh.read_private_key(str(srv.client_key))

    async def one() -> asyncssh.SSHClientConnection:
        conn = await asyncssh.connect("127.0.0.1", srv.port, username=srv.user, known_hosts=([pinned], [], []),
                                      x509_trusted_certs=None, client_keys=[key], agent_path=None, config=[],
                                      gss_host=None, preferred_auth="publickey")
        result = await conn.run("true", check=False)
        if result.exit_status != 0:
            raise SystemExit(f"baseline: exit status {result.exit_status}")
        return conn

    started = time.perf_counter()
    conns = await asyncio.gather(*(one() for _ in range(HOSTS)))
    elapsed = time.perf_counter() - started
    # Closed outside the timing, as opsroom keeps its connections open for the next run.
    for conn in conns:
        conn.close()
    await asyncio.gather(*(conn.wait_closed() for conn in conns))
    return elapsed


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="opsroom-ssh-fanout-"))
    try:
        with sshd.running(tmp / "sshd", max_sessions=64) as srv:
            _catalog(tmp / "catalog", srv)
            rt = await server.open_runtime(Settings(data=tmp / "data", catalog=tmp / "catalog"))
            await server.start(rt, schedule=False)
            try:
                await _baseline_round(srv)  # warm-up: imports, sshd's first forks, the store
                await _opsroom_round(rt)
                base: list[float] = []
                ops: list[float] = []
                for _ in range(args.rounds):
                    base.append(await _baseline_round(srv))
                    ops.append(await _opsroom_round(rt))
            finally:
                await server.stop(rt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    b50, o50 = percentile(base, 50), percentile(ops, 50)
    ratio = o50 / b50
    info(f"hosts: {HOSTS} (one loopback sshd)  rounds: {args.rounds} (+1 warm-up)  cores: {os.cpu_count()}")
    info("baseline (bare asyncssh, 50 x connect+run): "
         + ", ".join(f"{v * 1000:.0f}" for v in base) + f" ms; median {b50 * 1000:.0f} ms")
    info("opsroom  (request_run -> execution finished):     "
         + ", ".join(f"{v * 1000:.0f}" for v in ops) + f" ms; median {o50 * 1000:.0f} ms")
    info(f"ratio opsroom/baseline: {ratio:.3f} (target <= {TARGET_RATIO:g}: "
         f"{'met' if ratio <= TARGET_RATIO else 'MISSED'})")
    return {
        "figure": "ssh_fanout_ratio",
        "value": r(ratio),
        "unit": "x",
        "target": TARGET_RATIO,
        "baseline": r(b50 * 1000, 1),
        "baseline_unit": "ms",
        "opsroom_median_ms": r(o50 * 1000, 1),
        "baseline_ms": [r(v * 1000, 1) for v in base],
        "opsroom_ms": [r(v * 1000, 1) for v in ops],
        "hosts": HOSTS,
        "rounds": args.rounds,
        "target_met": ratio <= TARGET_RATIO,
        "cores": os.cpu_count(),
        "loadavg": loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds (default 10, --quick 3)")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.quick else 10
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    emit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()

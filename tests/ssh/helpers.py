"""Catalogs with hosts on the test sshd, runs through the real service layer, remote process lookups."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opsroom.access.identity import SYSTEM
from opsroom.runbooks import service as runbooks
from opsroom.runbooks.models import ExecutionRow
from opsroom.runtime import Runtime
from tests.factories import write_catalog
from tests.ssh.sshd import Sshd

PY = sys.executable


def catalog(tmp: Path, server: Sshd, *, hosts: list[dict[str, Any]] | None = None,
            runbooks_: list[dict[str, Any]] | None = None, checks: list[dict[str, Any]] | None = None) -> Path:
    """A one-environment catalog whose hosts (default: `box`) are the loopback sshd."""
    return write_catalog(tmp / "catalog", {
        "environments": [{"name": "test"}],
        "systems": [{"name": "sys", "environment": "test"}],
        "services": [{"name": "svc", "system": "sys"}],
        "hosts": hosts if hosts is not None else [server.host("box")],
        "checks": checks or [],
        "runbooks": runbooks_ or [{"name": "noop", "approval": "none", "steps": [{"command": ["true"]}]}],
        "rooms": [{"name": "ops"}],
        "users": [{"name": "you", "roles": ["operator"]}],
    })


def ssh_runbook(name: str, steps: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"name": name, "approval": "none", "target": "ssh", "hosts": ["box"], "steps": steps, **fields}


async def run(rt: Runtime, runbook: str, **params: str) -> ExecutionRow:
    row = await runbooks.request_run(rt, actor=SYSTEM, runbook=runbook, params=params, room="ops")
    assert rt.executor is not None
    await rt.executor.wait(row.id)
    await rt.bus.drain()
    async with rt.read() as s:
        done = await s.get(ExecutionRow, row.id)
    assert done is not None
    return done


def pgrep(pattern: str) -> list[int]:
    """Pids whose command line matches (pgrep never lists itself)."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


async def gone(pattern: str, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while pgrep(pattern):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def fingerprint(public_key_line: str) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", "-"], input=public_key_line, capture_output=True, text=True,
                         check=True).stdout
    return out.split()[1]

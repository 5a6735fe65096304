"""Process probe: is the process there (by name, pidfile or command line) and how many."""

from __future__ import annotations

import asyncio
import os
import time
from typing import ClassVar

import psutil

from opsroom.catalog.schema import ProcessCheck
from opsroom.checks.probes.base import Probe, ProbeContext, ProbeResult, compile_regex, elapsed_ms


def _alive(proc: psutil.Process) -> bool:
    # A zombie has exited; only its parent has not reaped it yet.
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _matches(proc: psutil.Process, check: ProcessCheck) -> bool:
    try:
        if check.process_name is not None:
            name = proc.name()
            if name != check.process_name:
                # The kernel's comm is cut to 15 characters; compare the executable's name too.
                cmd = proc.cmdline()
                if not cmd or os.path.basename(cmd[0]) != check.process_name:
                    return False
        if check.cmdline_match is not None:
            joined = " ".join(proc.cmdline())
            if not compile_regex(check.cmdline_match).search(joined):
                return False
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        # Another user's process we may not inspect: do not count what we cannot see.
        return False
    return _alive(proc)


def _from_pidfile(path: str) -> tuple[psutil.Process | None, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return None, f"pidfile {path} does not exist"
    except OSError as exc:
        return None, f"cannot read pidfile {path}: {exc.strerror or exc}"
    first = text.split()[0] if text else ""
    if not first.isdigit():
        return None, f"pidfile {path} holds no pid ({text[:40]!r})"
    pid = int(first)
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None, f"no process with pid {pid} (from {path})"
    if not _alive(proc):
        return None, f"process {pid} (from {path}) has exited"
    return proc, ""


def _what(check: ProcessCheck) -> str:
    parts = []
    if check.process_name:
        parts.append(f"name={check.process_name}")
    if check.cmdline_match:
        parts.append(f"cmdline~/{check.cmdline_match}/")
    if check.pidfile:
        parts.append(f"pidfile={check.pidfile}")
    if check.via:
        parts.append(f"on {check.via}")
    return " ".join(parts)


def scan(check: ProcessCheck) -> ProbeResult:
    """Blocking: walks /proc. Call it in a thread."""
    if check.pidfile:
        proc, problem = _from_pidfile(check.pidfile)
        if proc is None:
            return ProbeResult("CRITICAL", problem, down=True)
        found = [proc] if _matches(proc, check) else []
    else:
        found = [p for p in psutil.process_iter() if _matches(p, check)]
    return verdict(check, [p.pid for p in found])


def verdict(check: ProcessCheck, pids: list[int]) -> ProbeResult:
    """The matching pids -> the result, the same here and via a host."""
    what = _what(check)
    count = len(pids)
    shown = ", ".join(str(p) for p in pids[:10])
    perf = {"count": float(count)}
    if count < check.min_count:
        if count == 0:
            return ProbeResult("CRITICAL", f"no process matches {what}", perfdata=perf, down=True)
        return ProbeResult("CRITICAL", f"{count} process(es) match {what}, expected at least "
                           f"{check.min_count}", long_output=f"pids: {shown}", perfdata=perf)
    noun = "process" if count == 1 else "processes"
    suffix = f" (pid {shown})" if count else ""
    return ProbeResult("OK", f"{count} {noun} match {what}{suffix}", perfdata=perf)


class ProcessProbe(Probe[ProcessCheck]):
    type: ClassVar[str] = "process"

    async def probe(self, check: ProcessCheck, ctx: ProbeContext) -> ProbeResult:
        if check.via is not None:
            from opsroom.ssh.listing import via

            return await via(check, ctx)
        # psutil reads /proc synchronously; a thread keeps the event loop (and every other check) moving.
        start = time.perf_counter()
        result = await asyncio.to_thread(scan, check)
        result.latency_ms = elapsed_ms(start)
        return result

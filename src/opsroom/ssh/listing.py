"""Process checks via a host: the remote process table read with `ps` over SSH, no agent there.

Matching is the local probe's (checks/probes/process.py): by name (the kernel's comm, or the
basename of argv[0]), by a regular expression over the command line joined by spaces, by a
pidfile; zombies do not count. `ps` prints comm and args whole only as a line's last field, so
the table is read twice and joined by pid; the shell and `ps` of the listing itself are left out.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from opsroom.catalog.schema import ProcessCheck
from opsroom.checks.probes.base import ProbeContext, ProbeResult, compile_regex, elapsed_ms
from opsroom.checks.probes.process import verdict
from opsroom.ssh import inventory, remote
from opsroom.ssh.keys import SshError


@dataclass(frozen=True)
class RemoteProcess:
    pid: int
    comm: str
    stat: str
    args: str  # the command line joined by spaces; "" for a kernel thread (psutil's empty cmdline)

    @property
    def alive(self) -> bool:
        return not self.stat.startswith("Z")


def parse(text: str, own: int | None) -> tuple[dict[int, RemoteProcess], str | None]:
    """The listing -> processes by pid (without the listing's own shell and its children), pidfile text."""
    sections = text.split(remote.SECTION + "\n")
    comms: dict[int, str] = {}
    for line in sections[0].splitlines():
        number, _, comm = line.strip().partition(" ")
        if number.isdigit():
            comms[int(number)] = comm.strip()
    found: dict[int, RemoteProcess] = {}
    for line in sections[1].splitlines() if len(sections) > 1 else ():
        fields = line.split(None, 3)
        if len(fields) < 3 or not fields[0].isdigit() or not fields[1].isdigit():
            continue
        pid, ppid = int(fields[0]), int(fields[1])
        if pid not in comms or own in (pid, ppid):
            continue
        args = fields[3] if len(fields) > 3 else ""
        if args == f"[{comms[pid]}]":  # ps shows a kernel thread's (empty) command line so
            args = ""
        found[pid] = RemoteProcess(pid, comms[pid], fields[2], args)
    pidfile = sections[2] if len(sections) > 2 else None
    return found, pidfile


def matches(proc: RemoteProcess, check: ProcessCheck) -> bool:
    if check.process_name is not None and proc.comm != check.process_name:
        first = proc.args.split(" ", 1)[0]
        if not first or os.path.basename(first) != check.process_name:
            return False
    if check.cmdline_match is not None and not compile_regex(check.cmdline_match).search(proc.args):
        return False
    return proc.alive


def judge(check: ProcessCheck, procs: dict[int, RemoteProcess], pidfile: str | None) -> ProbeResult:
    where = f" on {check.via}"
    if check.pidfile:
        if pidfile is None or pidfile.startswith(remote.SECTION):
            return ProbeResult("CRITICAL", f"pidfile {check.pidfile} does not exist{where}", down=True)
        first = pidfile.split()[0] if pidfile.strip() else ""
        if not first.isdigit():
            return ProbeResult("CRITICAL", f"pidfile {check.pidfile}{where} holds no pid ({pidfile.strip()[:40]!r})",
                               down=True)
        proc = procs.get(int(first))
        if proc is None:
            return ProbeResult("CRITICAL", f"no process with pid {first} (from {check.pidfile}){where}", down=True)
        if not proc.alive:
            return ProbeResult("CRITICAL", f"process {first} (from {check.pidfile}){where} has exited", down=True)
        return verdict(check, [proc.pid] if matches(proc, check) else [])
    return verdict(check, [p.pid for p in procs.values() if matches(p, check)])


async def via(check: ProcessCheck, ctx: ProbeContext) -> ProbeResult:
    """The process check on its `via` host; the check's timeout kills the listing remotely."""
    assert check.via is not None
    start = time.perf_counter()
    try:
        command = remote.process_listing(check.pidfile)
        result, out, err = await inventory.pool_for(ctx).capture(check.via, command)
    except ValueError as exc:
        return ProbeResult("UNKNOWN", f"cannot look at processes on {check.via}: {exc}", latency_ms=elapsed_ms(start))
    except SshError as exc:
        return ProbeResult("UNKNOWN", exc.message, latency_ms=elapsed_ms(start))
    if result.code != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {result.code}"]
        return ProbeResult("UNKNOWN", f"cannot list processes on {check.via}: {reason[0][:200]}",
                           latency_ms=elapsed_ms(start))
    procs, pidfile = parse(out.decode(errors="replace"), result.pgid)
    verdict_ = judge(check, procs, pidfile)
    verdict_.latency_ms = elapsed_ms(start)
    return verdict_

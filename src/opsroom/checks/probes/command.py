"""Command probe: runs a Nagios plugin (argv, never a shell) and reads its verdict.

Exit codes 0/1/2/3 are OK/WARNING/CRITICAL/UNKNOWN; anything else is UNKNOWN.
The first stdout line is ``text|perfdata``; further lines are long output, and
a ``|`` there starts more perfdata (Nagios 3 multi-line convention).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from typing import ClassVar

from opsroom.catalog.schema import CommandCheck
from opsroom.checks.probes.base import Probe, ProbeContext, ProbeResult, elapsed_ms

EXIT_STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
# Only what a plugin needs to find its tools; opsroom's own environment holds secrets.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
MAX_OUTPUT = 64 * 1024

# 'label with spaces'=value[UOM];warn;crit;min;max  or  label=value...
_PERF = re.compile(r"""(?:'((?:[^']|'')+)'|([^'=\s][^=\s]*))=(\S*)""")
_VALUE = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def parse_perfdata(text: str) -> dict[str, float]:
    """label -> value as a float (the UOM is dropped; 'U' for unknown values is skipped)."""
    out: dict[str, float] = {}
    for match in _PERF.finditer(text):
        label = match.group(1).replace("''", "'") if match.group(1) is not None else match.group(2)
        value = _VALUE.match(match.group(3).split(";", 1)[0])
        if value is not None:
            out[label] = float(value.group(1))
    return out


def parse_output(stdout: str) -> tuple[str, str, dict[str, float]]:
    """Nagios plugin output -> (first line text, long output, perfdata)."""
    lines = stdout.strip("\n").splitlines()
    if not lines:
        return "", "", {}
    text, _, perf = lines[0].partition("|")
    perfdata = parse_perfdata(perf)
    long_lines: list[str] = []
    in_perf = False
    for line in lines[1:]:
        if in_perf:
            perfdata.update(parse_perfdata(line))
            continue
        before, bar, after = line.partition("|")
        if bar:
            long_lines.append(before)
            perfdata.update(parse_perfdata(after))
            in_perf = True
        else:
            long_lines.append(line)
    return text.strip(), "\n".join(long_lines).strip("\n"), perfdata


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(extra)
    return env


async def _read_bounded(stream: asyncio.StreamReader, limit: int) -> bytes:
    buf = bytearray()
    while chunk := await stream.read(65536):
        if len(buf) < limit:
            buf += chunk[:limit - len(buf)]
    return bytes(buf)


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The plugin's own children (e.g. a curl it started) must go too: kill the whole session.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


class CommandProbe(Probe[CommandCheck]):
    type: ClassVar[str] = "command"

    async def probe(self, check: CommandCheck, ctx: ProbeContext) -> ProbeResult:
        if check.via is not None:
            return await _via(check, ctx)
        start = time.perf_counter()
        program = check.argv[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                *check.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=_env(check.env), start_new_session=True)
        except FileNotFoundError:
            return ProbeResult("UNKNOWN", f"command not found: {program}", latency_ms=elapsed_ms(start))
        except PermissionError:
            return ProbeResult("UNKNOWN", f"command is not executable: {program}",
                               latency_ms=elapsed_ms(start))
        except OSError as exc:
            return ProbeResult("UNKNOWN", f"cannot start {program}: {exc.strerror or exc}",
                               latency_ms=elapsed_ms(start))
        try:
            # Read as it comes and keep only MAX_OUTPUT: communicate() would hold all of a plugin's
            # output in memory first (400 MB printed cost the server 767 MB). Reading on past the
            # limit keeps a chatty plugin from blocking on a full pipe.
            assert proc.stdout is not None and proc.stderr is not None
            raw_out, raw_err = await asyncio.gather(_read_bounded(proc.stdout, MAX_OUTPUT),
                                                    _read_bounded(proc.stderr, MAX_OUTPUT))
            await proc.wait()
        finally:
            # Reached with returncode None only when cancelled (the check's timeout):
            # never leave a hung plugin behind.
            if proc.returncode is None:
                _kill_group(proc)
                with contextlib.suppress(ProcessLookupError):
                    await asyncio.shield(proc.wait())
        code = proc.returncode
        signal_name = f"signal {-code}" if code is not None and code < 0 else None
        return verdict(program, code, signal_name, raw_out, raw_err, elapsed_ms(start))


def verdict(program: str, code: int | None, killed_by: str | None, raw_out: bytes, raw_err: bytes,
            ms: float) -> ProbeResult:
    """A plugin's exit code and output -> the result, the same wherever it ran."""
    stdout = raw_out[:MAX_OUTPUT].decode("utf-8", errors="replace")
    stderr = raw_err[:MAX_OUTPUT].decode("utf-8", errors="replace").strip()
    text, long_output, perfdata = parse_output(stdout)
    if not text:
        text = stderr.splitlines()[0] if stderr else "(no output)"
    if killed_by is not None:
        return ProbeResult("UNKNOWN", f"{program} killed by {killed_by}: {text}",
                           long_output=long_output, latency_ms=ms, perfdata=perfdata)
    state = EXIT_STATES.get(code if code is not None else -1)
    if state is None:
        return ProbeResult("UNKNOWN", f"{program} exited with code {code} (not a Nagios code 0-3): "
                           f"{text}", long_output=long_output, latency_ms=ms, perfdata=perfdata)
    return ProbeResult(state, text, long_output=long_output, latency_ms=ms, perfdata=perfdata)


async def _via(check: CommandCheck, ctx: ProbeContext) -> ProbeResult:
    """Run the plugin on the `via` host over SSH, each argv element quoted for its shell.

    The check's timeout cancels this task; the pool then kills the plugin's remote process group.
    """
    from opsroom.ssh import inventory, remote
    from opsroom.ssh.keys import SshError

    start = time.perf_counter()
    program = check.argv[0]
    try:
        command = remote.script(list(check.argv), check.env, merge=False)
    except ValueError as exc:
        return ProbeResult("UNKNOWN", f"cannot run {program} via {check.via}: {exc}", latency_ms=elapsed_ms(start))
    assert check.via is not None
    try:
        result, raw_out, raw_err = await inventory.pool_for(ctx).capture(check.via, command, limit=MAX_OUTPUT)
    except SshError as exc:
        return ProbeResult("UNKNOWN", exc.message, latency_ms=elapsed_ms(start))
    ms = elapsed_ms(start)
    if result.code == remote.NOT_FOUND:
        return ProbeResult("UNKNOWN", f"command not found on {check.via}: {program}", latency_ms=ms)
    killed_by = f"signal {result.signal}" if result.signal is not None else None
    return verdict(program, result.code, killed_by, raw_out, raw_err, ms)

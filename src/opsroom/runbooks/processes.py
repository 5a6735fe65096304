"""Runbook processes: the environment they start with, their process groups, killing them.

A step's command gets a minimal environment, never the server's: the server's holds
database URLs, bootstrap passwords and tokens, and a runbook that prints `env` (or any
tool that dumps its environment on error) would hand them to the room and the store.

Each command runs in a session of its own (pid == pgid). Its group id and the leader's
start time (from /proc) are stored on the execution, so that a server restarting after a
kill -9 can kill a step that outlived it, and only if that process group is still ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

# A fixed PATH: the server's may name a user's or a virtualenv's bin directories.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LOCALE = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def home_dir(data: Path) -> Path:
    """HOME for runbook processes: a directory of their own in the data dir, never the server user's."""
    home = data / "runbook-home"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home


def minimal_env(*, home: Path, inherit: Iterable[str] = (), extra: Mapping[str, str] | None = None,
                server_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH, locale, HOME, TZ if the server has one, the variables the runbook names, its step's `env`."""
    source = os.environ if server_env is None else server_env
    env = {"PATH": SAFE_PATH, **_LOCALE, "HOME": str(home)}
    if "TZ" in source:
        env["TZ"] = source["TZ"]
    for name in inherit:
        if name in source:
            env[name] = source[name]
    env.update(extra or {})
    return env


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_if_ours(pgid: int | None, started: str | None) -> bool:
    """SIGKILL the group `pgid` if its leader is still the process started at `started`.

    A pid is reused once free: after a restart, the number alone may name somebody else's
    process. The leader's start time tells them apart. A group whose leader is gone is left
    alone (its id cannot be told from a reused one).
    """
    if not pgid or not started or pgid <= 1:
        return False
    if start_time(pgid) != started:
        return False
    kill_group(pgid)
    return True


class SpawnFailed(Exception):
    """The command could not be started (not found, not executable, a NUL byte in an argument)."""


class StepTimedOut(Exception):
    """The command ran past its step's timeout; its process group was killed."""


async def terminate(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM to the step's group, and the grace period for it to end before the SIGKILL."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), grace_s)


async def run_command(argv: list[str], *, env: Mapping[str, str], cwd: str | None, timeout: float,
                      write: Callable[[str], None], spawned: Callable[[int], None],
                      graceful: Callable[[], bool], grace_s: float) -> int:
    """Run one step's argv as the server and the workers both do; return its exit code.

    argv straight to exec (no shell sees a parameter value), a session of its own (so the whole
    group can be killed), output line by line to `write`. On the step's timeout or a cancel, the
    group is killed: after SIGTERM and `grace_s` when `graceful()` (a person cancelled it), at
    once otherwise (opsroom stops, the runbook's own timeout). Raises SpawnFailed, StepTimedOut,
    or the CancelledError it was cancelled with.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True)
    except (FileNotFoundError, PermissionError) as exc:
        raise SpawnFailed(f"cannot start {argv[0]!r}: {exc.strerror}") from None
    except ValueError:  # a NUL byte the catalog's own template put into an argument
        raise SpawnFailed(f"cannot start {argv[0]!r}: an argument holds a NUL byte") from None
    spawned(proc.pid)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(timeout):
            cut = False
            while True:
                try:
                    line = await proc.stdout.readline()
                except ValueError:
                    # A line over the stream limit (64 KiB): asyncio dropped the buffered part.
                    if not cut:
                        write("[output line too long: cut]\n")
                    cut = True
                    continue
                if not line:
                    break
                cut = False
                write(line.decode(errors="replace"))
            return await proc.wait()
    except (TimeoutError, asyncio.CancelledError) as exc:
        try:
            if graceful():
                await terminate(proc, grace_s)
        finally:  # also when opsroom stops during the grace period
            kill_group(proc.pid)  # and what the leader left behind in its group
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise StepTimedOut(f"timed out after {timeout:g}s") from None

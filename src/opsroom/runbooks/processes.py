"""Runbook processes: the environment they start with, their process groups, killing them.

A step's command gets a minimal environment, never the server's: the server's holds
database URLs, bootstrap passwords and tokens, and a runbook that prints `env` (or any
tool that dumps its environment on error) would hand them to the room and the store.

Each command runs in a session of its own (pid == pgid). Its group id and the leader's
start time (from /proc) are stored on the execution, so that a server restarting after a
kill -9 can kill a step that outlived it, and only if that process group is still ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Mapping
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

"""The command line sent to a remote host: an argv that stays an argv through the remote shell.

sshd hands the command to the account's login shell (`sh -c`), so every argv element and
every environment value is quoted with shlex.quote: a parameter such as `b; rm -rf /tmp/x`
reaches the program as one argument and the shell runs nothing else. The script also gives
the step its own process group and reports the group's id, so a timeout can kill it all:

    echo $$ >&2; exec </dev/null 2>&1; [cd -- DIR || exit 126;] exec env -i -- VAR=... ARGV...

sshd starts that shell with setsid(), so `$$` is the leader of a new session and process
group; `exec` keeps that pid for env and then the program, and its children inherit the
group. stderr carries only that pid; the program's stderr is merged into stdout as locally.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from opsroom.runbooks.processes import SAFE_PATH

PREFIX = "echo $$ >&2; exec </dev/null;"  # report the group's id; no stdin
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Exit codes the remote shell or env use for "could not run it" (as locally an exec error).
NOT_FOUND, NOT_EXECUTABLE, NO_CWD = 127, 126, 126


def script(argv: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None, *,
           merge: bool = True) -> str:
    """The remote command for `argv`; ValueError for what no remote shell could pass on intact.

    merge: stderr into stdout (a runbook step's output, as locally); a check keeps them apart.
    """
    if not argv:
        raise ValueError("an empty command")
    for arg in argv:
        if "\x00" in arg:
            raise ValueError("an argument holds a NUL byte")
    # env reads leading NAME=VALUE words as assignments: a program named so would not be run.
    if "=" in argv[0]:
        raise ValueError(f"the program {argv[0]!r} holds '=', which env would take for a variable")
    assignments = [f"PATH={SAFE_PATH}", "LANG=C.UTF-8", "LC_ALL=C.UTF-8", 'HOME="$HOME"']
    for name, value in (env or {}).items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"environment variable name {name!r} is not a shell name (letters, digits, _)")
        if "\x00" in value:
            raise ValueError(f"environment variable {name} holds a NUL byte")
        assignments.append(shlex.quote(f"{name}={value}"))
    parts = [PREFIX + (" exec 2>&1;" if merge else "")]
    if cwd:
        if "\x00" in cwd:
            raise ValueError("cwd holds a NUL byte")
        parts.append(f"cd -- {shlex.quote(cwd)} || exit {NO_CWD};")
    parts.append("exec env -i -- " + " ".join(assignments) + " " + " ".join(shlex.quote(a) for a in argv))
    return " ".join(parts)


def kill_script(pgid: int) -> str:
    """Kill a step's remote process group (and its leader, should it have left the group)."""
    return f"kill -s KILL -- -{pgid} {pgid} 2>/dev/null; exit 0"


SECTION = "@@opsroom@@"


def process_listing(pidfile: str | None = None) -> str:
    """Every process twice (pid+comm, then pid+ppid+state+args) and the pidfile, in sections.

    comm and args may hold spaces, so each listing has one of them as its last field, to the
    end of the line; the two are joined by pid (a process in only one of them is left out).
    """
    env = "env -i -- LC_ALL=C PATH=" + SAFE_PATH
    parts = [f"{env} ps -e -o pid= -o comm=", f"echo {SECTION}", f"{env} ps -e -ww -o pid= -o ppid= -o stat= -o args="]
    if pidfile is not None:
        if "\x00" in pidfile:
            raise ValueError("pidfile holds a NUL byte")
        quoted = shlex.quote(pidfile)
        parts += [f"echo {SECTION}",
                  f"if [ -e {quoted} ]; then head -c 256 -- {quoted}; else echo {SECTION}missing; fi"]
    return PREFIX + " " + "; ".join(parts)

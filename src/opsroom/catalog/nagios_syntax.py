"""Nagios text: comments, lists, `name!arg` commands, $MACRO$s, and command lines split into argv.

A command line is split as POSIX sh would split it, refusing what only a shell can do.

Nagios hands a command line with shell metacharacters to /bin/sh. opsroom runs no shell, so a
line is translated only when sh would do nothing but split words and remove quotes; anything a
shell would interpret (a pipe, a redirect, `;`, `&`, `$(...)`, backticks, `$VAR`, `~`, a comment)
raises NeedsShellError naming it, and the command is listed as not translated. Glob characters
stay literal (sh leaves a pattern that matches no file as written, and plugin arguments match none).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import Any

# Directives whose meaning is translated, or that mean nothing to opsroom (display, retention).
TRANSLATED = {"use", "name", "register", "host_name", "hostgroup_name", "service_description", "check_command",
               "check_interval", "normal_check_interval", "retry_interval", "retry_check_interval",
               "max_check_attempts", "active_checks_enabled", "low_flap_threshold", "high_flap_threshold",
               "address", "alias", "display_name", "hostgroups", "members", "hostgroup_members"}
IGNORED = {"process_perf_data", "retain_status_information", "retain_nonstatus_information", "obsess_over_service",
            "obsess_over_host", "obsess", "notes", "notes_url", "action_url", "icon_image", "icon_image_alt",
            "statusmap_image", "vrml_image", "2d_coords", "3d_coords", "failure_prediction_enabled",
            "parallelize_check", "initial_state"}
# Directives that do something in Nagios and nothing in the draft: why, and what to do instead.
LOST = {
    "contacts": "contacts are not translated: opsroom announces in rooms; bind the room to your chat",
    "contact_groups": "contact groups are not translated: opsroom announces in rooms; bind the room to your chat",
    "notification_interval": "notifications are not translated: the room hears each hard state change once",
    "notification_period": "notifications are not translated: the room hears each hard state change once",
    "notification_options": "notifications are not translated: the room hears each hard state change once",
    "notifications_enabled": "notifications are not translated: the room hears each hard state change once",
    "first_notification_delay": "notifications are not translated: the room hears each hard state change once",
    "event_handler": "event handlers are not translated: write a runbook and a rule (`when: {check: …, "
                     "state_type: soft, attempt: N}`)",
    "check_period": "time periods are not translated: checks run at all times",
    "parents": "host parents are not translated: use a service's `depends_on`",
    "servicegroups": "service groups are not translated",
    "passive_checks_enabled": "passive checks are not translated: send them as alerts (POST /api/v1/alerts/NAME)",
    "check_freshness": "freshness checks are not translated",
    "freshness_threshold": "freshness checks are not translated",
    "flap_detection_enabled": "flap detection cannot be turned off; the check keeps opsroom's flap thresholds",
}
# Values that lose nothing: a feature turned off, or on where opsroom has it too.
HARMLESS = {"notifications_enabled": "0", "event_handler_enabled": "0", "passive_checks_enabled": "0",
            "check_freshness": "0", "is_volatile": "0", "flap_detection_enabled": "1"}
MAIN_NOT_FOLLOWED = {"cfg_file", "cfg_dir", "include_file", "include_dir", "resource_file"}
SKIPPED_TYPES = {"contact", "contactgroup", "timeperiod", "servicegroup", "hostescalation", "serviceescalation",
                  "hostdependency", "servicedependency", "hostextinfo", "serviceextinfo"}
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "csh", "tcsh", "fish", "busybox", "su", "eval"}
# Programs that run another program from their arguments: a shell among those arguments is a shell.
WRAPPERS = {"env", "sudo", "doas", "nice", "ionice", "nohup", "setsid", "stdbuf", "timeout", "chroot", "runuser",
            "xargs", "time", "exec", "command", "chrt", "taskset", "unbuffer", "flock", "watch", "ssh"}
_NAME_CHARS = re.compile(r"[^a-z0-9_.-]+")
_OPERATORS = {"|": "a pipe `|`", "&": "`&`", ";": "`;`", "<": "a redirect `<`", ">": "a redirect `>`",
              "(": "a subshell `(`", ")": "a subshell `)`"}


class NeedsShellError(Exception):
    """The command line needs a shell; the message names what in it does."""


def _dollar(line: str, i: int) -> None:
    """`$` followed by anything but a blank or the end is an expansion in sh ($VAR, $(…), ${…}, $'…')."""
    nxt = line[i + 1] if i + 1 < len(line) else " "
    if nxt == "(":
        raise NeedsShellError("`$(...)` command substitution")
    if not nxt.isspace() and nxt != '"':
        raise NeedsShellError(f"the shell expansion `${nxt}`")


def split_command(line: str) -> list[str]:
    """argv for a command line, quotes removed as sh removes them; NeedsShellError for anything else."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
            continue
        if ord(c) < 32 or ord(c) == 127:
            raise NeedsShellError(f"the control character {c!r}")
        in_word_before, in_word = in_word, True
        if c == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise NeedsShellError("an unterminated single quote")
            cur.append(line[i + 1: end])
            i = end + 1
        elif c == '"':
            i = _double_quoted(line, i + 1, cur)
        elif c == "\\":
            if i + 1 >= n:
                raise NeedsShellError("a trailing backslash")
            cur.append(line[i + 1])
            i += 2
        elif c in _OPERATORS:
            raise NeedsShellError(_OPERATORS[c])
        elif c == "`":
            raise NeedsShellError("backticks (command substitution)")
        elif c == "$":
            _dollar(line, i)
            cur.append(c)
            i += 1
        elif c == "#" and not in_word_before:
            raise NeedsShellError("a `#` comment")
        elif c == "~" and not in_word_before:
            raise NeedsShellError("`~` home directory expansion")
        else:
            cur.append(c)
            i += 1
    if in_word:
        words.append("".join(cur))
    if not words:
        raise NeedsShellError("an empty command line")
    return words


def _double_quoted(line: str, i: int, cur: list[str]) -> int:
    """Inside "…": `\\` escapes only $ ` " \\; `$` and backticks still expand, so they need a shell."""
    n = len(line)
    while i < n:
        c = line[i]
        if c == '"':
            return i + 1
        if c == "\\" and i + 1 < n and line[i + 1] in '$`"\\':
            cur.append(line[i + 1])
            i += 2
            continue
        if c == "`":
            raise NeedsShellError("backticks (command substitution)")
        if c == "$":
            _dollar(line, i)
        if ord(c) < 32 and c != "\t":
            raise NeedsShellError(f"the control character {c!r}")
        cur.append(c)
        i += 1
    raise NeedsShellError("an unterminated double quote")


def shell_program(argv: list[str]) -> str | None:
    """The shell this argv starts (itself, or through sudo/env/… in its arguments), if any."""
    first = PurePosixPath(argv[0]).name
    if first in SHELLS:
        return first
    if first in WRAPPERS:
        for arg in argv[1:]:
            name = PurePosixPath(arg).name
            if name in SHELLS:
                return name
    return None


class UnknownMacroError(Exception):
    pass


def arg_macro(name: str, args: Sequence[str]) -> str:
    n = int(name[3:]) if name[3:].isdigit() else 0
    if not 1 <= n <= 32:
        raise UnknownMacroError(name)
    return args[n - 1] if n <= len(args) else ""  # a missing $ARGn$ is empty, as in Nagios


def expand_macros(text: str, lookup: Callable[[str], str]) -> str:
    """One pass over $MACRO$s (never re-expanding what a macro gave); `$$` is a literal `$`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        start = text.find("$", i)
        end = text.find("$", start + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            out.append(text[i:])
            break
        name = text[start + 1: end]
        out.append(text[i:start])
        if name == "":
            out.append("$")
        elif re.fullmatch(r"[A-Za-z0-9_]+", name):
            out.append(lookup(name.upper()))
        else:
            out.append("$")
            end = start  # not a macro: keep the `$`, go on after it
        i = end + 1
    return "".join(out)


def strip_comment(raw: str) -> str:
    """A line without its comment: `#` or `;` first, or from an unescaped `;` (`\\;` is a literal `;`)."""
    line = raw.strip()
    if line.startswith(("#", ";")):
        return ""
    cut = re.search(r"(?<!\\);", line)
    if cut:
        line = line[: cut.start()]
    return line.replace("\\;", ";").strip()


def split_args(text: str) -> list[str]:
    """check_command `name!a1!a2`; `\\!` is a literal `!`."""
    parts = re.split(r"(?<!\\)!", text)
    return [p.replace("\\!", "!") for p in parts]


def split_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def catalog_name(text: str) -> str:
    """A catalog name (lowercase, [a-z0-9_.-], 64 at most) for a Nagios name; long ones keep a hash."""
    slug = _NAME_CHARS.sub("-", text.lower()).strip("-._") or "x"
    if len(slug) > 64:
        slug = slug[:55].rstrip("-._") + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return slug


def unique_name(name: str, taken: set[str]) -> str:
    out, n = name, 2
    while out in taken:
        suffix = f"-{n}"
        out, n = name[: 64 - len(suffix)] + suffix, n + 1
    taken.add(out)
    return out


def escape_variables(data: Any) -> Any:
    """`${` written as `$${`: the catalog loader reads `${VAR}` from the environment, Nagios text must not."""
    if isinstance(data, str):
        return data.replace("${", "$${")
    if isinstance(data, list):
        return [escape_variables(x) for x in data]
    if isinstance(data, dict):
        return {k: escape_variables(v) for k, v in data.items()}
    return data

"""Saved servers and tokens (`opsroom login`), kubectl/gh style: several profiles, one current.

The file ($XDG_CONFIG_HOME/opsroom/profiles, else ~/.config/opsroom/profiles) holds bearer
tokens, so it is written 0600 in a 0700 directory, replaced atomically, and refused when another
user could read it (as ssh refuses a readable private key): a token others could read is one
they could use.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT = "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_BYTES = 1024 * 1024


class ProfileError(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True)
class Profile:
    name: str
    server: str
    token: str
    user: str | None = None


def path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "opsroom" / "profiles"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ProfileError(f"{name[:80]!r} is not a profile name",
                           "use letters, digits, '.', '_' or '-' (at most 64), e.g. --profile prod")
    return name


def _read() -> dict[str, Any]:
    file = path()
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {"current": None, "profiles": {}}
    except OSError as exc:
        raise ProfileError(f"cannot read {file}: {exc.strerror or exc}",
                           "it must be a plain file of yours (not a link); remove it and log in again") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise ProfileError(f"{file} is not a plain file of yours", f"remove it and log in again: rm {file}")
        if info.st_mode & 0o077:
            raise ProfileError(f"{file} can be read by other users (mode {stat.S_IMODE(info.st_mode):o}) and holds "
                               "tokens", f"chmod 600 {file}, and revoke its tokens if others may have read them")
        raw = f.read(MAX_BYTES + 1)
    try:
        if len(raw) > MAX_BYTES:
            raise ValueError("larger than 1 MB")
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
            raise ValueError("no profiles in it")
        for name, p in data["profiles"].items():
            if not isinstance(p, dict) or not isinstance(p.get("server"), str) or not isinstance(p.get("token"), str):
                raise ValueError(f"profile {name!r} lacks its server or token")
    except ValueError as exc:
        raise ProfileError(f"{file} is not a profiles file opsroom can read: {exc}",
                           f"remove it and log in again: rm {file}") from None
    return data


def _write(data: dict[str, Any]) -> None:
    file = path()
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = file.with_name(f".profiles.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(name: str | None) -> Profile | None:
    """The profile `name`, or the current one when None; None when there is none at all."""
    data = _read()
    chosen = name if name is not None else data.get("current")
    if chosen is None:
        return None
    p = data["profiles"].get(chosen)
    if p is None:
        known = ", ".join(sorted(data["profiles"])) or "none yet"
        raise ProfileError(f"there is no profile {chosen!r}",
                           f"profiles: {known}; create one with `opsroom login URL --profile {chosen}`")
    return Profile(chosen, p["server"], p["token"], p.get("user"))


def save(profile: Profile, *, current: bool = True) -> None:
    data = _read()
    data["profiles"][check_name(profile.name)] = {"server": profile.server, "token": profile.token,
                                                 "user": profile.user}
    if current or data.get("current") is None:
        data["current"] = profile.name
    _write(data)


def remove(name: str | None) -> Profile | None:
    """Forget a profile (the current one when None); the next one left becomes current."""
    data = _read()
    chosen = name if name is not None else data.get("current")
    p = data["profiles"].pop(chosen, None) if chosen is not None else None
    if p is None:
        return None
    if data.get("current") == chosen:
        data["current"] = min(data["profiles"], default=None)
    _write(data)
    return Profile(str(chosen), p["server"], p["token"], p.get("user"))


def listing() -> tuple[str | None, list[Profile]]:
    data = _read()
    return data.get("current"), [Profile(n, p["server"], p["token"], p.get("user"))
                                 for n, p in sorted(data["profiles"].items())]

"""What a file is right now: one `Entry` per path, read without following links.

Every field AIDE's `R` group compares is here (type, permissions, owner, group, size, mtime,
ctime, inode, link count, link target, content hash), so a change AIDE sees is a change we see.
The content is always hashed in full up to `max_hash_bytes`: a scanner that trusts mtime and
size misses a same-size edit whose mtime was put back (`touch -r`). ctime cannot be put back by
a user, so it stays in the entry: an edit that was reverted still leaves it moved ("touched").
"""

from __future__ import annotations

import functools
import grp
import hashlib
import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024

# Field -> the kind of change a difference in it is reported as (in this order).
KINDS = {
    "type": "type", "target": "symlink", "sha256": "content", "size": "size", "mode": "permissions",
    "uid": "owner", "gid": "group", "inode": "inode", "nlink": "links", "mtime_ns": "mtime",
}


@dataclass(frozen=True)
class Entry:
    path: str
    type: str  # file | dir | symlink | fifo | socket | char | block
    mode: int  # permission bits only (the type is `type`)
    uid: int
    gid: int
    owner: str
    group: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    nlink: int
    target: str | None = None  # a symlink's target, as written (never followed here)
    sha256: str | None = None  # regular files: of the first `hashed` bytes
    hashed: int = 0  # bytes hashed: < size when the file is larger than the hashing limit

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(**data)

    @property
    def partial(self) -> bool:
        return self.type == "file" and self.hashed < self.size


def _type(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "char"),
                       (stat.S_ISBLK, "block")):
        if test(mode):
            return name
    return "other"


@functools.lru_cache(maxsize=1024)  # a rescan of 20,000 files must not ask NSS 40,000 times
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@functools.lru_cache(maxsize=1024)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _hash(path: str, st: os.stat_result, limit: int) -> tuple[str | None, int]:
    """sha256 of the first `limit` bytes, read through O_NOFOLLOW|O_NONBLOCK: a file swapped for a
    link or a FIFO between lstat and open is neither followed nor waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None, 0
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(opened.st_mode):
            return None, 0  # replaced while we looked: the watcher's next event reads it again
        digest, done = hashlib.sha256(), 0
        while done < limit:
            block = os.read(fd, min(CHUNK, limit - done))
            if not block:
                break
            digest.update(block)
            done += len(block)
        return digest.hexdigest(), done
    finally:
        os.close(fd)


def entry(path: str, *, max_hash_bytes: int) -> Entry | None:
    """The file at `path` as it is now (lstat: a link is described, not followed); None if absent."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    kind = _type(st.st_mode)
    target = sha = None
    hashed = 0
    if kind == "symlink":
        try:
            target = os.readlink(path)
        except OSError:
            target = None
    elif kind == "file":
        sha, hashed = _hash(path, st, max_hash_bytes)
    # Directories: their size and mtime move whenever a child is added; the child itself is reported.
    size = st.st_size if kind != "dir" else 0
    mtime = st.st_mtime_ns if kind != "dir" else 0
    nlink = st.st_nlink if kind != "dir" else 0
    return Entry(path=path, type=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                 owner=_user(st.st_uid), group=_group(st.st_gid), size=size, mtime_ns=mtime,
                 ctime_ns=st.st_ctime_ns if kind != "dir" else 0, inode=st.st_ino, nlink=nlink,
                 target=target, sha256=sha, hashed=hashed)


def differences(old: Entry | None, new: Entry | None) -> list[str]:
    """The kinds of change from `old` to `new`: added, deleted, or the fields that differ; `touched`
    when only ctime moved (something was written and put back, or chmod/chown to the same value)."""
    if old is None and new is None:
        return []
    if old is None:
        return ["added"]
    if new is None:
        return ["deleted"]
    kinds = [kind for field, kind in KINDS.items() if getattr(old, field) != getattr(new, field)]
    if not kinds and old.ctime_ns != new.ctime_ns:
        kinds.append("touched")
    return kinds


def walk(root: str, *, max_hash_bytes: int, limit: int) -> dict[str, Entry]:
    """Every entry under `root` (itself included), never descending into linked directories."""
    found: dict[str, Entry] = {}
    top = entry(root, max_hash_bytes=max_hash_bytes)
    if top is None:
        return found
    found[root] = top
    if top.type != "dir":
        return found
    for base, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in [*dirs, *sorted(files)]:
            path = os.path.join(base, name)
            got = entry(path, max_hash_bytes=max_hash_bytes)
            if got is not None:
                found[path] = got
            if len(found) > limit:
                raise TooMany(f"more than {limit} files under {root}")
    return found


class TooMany(Exception):
    """A watched tree grew past the file limit: scanning it whole would take the server's time."""


def read_text(path: str, *, max_bytes: int, expect: Entry) -> str | None:
    """The file's text for a diff: a regular file (not through a link), at most `max_bytes`, UTF-8
    with no NUL byte, and the very file `expect` describes (same inode and hash); else None."""
    if expect.type != "file" or expect.size > max_bytes or expect.sha256 is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != expect.inode or st.st_size > max_bytes:
            return None
        data = b""
        while len(data) <= max_bytes:
            block = os.read(fd, CHUNK)
            if not block:
                break
            data += block
    finally:
        os.close(fd)
    if len(data) > max_bytes or hashlib.sha256(data).hexdigest() != expect.sha256 or b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def absolute(path: str | Path) -> str:
    """An absolute, normalised path that keeps its last link (realpath would follow it away)."""
    p = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(p)
    return os.path.join(os.path.realpath(parent), name) if name else os.path.realpath(p)

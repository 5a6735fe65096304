"""What is watched: the catalog, the scripts its runbooks run, and OPSROOM_INTEGRITY_PATHS.

A runbook's files are the catalog file that defines it and every argv word of its local command
steps that names an existing file by path (`/opt/ops/restart.sh`, `scripts/x.sh` from the step's
`cwd` or the catalog directory). Templated words (`{{ params.x }}`) name no fixed file and are
left out; so are bare command names found on PATH (`systemctl`) and the host's own programs
(/usr but /usr/local, /bin, /lib, Python's prefix): those belong to its package manager and its
integrity tools (AIDE, `dpkg --verify`), and watching /usr/bin would announce every upgrade.
A script that is a link is watched as the link (a swap of its target is a change) and as the
file it points to (what actually runs).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from opsroom.catalog.catalog import Catalog
from opsroom.catalog.schema import Runbook
from opsroom.config import Settings
from opsroom.integrity.snapshot import absolute


@dataclass(frozen=True)
class Scope:
    trees: tuple[str, ...]  # directories watched whole (recursive)
    files: tuple[str, ...]  # single files watched (their directory is watched for swaps)
    runbooks: dict[str, frozenset[str]] = field(default_factory=dict, compare=False)

    root: str = ""  # the catalog's path: with the host and the data dir, names the baseline
    data: str = ""  # the data dir, whose key signs the baseline

    @property
    def site(self) -> str:
        """Whose baseline this is: this host, this catalog and this data dir. A cluster's servers
        each keep their own; two servers of one store on one host with different catalogs do not
        take each other's files for added ones, nor (different data dirs, so different keys) each
        other's baseline for a forged one; the admin CLI given the server's --catalog and --data
        finds its baseline."""
        where = f"{self.root}\0{self.data}" if self.data else self.root
        digest = hashlib.sha256(where.encode(errors="surrogateescape")).hexdigest()[:8]
        return f"{socket.gethostname()[:100]}:{digest}"

    def covers(self, path: str) -> bool:
        return path in self.files or any(path == t or path.startswith(t.rstrip("/") + "/") for t in self.trees)

    def watch_dirs(self) -> list[tuple[str, bool]]:
        """(directory, recursive) to hand inotify: every tree, and the directory of every single file."""
        dirs = {t: True for t in self.trees if os.path.isdir(t)}
        for f in self.files:
            parent = os.path.dirname(f)
            if not any(parent == t or parent.startswith(t.rstrip("/") + "/") for t in dirs) and os.path.isdir(parent):
                dirs.setdefault(parent, False)
        return sorted(dirs.items())


_SYSTEM = tuple({"/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/lib32/", "/libx32/",
                 *(os.path.realpath(p).rstrip("/") + "/" for p in (sys.prefix, sys.base_prefix, sys.exec_prefix))})


def _system(path: str) -> bool:
    real = os.path.realpath(path)
    return any(p.startswith(_SYSTEM) and not p.startswith("/usr/local/") for p in (path, real))


def _script_words(rb: Runbook, root: str | None) -> set[str]:
    found: set[str] = set()
    if rb.target != "local":
        return found  # its commands run on other hosts: their files are not this host's to watch
    for step in rb.steps:
        if step.command is None:
            continue
        base = step.cwd if step.cwd and "{{" not in step.cwd else root
        for word in step.command:
            if "{{" in word or "/" not in word or word.startswith("-"):
                continue
            path = word if os.path.isabs(word) else os.path.join(base, word) if base else None
            if path is not None and os.path.lexists(path) and not os.path.isdir(path) and not _system(path):
                found.add(absolute(path))
    return found


def runbook_files(catalog: Catalog) -> dict[str, frozenset[str]]:
    """Runbook -> the files whose change quarantines it (its catalog file and its scripts)."""
    root = catalog.root or None
    root_dir = root if root and os.path.isdir(root) else (os.path.dirname(root) if root else None)
    out: dict[str, frozenset[str]] = {}
    for name, rb in catalog.runbooks.items():
        files = _script_words(rb, root_dir)
        for path in list(files):
            if os.path.islink(path):
                files.add(os.path.realpath(path))
        where = catalog.locate("runbook", name)
        if where is not None and where.file:
            files.add(absolute(where.file))
        out[name] = frozenset(files)
    return out


def scope_of(settings: Settings, catalog: Catalog) -> Scope:
    trees: set[str] = set()
    files: set[str] = set()
    root = catalog.root or (str(settings.catalog) if settings.catalog else "")
    if root:
        (trees if os.path.isdir(root) else files).add(absolute(root))
    runbooks = runbook_files(catalog)
    for paths in runbooks.values():
        files.update(paths)
    for extra in settings.integrity_paths:
        p = absolute(Path(extra))
        (trees if os.path.isdir(p) and not os.path.islink(p) else files).add(p)
    files = {f for f in files if not any(f == t or f.startswith(t.rstrip("/") + "/") for t in trees)}
    return Scope(trees=tuple(sorted(trees)), files=tuple(sorted(files)), runbooks=runbooks,
                 root=os.path.realpath(root) if root else "", data=os.path.realpath(settings.data))

"""Reading the watched files: all of them (a rescan) or a watcher's batch of paths."""

from __future__ import annotations

from dataclasses import dataclass, field

from opsroom.config import Settings
from opsroom.integrity.scope import Scope
from opsroom.integrity.snapshot import Entry, TooMany, entry, walk


@dataclass
class Observed:
    entries: dict[str, Entry]
    judged: set[str] | None = None  # the paths a batch judges (None: a full scan judges all)
    # Trees refused (too many files) -> why. Not judged file by file (their files are not
    # gone), but each is a change of its own: flooding a tree must not blind the watch.
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        return sorted(self.skipped.values())


def _below(base: dict[str, Entry], path: str) -> set[str]:
    prefix = path.rstrip("/") + "/"
    return {b for b in base if b.startswith(prefix)}


def observe(settings: Settings, sc: Scope, paths: set[str] | None = None,
            base: dict[str, Entry] | None = None) -> Observed:
    """The watched files as they are now: all of them, or a watcher's batch of `paths` (a path
    gone takes what the baseline had below it; a directory new to the baseline is walked whole)."""
    limit, max_files = settings.integrity_max_hash_bytes, settings.integrity_max_files
    found: dict[str, Entry] = {}
    skipped: dict[str, str] = {}
    if paths is None:
        for tree in sc.trees:
            try:
                found.update(walk(tree, max_hash_bytes=limit, limit=max_files))
            except TooMany as exc:
                skipped[tree] = str(exc)
        for f in sc.files:
            got = entry(f, max_hash_bytes=limit)
            if got is not None:
                found[f] = got
        return Observed(found, None, skipped)
    known = base or {}
    judged: set[str] = set()
    for p in sorted(paths):
        if not sc.covers(p):
            continue
        judged.add(p)
        got = entry(p, max_hash_bytes=limit)
        old = known.get(p)
        if got is None or got.type != "dir" or old is None or old.type != "dir":
            judged |= _below(known, p)  # gone, or a directory where there was none (or the reverse)
        if got is None:
            continue
        found[p] = got
        if got.type == "dir" and (old is None or old.type != "dir") and p not in sc.files:
            try:
                inside = walk(p, max_hash_bytes=limit, limit=max_files)
            except TooMany as exc:
                skipped[p] = str(exc)
                continue
            found.update(inside)
            judged |= set(inside)
    return Observed(found, judged, skipped)

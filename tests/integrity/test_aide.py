"""Debian's AIDE, run on the same tree with a config of its own, finds these changes too, and
opsroom finds at least every path AIDE reports (a directory AIDE calls changed only because an
entry in it came or went counts as found when opsroom reports that entry)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from opsroom.integrity import service
from opsroom.runtime import Runtime
from tests.integrity.conftest import Tree, changes
from tests.integrity.test_detect import CASES

AIDE = shutil.which("aide") or "/usr/bin/aide"
# AIDE's own R group and more: everything opsroom's baseline keeps.
RULE = "p+i+n+u+g+s+m+c+sha256+ftype+l"
_DIRECTORY_ONLY = {"modify_time", "change_time", "lcount", "size"}  # what an entry coming or going does


def _conf(tree: Tree, rt: Runtime, work: Path) -> Path:
    sc = service.scope(rt)
    lines = [f"database_in=file:{work / 'aide.db'}", f"database_out=file:{work / 'aide.db.new'}",
             "gzip_dbout=no", "report_format=json", "report_url=stdout", f"Watch = {RULE}"]
    lines += [f"{re.escape(t)} Watch" for t in sc.trees]  # a tree: itself and everything below it
    lines += [f"={re.escape(f)}$ Watch" for f in sc.files]  # a single file: that path only
    conf = work / "aide.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _aide(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AIDE, f"--config={conf}", *args], capture_output=True, text=True, timeout=60)


def _aide_init(tree: Tree, rt: Runtime) -> Path:
    work = tree.root / "aide"
    work.mkdir()
    conf = _conf(tree, rt, work)
    made = _aide(conf, "--init")
    assert made.returncode == 0, made.stdout + made.stderr
    (work / "aide.db.new").rename(work / "aide.db")
    return conf


# AIDE's attribute names (its JSON report's details) -> the kind opsroom reports for it.
AIDE_KIND = {"perm": "permissions", "uid": "owner", "gid": "group", "inode": "inode", "size": "size",
             "sha256": "content", "file_type": "type", "link_name": "symlink", "lcount": "links",
             "modify_time": "mtime", "change_time": None}  # ctime moves with any of them; alone: `touched`


def _aide_found(conf: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(files and links AIDE reports added, removed or changed, with the attributes that differ;
    the same for directories)."""
    check = _aide(conf, "--check")
    assert check.returncode < 14, check.stdout + check.stderr  # 1 added, 2 removed, 4 changed; 14+: errors
    report = json.loads(check.stdout)
    summary = {**report.get("added", {}), **report.get("removed", {}), **report.get("changed", {})}
    files: dict[str, set[str]] = {}
    dirs: dict[str, set[str]] = {}
    for p, line in summary.items():
        attrs = set(report.get("details", {}).get(p, {}))
        (dirs if line.startswith("d") else files)[p] = attrs
    return files, dirs


def _opsroom_found(rt: Runtime) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for ev in changes(rt):
        for c in ev.changes:
            found.setdefault(str(c["path"]), set()).update(c["kinds"])  # type: ignore[arg-type]
    return found


def _at_least_what_aide_finds(rt: Runtime, conf: Path) -> dict[str, set[str]]:
    aide_files, aide_dirs = _aide_found(conf)
    ours = _opsroom_found(rt)
    assert aide_files or aide_dirs, "AIDE saw no change: the test would prove nothing"
    missed = set(aide_files) - set(ours)
    assert not missed, f"AIDE found {sorted(missed)} that opsroom did not (opsroom: {ours})"
    for p, attrs in aide_files.items():
        unknown = attrs - set(AIDE_KIND)
        assert not unknown, f"AIDE reports attributes this test does not map: {unknown}"
        wanted = {AIDE_KIND[a] for a in attrs} - {None} - {"added", "deleted"}
        if "added" in ours[p] or "deleted" in ours[p]:
            continue  # the whole entry came or went
        assert wanted <= ours[p], f"{p}: AIDE saw {sorted(attrs)}, opsroom only {sorted(ours[p])}"
    for d, attrs in aide_dirs.items():
        if d in ours:
            continue
        # A directory: its own permissions, owner or group must be reported; mtime and the like
        # move because of an entry, which opsroom reports by its own path.
        assert attrs <= _DIRECTORY_ONLY, f"AIDE found {d} changed ({attrs}); opsroom did not"
        assert any(p.startswith(d.rstrip("/") + "/") for p in ours), f"AIDE found {d} changed; nothing below it"
    return aide_files


@pytest.mark.parametrize("name", list(CASES))
async def test_opsroom_finds_at_least_what_aide_finds(name: str, tree: Tree, rt: Runtime) -> None:
    await service.scan_now(rt, found_by="start")
    conf = _aide_init(tree, rt)
    CASES[name][0](tree)
    await service.scan_now(rt, found_by="scan")
    assert _at_least_what_aide_finds(rt, conf)


async def test_all_the_changes_at_once(tree: Tree, rt: Runtime) -> None:
    await service.scan_now(rt, found_by="start")
    conf = _aide_init(tree, rt)
    for name in ("permission-only", "owner", "group", "symlink-retargeted", "added", "deleted", "catalog-edited"):
        CASES[name][0](tree)
    (tree.scripts / "test.sh").write_text("#!/bin/sh\necho tampered\n")
    await service.scan_now(rt, found_by="scan")
    found = _at_least_what_aide_finds(rt, conf)
    assert len(found) >= 5

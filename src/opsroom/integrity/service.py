"""File integrity service: scan against the signed baseline, record changes, accept, refuse runs.

Stored in the database, not a file in the data dir: `opsroom integrity accept` runs in another
process than the server, and the server's next run request (on any server of a cluster) must see
the acceptance at once; a change row, its event and the audit record of an acceptance then commit
together, and the store's backups carry the baseline. The signature (baseline.py) is what keeps
a person who can write the database from accepting their own change.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsroom.access.identity import SYSTEM, Actor
from opsroom.audit import service as audit
from opsroom.audit.models import AuditRecordRow
from opsroom.catalog.catalog import Catalog
from opsroom.catalog.schema import Runbook
from opsroom.errors import Invalid, NotFound
from opsroom.eventlog import log as eventlog
from opsroom.events import uuid7
from opsroom.integrity import baseline as signed
from opsroom.integrity import live
from opsroom.integrity.baseline import Baseline
from opsroom.integrity.events import IntegrityChanged
from opsroom.integrity.models import IntegrityBaselineRow, IntegrityChangeRow
from opsroom.integrity.observe import observe
from opsroom.integrity.render import SHOWN_CHANGES, diff, escape, shown
from opsroom.integrity.schemas import AcceptResult, ChangeOut, ScanResult, Status
from opsroom.integrity.scope import Scope, scope_of
from opsroom.integrity.snapshot import Entry, absolute, differences, read_text, under

if TYPE_CHECKING:
    from opsroom.runtime import Runtime

BASELINE_PATH = ""  # the change row that stands for "the baseline itself failed its signature"
MAX_EVENT_CHANGES = 50  # listed in one event; the rest are counted (`more`) and in the status
_SHOWN_FIELDS = ("type", "mode", "owner", "group", "uid", "gid", "size", "inode", "nlink", "target", "sha256",
                 "mtime_ns")


_scopes: list[tuple[Catalog, list[Any], Scope]] = []


def scope(rt: Runtime) -> Scope:
    """The scope of the running catalog, worked out once per catalog (a run request asks it)."""
    extra = list(rt.settings.integrity_paths)
    for cat, paths, sc in _scopes:
        if cat is rt.catalog and paths == extra:
            return sc
    sc = scope_of(rt.settings, rt.catalog)
    _scopes.insert(0, (rt.catalog, extra, sc))
    del _scopes[8:]
    return sc


def _key(path: str) -> str:
    return hashlib.sha256(os.fsencode(path)).hexdigest()


def _facts(e: Entry | None) -> dict[str, Any] | None:
    if e is None:
        return None
    d = {k: getattr(e, k) for k in _SHOWN_FIELDS}
    d["mode"] = f"{e.mode:04o}"
    d["ctime_ns"] = e.ctime_ns
    if e.target is not None:
        d["target"] = shown(e.target)
    if e.partial:
        d["hashed"] = e.hashed
    return d


def protected_runbook(catalog: Catalog, rb: Runbook) -> bool:
    """Whether a run of `rb` may act on a protected environment (as runbooks.service decides a
    run's environment: a service parameter's, else the runbook's, else the only one); when it
    cannot be known before the parameters are, it counts as protected."""
    if any(p.type == "service" for p in rb.parameters.values()):
        return any(catalog.is_protected(catalog.service_environment(s)) for s in catalog.services) \
            or bool(rb.environment and catalog.is_protected(rb.environment))
    if rb.environment:
        return catalog.is_protected(rb.environment)
    if len(catalog.environments) == 1:
        return catalog.is_protected(next(iter(catalog.environments)))
    return any(e.protected for e in catalog.environments.values())


def quarantined_by(catalog: Catalog, sc: Scope, paths: set[str], *, everything: bool = False) -> list[str]:
    """The runbooks of protected environments whose files are among `paths` or below one of them
    (a directory whose owner or permissions changed, a tree too large to scan)."""
    out = []
    for name, files in sorted(sc.runbooks.items()):
        rb = catalog.runbooks.get(name)
        if rb is not None and protected_runbook(catalog, rb) and (everything or any(under(f, paths) for f in files)):
            out.append(name)
    return out


# --- reading and writing the baseline -------------------------------------------------------


# (site, key fingerprint) -> (generation, signature, the baseline they verified): a watcher's batch
# and a run request read two short columns, not thousands of entries, while nothing was accepted.
_verified: dict[tuple[str, bytes], tuple[int, str, Baseline]] = {}
_T = IntegrityBaselineRow


def _load(s: Session, key: bytes, site: str, *, fresh: bool = False) -> tuple[Baseline | None, bool]:
    """(baseline, signature ok). A row whose signature fails is returned as None, False. `fresh`
    (full scans, accept, status) verifies the stored row itself: an edit that kept the generation
    and signature columns must be found, not answered from the copy verified before."""
    head = s.execute(select(_T.generation, _T.signature).where(_T.site == site)).first()
    if head is None:
        return None, True
    cached = (site, hashlib.sha256(key).digest())
    known = _verified.get(cached)
    if not fresh and known is not None and (known[0], known[1]) == (head[0], head[1]):
        return known[2], True
    row = s.execute(select(_T.generation, _T.signature, _T.entries, _T.texts).where(_T.site == site)).one()
    if not signed.valid(key, site=site, generation=row.generation, entries=row.entries, signature=row.signature):
        return None, False
    try:
        texts = json.loads(row.texts) if row.texts else {}
        base = Baseline(site, row.generation, signed.decode(row.entries), texts)
    except (ValueError, TypeError, KeyError):
        return None, False  # signed but unreadable: only a key holder could make it so; still an alarm
    _verified[cached] = (row.generation, row.signature, base)
    return base, True


def _audited_generation(s: Session, site: str) -> int | None:
    """The baseline generation the audit log last recorded for this site (None: never made). The
    log is hash-chained, so a baseline row that is gone (to be remade from files already changed)
    or rolled back to an older signed generation (to bring back a superseded script) shows here."""
    found = s.execute(select(AuditRecordRow.details).where(
        AuditRecordRow.action.in_(("integrity.baseline", "integrity.accept")),
        AuditRecordRow.target == f"integrity:{site}"[:255]).order_by(AuditRecordRow.seq.desc()).limit(1)).first()
    if found is None:
        return None
    generation = found[0].get("generation") if isinstance(found[0], dict) else None
    return generation if isinstance(generation, int) else 0


def _trusted(s: Session, key: bytes, site: str, *, fresh: bool = True) -> tuple[Baseline | None, str | None]:
    """(baseline, why it cannot be trusted): `signature`, `missing` (made once, gone now) or
    `rolled back`; (None, None) before the first baseline."""
    base, ok = _load(s, key, site, fresh=fresh)
    if not ok:
        return None, "signature"
    audited = _audited_generation(s, site)
    if base is None:
        return None, "missing" if audited is not None else None
    if audited is not None and base.generation < audited:
        return None, "rolled back"
    return base, None


def _texts(rt: Runtime, entries: dict[str, Entry], paths: set[str], old: dict[str, str]) -> dict[str, str]:
    out = {p: t for p, t in old.items() if p in entries and p not in paths}
    for p in paths:
        e = entries.get(p)
        if e is not None:
            text = read_text(p, max_bytes=rt.settings.integrity_max_diff_bytes, expect=e)
            if text is not None:
                out[p] = text
    return out


def _store(s: Session, key: bytes, *, site: str, generation: int, entries: dict[str, Entry],
           texts: dict[str, str], by: str) -> None:
    text = signed.encode(entries)
    row = s.get(IntegrityBaselineRow, site)
    if row is None:
        row = IntegrityBaselineRow(site=site)
        s.add(row)
    row.generation, row.entries = generation, text
    row.texts = json.dumps(texts, sort_keys=True, ensure_ascii=True)
    row.signature = signed.sign(key, site=site, generation=generation, entries=text)
    row.updated_at, row.updated_by = time.time(), by[:128]


# --- scanning -------------------------------------------------------------------------------


async def scan_now(rt: Runtime, *, found_by: str, paths: set[str] | None = None,
                   sc: Scope | None = None) -> ScanResult:
    """Compare the files (all, or `paths`) with the baseline; record and announce what is new.

    The first scan of a site makes its baseline (audited as `integrity.baseline`); the files are
    read in a thread, off the event loop."""
    sc = sc or scope(rt)
    key = await asyncio.to_thread(signed.signing_key, rt.settings.data)
    started = time.time()
    known: dict[str, Entry] = {}
    if paths is not None:
        async with rt.read() as rs:
            found, _ok = await rs.run_sync(lambda sync: _load(sync, key, sc.site))
        known = found.entries if found is not None else {}
    seen = await asyncio.to_thread(observe, rt.settings, sc, paths, known)

    uid = uuid7()  # the event's, also kept on each change row it reports

    def body(s: Session) -> tuple[ScanResult, IntegrityChanged | None]:
        base, problem = _trusted(s, key, sc.site, fresh=paths is None)
        if base is None and problem is None:
            texts = _texts(rt, seen.entries, set(seen.entries), {})
            _store(s, key, site=sc.site, generation=1, entries=seen.entries, texts=texts, by=SYSTEM.name)
            audit.append_in(s, actor=SYSTEM, action="integrity.baseline", target=f"integrity:{sc.site}"[:255],
                            details={"files": len(seen.entries), "found_by": found_by, "generation": 1})
            return ScanResult(site=sc.site, files=len(seen.entries), new_changes=0, created=True,
                              problems=seen.problems), None
        if base is None:  # a failed signature, or a baseline deleted or rolled back after it was made
            new = {"baseline": problem}
            row = _open_row(s, sc.site, BASELINE_PATH)
            if row is not None and row.new == new:
                return ScanResult(site=sc.site, files=len(seen.entries), new_changes=0, baseline_ok=False,
                                  problems=seen.problems), None
            _upsert(s, sc.site, BASELINE_PATH, ["baseline"], None, new, uid)
            ev = IntegrityChanged(uid=uid, site=sc.site, found_by=found_by, baseline_ok=False,
                                  changes=[{"path": "(baseline)", "kinds": ["baseline"], "old": None, "new": new,
                                            "diff": None}],
                                  quarantined=quarantined_by(rt.catalog, sc, set(), everything=True))
            eventlog.append(s, ev, origin=rt.node_id)
            return ScanResult(site=sc.site, files=len(seen.entries), new_changes=1, baseline_ok=False,
                              problems=seen.problems), ev
        changes: list[dict[str, Any]] = []
        # A full scan judges what this scope covers: a CLI started without the server's
        # OPSROOM_INTEGRITY_PATHS must not call the files it was not told about deleted.
        judged = seen.judged if seen.judged is not None else {
            *(p for p in base.entries if sc.covers(p) and not under(p, seen.skipped)), *seen.entries}
        for p in sorted(judged):
            old, now = base.entries.get(p), seen.entries.get(p)
            kinds = differences(old, now)
            if not kinds:
                continue
            facts = _facts(now)
            row = _open_row(s, sc.site, p)
            if row is not None and row.new == facts and row.kinds == kinds:
                continue  # already recorded and announced as it is now
            text = None
            if "content" in kinds and now is not None and sum(1 for c in changes if c["diff"]) < SHOWN_CHANGES:
                before = base.text_of(p)
                after = read_text(p, max_bytes=rt.settings.integrity_max_diff_bytes, expect=now)
                if before is not None and after is not None:
                    text = diff(before, after, path=p)
            _upsert(s, sc.site, p, kinds, _facts(old), facts, uid)
            changes.append({"path": shown(p), "raw": p, "kinds": kinds, "old": _facts(old), "new": facts,
                            "diff": text})
        for tree, problem in sorted(seen.skipped.items()):
            new = {"problem": problem}
            row = _open_row(s, sc.site, tree)
            if row is None or row.new != new:
                was = _facts(base.entries.get(tree))
                _upsert(s, sc.site, tree, ["unscanned"], was, new, uid)
                changes.append({"path": shown(tree), "raw": tree, "kinds": ["unscanned"], "old": was, "new": new,
                                "diff": None})
        if not changes:
            return ScanResult(site=sc.site, files=len(seen.entries), new_changes=0, problems=seen.problems), None
        touched = {c.pop("raw") for c in changes}
        ev = IntegrityChanged(uid=uid, site=sc.site, found_by=found_by, changes=changes[:MAX_EVENT_CHANGES],
                              more=max(0, len(changes) - MAX_EVENT_CHANGES),
                              quarantined=quarantined_by(rt.catalog, sc, touched))
        eventlog.append(s, ev, origin=rt.node_id)
        return ScanResult(site=sc.site, files=len(seen.entries), new_changes=len(changes),
                          quarantined=ev.quarantined, problems=seen.problems), ev

    try:
        result, ev = await rt.transact(body)
    except IntegrityError:  # another server of this site made the baseline or the row first
        result, ev = await rt.transact(body)
    if ev is not None:
        rt.bus.publish(ev)
    result.seconds = round(time.time() - started, 3)
    return result


def _open_row(s: Session, site: str, path: str) -> IntegrityChangeRow | None:
    return s.execute(select(IntegrityChangeRow).where(IntegrityChangeRow.site == site,
                                                      IntegrityChangeRow.path_key == _key(path))).scalar_one_or_none()


def _upsert(s: Session, site: str, path: str, kinds: list[str], old: dict[str, Any] | None,
            new: dict[str, Any] | None, event_uid: str | None) -> None:
    row = _open_row(s, site, path)
    now = time.time()
    if row is None:
        row = IntegrityChangeRow(site=site, path_key=_key(path), path=shown(path) if path else "(baseline)",
                                 first_at=now, old=old)
        s.add(row)
    row.kinds, row.new, row.last_at, row.event_uid = kinds, new, now, event_uid
    s.flush()


def _need_catalog(rt: Runtime) -> None:
    if not rt.catalog.root:
        raise Invalid("no catalog: its files and its runbooks' scripts would be judged missing",
                      hint="pass the server's --catalog DIR (or OPSROOM_CATALOG), and its OPSROOM_INTEGRITY_PATHS")


async def scan(rt: Runtime, *, actor: Actor) -> ScanResult:
    """A full rescan asked for by a person (`opsroom integrity scan`): admins only, audited."""
    actor.require("*", what="scan the watched files")
    _need_catalog(rt)
    result = await scan_now(rt, found_by=actor.door)
    await audit.append_alone(rt, actor=actor, action="integrity.scan", target=f"integrity:{result.site}"[:255],
                             details={"files": result.files, "new_changes": result.new_changes})
    return result


# --- accepting ------------------------------------------------------------------------------


async def accept(rt: Runtime, *, actor: Actor, paths: list[str] | None = None) -> AcceptResult:
    """Make the files as they are now the baseline: all of them, or `paths` (a directory: all
    below it). Admins only; audited with the paths; lifts the quarantine those changes caused."""
    actor.require("*", what="accept file integrity changes")
    _need_catalog(rt)
    sc = scope(rt)
    wanted = [absolute(p) for p in paths] if paths else None
    key = await asyncio.to_thread(signed.signing_key, rt.settings.data)
    seen = await asyncio.to_thread(observe, rt.settings, sc, None)
    if seen.skipped:  # accepting without its files would drop them all from the baseline
        raise Invalid(f"cannot accept while a watched tree is not scanned: {'; '.join(seen.problems)}",
                      hint="remove the files that flooded it, or raise OPSROOM_INTEGRITY_MAX_FILES on the "
                           "server and here")

    def body(s: Session) -> AcceptResult:
        base, problem = _trusted(s, key, sc.site)
        open_rows = list(s.execute(select(IntegrityChangeRow).where(IntegrityChangeRow.site == sc.site)).scalars())
        if problem is not None and wanted is not None:
            raise Invalid(f"the stored baseline cannot be trusted ({problem}): "
                          "only a whole new baseline can replace it",
                          hint="review every watched file, then run `opsroom integrity accept` with no path")
        entries = dict(base.entries) if base is not None else {}
        generation = max(base.generation if base is not None else 0, _audited_generation(s, sc.site) or 0) + 1
        if wanted is None:
            chosen = {p for p in entries if sc.covers(p)} | set(seen.entries)
        else:
            chosen = set()
            for w in wanted:
                below = {p for p in {*entries, *seen.entries} if p == w or p.startswith(w.rstrip("/") + "/")}
                if not below:
                    raise NotFound(f"{shown(w)} is not a watched file",
                                   hint="`opsroom integrity status` lists the changed paths")
                chosen |= below
        for p in chosen:
            if p in seen.entries:
                entries[p] = seen.entries[p]
            else:
                entries.pop(p, None)
        texts = _texts(rt, entries, chosen, base.texts if base is not None else {})
        _store(s, key, site=sc.site, generation=generation, entries=entries, texts=texts, by=actor.name)
        keys = {_key(p) for p in chosen} | ({_key(BASELINE_PATH)} if wanted is None else set())
        cleared = [r.path for r in open_rows if r.path_key in keys]
        if keys:
            s.execute(delete(IntegrityChangeRow).where(IntegrityChangeRow.site == sc.site,
                                                       IntegrityChangeRow.path_key.in_(sorted(keys))))
        audit.append_in(s, actor=actor, action="integrity.accept", target=f"integrity:{sc.site}"[:255],
                        details={"paths": [shown(p) for p in sorted(wanted)][:100] if wanted else "all",
                                 "files": len(chosen), "cleared": cleared[:100], "generation": generation})
        return AcceptResult(site=sc.site, generation=generation, files=len(chosen), cleared=cleared)

    return await rt.transact(body)


# --- reading: status and the quarantine -----------------------------------------------------


async def open_changes(rt: Runtime, *, site: str | None = None) -> list[IntegrityChangeRow]:
    async with rt.read() as s:
        stmt = select(IntegrityChangeRow).order_by(IntegrityChangeRow.path)
        if site is not None:
            stmt = stmt.where(IntegrityChangeRow.site == site)
        return list((await s.execute(stmt)).scalars())


async def status(rt: Runtime, *, actor: Actor) -> Status:
    """The baseline and every unaccepted change, with the runbooks they quarantine (audited view)."""
    if not actor.can("audit.read"):
        await audit.append_alone(rt, actor=actor, action="integrity.status", target="integrity", outcome="refused",
                                 details={"reason": "missing permission audit.read"})
        actor.require("audit.read", what="read the file integrity status")
    sc = scope(rt)
    key = await asyncio.to_thread(signed.signing_key, rt.settings.data)
    async with rt.read() as s:
        base, problem = await s.run_sync(lambda sync: _trusted(sync, key, sc.site))
        row = await s.get(IntegrityBaselineRow, sc.site)
    rows = await open_changes(rt, site=sc.site)
    everything = any(r.path_key == _key(BASELINE_PATH) for r in rows)
    changed = {r.path_key for r in rows}
    raw = {p for files in sc.runbooks.values() for p in files if _key(p) in changed}
    await audit.append_alone(rt, actor=actor, action="integrity.status", target=f"integrity:{sc.site}"[:255])
    return Status(site=sc.site, baseline_ok=problem is None and row is not None,
                  generation=row.generation if row else 0,
                  files=len(base.entries) if base else 0, updated_at=row.updated_at if row else None,
                  updated_by=row.updated_by if row else None, trees=[shown(t) for t in sc.trees],
                  files_watched=[shown(f) for f in sc.files],
                  changes=[ChangeOut(path=r.path, kinds=list(r.kinds), first_at=r.first_at, last_at=r.last_at,
                                     old=r.old, new=r.new) for r in rows],
                  quarantined=quarantined_by(rt.catalog, sc, raw, everything=everything))


async def _current(rt: Runtime, site: str) -> tuple[Baseline | None, bool]:
    """The site's baseline, verified once per generation; (None, False) when its signature fails."""
    key = await asyncio.to_thread(signed.signing_key, rt.settings.data)
    async with rt.read() as s:
        return await s.run_sync(lambda sync: _load(sync, key, site))


def _moved(base: Baseline, files: Iterable[str]) -> str | None:
    """A file that is not as the baseline has it right now, by lstat alone (no hashing): any write,
    chmod, chown or rename moves its ctime or inode. Catches a change inotify has not delivered yet."""
    for f in sorted(files):
        e = base.entries.get(f)
        try:
            st = os.lstat(f)
        except OSError:
            if e is not None:
                return f
            continue
        if e is None or e.inode != st.st_ino or e.mode != stat.S_IMODE(st.st_mode) or e.uid != st.st_uid \
                or e.gid != st.st_gid or (e.type != "dir" and (e.ctime_ns, e.size) != (st.st_ctime_ns, st.st_size)):
            return f
    return None


async def refusal(rt: Runtime, *, runbook: str, environment: str | None = None) -> str | None:
    """Why `runbook` must not run now (None when it may): a file it depends on changed and the
    change is not accepted, on a protected environment. `environment`: the run's own, when the
    caller knows it (else the runbook counts as protected when any of its runs could be).

    Three looks, cheapest first: the recorded changes (any host), what inotify named and is
    being judged here, and an lstat of the runbook's files against the baseline (a change made
    a millisecond ago, before its inotify event arrived)."""
    rb = rt.catalog.runbooks.get(runbook)
    if rb is None:
        return None  # not ours to judge: the caller says it does not exist
    protected = rt.catalog.is_protected(environment) if environment else protected_runbook(rt.catalog, rb)
    if not protected:
        return None
    sc = scope(rt)
    files = sc.runbooks.get(runbook, frozenset())
    keys = {_key(p): p for p in files}
    for f in files:  # a change of a directory above a file (its owner, a flood) counts for the file
        parent = os.path.dirname(f)
        while parent and parent not in ("/", "."):
            keys.setdefault(_key(parent), parent)
            parent = os.path.dirname(parent)
    keys[_key(BASELINE_PATH)] = BASELINE_PATH
    async with rt.read() as s:
        rows = list((await s.execute(select(IntegrityChangeRow.path_key, IntegrityChangeRow.kinds,
                                            IntegrityChangeRow.site, IntegrityChangeRow.new)
                                     .where(IntegrityChangeRow.path_key.in_(sorted(keys))))).all())
    quarantined = f"runbook {escape(runbook)} is quarantined: "
    accept = "an admin reviews the change and runs `opsroom integrity accept` on that host"
    for path_key, kinds, site, new in sorted(rows, key=lambda r: keys[r[0]]):
        path = keys[path_key]
        if path == BASELINE_PATH:
            why = new.get("baseline") if isinstance(new, dict) else None
            return (f"{quarantined}the file baseline of {escape(site)} cannot be trusted ({escape(str(why))}); "
                    "an admin reviews every watched file and runs `opsroom integrity accept` on that host")
        return f"{quarantined}{shown(path)} changed ({', '.join(kinds)}) on {escape(site)}; {accept}"
    late = live.unrecorded(rt, files)
    if late is None and files:
        base, ok = await _current(rt, sc.site)
        if not ok:
            return f"{quarantined}the file baseline of {escape(sc.site)} does not verify; {accept}"
        late = _moved(base, files) if base is not None else None
    if late:
        return f"{quarantined}{shown(late)} changed a moment ago and is being checked; ask again in a few seconds"
    return None

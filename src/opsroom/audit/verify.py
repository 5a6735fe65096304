"""`audit verify`: recompute the chain, check every signed checkpoint against it, name the first fault.

What the chain alone shows: an edited, inserted, removed or reordered record (its hash, its link
or its sequence number is wrong). What only the checkpoints show, kept off the database and
signed: a cut tail (a checkpoint's size beyond the log) and a chain rewritten consistently with
a new head (the hash at a checkpoint's size is not the signed one). docs/audit.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from opsroom.access.models import UserRow
from opsroom.audit import checkpoints as cps
from opsroom.audit import jcs, keys
from opsroom.audit.chain import GENESIS, details_text, v1_hash, v2_text_of
from opsroom.audit.models import AuditHeadRow, AuditRecordRow
from opsroom.runbooks.models import ExecutionRow

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from opsroom.runtime import Runtime

CHUNK = 20_000
_T = AuditRecordRow.__table__
_ROWS = select(_T.c.seq, _T.c.at, _T.c.actor, _T.c.door, _T.c.action, _T.c.target, _T.c.outcome, _T.c.details,
               _T.c.correlation_id, _T.c.prev_hash, _T.c.hash, _T.c.v).order_by(_T.c.seq)


_SQL = ("SELECT seq, at, actor, door, action, target, outcome, details{cast}, correlation_id, prev_hash, hash, v "
        "FROM audit_records {where} ORDER BY seq")


async def chunks(session: AsyncSession, upto: int | None) -> AsyncIterator[Sequence[Any]]:
    """The records up to seq `upto` in chunks of plain tuples, in the session's transaction.

    Straight from the driver (aiosqlite, asyncpg with a server-side cursor): SQLAlchemy's
    per-row processing cost more than the hashing (12 us a row, 12 s for a million)."""
    conn = await session.connection()
    driver = (await conn.get_raw_connection()).driver_connection
    dialect = conn.dialect.name
    if dialect == "sqlite" and driver is not None and hasattr(driver, "execute"):
        cursor = await driver.execute(_SQL.format(cast="", where="WHERE seq <= ?" if upto is not None else ""),
                                      () if upto is None else (upto,))
        try:  # not read ahead: sqlite3 takes the GIL back for every row, and would wait on the walk each time
            while rows := await cursor.fetchmany(CHUNK):
                yield rows
        finally:
            await cursor.close()
        return
    if dialect == "postgresql" and driver is not None and hasattr(driver, "cursor"):
        # The cursor lives in the transaction SQLAlchemy began on this connection (read above).
        cur = await driver.cursor(_SQL.format(cast="::text", where="WHERE seq <= $1" if upto is not None else ""),
                                  *(() if upto is None else (upto,)))
        async for rows in _ahead(lambda: cur.fetch(CHUNK)):
            yield rows
        return
    stmt = _ROWS if upto is None else _ROWS.where(_T.c.seq <= upto)
    result = await session.stream(stmt.execution_options(yield_per=CHUNK))
    async for part in result.partitions(CHUNK):
        yield part


async def _ahead(fetch: Callable[[], Awaitable[Sequence[Any]]]) -> AsyncIterator[Sequence[Any]]:
    """Ask the server for the next chunk before the caller checks this one, so it is on the way
    while this thread hashes."""
    pending = asyncio.ensure_future(fetch())
    while rows := await pending:
        pending = asyncio.ensure_future(fetch())
        await asyncio.sleep(0)  # let the request reach the driver before the CPU-bound walk
        yield rows
    pending.cancel()


@dataclass
class VerifyResult:
    ok: bool
    records: int
    broken_seq: int | None = None
    reason: str | None = None
    checkpoints: int = 0  # signed checkpoints checked against the chain
    bad_checkpoint: str | None = None  # the file named when a checkpoint is the fault


@dataclass
class _Walk:
    count: int = 0
    prev: str = GENESIS
    broken_seq: int | None = None
    reason: str | None = None
    mismatch: tuple[str, int] | None = None  # (checkpoint, size) whose signed head differs


class CheckpointFault(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name, self.reason = name, reason


def load_checkpoints(directory: Path, *, log: str, public: Ed25519PublicKey | None) -> dict[int, list[tuple[str, str]]]:
    """size -> [(file, signed head)] of every checkpoint in `directory`; CheckpointFault names the
    first one that is malformed, not signed by `public`, or of another log."""
    need: dict[int, list[tuple[str, str]]] = {}
    removed = cps.git_removed(directory)
    if removed:
        raise CheckpointFault(removed[0], "it was committed to the directory's git history and is gone: removed "
                                          "(the newest checkpoints deleted to roll the log back)")
    for name, cp in cps.load_dir(directory):
        if isinstance(cp, cps.BadCheckpoint):
            raise CheckpointFault(name, f"not a valid checkpoint: {cp}")
        if public is None:
            raise CheckpointFault(name, "no public key to check its signature with (pass --public-key FILE)")
        if not cps.signature_ok(cp, public):
            raise CheckpointFault(name, f"its signature does not verify with the public key {keys.key_id(public)} "
                                        f"(it names key {cp.key[:16]}): forged, altered or signed by another key")
        if cp.log != log:
            raise CheckpointFault(name, f"it is a checkpoint of log {cp.log[:64]!r}, not {log!r}")
        need.setdefault(cp.size, []).append((name, cp.head))
    return need


def walk(rows: Any, state: _Walk, need: dict[int, list[tuple[str, str]]], requested: set[int],
         added: set[str]) -> bool:
    """Check one chunk of rows; False at the first broken record (state says which and why).

    The hot loop of verify: rows are plain tuples, the v2 text is built directly and hashed with
    hashlib, nothing is looked up by attribute per row."""
    sha, loads, text_of, esc, number = hashlib.sha256, json.loads, details_text, jcs._string, jcs.number
    prev, expected = state.prev, state.count + 1
    for seq, at, actor, door, action, target, outcome, details, corr, prev_hash, digest, v in rows:
        if seq != expected:
            state.broken_seq, state.reason = expected, f"record {expected} is missing (sequence gap: the next is {seq})"
            break
        if prev_hash != prev:
            state.broken_seq, state.reason = seq, ("prev_hash does not match the previous record: a record was "
                                                   "inserted, removed or moved before it")
            break
        # The store's text of details (SQLite, and PostgreSQL's json::text) is the canonical form
        # itself when models.CanonicalJSON wrote it: hashed as it is. Text written any other way
        # (by hand, or reformatted) gets one more chance through parse and re-encode. A text that
        # passes is the very text append hashed, so its value is the one appended.
        parsed = None if details.__class__ is str else details
        if v == 2:
            # chain.v2_text_of inlined (a call per row is a tenth of the walk). prev_hash is not
            # escaped: it was just found equal to the previous record's hex hash.
            canon = details if parsed is None else text_of(parsed)
            t = repr(at)
            t = number(at) if "e" in t or "n" in t else t[:-2] if t.endswith(".0") else t
            ok = sha((f'{{"action":{esc(action)},"actor":{esc(actor)},"at":{t},"correlation_id":'
                      f'{"null" if corr is None else esc(corr)},"details":{canon},"door":{esc(door)},'
                      f'"outcome":{esc(outcome)},"prev_hash":"{prev_hash}","seq":{seq},"target":{esc(target)},'
                      f'"v":2}}').encode()).hexdigest() == digest
            if not ok and parsed is None:
                parsed = loads(details)
                ok = sha(v2_text_of(seq, at, actor, door, action, target, outcome, text_of(parsed), corr,
                                    prev_hash).encode()).hexdigest() == digest
        elif v == 1:
            parsed = loads(details) if parsed is None else parsed
            ok = v1_hash(seq=seq, at=at, actor=actor, door=door, action=action, target=target, outcome=outcome,
                         details=parsed, correlation_id=corr, prev_hash=prev_hash) == digest
        else:
            ok = False
        if not ok:
            state.broken_seq, state.reason = seq, "content does not match its hash"
            break
        if seq in need and state.mismatch is None:
            for name, head in need[seq]:
                if head != digest:
                    state.mismatch = (name, seq)
                    break
        if action == "runbook.run":
            parsed = loads(details) if parsed is None else parsed
            if isinstance(parsed.get("execution"), int):
                requested.add(parsed["execution"])
        elif action == "user.add":
            added.add(target.removeprefix("user:"))
        elif action == "user.reconcile":
            parsed = loads(details) if parsed is None else parsed
            if parsed.get("created") or parsed.get("renamed_from"):
                added.add(target.removeprefix("user:"))
        prev, expected = digest, expected + 1
    state.prev, state.count = prev, expected - 1
    return state.broken_seq is None


async def verify(rt: Runtime, *, checkpoints: Path | None = None,
                 public_key: Ed25519PublicKey | None = None) -> VerifyResult:
    """Walk the chain and the checkpoints; name the first broken record, else the first bad checkpoint.

    `checkpoints`: the directory to read (default: the configured one, if it exists);
    `public_key`: the auditor's copy (default: the public half of this host's signing key).
    Checkpoints are read before the store: each was written after the records it covers had
    committed, so the head read next covers them all.
    """
    from opsroom.audit.checkpointer import checkpoint_dir

    settings = rt.settings
    directory = checkpoints or checkpoint_dir(settings)
    if public_key is None:
        path = keys.key_path(settings.data, settings.audit_key_file)
        public_key = keys.load(path).public_key() if path.exists() else None
    try:
        need = load_checkpoints(directory, log=settings.audit_log_name, public=public_key) \
            if directory.is_dir() else {}
    except CheckpointFault as fault:
        return VerifyResult(False, 0, None, f"checkpoint {fault.name}: {fault.reason}", bad_checkpoint=fault.name)
    n_checkpoints = sum(map(len, need.values()))
    state, requested, added = _Walk(), set[int](), set[str]()
    async with rt.read() as session:
        # Read in an order that stays consistent while servers write (on PostgreSQL each statement
        # sees its own snapshot): users and executions first, then the head, then the records up
        # to that head only. A user or execution read was added in the transaction that also
        # appended its record and moved the head, so the head read after it covers that record.
        users = list((await session.execute(select(UserRow.name).order_by(UserRow.id))).scalars())
        executions = list((await session.execute(select(ExecutionRow.id).order_by(ExecutionRow.id))).scalars())
        head = (await session.execute(select(AuditHeadRow).where(AuditHeadRow.id == 1))).scalar_one_or_none()
        async for part in chunks(session, None if head is None else head.seq):
            if not walk(part, state, need, requested, added):
                break
        if state.broken_seq is not None:
            return VerifyResult(False, state.count, state.broken_seq, state.reason)
        past_head = head is not None and await _past_head(session, head)
    count = state.count
    if 0 in need and any(h != GENESIS for _, h in need[0]):
        state.mismatch = state.mismatch or (next(n for n, h in need[0] if h != GENESIS), 0)
    if state.mismatch:
        name, size = state.mismatch
        return VerifyResult(False, count, size, f"checkpoint {name}: the log's hash at record {size} is not the "
                                                "signed one: the chain was rewritten up to there",
                            checkpoints=n_checkpoints, bad_checkpoint=name)
    beyond = sorted((size, name) for size, names in need.items() if size > count for name, _ in names)
    if beyond:
        size, name = beyond[0]
        return VerifyResult(False, count, count + 1, f"checkpoint {name} covers {size} records but the log holds "
                                                     f"{count}: records after {count} were removed",
                            checkpoints=n_checkpoints, bad_checkpoint=name)
    problem = _store_problem(head, past_head, count, state.prev, users, executions, added, requested)
    if problem:
        return VerifyResult(False, count, problem[0], problem[1], checkpoints=n_checkpoints)
    return VerifyResult(True, count, checkpoints=n_checkpoints)


def _store_problem(head: AuditHeadRow | None, past_head: bool, count: int, prev: str, users: list[str],
                   executions: list[int], added: set[str], requested: set[int]) -> tuple[int, str] | None:
    """What the store itself shows without checkpoints: a head row out of step with the records, an
    emptied log, users and executions whose records are gone."""
    expected = count + 1
    if head is not None and past_head:
        return head.seq + 1, "records exist past the head row: it was moved back over them (head mismatch)"
    if count and head is None:
        return expected, ("the head row is missing while records exist (records after the last one may "
                          "have been removed with it)")
    if head is not None and (head.seq != count or head.hash != prev):
        return expected, "records after this point were removed (head mismatch)"
    if not count and (users or executions):
        return 1, (f"the audit log is empty but the store holds {len(users)} users and "
                   f"{len(executions)} executions: its records were removed")
    unknown = [u for u in users if u not in added]
    if unknown:
        return expected, (f"user '{unknown[0]}' has no record of being added"
                          + (f" ({len(unknown)} users in all)" if len(unknown) > 1 else "")
                          + ": records were removed (the log emptied or cut, then restarted)")
    missing = [e for e in executions if e not in requested]
    if missing:
        return expected, (f"execution #{missing[0]} has no record of being asked for"
                          + (f" ({len(missing)} executions in all)" if len(missing) > 1 else "")
                          + ": records were removed from the end of the log and the head moved back")
    return None


async def _past_head(session: AsyncSession, head: AuditHeadRow) -> bool:
    """Records after the head read at the start, with the head unchanged since: the head was moved
    back. A head that moved meanwhile means a writer appended them (judged next time)."""
    seq, digest = head.seq, head.hash
    beyond = (await session.execute(select(func.min(AuditRecordRow.seq)).where(AuditRecordRow.seq > seq))).scalar()
    if beyond is None:
        return False
    now = (await session.execute(select(AuditHeadRow.seq, AuditHeadRow.hash).where(AuditHeadRow.id == 1))).first()
    return now is not None and (now[0], now[1]) == (seq, digest)

"""Storing check results and states: in the background, in chunks, off the event loop.

At 20,000 checks the monitor records several thousand results a second. Each chunk
is one `Runtime.transact` (one hop to SQLite's writer thread, or run_sync on
PostgreSQL) of at most three prebuilt statements, each sending the whole chunk at
once (results, state upsert, retention prune): the ORM's unit of work on the loop
thread stored ~150 results/s at that load and let the scheduler fall seconds behind.
Results waiting for the store are bounded; past the bound the oldest are dropped
and counted, never the check states (one row per check, always the latest), so a
slow disk costs history, not memory or correctness.

The monitor's events (a state change, flapping, a system's health) are published on the bus at
once (the rules' fast path) and handed here too: each is written to the event log in the
transaction that stores its check's state row, so the log never says what the store does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Integer, bindparam, delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from opsroom.checks.models import CheckResultRow, CheckStateRow
from opsroom.eventlog import log as eventlog
from opsroom.events import Event
from opsroom.runtime import Begin, Runtime

log = structlog.get_logger(__name__)
WRITE_CHUNK = 250  # rows per statement; between chunks a drain gives way to a waiting writer (a recovery)
MAX_PENDING = 50_000  # results held while the store lags (~7 s at 6,700 checks/s)
FLUSH_EVERY_S = 0.5
# A check whose status did not change still has its state row refreshed this often, so after a
# restart "last checked" and its output are at most this old (the results table has them all).
STATE_REFRESH_S = 60.0

_STATE_FIELDS = ("state", "state_type", "attempt", "since", "last_check", "last_output", "last_latency_ms",
                 "down", "flapping", "history")
# RETURNING makes SQLAlchemy send a chunk as one multi-row INSERT ("insertmanyvalues") instead of
# executemany, whose sqlite3 step per row gives up the GIL and waits to get it back for the next
# row: 250 rows took 390 ms beside a busy event loop, one statement takes a few ms.
_ADD_RESULTS = insert(CheckResultRow).returning(CheckResultRow.id)


def _upsert(dialect_insert: Any) -> Any:
    stmt = dialect_insert(CheckStateRow)
    return stmt.on_conflict_do_update(index_elements=[CheckStateRow.check],
                                      set_={f: stmt.excluded[f] for f in _STATE_FIELDS}).returning(CheckStateRow.check)


# One row per check, always the latest: insert or overwrite in one statement (SQLite >= 3.24, PostgreSQL).
_SAVE_STATES = {"sqlite": _upsert(sqlite_insert), "postgresql": _upsert(postgresql_insert)}
_RANKED = select(CheckResultRow.id, func.row_number().over(
    partition_by=CheckResultRow.check, order_by=(CheckResultRow.at.desc(), CheckResultRow.id.desc())).label("rank")
).where(CheckResultRow.check.in_(bindparam("b_checks", expanding=True))).subquery()
# Every check of the chunk that is over retention, pruned to its newest `b_keep` in one statement.
_PRUNE = delete(CheckResultRow).where(
    CheckResultRow.id.in_(select(_RANKED.c.id).where(_RANKED.c.rank > bindparam("b_keep", type_=Integer))))

StateOf = Callable[[str], dict[str, Any]]
T = TypeVar("T")


class ResultWriter:
    """Results and dirty check names, taken by the writer: a deque and a set, whose single operations
    are atomic, because on SQLite the writer thread takes while the event loop adds."""

    def __init__(self, rt: Runtime, state_of: StateOf, *, max_pending: int = MAX_PENDING) -> None:
        self.rt = rt
        self.max_pending = max_pending
        self.state_of = state_of  # a check's current persisted fields, read when its chunk is written
        self.pending: deque[dict[str, Any]] = deque()
        self.dirty: set[str] = set()
        # (check whose state row goes with it, or None; the event), in the order they happened.
        self.events: deque[tuple[str | None, Event]] = deque()
        self.events_dropped = 0
        self.dropped = 0  # results never stored because the store fell max_pending behind
        self.stored = 0
        self._counts: dict[str, int] = {}  # results per check in the store, for pruning (writer only)
        self._refresh_at: dict[str, float] = {}  # when an unchanged check's state row is due again
        self._ok_due: dict[str, float] = {}  # when an OK check's next result is kept
        self.sampled_out = 0  # OK results of unchanged checks not kept (check_result_ok_interval)
        self._warned_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._stopping = asyncio.Event()

    def add(self, result: dict[str, Any], *, state_changed: bool = True) -> None:
        """Take a check's result: kept if it is not OK, changed the state, or is the OK one due
        (check_result_ok_interval); the state row is rewritten on a change, else once a STATE_REFRESH_S."""
        name, at = result["check"], result["at"]
        keep_ok = self.rt.settings.check_result_ok_interval
        ok_due = self._ok_due.get(name)
        if ok_due is None:
            # First result since start: an unchanged status is what the stored rows already say, so
            # its OK sample and row refresh are spread over their periods instead of 20,000 rows at once.
            spread = zlib.crc32(name.encode()) / 2**32
            ok_due = self._ok_due[name] = at + keep_ok * spread
            self._refresh_at[name] = at + STATE_REFRESH_S * spread
        if state_changed or result["state"] != "OK" or at >= ok_due:
            self.pending.append(result)
            self._ok_due[name] = at + keep_ok
        else:
            self.sampled_out += 1
        if state_changed or at >= self._refresh_at[name]:
            self.dirty.add(name)
            self._refresh_at[name] = at + STATE_REFRESH_S
        if len(self.pending) > self.max_pending:
            excess = len(self.pending) - self.max_pending
            for _ in range(excess):
                self.pending.popleft()
            self.dropped += excess
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("the store is behind: oldest check results dropped", dropped_total=self.dropped,
                            pending=len(self.pending))

    def log(self, ev: Event, *, check: str | None = None) -> None:
        """Write `ev` to the event log with the next state rows (`check`'s among them)."""
        self.events.append((check, ev))
        if len(self.events) > self.max_pending:
            # Only while the store has been away for a long time: memory stays bounded.
            self.events.popleft()
            self.events_dropped += 1
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("the store is behind: oldest check events not logged", dropped_total=self.events_dropped)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            # Not cancel(): the loop finishes its drain, then the final flush stores the rest.
            self._stopping.set()
            await self._task
            self._task = None
        await self.flush()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_EVERY_S)
            try:
                # One hop a period, taking all that piled up: draining "until empty" while results
                # keep arriving made a stream of 36-row transactions instead of one of ~2,500.
                await self._drain_once()
            except Exception:
                log.exception("storing check results failed; will retry")

    async def flush(self) -> None:
        """Store everything pending (tests, shutdown); a chunk that fails is put back."""
        while self.pending or self.dirty or self.events or self._drain is not None:
            await self._drain_once()

    async def _drain_once(self) -> None:
        """One hop to the writer, storing what is pending until it is gone or another writer waits."""
        if self._drain is not None:
            # A drain a cancelled flush left running: wait for it, whatever its outcome.
            await asyncio.wait([self._drain])
            return
        if not self.pending and not self.dirty and not self.events:
            return
        # Shielded: a drain that started finishes even if this flush is cancelled, and what it
        # took is either stored or put back (no loss, no duplicates).
        drain = self._drain = asyncio.ensure_future(self.rt.in_writer(self._store))
        drain.add_done_callback(self._drained)
        await asyncio.shield(drain)

    def _drained(self, drain: asyncio.Future[None]) -> None:
        if self._drain is drain:
            self._drain = None
        if not drain.cancelled():
            drain.exception()  # retrieved here: a cancelled flush no longer awaits it

    def _store(self, begin: Begin, yield_now: Callable[[], bool]) -> None:
        """Chunks of WRITE_CHUNK in one transaction until nothing is left or another writer waits.

        One transaction per drain, not per chunk: each commit (and each statement) gives up the
        GIL and waits to get it back from a busy event loop.
        """
        retention = self.rt.settings.check_result_retention
        taken: list[tuple[list[dict[str, Any]], list[str]]] = []
        added: Counter[str] = Counter()
        pruned: set[str] = set()
        events = _take(self.events, len(self.events))
        with_events = list(dict.fromkeys(c for c, _ in events if c is not None))
        try:
            with begin() as s:
                conn = s.connection()
                if events:
                    # Their checks' state rows first, then the events: one transaction.
                    for name in with_events:
                        self.dirty.discard(name)
                    _write(conn, [], [{"check": n, **self.state_of(n)} for n in with_events])
                    eventlog.append_many(s, [ev for _, ev in events], origin=self.rt.node_id)
                while not taken or not yield_now():
                    results = _take(self.pending, WRITE_CHUNK)
                    names = [self.dirty.pop() for _ in range(min(WRITE_CHUNK, len(self.dirty)))]
                    if not results and not names:
                        break
                    taken.append((results, names))
                    chunk = Counter(r["check"] for r in results)
                    added.update(chunk)
                    # Pruned once 20% over retention, not on every write.
                    prune = [n for n in chunk if n not in pruned
                             and self._counts.get(n, 0) + added[n] > retention * 1.2]
                    pruned.update(prune)
                    _write(conn, results, [{"check": n, **self.state_of(n)} for n in names])
                    if prune:
                        conn.execute(_PRUNE, {"b_checks": prune, "b_keep": retention})
        except BaseException:
            for results, names in reversed(taken):
                self.pending.extendleft(reversed(results))
                self.dirty.update(names)
            self.events.extendleft(reversed(events))
            self.dirty.update(with_events)
            raise
        self.stored += sum(len(results) for results, _ in taken)
        for name, k in added.items():
            self._counts[name] = retention if name in pruned else self._counts.get(name, 0) + k


def _write(conn: Connection, results: list[dict[str, Any]], states: list[dict[str, Any]]) -> None:
    if results:
        if conn.dialect.name == "sqlite":
            # Plain driver SQL with flat parameters: a third cheaper than the compiled statement's
            # per-row parameter processing, on the path every result takes.
            conn.exec_driver_sql(_sqlite_add_results(len(results)),
                                 tuple(v for r in results for v in (r["check"], r["at"], r["state"], r["output"],
                                                                    r["latency_ms"], json.dumps(r["perfdata"]))))
        else:
            conn.execute(_ADD_RESULTS, results)
    if states:
        conn.execute(_SAVE_STATES[conn.dialect.name], states)


@functools.lru_cache(maxsize=16)
def _sqlite_add_results(rows: int) -> str:
    columns = ("check", "at", "state", "output", "latency_ms", "perfdata")
    assert set(columns) == {c.name for c in CheckResultRow.__table__.columns} - {"id"}
    values = ",".join(["(" + ",".join("?" * len(columns)) + ")"] * rows)
    names = ", ".join(f'"{c}"' for c in columns)
    # Built from the model's own names and a row count only; every value is a bound parameter.
    return f"INSERT INTO {CheckResultRow.__tablename__} ({names}) VALUES {values}"  # noqa: S608


def _take(items: deque[T], n: int) -> list[T]:
    """Up to n from the head; the loop may trim the head meanwhile (the backlog bound), so no len()."""
    out: list[T] = []
    with contextlib.suppress(IndexError):
        for _ in range(n):
            out.append(items.popleft())
    return out

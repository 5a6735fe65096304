"""A consumer of the event log with a stored position: each event's effect happens exactly once.

Each round reads a batch after the stored position and calls `handle(s, events)` inside the
transaction that moves the position, so the effect (a room message row, a rule run) and the
position commit together: a kill -9 before the commit leaves neither, and the next round (here
or on the server that takes over) does the batch again; after the commit the batch is never
read again. What must not be in the transaction (publishing on the bus, sending to a chat
platform) is returned by `handle` as a post-commit callable and runs after the commit.

A handler that fails on one event must not stop the consumer for good (every later announcement
would wait behind it). A failure of the store is retried as long as it lasts; any other error
three rounds in a row puts the consumer in single steps: one event per round, its handler inside
a savepoint, and an event whose handler still fails is logged with its uid and passed.

The position moves with a conditional UPDATE (from the position this round read), so two
processes that both believe they hold a consumer cannot both apply one batch: the second
round's UPDATE finds the position moved and rolls its effects back. `singleton` consumers also
take the lease `consumer:<name>` so only one server runs them at all (on SQLite: this server).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from opsroom.cluster.leases import Leases
from opsroom.eventlog.log import Position, newest, newest_in, read_batch
from opsroom.eventlog.models import ConsumerPositionRow
from opsroom.events import Event
from opsroom.runtime import Runtime
from opsroom.ticks import rounds

log = structlog.get_logger(__name__)

PostCommit = Callable[[], Awaitable[None]]
Handle = Callable[[Session, list[Event]], PostCommit | None]

# A dead holder's consumers move to another server after the cluster's dead window
# (`cluster_dead_after`, 3 s), as its chat connections do: an announcement a kill -9 delayed
# comes with the takeover, not after it. Safe however short: a position moves only by a fenced
# conditional update, so a holder paused past its lease cannot apply a batch twice.
STANDBY_TRY_S = 0.5  # how often a server that does not hold a consumer's lease tries to take it
SINGLE_STEPS_AFTER = 3  # failed rounds in a row (not the store's failures) before single steps
MAX_NAME = 64  # consumer_positions.consumer


class PositionMoved(Exception):
    """Another process moved this consumer's position during the round: its batch is theirs."""


def store_failure(exc: BaseException) -> bool:
    """Whether `exc` is the store's (unreachable, restarting, busy): worth retrying as it is."""
    return isinstance(exc, DBAPIError | ConnectionError | TimeoutError | OSError)


class Consumer:
    def __init__(self, rt: Runtime, *, name: str, handle: Handle, types: frozenset[str] | None = None,
                 singleton: bool = True, every: float = 0.2, batch: int = 500) -> None:
        if not name or len(name) > MAX_NAME:
            raise ValueError(f"a consumer's name is 1 to {MAX_NAME} characters, got {name!r}")
        self.rt, self.name, self.handle, self.types = rt, name, handle, types
        self.singleton, self.every, self.batch = singleton, every, batch
        self.position: Position | None = None  # as last read or moved by this process
        self.lease_name = f"consumer:{name}"
        self._pg = rt.engine.dialect.name == "postgresql"
        self._leases = Leases(rt)
        self._renew_at = 0.0  # monotonic: when the lease is next renewed
        self.holding = not (singleton and self._pg)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failed_rounds = 0
        self._single_left = 0  # single steps still to take before whole batches again
        self.skipped: list[str] = []  # uids passed because their handler kept failing (last 100)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Make the stored position if there is none (at the newest event: history is not news),
        then run rounds until stop()."""
        await self.ensure_position()
        self.rt.bus.add_listener(self._on_local_publish)
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"consumer:{self.name}")

    async def stop(self) -> None:
        """Stop between rounds (never cancelled inside a transaction) and give the lease back."""
        self.rt.bus.remove_listener(self._on_local_publish)
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._renew_at = 0.0
        if self.singleton and self._pg and self.holding:
            self.holding = False
            with contextlib.suppress(Exception):
                await self._leases.release([self.lease_name])

    def nudge(self) -> None:
        """Run a round now (the server calls it after its own commits, so latency stays low)."""
        self._wake.set()

    def _on_local_publish(self, ev: Event) -> None:
        if self.types is None or ev.type in self.types:
            self._wake.set()

    async def caught_up(self, *, timeout: float | None = None) -> None:
        """Wait until the stored position reaches the newest event committed as of this call
        (whoever runs the consumer); TimeoutError after `timeout` seconds."""
        target = await newest(self.rt, committed=True)

        async def reached() -> None:
            while (await self.stored()) < target:
                self.nudge()
                await asyncio.sleep(min(self.every, 0.05))

        await asyncio.wait_for(reached(), timeout)

    # -- the stored position -----------------------------------------------------------------

    async def ensure_position(self) -> Position:
        def body(s: Session) -> Position:
            row = s.execute(select(ConsumerPositionRow.position, ConsumerPositionRow.txid)
                            .where(ConsumerPositionRow.consumer == self.name)).first()
            if row is not None:
                return Position(int(row[1] or 0), int(row[0]))
            start = newest_in(s)
            try:
                with s.begin_nested():
                    s.execute(insert(ConsumerPositionRow).values(
                        consumer=self.name, position=start.id, txid=start.txid, updated_at=time.time(),
                        holder=self.rt.node_id))
            except IntegrityError:  # another server made it a moment ago: its start is ours
                row = s.execute(select(ConsumerPositionRow.position, ConsumerPositionRow.txid)
                                .where(ConsumerPositionRow.consumer == self.name)).one()
                return Position(int(row[1] or 0), int(row[0]))
            return start

        self.position = await self.rt.transact(body)
        return self.position

    async def stored(self) -> Position:
        async with self.rt.read() as s:
            row = (await s.execute(select(ConsumerPositionRow.position, func.coalesce(ConsumerPositionRow.txid, 0))
                                   .where(ConsumerPositionRow.consumer == self.name))).first()
        return Position(int(row[1]), int(row[0])) if row is not None else Position()

    # -- rounds ------------------------------------------------------------------------------

    async def _hold(self) -> bool:
        """Whether this process runs the consumer this round (takes or renews its lease)."""
        if not (self.singleton and self._pg):
            return True
        now = time.monotonic()
        if now < self._renew_at:
            return self.holding  # held: renewed a while ago; not held: tried a moment ago
        ttl = self.rt.settings.cluster_dead_after
        epoch = await self._leases.take(self.lease_name, ttl=ttl)
        was, self.holding = self.holding, epoch is not None
        self._renew_at = now + (ttl / 3 if self.holding else STANDBY_TRY_S)
        if self.holding:
            if not was:
                log.info("consumer taken", consumer=self.name, epoch=epoch)
        elif was:
            log.warning("consumer lease lost to another server", consumer=self.name)
        return self.holding

    def _round(self, s: Session) -> tuple[Position, PostCommit | None, int, bool]:
        single = self._failed_rounds >= SINGLE_STEPS_AFTER
        row = s.execute(select(ConsumerPositionRow.position, func.coalesce(ConsumerPositionRow.txid, 0))
                        .where(ConsumerPositionRow.consumer == self.name)).first()
        if row is None:
            raise PositionMoved("the stored position is gone")
        pos = Position(int(row[1]), int(row[0]))
        # Read before any write: a transaction that has its own txid holds the safe horizon back.
        events, reached = read_batch(s, pos, limit=1 if single else self.batch, types=self.types)
        if reached <= pos:
            return pos, None, 0, False
        post = None
        if events and single:
            post = self._single_step(s, events[0][1])
        elif events:
            post = self.handle(s, [ev for _, ev in events])
        moved = cast(CursorResult[Any], s.execute(update(ConsumerPositionRow)
                          .where(ConsumerPositionRow.consumer == self.name,
                                 ConsumerPositionRow.position == pos.id,
                                 func.coalesce(ConsumerPositionRow.txid, 0) == pos.txid)
                          .values(position=reached.id, txid=reached.txid, updated_at=time.time(),
                                  holder=self.rt.node_id)
                          .execution_options(synchronize_session=False)))
        if moved.rowcount != 1:
            raise PositionMoved(f"moved from {pos} by another process")
        return reached, post, len(events), len(events) >= (1 if single else self.batch)

    def _single_step(self, s: Session, ev: Event) -> PostCommit | None:
        try:
            with s.begin_nested():  # its effects are undone alone; the position still moves
                return self.handle(s, [ev])
        except Exception as exc:
            if store_failure(exc):
                raise
            log.exception("an event its consumer cannot handle was passed", consumer=self.name, uid=ev.uid,
                          type=ev.type)
            self.skipped = [*self.skipped[-99:], ev.uid]
            return None

    async def _anything_new(self) -> bool:
        """Whether the log holds something after the position this process last knew, by a read:
        a round that finds nothing must not take the store's write lock (on SQLite the one writer
        that a recovery's run request waits for), five times a second per consumer."""
        pos = self.position
        if pos is None or self._failed_rounds:
            return True
        async with self.rt.read() as s:
            _, reached = await s.run_sync(lambda sync: read_batch(sync, pos, limit=1, types=self.types))
        return reached > pos

    async def run_once(self) -> int:
        """One round: how many events were handled (0 when not the holder or nothing new)."""
        if not await self._hold():
            return 0
        if not await self._anything_new():
            return 0
        try:
            pos, post, handled, self._more = await self.rt.transact(self._round)
        except PositionMoved as exc:
            log.info("consumer round given up", consumer=self.name, why=str(exc))
            return 0
        except Exception as exc:
            if not store_failure(exc):
                self._failed_rounds += 1
                if self._failed_rounds == SINGLE_STEPS_AFTER:
                    self._single_left = self.batch  # the batch that failed, one event at a time
            raise
        if handled and self._failed_rounds >= SINGLE_STEPS_AFTER:
            self._single_left -= handled
            if self._single_left <= 0:
                self._failed_rounds = 0
        elif handled:
            self._failed_rounds = 0
        self.position = pos
        if post is not None:
            try:
                await post()
            except Exception:
                # The effect committed; what runs after it is best effort by contract.
                log.exception("a consumer's post-commit step failed", consumer=self.name)
        return handled

    _more = False

    async def _loop(self) -> None:
        await rounds(self._round_more, stopping=self._stopping, wake=self._wake, every=self.every,
                     failed="a consumer round failed; retrying", consumer=self.name)

    async def _round_more(self) -> bool:
        """One round; whether a full batch came (more is waiting)."""
        self._more = False
        await self.run_once()
        return self._more

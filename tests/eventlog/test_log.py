"""The event log on both stores: order, the safe horizon, consumers exactly once, the relay."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from opsroom.eventlog.consumer import Consumer, PostCommit
from opsroom.eventlog.log import START, Position, append, append_async, emit, newest, read_after
from opsroom.eventlog.models import ConsumerPositionRow, EventRow
from opsroom.eventlog.relay import Relay
from opsroom.events import AccessChanged, Event, RoomMessagePosted
from opsroom.runtime import Runtime
from tests.eventlog.conftest import MakeRt


def said(n: int, room: str = "ops") -> RoomMessagePosted:
    return RoomMessagePosted(room=room, message_id=n, author="ann", text=f"message {n}", kind="person")


async def effects(rt: Runtime, consumer: str | None = None) -> list[str]:
    sql = "SELECT uid FROM test_effects" + (" WHERE consumer = :c" if consumer else "")
    async with rt.read() as s:
        return [r[0] for r in (await s.execute(text(sql), {"c": consumer}))]


def recorder(name: str, seen: list[Event] | None = None, fail: list[bool] | None = None):  # type: ignore[no-untyped-def]
    """A handle whose effect is a row per event in test_effects, in the consumer's transaction."""
    def handle(s: Session, events: list[Event]) -> PostCommit | None:
        for ev in events:
            s.execute(text("INSERT INTO test_effects (uid, consumer) VALUES (:u, :c)"), {"u": ev.uid, "c": name})
        if fail and fail[0]:
            fail[0] = False
            raise RuntimeError("simulated crash after the effect, before the commit")
        if seen is not None:
            got = list(events)

            async def after() -> None:
                seen.extend(got)
            return after
        return None
    return handle


async def test_append_and_read_in_commit_order(make_rt: MakeRt) -> None:
    rt = await make_rt()
    assert await newest(rt) == START
    for batch in range(3):
        def body(s: Session, batch: int = batch) -> None:
            for i in range(2):
                append(s, said(batch * 2 + i), origin=rt.node_id)
        await rt.transact(body)
    async with rt.write() as s:
        await append_async(s, AccessChanged(user_id=1, user="ann", reason="logout"), origin=rt.node_id)
    got = await read_after(rt, START)
    assert [ev.type for _, ev in got] == ["room.message"] * 6 + ["access.changed"]
    assert [ev.message_id for _, ev in got[:6]] == list(range(6))  # type: ignore[attr-defined]
    positions = [p for p, _ in got]
    assert positions == sorted(positions) and len(set(positions)) == 7
    assert all(ev.origin == rt.node_id for _, ev in got)
    assert await newest(rt) == positions[-1]
    assert await read_after(rt, positions[-1]) == []
    # Resuming from any position gives exactly the rest; a type filter keeps the order.
    assert [p for p, _ in await read_after(rt, positions[2])] == positions[3:]
    assert [p for p, _ in await read_after(rt, START, limit=2)] == positions[:2]
    only = await read_after(rt, START, types=frozenset({"access.changed"}))
    assert [p for p, _ in only] == positions[6:]


async def test_a_rolled_back_transaction_leaves_no_event(make_rt: MakeRt) -> None:
    rt = await make_rt()

    def body(s: Session) -> None:
        append(s, said(1), origin=rt.node_id)
        raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await rt.transact(body)
    assert await read_after(rt, START) == []


async def test_emit_appends_and_publishes(make_rt: MakeRt) -> None:
    rt = await make_rt()
    seen: list[Event] = []

    async def got(ev: Event) -> None:
        seen.append(ev)

    rt.bus.subscribe(AccessChanged, got)
    ev = AccessChanged(user_id=2, user="bob", reason="disabled")
    await emit(rt, ev)
    await rt.bus.drain()
    assert seen == [ev] and ev.origin == rt.node_id
    [(_, stored)] = await read_after(rt, START)
    assert stored.uid == ev.uid and stored.as_dict() | {"id": 0} == ev.as_dict() | {"id": 0}


async def test_the_reader_never_passes_a_transaction_that_commits_later(make_pg_rt: MakeRt) -> None:
    """Two real concurrent PostgreSQL transactions: the earlier one takes the lower id and commits
    last. A reader that went by id would take the later one's row and never see the earlier's."""
    rt = await make_pg_rt()
    early = rt.sessions()
    late = rt.sessions()
    try:
        await early.begin()
        await append_async(early, said(1), origin="a")  # id 1, the lower txid: still open
        await late.begin()
        await append_async(late, said(2), origin="b")  # id 2
        await late.commit()
        async with rt.read() as s:
            visible = (await s.execute(select(func.count()).select_from(EventRow))).scalar()
        assert visible == 1, "the later transaction's row is committed and visible"
        assert await read_after(rt, START) == [], "a row above the safe horizon was handed out"
        assert await newest(rt) == START
        await early.commit()
    finally:
        await early.close()
        await late.close()
    got = await read_after(rt, START)
    assert [ev.message_id for _, ev in got] == [1, 2]  # type: ignore[attr-defined]


async def test_consumer_is_exactly_once_across_a_crash_and_a_restart(make_rt: MakeRt) -> None:
    rt = await make_rt()
    await emit(rt, said(0))  # history before the consumer existed: not news to it
    fail = [True]
    first = Consumer(rt, name="rooms", handle=recorder("rooms", fail=fail), singleton=False)
    start = await first.ensure_position()
    assert start == await newest(rt)
    for i in range(1, 4):
        await emit(rt, said(i))
    with pytest.raises(RuntimeError, match="simulated crash"):
        await first.run_once()
    assert await effects(rt) == [], "the effect committed without its position"
    assert await first.stored() == start, "the position moved without its effect"
    assert await first.run_once() == 3
    uids = [ev.uid for _, ev in await read_after(rt, start)]
    assert await effects(rt) == uids
    # A restarted server: a new consumer object of the same name resumes at the stored position.
    again = Consumer(rt, name="rooms", handle=recorder("rooms"), singleton=False)
    assert await again.ensure_position() == await newest(rt)
    assert await again.run_once() == 0
    await emit(rt, said(4))
    assert await again.run_once() == 1
    assert sorted(await effects(rt)) == sorted([*uids, (await read_after(rt, start))[-1][1].uid])


async def test_consumer_runs_rounds_posts_after_commit_and_catches_up(make_rt: MakeRt) -> None:
    rt = await make_rt()
    seen: list[Event] = []
    consumer = Consumer(rt, name="announcer", handle=recorder("announcer", seen),
                        types=frozenset({"room.message"}), every=0.05)
    await consumer.start()
    try:
        for i in range(5):
            await emit(rt, said(i))
            await emit(rt, AccessChanged(user_id=i, user="ann", reason="logout"))
        await consumer.caught_up(timeout=10)
        assert await consumer.stored() == await newest(rt), "a filtered consumer must move past other types"
        assert [ev.message_id for ev in seen] == list(range(5))  # type: ignore[attr-defined]
        assert len(await effects(rt)) == 5
    finally:
        await consumer.stop()


async def test_an_unhandled_full_batch_is_followed_at_once(make_rt: MakeRt) -> None:
    rt = await make_rt()
    consumer = Consumer(rt, name="small", handle=recorder("small"), singleton=False, batch=3)
    await consumer.ensure_position()

    def body(s: Session) -> None:
        for i in range(7):
            append(s, said(i), origin="elsewhere")

    await rt.transact(body)
    assert [await consumer.run_once() for _ in range(4)] == [3, 3, 1, 0]
    assert len(await effects(rt)) == 7


async def test_singleton_runs_on_one_server_and_moves_when_it_stops(make_pg_rt: MakeRt) -> None:
    one, two = await make_pg_rt(), await make_pg_rt()
    a = Consumer(one, name="rules", handle=recorder("a"), every=0.05)
    b = Consumer(two, name="rules", handle=recorder("b"), every=0.05)
    await a.start()
    await b.start()
    try:
        for i in range(20):
            await emit(one if i % 2 else two, said(i))
        await a.caught_up(timeout=10)
        ran_a, ran_b = await effects(one, "a"), await effects(one, "b")
        assert len(ran_a) + len(ran_b) == 20 and len(set(ran_a + ran_b)) == 20
        assert not (ran_a and ran_b), "two servers ran a singleton consumer"
        holder, other = (a, b) if ran_a else (b, a)
        assert holder.holding and not other.holding
        await holder.stop()  # a clean stop gives the lease back: the other takes over
        for i in range(20, 25):
            await emit(one, said(i))
        await other.caught_up(timeout=10)
        assert len(await effects(one, "b" if other is b else "a")) >= 5
        assert len(await effects(one)) == 25
    finally:
        await a.stop()
        await b.stop()


async def test_racing_consumers_apply_each_batch_once(make_pg_rt: MakeRt) -> None:
    """Two processes that both believe they run one consumer (a lease held past its expiry): the
    conditional move of the position lets one batch commit, the other rolls its effects back."""
    one, two = await make_pg_rt(), await make_pg_rt()
    a = Consumer(one, name="timeline", handle=recorder("timeline"), singleton=False, batch=2)
    b = Consumer(two, name="timeline", handle=recorder("timeline"), singleton=False, batch=2)
    await a.ensure_position()
    for i in range(30):
        await emit(one, said(i))
    for _ in range(60):
        outcomes = await asyncio.gather(a.run_once(), b.run_once(), return_exceptions=True)
        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        if len(await effects(one)) >= 30:
            break
    got = await effects(one)
    assert len(got) == 30 and len(set(got)) == 30


async def test_relay_publishes_only_other_nodes_events(make_rt: MakeRt) -> None:
    rt = await make_rt()
    await emit(rt, said(0))  # before the relay started: not relayed
    relay = Relay(rt)
    await relay.start()
    await relay.stop()  # driven by hand below
    seen: list[Event] = []

    async def got(ev: Event) -> None:
        seen.append(ev)

    rt.bus.subscribe("*", got)
    mine = said(1)

    def body(s: Session) -> None:
        append(s, mine, origin=rt.node_id)
        append(s, said(2), origin="otherhost:42:cafe")
        append(s, AccessChanged(user_id=3, user="cli", reason="disabled"), origin="cli:7:beef")

    await rt.transact(body)
    assert await relay.relay_once() == 2
    await rt.bus.drain()
    assert [(ev.type, ev.origin) for ev in seen] == [("room.message", "otherhost:42:cafe"),
                                                     ("access.changed", "cli:7:beef")]
    assert await relay.relay_once() == 0


async def test_a_new_consumer_is_recorded_at_the_newest_event(make_rt: MakeRt) -> None:
    rt = await make_rt()
    for i in range(3):
        await emit(rt, said(i))
    consumer = Consumer(rt, name="late", handle=recorder("late"), singleton=False)
    await consumer.ensure_position()
    async with rt.read() as s:
        row = (await s.execute(select(ConsumerPositionRow).where(ConsumerPositionRow.consumer == "late"))).scalar_one()
    assert Position(row.txid or 0, row.position) == await newest(rt)
    assert await consumer.run_once() == 0 and await effects(rt) == []


async def test_a_long_transaction_in_another_database_does_not_hold_the_log(make_pg_rt: MakeRt) -> None:
    """The horizon is this database's: a transaction left open elsewhere on the same PostgreSQL
    (another application, another opsroom) must not stop delivery here."""
    import asyncpg

    from tests.conftest import PG_ADMIN

    rt = await make_pg_rt()
    elsewhere = await asyncpg.connect(PG_ADMIN)
    try:
        tx = elsewhere.transaction()
        await tx.start()
        await elsewhere.fetchval("SELECT pg_current_xact_id()")  # it holds an id from now on
        await emit(rt, said(1))
        assert [ev.message_id for _, ev in await read_after(rt, START)] == [1]  # type: ignore[attr-defined]
        await tx.rollback()
    finally:
        await elsewhere.close()


async def test_an_event_whose_handler_keeps_failing_is_passed_not_blocking(make_rt: MakeRt) -> None:
    """A bug in a handler for one event must not stop every later event: after three failed
    rounds the consumer takes single steps, undoes that event's effects alone and passes it."""
    rt = await make_rt()
    poison = said(13)

    def handle(s: Session, events: list[Event]) -> PostCommit | None:
        for ev in events:
            s.execute(text("INSERT INTO test_effects (uid, consumer) VALUES (:u, 'c')"), {"u": ev.uid})
            if ev.uid == poison.uid:
                raise KeyError("a field this handler did not expect")
        return None

    consumer = Consumer(rt, name="fragile", handle=handle, singleton=False)
    await consumer.ensure_position()
    for ev in (said(1), poison, said(2)):
        await emit(rt, ev)
    for _ in range(3):
        with pytest.raises(KeyError):
            await consumer.run_once()
    assert await effects(rt) == []
    while await consumer.run_once():
        pass
    got = await effects(rt)
    assert len(got) == 2 and poison.uid not in got, "the failing event's effects were kept or others lost"
    assert consumer.skipped == [poison.uid]
    await emit(rt, said(3))
    assert await consumer.run_once() == 1 and len(await effects(rt)) == 3

"""Named leases and membership on both stores: one holder at a time, expiry by the store's clock."""

from __future__ import annotations

import asyncio

from opsroom.cluster.leases import Leases
from opsroom.cluster.membership import Membership
from opsroom.runtime import Runtime


async def test_one_holder_at_a_time_and_taken_over_after_expiry(store_rt: Runtime) -> None:
    a, b = Leases(store_rt, holder="server-a"), Leases(store_rt, holder="server-b")
    assert await a.take("chat:irc", ttl=30) == 1
    assert await b.take("chat:irc", ttl=30) is None, "a live lease was taken from its holder"
    assert await a.take("chat:irc", ttl=30) == 1, "a renewal changed the epoch"
    assert await a.renew(["chat:irc", "shard:1"], ttl=30) == {"chat:irc"}
    assert await b.renew(["chat:irc"], ttl=30) == set()
    # Expired: the other takes it, with a new epoch (fencing), and the old holder's renew fails.
    assert await a.take("shard:2", ttl=-1) == 1
    assert await b.take("shard:2", ttl=30) == 2
    assert await a.renew(["shard:2"], ttl=30) == set()
    held = {h.name: h for h in await a.holdings("shard:")}
    assert held["shard:2"].holder == "server-b" and held["shard:2"].live
    await b.release(["shard:2"])
    assert await a.take("shard:2", ttl=30) == 3
    await a.release_all()
    assert not any(h.live for h in await a.holdings())


async def test_names_are_literal_prefixes(store_rt: Runtime) -> None:
    leases = Leases(store_rt, holder="n")
    await leases.take("chat:a_b", ttl=30)
    await leases.take("chat:aXb", ttl=30)
    assert [h.name for h in await leases.holdings("chat:a_")] == ["chat:a_b"]


async def test_racing_takers_get_one_holder(store_rt: Runtime) -> None:
    takers = [Leases(store_rt, holder=f"server-{i}") for i in range(5)]
    got = [await t.take("consumer:rooms", ttl=30) for t in takers]
    assert [g for g in got if g is not None] == [1]


async def test_membership_sees_live_servers_and_forgets_stopped(store_rt: Runtime) -> None:
    one = Membership(store_rt, dead_after=30)
    seen: list[list[str]] = []

    async def changed(servers: list[str]) -> None:
        seen.append(servers)

    one.on_change(changed)
    await one.beat()
    assert one.servers == [store_rt.node_id]
    assert seen == [[store_rt.node_id]]
    other = Membership(store_rt, dead_after=30)
    other.node_id = "otherhost:1:abc"
    await other.beat()
    await one.beat()
    assert one.servers == sorted([store_rt.node_id, "otherhost:1:abc"])
    assert await one.dead(["otherhost:1:abc", "never-seen:2:x"]) == {"never-seen:2:x"}
    await other.stop()
    await one.beat()
    assert one.servers == [store_rt.node_id]
    assert await one.dead(["otherhost:1:abc"]) == {"otherhost:1:abc"}


async def test_a_silent_node_is_dead_after_the_window(store_rt: Runtime) -> None:
    quick = Membership(store_rt, dead_after=0.3)
    quick.node_id = "quiet:1:x"
    await quick.beat()
    watcher = Membership(store_rt, dead_after=0.3)
    assert await watcher.dead(["quiet:1:x"]) == set()
    await asyncio.sleep(0.5)
    assert await watcher.dead(["quiet:1:x"]) == {"quiet:1:x"}
    rows = {row.node_id: age for row, age in await watcher.nodes()}
    assert rows["quiet:1:x"] >= 0.4

"""Read your writes (store/overlay.py) and the write buffer's bounds, against a real
Valkey: a store whose writer's connection goes through a fault proxy that is stalled,
so that Redis applies nothing while its reads (direct) still answer. Whatever this
process accepted must show in every read, from the overlay and Redis together; once
the writer goes on, Redis alone answers the same."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from service.profiles import Profile
from service.store import KeySchema, Retention, Store, VisitorState, connect, overlay
from service.store.codec import encode_uid, pack_day
from service.store.writes import Clear, Disown, Erase, Map, SaveProfile, Touch, WriteBuffer
from tests.conftest import DEFAULT_BUCKETS
from tests.proxy import FaultProxy

DAY = int(time.time() // 86400)


def visitor() -> str:
    return f"{secrets.randbelow(10**38):038d}"


def uid() -> str:
    return secrets.token_hex(6) + "-x"


@pytest.fixture
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    p = FaultProxy(redis_url)
    yield p
    p.close()


async def stalled_store(redis_url: str, proxy: FaultProxy, capacity: int = 100_000) -> Store:
    """A started store that reads from the server directly and writes through the
    proxy (redis-py's pipelines), its first write done (bucket check, scripts)."""
    s = Store(
        connect(redis_url, cluster=False),
        KeySchema(DEFAULT_BUCKETS),
        Retention(180, {}, 90),
        write_client=connect(proxy.url, cluster=False),
        buffer_max=capacity,
    )
    await s.start()
    s.touch_visitor(visitor(), DAY)
    await s.drain()
    return s


@pytest.fixture
async def store(redis_url: str, proxy: FaultProxy) -> AsyncIterator[Store]:
    s = await stalled_store(redis_url, proxy)
    yield s
    proxy.set("pass")
    await s.close()


def stall(proxy: FaultProxy) -> None:
    proxy.set("blackhole")


async def resume(store: Store, proxy: FaultProxy) -> None:
    """Let the writer through and wait until Redis has everything: the overlay is
    empty then, and reads are Redis's alone."""
    assert store.buffered > 0  # the reads before came from a Redis without these writes
    proxy.set("pass")  # what the proxy held back goes on
    await asyncio.wait_for(store.drain(), 30)
    w = store.writes
    assert (w.pending, w.claims, w.touched, w.erasing, w.unwritten_profiles) == ({},) * 5


async def uids(store: Store, uuid: str) -> dict[int, str]:
    return {dpid: m.uid for dpid, m in (await store.mappings(uuid, DAY)).items()}


async def state_uids(store: Store, uuid: str) -> dict[int, str]:
    state = await store.visitor_state(uuid)
    return {dpid: m.uid for dpid, m in state.mappings(DAY).items()}


async def both(store: Store, uuid: str) -> dict[int, str]:
    """The visitor's mappings through both reads (they must agree)."""
    found = await uids(store, uuid)
    assert await state_uids(store, uuid) == found
    return found


# --------------------------------------------------------------------------- merge rules


async def test_a_put_after_a_delete_wins(store: Store, proxy: FaultProxy) -> None:
    v, x, y = visitor(), uid(), uid()
    store.put_mapping(v, 7, x, DAY)
    await store.drain()
    stall(proxy)
    assert store.delete_mapping(v, 7, x)
    assert await both(store, v) == {}
    assert store.put_mapping(v, 7, y, DAY)
    assert await both(store, v) == {7: y}
    assert await store.lookup(7, [x, y], DAY) == {y: v}
    await resume(store, proxy)
    assert await both(store, v) == {7: y}
    assert await store.lookup(7, [x, y], DAY) == {y: v}


@pytest.mark.parametrize("first", ["clear", "other uid", "taken"])
async def test_a_uid_given_up_and_taken_back_in_one_batch_keeps_both_directions(
    store: Store, proxy: FaultProxy, first: str
) -> None:
    """A visitor gives up its uid (a /setuid clear, or another uid), or the uid goes to
    another visitor, and the uid is set back before the writer's next batch: the
    clean-up the first op calls for (unlink the reverse entry, disown the other
    visitor) must not undo the second, which the same batch applied before it."""
    v, w, x, y = visitor(), visitor(), uid(), uid()
    store.put_mapping(v, 7, x, DAY)
    await store.drain()
    stall(proxy)  # both ops below go in one batch
    if first == "clear":
        assert store.clear_mapping(v, 7)
    elif first == "other uid":
        assert store.put_mapping(v, 7, y, DAY)
    else:
        assert store.put_mapping(w, 7, x, DAY)  # x taken from v...
    assert store.put_mapping(v, 7, x, DAY)  # ...and back, or v's x again
    assert await both(store, v) == {7: x}
    assert await store.lookup(7, [x], DAY) == {x: v}
    await resume(store, proxy)
    assert await both(store, v) == {7: x}
    assert await store.lookup(7, [x], DAY) == {x: v}  # the reverse entry survived


async def test_a_delete_removes_only_the_uid_it_names(store: Store, proxy: FaultProxy) -> None:
    v, x, y = visitor(), uid(), uid()
    store.put_mapping(v, 7, x, DAY)
    await store.drain()
    stall(proxy)
    store.delete_mapping(v, 7, "someone-else")  # the entry holds x: nothing changes
    assert await both(store, v) == {7: x}
    store.put_mapping(v, 8, y, DAY)
    store.delete_mapping(v, 8, y)  # a put then its delete: gone, whatever Redis holds
    store.delete_mapping(v, 8, "other")  # and a delete of another uid keeps it gone
    assert await both(store, v) == {7: x}
    store.delete_mapping(v, 7, x)
    assert await both(store, v) == {}
    assert await store.lookup(7, [x], DAY) == {}
    await resume(store, proxy)
    assert await both(store, v) == {}


async def test_a_clear_removes_whatever_uid_the_entry_holds(
    store: Store, proxy: FaultProxy
) -> None:
    v, x, y, z = visitor(), uid(), uid(), uid()
    store.put_mapping(v, 7, x, DAY)
    store.put_mapping(v, 8, y, DAY)
    await store.drain()
    stall(proxy)
    assert store.clear_mapping(v, 7)
    assert await both(store, v) == {8: y}
    assert await store.lookup(7, [x], DAY) == {}
    store.put_mapping(v, 9, z, DAY)  # put, clear, put: the last put stays
    store.clear_mapping(v, 9)
    assert await both(store, v) == {8: y}
    store.put_mapping(v, 9, z, DAY)
    assert await both(store, v) == {8: y, 9: z}
    await resume(store, proxy)
    assert await both(store, v) == {8: y, 9: z}
    assert await store.lookup(7, [x], DAY) == {}


async def test_a_clear_never_removes_a_uid_set_after_it(store: Store, proxy: FaultProxy) -> None:
    """The clear is an op of the ordered buffer: no read, no background retry that
    could land after a later /setuid."""
    v, x, y = visitor(), uid(), uid()
    store.put_mapping(v, 7, x, DAY)
    await store.drain()
    stall(proxy)
    store.clear_mapping(v, 7)
    store.put_mapping(v, 7, y, DAY)
    await resume(store, proxy)
    assert await both(store, v) == {7: y}
    assert await store.lookup(7, [x, y], DAY) == {y: v}


async def test_a_uid_moving_to_another_visitor(store: Store, proxy: FaultProxy) -> None:
    old, new, x, y = visitor(), visitor(), uid(), uid()
    store.put_mapping(old, 7, x, DAY)
    store.put_mapping(old, 8, y, DAY)
    await store.drain()
    stall(proxy)
    store.put_mapping(new, 7, x, DAY)  # the latest mapping wins, both ways
    assert await both(store, old) == {8: y}
    assert await both(store, new) == {7: x}
    assert await store.lookup(7, [x], DAY) == {x: new}
    await resume(store, proxy)  # the writer queues (and registers) the old one's Disown
    assert await both(store, old) == {8: y}
    assert await store.lookup(7, [x], DAY) == {x: new}


async def test_after_an_erasure_reads_see_nothing_and_puts_are_refused(
    store: Store, proxy: FaultProxy
) -> None:
    v, x = visitor(), uid()
    store.put_mapping(v, 7, x, DAY)
    store.save_profile(v, state_with(100), lambda s: s.profile)
    await store.drain()
    stall(proxy)
    store.put_mapping(v, 8, uid(), DAY)  # queued, then erased with the rest
    assert store.erase_visitor(v)
    assert await both(store, v) == {}
    state = await store.visitor_state(v)
    assert not state.found and state.profile.traits == {}
    assert await store.lookup(7, [x], DAY) == {}
    assert await store.visitor_last_seen(v) is None
    assert store.put_mapping(v, 9, uid(), DAY)  # dropped: an erasure is not undone
    assert await both(store, v) == {}
    await resume(store, proxy)
    assert await both(store, v) == {}
    assert not (await store.visitor_state(v)).found
    assert await store.lookup(7, [x], DAY) == {}


async def test_touches_and_puts_show_in_the_last_seen_day(store: Store, proxy: FaultProxy) -> None:
    v, fresh = visitor(), visitor()
    store.put_mapping(v, 7, uid(), DAY - 5)
    await store.drain()
    stall(proxy)
    assert await store.visitor_last_seen(v) == DAY - 5
    store.touch_visitor(v, DAY - 2)
    assert await store.visitor_last_seen(v) == DAY - 2
    store.touch_visitor(fresh, DAY)  # a touch never creates a visitor
    assert await store.visitor_last_seen(fresh) is None
    store.put_mapping(fresh, 7, uid(), DAY - 1)
    assert await store.visitor_last_seen(fresh) == DAY - 1
    await resume(store, proxy)
    assert await store.visitor_last_seen(v) == DAY - 2
    assert await store.visitor_last_seen(fresh) == DAY - 1


def state_with(*sids: int) -> VisitorState:
    state = VisitorState()
    for sid in sids:
        state.profile.realize(sid, DAY)
    return state


async def test_profiles_and_mappings_read_back_together(store: Store, proxy: FaultProxy) -> None:
    v, x = visitor(), uid()
    stall(proxy)
    store.put_mapping(v, 7, x, DAY)
    state = await store.visitor_state(v)
    assert state.found and {d: m.uid for d, m in state.mappings(DAY).items()} == {7: x}
    state.profile.realize(100, DAY)

    def redo(current: VisitorState) -> Profile:
        current.profile.realize(100, DAY)
        return current.profile

    store.save_profile(v, state, redo)
    again = await store.visitor_state(v)
    assert 100 in again.profile.traits
    await resume(store, proxy)
    assert 100 in (await store.visitor_state(v)).profile.traits


# --------------------------------------------------------------------------- snapshots


def buffer(store: Store, capacity: int = 100_000) -> WriteBuffer:
    """A write buffer on the real server whose writer is not started: the test runs
    its steps (push, apply, acknowledge) one by one."""
    return WriteBuffer(
        store.client, store.schema, capacity=capacity, before_first_write=lambda: None
    )


async def test_a_snapshot_is_not_changed_when_its_op_is_acknowledged_mid_read(
    store: Store,
) -> None:
    w = buffer(store)
    v, x, y = visitor(), encode_uid(uid()), encode_uid(uid())
    put = Map(v, 7, x, DAY)
    w.push(put)
    snapshot = w.pending[v]  # what a reader saw before sending its read
    w.push(Disown(v, 8, y))  # a newer write of the visitor: a new dict, not this one
    assert w.pending[v] is not snapshot and set(snapshot) == {7}
    again, trouble = await w._apply(list(w._queue))  # the writer applies, acknowledges
    assert trouble is None and again == []
    assert v not in w.pending and w.claims == {}
    # The read answered before the op was applied (nothing in Redis): the snapshot
    # still holds it.
    assert snapshot[7] is put
    assert overlay.merged({}, v, snapshot, w.pending.get(v), w.claims) == {7: pack_day(DAY) + x}


def test_effects_compose_as_the_ops_apply() -> None:
    v, x, y = visitor(), b"\x01x", b"\x01y"
    put = Map(v, 7, x, DAY)
    assert overlay.compose(None, put) is put
    assert isinstance(overlay.compose(put, Disown(v, 7, x)), overlay.Drop)
    assert overlay.compose(put, Disown(v, 7, y)) is put
    clear = Clear(v, 7)
    assert overlay.compose(clear, Disown(v, 7, x)) is clear
    assert overlay.compose(clear, put) is put
    last = Disown(v, 7, y)
    both = overlay.compose(Disown(v, 7, x), last)
    assert isinstance(both, overlay.DropIf) and set(both.encs) == {x, y}
    assert overlay.retires(both, last)
    for stored in ({7: pack_day(DAY) + x}, {7: pack_day(DAY) + y}, {}):
        entries = dict(stored)
        overlay.apply(entries, {7: both})
        assert entries == {}
    entries = {7: pack_day(DAY) + b"\x01z"}
    overlay.apply(entries, {7: both})
    assert 7 in entries
    overlay.apply(entries, {7: put, 8: clear})
    assert entries == {7: pack_day(DAY) + x}


def test_a_newer_entry_is_never_retired_by_an_older_op(store: Store) -> None:
    w = buffer(store)
    v, x, y = visitor(), encode_uid(uid()), encode_uid(uid())
    first, second = Map(v, 7, x, DAY), Map(v, 7, y, DAY)
    w.push(first, second)
    w._retire(first)
    assert w.pending[v][7] is second and (7, y) in w.claims and (7, x) not in w.claims
    w._retire(second)
    assert w.pending == {} and w.claims == {}


# --------------------------------------------------------------------------- bounds


async def test_600_erasures_of_one_visitor_are_one_queued_op(
    store: Store, proxy: FaultProxy
) -> None:
    v = visitor()
    store.put_mapping(v, 7, uid(), DAY)
    await store.drain()
    stall(proxy)
    before = store.buffered
    for _ in range(600):
        assert store.erase_visitor(v)
    assert store.buffered == before + 1
    await resume(store, proxy)
    assert await both(store, v) == {}


async def test_erasures_have_room_that_other_writes_cannot_take(
    redis_url: str, proxy: FaultProxy
) -> None:
    """A tenth of the buffer is kept for erasures: opt-outs during an outage still fit
    when other writes filled the buffer; the bound still holds for them."""
    s = await stalled_store(redis_url, proxy, capacity=20)
    try:
        stall(proxy)
        touches = 0
        while s.touch_visitor(visitor(), DAY):
            touches += 1
        assert touches == 18  # 20 less the erasures' 2
        assert s.erase_visitor(visitor()) and s.erase_visitor(visitor())
        assert not s.erase_visitor(visitor())  # the bound holds for erasures too
        assert s.buffered == 20 and s.writes.dropped_erasures == 1
    finally:
        proxy.set("pass")
        await s.close()


async def test_an_erasure_is_refused_when_the_buffer_is_full(
    redis_url: str, proxy: FaultProxy
) -> None:
    s = await stalled_store(redis_url, proxy, capacity=4)
    try:
        stall(proxy)
        assert s.touch_visitor(visitor(), DAY)
        assert s.erase_visitor(visitor())
        assert s.put_mapping(visitor(), 7, uid(), DAY)  # a Map takes two slots
        assert not s.erase_visitor(visitor())
        assert not s.clear_mapping(visitor(), 7)
        assert s.writes.dropped_erasures == 1 and s.overflowed == 2
        assert s.buffered == 3
    finally:
        proxy.set("pass")
        await s.close()


async def test_the_queue_never_exceeds_its_bound_clean_ups_included(
    redis_url: str, proxy: FaultProxy
) -> None:
    """Every op kind, producers' and the writer's clean-ups: a Map that takes a uid from
    another visitor and replaces one of its own calls for two clean-ups, so a batch of
    512 of them would put 1,024 ops back in front of the queue."""
    capacity = 1200
    s = await stalled_store(redis_url, proxy, capacity=capacity)
    try:
        owners = [(visitor(), visitor(), uid(), uid()) for _ in range(capacity)]
        for old, new, taken, own in owners:
            s.put_mapping(old, 7, taken, DAY)
            s.put_mapping(new, 7, own, DAY)
            await s.drain()
        stall(proxy)
        refused = 0
        for i, (old, new, taken, _) in enumerate(owners):
            refused += not s.put_mapping(new, 7, taken, DAY)  # takes `taken`, drops `own`
            if i % 50 == 0:  # and now and then every other kind
                for ok in (
                    s.touch_visitor(old, DAY),
                    s.clear_mapping(visitor(), 8),
                    s.delete_mapping(visitor(), 8, uid()),
                    s.erase_visitor(visitor()),
                    s.save_profile(visitor(), state_with(100), lambda st: st.profile),
                ):
                    refused += not ok
                s.add_counts(1, {"x:1:n": 1})
            assert s.buffered <= capacity
        assert refused
        highest = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal highest
            while not done.is_set():
                highest = max(highest, s.buffered)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        proxy.set("pass")
        await asyncio.wait_for(s.drain(), 30)
        done.set()
        await watcher
        assert capacity // 2 < highest <= capacity
        assert s.writes._maps == 0
    finally:
        proxy.set("pass")
        await s.close()


async def test_an_erasure_does_not_touch_the_queued_ops(redis_url: str, proxy: FaultProxy) -> None:
    """Forgetting a visitor's queued writes is constant-time: the 100,000 queued ops
    stay where they are (skipped when a batch is built), and an erasure's push costs
    about what any push costs."""
    store = await stalled_store(redis_url, proxy, capacity=200_000)
    stall(proxy)
    w = store.writes
    erased = [visitor() for _ in range(200)]
    for i in range(100_000):
        w.push(Touch(erased[i % 200], DAY))
    queue, first, last = w._queue, w._queue[0], w._queue[-1]

    def timed(ops: list[Touch] | list[Erase]) -> float:
        started = time.perf_counter()
        for op in ops:
            w.push(op)
        return time.perf_counter() - started

    touches = timed([Touch(visitor(), DAY) for _ in range(200)])
    erasures = timed([Erase(v) for v in erased])
    assert w._queue is queue and w._queue[0] is first and w._queue[100_000 - 1] is last
    assert len(w._queue) == 100_000 + 400
    # 20 ms each before (the queue rebuilt); now about a push: a generous factor.
    assert erasures < 50 * touches + 0.01, (erasures, touches)
    await resume(store, proxy)
    assert store.buffered == 0
    await store.close()


async def test_a_profile_save_that_fails_is_no_longer_read_back(store: Store) -> None:
    """A save whose redo fails (a domain bug) leaves the queue: its value must not be
    read back for ever after (nor hold a place of the read-back's bound)."""
    v = visitor()

    def boom(current: bytes, record: bytes | None) -> bytes:
        raise ValueError("a bug in a redo")

    assert store.writes.push(SaveProfile(v, b"what this request read", b"its value", boom))
    assert store.writes.unwritten_profiles[v] == b"its value"
    await store.drain()  # the compare-and-set fails, the redo raises: dropped, counted
    assert v not in store.writes.unwritten_profiles
    assert store.writes.failed == 1

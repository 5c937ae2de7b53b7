"""Read your writes over real HTTP, on one worker (SPEC §14): a read that follows the
answer to a write sees that write, whether or not Redis has applied it yet. 1,000
back-to-back write-then-read pairs of each kind, with no miss, one of them while other
visitors write at full speed; and the very first write after start-up."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio

from service.identity import CookieSigner, new_uuid, today
from service.store import Store
from tests.configs import api_key
from tests.conftest import embedded_valkey, open_store, wait_for
from tests.outbound.test_realtime import Partner
from tests.proxy import FaultProxy
from tests.services import OPS, Config, Service, Services
from tests.writes import applied

KEY = "ryw-key"
ADMIN = "ryw-admin"
AUTH = {"authorization": f"Bearer {ADMIN}"}
PAIRS = 1000
ERASE_ROUND = 100  # erasures per stall of the writer
SYNC = 801  # a partner of /ibs and Prebid's /setuid ("Acme")
RT = 31  # a real-time partner: it answers "abc", trait 5031


@pytest.fixture(scope="module")
def partner() -> Iterator[Partner]:
    with Partner() as p:
        yield p


def config(partner: Partner) -> Config:
    return Config(
        f"""
[realtime]
budget_ms = 1000
cache_s = 0
breaker_failures = 100000

[[partners]]
dpid = {SYNC}
name = "Acme"
sync_url = "https://acme.test/sync?u=${{DD_UUID}}&redir=${{CALLBACK}}"

[[partners]]
dpid = {RT}
name = "rt"
realtime_url = "{partner.base}/fast?u=${{DP_UUID}}"
realtime_traits = {{ "abc" = 5031 }}

[[traits]]
sid = 5031
name = "from rt"
type = "onboarded"
data_source = {RT}

[[traits]]
sid = 100
name = "sports"
rule = 'c_section == "sports"'

[[segments]]
sid = 500
name = "sports"
rule = "100T"
{api_key("admin", ADMIN, "admin")}""",
        keys=(KEY,),
    )


@pytest.fixture(scope="module")
def service_config(partner: Partner) -> Config:
    return config(partner)


def cookie(uuid: str) -> dict[str, str]:
    """A visitor that already has our cookie (the bounce is not what is tested here)."""
    return {"cookie": f"uuid={CookieSigner([KEY]).sign(uuid)}"}


def dpuuid() -> str:
    return f"u-{secrets.token_hex(8)}"


async def ibs(http: httpx.AsyncClient, uuid: str, dpid: int, uid: str) -> None:
    resp = await http.get(f"/ibs:dpid={dpid}&dpuuid={uid}", headers=cookie(uuid))
    assert resp.status_code == 200, resp.text


async def owner(http: httpx.AsyncClient, dpid: int, uid: str) -> str | None:
    resp = await http.get(f"/v1/partners/{dpid}/users/{uid}", headers=AUTH)
    assert resp.status_code in (200, 404), resp.text
    return resp.json().get("uuid") if resp.status_code == 200 else None


async def getuids(http: httpx.AsyncClient, uuid: str) -> dict[str, str]:
    resp = await http.get("/getuids", headers=cookie(uuid))
    assert resp.status_code == 200
    found: dict[str, str] = resp.json().get("buyeruids", {})
    return found


@contextlib.asynccontextmanager
async def others_writing(svc: Service, clients: int = 4) -> AsyncIterator[list[int]]:
    """Other visitors syncing at full speed meanwhile (their count, for the check that
    they did run)."""
    done = asyncio.Event()
    counts = [0]

    async def hammer() -> None:
        async with svc.client() as http:
            while not done.is_set():
                await ibs(http, new_uuid(), SYNC, dpuuid())
                counts[0] += 1

    tasks = [asyncio.create_task(hammer()) for _ in range(clients)]
    try:
        yield counts
    finally:
        done.set()
        await asyncio.gather(*tasks)


async def ibs_then_lookup(http: httpx.AsyncClient) -> list[int]:
    misses = []
    for i in range(PAIRS):
        uuid, uid = new_uuid(), dpuuid()
        await ibs(http, uuid, SYNC, uid)
        if await owner(http, SYNC, uid) != uuid:
            misses.append(i)
    return misses


async def test_ibs_then_the_partner_lookup(http: httpx.AsyncClient) -> None:
    assert await ibs_then_lookup(http) == []


async def test_ibs_then_the_partner_lookup_while_others_write(
    svc: Service, http: httpx.AsyncClient
) -> None:
    async with others_writing(svc) as others:
        assert await ibs_then_lookup(http) == []
    assert others[0] > PAIRS  # they did write, at least as fast as the pairs


async def read_timeouts(http: httpx.AsyncClient) -> float:
    """Reads the worker gave up on (SPEC §14: a browser endpoint answers within 100 ms
    whatever Redis does; /getuids then answers without the stored uids)."""
    text = (await http.get("/metrics", headers=OPS)).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('pixelsync_redis_errors_total{op="read"}')
    )


async def test_setuid_then_getuids_while_others_write(
    svc: Service, http: httpx.AsyncClient
) -> None:
    misses, timeouts = [], await read_timeouts(http)
    async with others_writing(svc):
        for i in range(PAIRS):
            uuid, uid = new_uuid(), dpuuid()
            resp = await http.get(f"/setuid?bidder=Acme&uid={uid}", headers=cookie(uuid))
            assert resp.status_code == 200
            if await getuids(http, uuid) != {"Acme": uid}:
                # Only a read that timed out on the loaded 2-core machine is excused.
                now = await read_timeouts(http)
                if now == timeouts:
                    misses.append(i)
                timeouts = now
    assert misses == []


async def test_a_setuid_clear_then_getuids(http: httpx.AsyncClient) -> None:
    misses = []
    uuid = new_uuid()
    for i in range(PAIRS):
        uid = dpuuid()
        await http.get(f"/setuid?bidder=Acme&uid={uid}", headers=cookie(uuid))
        await http.get("/setuid?bidder=Acme&uid=", headers=cookie(uuid))  # a clear
        if await getuids(http, uuid) != {}:
            misses.append(i)
    assert misses == []
    assert await owner(http, SYNC, uid) is None


async def test_ibs_then_the_event_that_calls_the_real_time_partner(
    http: httpx.AsyncClient, partner: Partner
) -> None:
    misses = []
    uids = set()
    for i in range(PAIRS):
        uuid, uid = new_uuid(), dpuuid()
        uids.add(uid)
        await ibs(http, uuid, RT, uid)
        resp = await http.get("/event?d_rtbd=json&d_cts=2", headers=cookie(uuid))
        if resp.json().get("traits") != [5031]:
            misses.append(i)
    assert misses == []
    called = {r.query["u"][0] for r in partner.seen("/fast") if "u" in r.query}
    assert uids <= called  # the partner received each newly mapped uid


async def test_an_event_realizing_a_trait_then_the_next_event(http: httpx.AsyncClient) -> None:
    misses = []
    for i in range(PAIRS):
        uuid = new_uuid()
        gif = await http.get("/event?c_section=sports", headers=cookie(uuid))
        assert gif.status_code == 200
        resp = await http.get("/event?d_rtbd=json&d_cts=2", headers=cookie(uuid))
        if resp.json().get("segments") != [500]:  # the trait stored by the first view
            misses.append(i)
    assert misses == []


@contextlib.asynccontextmanager
async def writes_stalled(url: str) -> AsyncIterator[None]:
    """Redis applies no write meanwhile (CLIENT PAUSE WRITE: the writer's scripts wait,
    reads are answered), so every read is Redis's state before the writes plus the
    service's read-back of what it accepted. Only on a Redis of the test's own: the
    pause holds every client of the server. The pause's own timeout is a safety net."""
    client = redis.asyncio.Redis.from_url(url)
    await client.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
    try:
        yield
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")
        await client.aclose()


async def erasure_round(
    http: httpx.AsyncClient, store: Store, url: str, visitors: list[tuple[str, str]]
) -> list[str]:
    """Profile `visitors` and map them at the partner, wait until Redis has all of it,
    then with Redis applying nothing erase each (/demoptout.jpg: it answers without
    waiting for the writer, unlike DELETE /v1/users, which waits for the erasure to be
    applied) and read it back at once: the misses. After the pause, the erasures reach
    Redis."""
    for uuid, uid in visitors:  # a trait realized and a declared uid, in one request
        resp = await http.get(f"/event?c_section=sports&d_cid={SYNC}%01{uid}", headers=cookie(uuid))
        assert resp.status_code == 200 and "x-error" not in resp.headers

    async def in_redis(uuid: str) -> bool:  # read by this test: no read-back
        state = await store.visitor_state(uuid)
        return SYNC in state.mappings(today()) and 100 in state.profile.traits

    async def in_redis_each() -> list[bool]:
        return await asyncio.gather(*(in_redis(uuid) for uuid, _ in visitors))

    async def all_in_redis() -> bool:
        return all(await in_redis_each())

    assert await wait_for(all_in_redis)  # a read that skips the read-back sees them
    misses = []
    async with writes_stalled(url):
        erased = (await applied(http))["erase"]
        for uuid, uid in visitors:
            resp = await http.get("/demoptout.jpg", headers=cookie(uuid))
            assert resp.status_code == 200
            user = await http.get(f"/v1/users/{uuid}", headers=AUTH)
            if (
                user.status_code != 404
                or await owner(http, SYNC, uid) is not None
                or await getuids(http, uuid) != {}
            ):
                misses.append(uuid)
        # The reads did not come from Redis: it applied none of the erasures, and
        # still holds the visitors.
        assert (await applied(http))["erase"] == erased
        assert await all_in_redis()

    async def all_erased() -> bool:
        return not any(await in_redis_each())

    assert await wait_for(all_erased)
    return misses


async def test_an_erasure_then_reads_see_nothing(services: Services, partner: Partner) -> None:
    """1,000 erasures, each read back at once (the visitor by uuid, its uid at the
    partner, its /getuids) while Redis still holds everything the visitor had: in
    rounds of ERASE_ROUND, so that a stall stays well under the writer's 5 s batch
    timeout."""
    with embedded_valkey() as url:
        base = config(partner)
        svc = services.start(Config(base.toml, keys=base.keys, redis_url=url))
        misses: list[str] = []
        async with svc.client() as http, open_store(url) as store:
            for _ in range(PAIRS // ERASE_ROUND):
                visitors = [(new_uuid(), dpuuid()) for _ in range(ERASE_ROUND)]
                misses += await erasure_round(http, store, url, visitors)
        svc.stop()
    assert misses == []


async def test_an_opt_out_then_the_lookup_finds_nothing(http: httpx.AsyncClient) -> None:
    misses = []
    for i in range(PAIRS):
        uuid, uid = new_uuid(), dpuuid()
        await ibs(http, uuid, SYNC, uid)
        resp = await http.get("/demoptout.jpg", headers=cookie(uuid))
        assert resp.status_code == 200
        if await owner(http, SYNC, uid) is not None:
            misses.append(i)
    assert misses == []


async def test_the_first_write_after_start_up(services: Services, partner: Partner) -> None:
    for _ in range(3):
        svc = services.start(config(partner))
        async with svc.client() as http:
            uuid, uid = new_uuid(), dpuuid()
            await ibs(http, uuid, SYNC, uid)
            assert await owner(http, SYNC, uid) == uuid
            other = dpuuid()
            await http.get(f"/setuid?bidder=Acme&uid={other}", headers=cookie(uuid))
            assert await getuids(http, uuid) == {"Acme": other}
        svc.stop()


async def test_an_erasure_that_cannot_be_queued_is_not_claimed(
    services: Services, partner: Partner, passing: FaultProxy
) -> None:
    """Redis unreachable and the write buffer full: DELETE answers 503, not success;
    /demoptout still opts the browser out (the dropped erasure is counted, logged)."""
    proxy = passing
    base = config(partner)
    svc = services.start(
        Config("[store]\nbuffer_max_ops = 6\n" + base.toml, keys=base.keys, redis_url=proxy.url)
    )
    async with svc.client() as http:
        await ibs(http, new_uuid(), SYNC, dpuuid())  # the first write: scripts loaded
        proxy.set("blackhole")
        for _ in range(4):  # 2 slots each: the buffer fills
            await ibs(http, new_uuid(), SYNC, dpuuid())
        resp = await http.delete(f"/v1/users/{new_uuid()}", headers=AUTH)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
        optout = await http.get("/demoptout.jpg", headers=cookie(new_uuid()))
        assert optout.status_code == 200
        assert "uuid=NOTARGET" in optout.headers["set-cookie"]
        proxy.set("pass")
    svc.stop()
    assert "erasure dropped" in svc.log_path.read_text()

"""Prebid's user-sync endpoints while Redis hangs (SPEC §14), behind a fault proxy:
browser answers stay within the contract's 100 ms, and a /setuid clear whose read
could not be made is done once Redis answers again."""

from __future__ import annotations

import time

import httpx
import pytest

from service.identity import CookieSigner, new_uuid, today
from service.store import Store
from tests.configs import entry
from tests.conftest import wait_for
from tests.proxy import FaultProxy
from tests.services import Config

KEY = "prebid-outage-key"
QUICK_S = 0.2  # the contract's 100 ms, with room for a loaded test machine


pytestmark = pytest.mark.usefixtures("passing")  # Redis reachable at each start and end


@pytest.fixture(scope="module")
def service_config(proxy: FaultProxy) -> Config:
    partner = entry("partners", dpid=851, name="acme", sync_url="https://acme.test/s")
    return Config(partner, keys=(KEY,), redis_url=proxy.url)


async def mapped(store: Store, uuid: str) -> set[int]:
    return set(await store.mappings(uuid, today()))


async def test_answers_stay_quick_while_redis_hangs(
    http: httpx.AsyncClient, proxy: FaultProxy
) -> None:
    cookie = {"cookie": f"uuid={CookieSigner([KEY]).sign(new_uuid())}"}
    await http.get("/getuids", headers=cookie)  # a connection to Redis is open
    proxy.set("blackhole")
    for method, path in (("POST", "/cookie_sync"), ("GET", "/getuids")):
        started = time.perf_counter()
        resp = await http.request(method, path, headers=cookie, content=b"{}")
        elapsed = time.perf_counter() - started
        assert resp.status_code == 200 and elapsed < QUICK_S, (path, elapsed)


async def test_a_clear_whose_read_failed_is_done_when_redis_answers(
    http: httpx.AsyncClient, proxy: FaultProxy, store: Store
) -> None:
    uuid = new_uuid()
    cookie = {"cookie": f"uuid={CookieSigner([KEY]).sign(uuid)}"}
    store.put_mapping(uuid, 851, f"gone-{uuid[:6]}", today())
    await store.drain()
    assert await mapped(store, uuid) == {851}
    proxy.set("blackhole")
    started = time.perf_counter()
    resp = await http.get("/setuid?bidder=acme&uid=&f=i", headers=cookie)
    elapsed = time.perf_counter() - started
    assert resp.status_code == 200
    proxy.set("pass")

    async def cleared() -> bool:
        return not await mapped(store, uuid)

    assert await wait_for(cleared, timeout=15)  # not lost with the failed read
    assert await store.lookup(851, [f"gone-{uuid[:6]}"], today()) == {}
    assert elapsed < QUICK_S, elapsed  # and never waited for

"""/event and dest5.html while Redis hangs (SPEC §14): a real service whose Redis sits
behind a fault proxy. Answers stay quick and harmless, and what the requests could not
read is worked out when Redis answers again: no data lost, no fire twice."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.configs import SPORTS, api_key
from tests.conftest import wait_for
from tests.proxy import FaultProxy
from tests.services import Config

ADMIN = "outage-admin"
AUTH = {"authorization": f"Bearer {ADMIN}"}
QUICK_S = 0.25  # the contract's 100 ms, with room for a loaded test machine


pytestmark = pytest.mark.usefixtures("passing")  # Redis reachable at each start and end


@pytest.fixture(scope="module")
def service_config(proxy: FaultProxy) -> Config:
    return Config(
        api_key("admin", ADMIN, "admin") + SPORTS, keys=("outage-key",), redis_url=proxy.url
    )


async def visitor(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    resp = await http.get("/event")
    cookie = resp.headers["set-cookie"].split(";", 1)[0]
    return cookie.split("=", 1)[1].split(".", 1)[0], {"cookie": cookie}


def fires(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*/fire/[^"]*)"', page)


async def segments_of(http: httpx.AsyncClient, uuid: str) -> list[int]:
    resp = await http.get(f"/v1/users/{uuid}", headers=AUTH)
    return list(resp.json().get("segments", [])) if resp.status_code == 200 else []


async def test_a_visitor_already_in_a_segment_fires_nothing_twice(
    http: httpx.AsyncClient, proxy: FaultProxy
) -> None:
    uuid, cookie = await visitor(http)
    await http.get("/event?c_section=sports", headers=cookie)
    assert len(fires((await http.get("/dest5.html", headers=cookie)).text)) == 1

    async def stored() -> bool:
        return await segments_of(http, uuid) == [500]

    assert await wait_for(stored)
    proxy.set("blackhole")
    started = time.perf_counter()
    resp = await http.get(
        "/event?d_rtbd=json&d_dst=1&d_cts=1&c_section=sports",
        headers={**cookie, "host": "www.pub.test"},
    )
    elapsed = time.perf_counter() - started
    assert resp.status_code == 200 and elapsed < QUICK_S, elapsed
    doc = resp.json()
    assert doc["dests"] == [] and doc["segments"] == [500]  # from this request's signals
    # The page's ad-server cookie is left alone: its segments are unknown right now.
    assert not [c for c in resp.headers.get_list("set-cookie") if c.startswith("aam_seg=")]
    started = time.perf_counter()
    page = await http.get("/dest5.html", headers=cookie)
    assert page.status_code == 200 and time.perf_counter() - started < QUICK_S
    proxy.set("pass")
    await http.get("/event", headers=cookie)  # (any traffic: the buffer drains)
    assert await wait_for(stored)
    assert fires((await http.get("/dest5.html", headers=cookie)).text) == []


async def test_entries_found_after_the_outage_still_fire(
    http: httpx.AsyncClient, proxy: FaultProxy
) -> None:
    uuid, cookie = await visitor(http)
    await http.get("/event?c_section=news", headers=cookie)  # stored, in no segment
    proxy.set("blackhole")
    resp = await http.get("/event?c_section=sports", headers=cookie)
    assert resp.status_code == 200
    proxy.set("pass")

    async def stored() -> bool:
        return await segments_of(http, uuid) == [500]

    assert await wait_for(stored, timeout=20)
    assert len(fires((await http.get("/dest5.html", headers=cookie)).text)) == 1

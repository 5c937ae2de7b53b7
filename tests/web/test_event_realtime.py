"""Real-time partner calls through /event (SPEC §8): a real service, real partner
servers on 127.0.0.1, the partner's segments qualifying the visitor in the same answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.configs import api_key
from tests.conftest import wait_for
from tests.outbound.test_realtime import Partner
from tests.services import OPS, Config, Service, free_port

ADMIN = "realtime-admin"
AUTH = {"authorization": f"Bearer {ADMIN}"}
BEHAVIOURS = {31: "fast", 32: "slow", 33: "down", 34: "error", 35: "garbage", 36: "huge"}


@pytest.fixture(scope="module")
def partner() -> Iterator[Partner]:
    with Partner() as p:
        yield p


@pytest.fixture(scope="module")
def service_config(partner: Partner) -> Config:
    down = f"http://127.0.0.1:{free_port()}"
    blocks = ""
    for dpid, kind in BEHAVIOURS.items():
        base = down if kind == "down" else partner.base
        blocks += f"""
[[partners]]
dpid = {dpid}
name = "{kind}"
realtime_url = "{base}/{kind}?u=${{DP_UUID}}&gdpr=${{GDPR}}"
realtime_traits = {{ "abc" = {5000 + dpid} }}

[[traits]]
sid = {5000 + dpid}
name = "from {kind}"
type = "onboarded"
data_source = {dpid}

[[segments]]
sid = {7000 + dpid}
name = "{kind} says abc"
rule = "{5000 + dpid}T"
"""
    toml = f"""
[realtime]
budget_ms = 200
cache_s = 0
breaker_failures = 1000
{api_key("admin", ADMIN, "admin")}{blocks}"""
    return Config(toml, keys=("realtime-key",))


async def mapped_visitor(http: httpx.AsyncClient, *dpids: int) -> tuple[str, dict[str, str]]:
    resp = await http.get("/event")
    cookie = {"cookie": resp.headers["set-cookie"].split(";", 1)[0]}
    uuid = cookie["cookie"].split("=", 1)[1].split(".", 1)[0]
    for dpid in dpids:
        sync = await http.get(f"/ibs:dpid={dpid}&dpuuid=rt-{dpid}-{uuid[:8]}", headers=cookie)
        assert sync.status_code == 200

    async def stored() -> bool:
        ids = (await http.get(f"/v1/users/{uuid}", headers=AUTH)).json().get("ids", {})
        return set(ids) == {str(d) for d in dpids}

    assert await wait_for(stored)
    return uuid, cookie


@pytest.mark.parametrize("bad", [32, 33, 34, 35, 36], ids=lambda d: BEHAVIOURS[d])
async def test_the_fast_partner_qualifies_within_the_budget(
    http: httpx.AsyncClient, partner: Partner, bad: int
) -> None:
    uuid, cookie = await mapped_visitor(http, 31, bad)
    started = time.perf_counter()
    resp = await http.get("/event?d_rtbd=json&d_cts=2", headers=cookie)
    elapsed = time.perf_counter() - started
    doc = resp.json()
    assert doc["traits"] == [5031] and doc["segments"] == [7031]
    # Budget 200 ms; the slow partner sleeps 3 s: the answer must not wait for it.
    assert elapsed < 1.0, elapsed
    calls = [q for kind, q in partner.calls if q.get("u") == [f"rt-31-{uuid[:8]}"]]
    assert calls and calls[0]["gdpr"] == ["0"]


async def test_calls_share_no_cookie_and_are_not_logged(
    svc: Service, http: httpx.AsyncClient, partner: Partner
) -> None:
    """One client calls the partner for every visitor: a cookie the partner set for one
    must not go out with the next. And the calls' URLs (partner uid, consent) stay
    out of the log: httpx would log each at INFO."""
    uids = []
    for _ in range(2):
        uuid, cookie = await mapped_visitor(http, 31)
        resp = await http.get("/event?d_rtbd=json&d_cts=2", headers=cookie)
        assert resp.json()["traits"] == [5031]
        uids.append(f"rt-31-{uuid[:8]}")
    calls = [r for r in partner.seen("/fast") if r.query.get("u", [""])[0] in uids]
    assert len(calls) == 2
    assert all("cookie" not in r.headers for r in calls)
    log = svc.log_path.read_text()
    assert not any(uid in log for uid in uids)


async def test_no_mapping_no_call(http: httpx.AsyncClient, partner: Partner) -> None:
    _, cookie = await mapped_visitor(http)
    before = len(partner.calls)
    doc = (await http.get("/event?d_rtbd=json&d_cts=2", headers=cookie)).json()
    assert doc["traits"] == [] and len(partner.calls) == before


async def test_counted_in_match_rates_and_metrics(
    http: httpx.AsyncClient, partner: Partner
) -> None:
    _, cookie = await mapped_visitor(http, 31, 32)
    await http.get("/event", headers=cookie)

    async def counted() -> dict[int, dict[str, int]]:
        doc = (await http.get("/v1/match-rates", headers=AUTH)).json()
        found = {p["dpid"]: p["realtime"] for p in doc["partners"]}
        return found if found[31]["calls"] >= 1 and found[32]["timeouts"] >= 1 else {}

    rates = await wait_for(counted)
    assert rates[31]["errors"] == 0
    metrics = (await http.get("/metrics", headers=OPS)).text
    assert 'pixelsync_realtime_breaker_state{dpid="31"} 0.0' in metrics
    assert 'pixelsync_realtime_call_seconds_count{dpid="31"}' in metrics

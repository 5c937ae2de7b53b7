"""dest5.html and the JSON `ibs` list, with real partner servers that redirect back."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from service.identity import CookieSigner, new_uuid, today
from service.store import Store
from service.sync import parse_dextp
from tests.configs import api_key, syncing_partners
from tests.conftest import wait_for
from tests.partners import SyncingPartner
from tests.services import Config, Service

KEY = "dest5-test-key"


@pytest.fixture(scope="module")
def service_config(syncing_partner: SyncingPartner) -> Config:
    toml = f"""
[sync]
max_partners_per_page = 2
{syncing_partners(syncing_partner.origin, (11, 12, 13))}
[[partners]]
dpid = 14
name = "hostile"
sync_url = 'https://p.test/?a="><script>alert(1)</script>&u=${{DD_UUID}}'
refresh_days = 1
{api_key("ops", "ops-token", "read")}"""
    return Config(toml, keys=(KEY,))


def cookie_for(uuid: str, dextp: str = "") -> dict[str, str]:
    value = f"uuid={CookieSigner([KEY]).sign(uuid)}"
    return {"cookie": value + (f"; dextp={dextp}" if dextp else "")}


def dextp_of(resp: httpx.Response) -> str:
    for value in resp.headers.get_list("set-cookie"):
        if value.startswith("dextp="):
            assert "Secure" in value and "SameSite=None" in value and "Path=/" in value
            return value.split(";")[0].split("=", 1)[1]
    return ""


def images(resp: httpx.Response) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', resp.text)


async def test_the_iframe_hands_out_due_syncs_in_turn(http: httpx.AsyncClient) -> None:
    uuid = new_uuid()
    first = await http.get("/dest5.html?gdpr=0", headers=cookie_for(uuid))
    assert first.status_code == 200
    assert first.headers["content-type"] == "text/html; charset=utf-8"
    assert first.headers["content-security-policy"] == "default-src 'none'; img-src *; frame-src *"
    assert first.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in first.text.lower()
    urls = images(first)
    assert len(urls) == 2 and "p=11&amp;" in urls[0] and "p=12&amp;" in urls[1]
    assert f"aam={uuid}" in urls[0]
    handed = dextp_of(first)
    assert parse_dextp(handed).keys() == {11, 12}

    second = await http.get("/dest5.html", headers=cookie_for(uuid, handed))
    assert [u for u in images(second) if "p=13&amp;" in u]  # the next ones in turn
    assert any("p.test" in u for u in images(second))
    hostile = next(u for u in images(second) if "p.test" in u)
    assert "&quot;&gt;&lt;script&gt;" in hostile  # escaped, never markup
    third = await http.get("/dest5.html", headers=cookie_for(uuid, dextp_of(second)))
    assert images(third) == []  # everyone was handed out recently


async def test_a_partner_redirecting_back_completes_the_sync(
    http: httpx.AsyncClient, syncing_partner: SyncingPartner, store: Store, svc: Service
) -> None:
    uuid = new_uuid()
    page = await http.get("/dest5.html", headers=cookie_for(uuid))
    (url,) = [u for u in images(page) if "p=11&amp;" in u]
    # The browser loads the image: partner, then back to /ibs with the partner's uid.
    target = url.replace("&amp;", "&")
    async with httpx.AsyncClient(timeout=5) as browser:
        resp = await browser.get(target)
        assert resp.status_code == 302
        back = resp.headers["location"]
        assert back.startswith(f"{svc.url}/ibs:dpid=11&dpuuid=partner-")  # its public_url
        done = await browser.get(back, headers=cookie_for(uuid))
        assert done.status_code == 200 and "x-error" not in done.headers

    async def mapped() -> bool:
        return 11 in await store.mappings(uuid, today())

    assert await wait_for(mapped)
    # Without the dextp cookie the match table still says 11 is synced: not due.
    again = await http.get("/dest5.html", headers=cookie_for(uuid))
    assert not [u for u in images(again) if "p=11&amp;" in u]


async def test_json_event_carries_the_ibs_list(
    http: httpx.AsyncClient, syncing_partner: SyncingPartner
) -> None:
    uuid = new_uuid()
    resp = await http.get("/event?d_rtbd=json", headers=cookie_for(uuid))
    ibs = resp.json()["ibs"]
    assert [e["id"] for e in ibs] == ["11", "12"]
    assert ibs[0]["tag"] == "img" and ibs[0]["ttl"] == 7 * 1440
    assert ibs[0]["url"][0].startswith(f"{syncing_partner.origin}/sync?p=11&")
    assert parse_dextp(dextp_of(resp)).keys() == {11, 12}
    gif = await http.get("/event", headers=cookie_for(uuid))
    assert not dextp_of(gif)  # a GIF answer hands nothing out


@pytest.mark.parametrize(
    "headers",
    [{"us_privacy": "1YYN"}, {}],
)
async def test_no_outbound_syncs_after_an_opt_out_of_sale(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    uuid = new_uuid()
    extra = {} if headers else {"sec-gpc": "1"}
    query = "?us_privacy=1YYN" if headers else ""
    resp = await http.get(f"/dest5.html{query}", headers={**cookie_for(uuid), **extra})
    assert resp.status_code == 200 and images(resp) == [] and not dextp_of(resp)
    as_json = await http.get(
        f"/event?d_rtbd=json{query.replace('?', '&')}", headers={**cookie_for(uuid), **extra}
    )
    assert as_json.json()["ibs"] == []


async def test_garbage_dextp_is_ignored(http: httpx.AsyncClient) -> None:
    resp = await http.get("/dest5.html", headers=cookie_for(new_uuid(), "%%garbage|1-x-2"))
    assert resp.status_code == 200 and len(images(resp)) == 2


async def test_an_older_dextp_is_rewritten_compact(http: httpx.AsyncClient) -> None:
    uuid = new_uuid()
    now_ms = int(time.time() * 1000)
    legacy = "|".join(f"{dpid}-1-{now_ms}" for dpid in (11, 12, 13, 14, 999))
    resp = await http.get("/dest5.html", headers=cookie_for(uuid, legacy))
    assert images(resp) == []  # everyone handed out: no hand-out, yet a new cookie
    value = dextp_of(resp)
    assert value.startswith("2.") and parse_dextp(value).keys() == {11, 12, 13, 14}  # no 999
    again = await http.get("/dest5.html", headers=cookie_for(uuid, value))
    assert images(again) == [] and not dextp_of(again)  # compact already: left alone


async def test_opted_out_browsers_get_an_empty_page(http: httpx.AsyncClient) -> None:
    resp = await http.get("/dest5.html", headers={"cookie": "uuid=NOTARGET"})
    assert resp.status_code == 200 and resp.headers["x-error"] == "171" and images(resp) == []


async def test_match_rates_count_what_was_handed_out_and_completed(
    http: httpx.AsyncClient,
) -> None:
    auth = {"authorization": "Bearer ops-token"}
    assert (await http.get("/v1/match-rates")).status_code == 401

    async def rates() -> dict[int, dict[str, object]]:
        doc = (await http.get("/v1/match-rates", headers=auth)).json()
        return {p["dpid"]: p for p in doc["partners"]}

    await asyncio.sleep(2.5)  # let the counts of earlier tests reach Redis (every second)
    before = await rates()
    uuid = new_uuid()
    page = await http.get("/dest5.html", headers=cookie_for(uuid))
    (url,) = [u for u in images(page) if "p=11&amp;" in u]
    async with httpx.AsyncClient(timeout=5) as browser:
        back = (await browser.get(url.replace("&amp;", "&"))).headers["location"]
        await browser.get(back, headers=cookie_for(uuid))

    async def counted() -> bool:  # counters reach Redis about once a second
        now = await rates()
        return now[11]["completed"] == before[11]["completed"] + 1  # type: ignore[operator]

    assert await wait_for(counted, timeout=15)
    after = await rates()
    assert after[11]["instructed"] == before[11]["instructed"] + 1  # type: ignore[operator]
    assert after[12]["instructed"] == before[12]["instructed"] + 1  # type: ignore[operator]
    assert after[11]["mappings"] == before[11]["mappings"] + 1  # type: ignore[operator]
    rate = after[11]["match_rate"]
    assert isinstance(rate, float) and 0 < rate <= 1
    assert after[14]["name"] == "hostile" and set(after[14]) >= {"lookups_hit", "lookups_miss"}

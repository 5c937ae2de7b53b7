"""Qualification and destinations end to end (SPEC §4, §6, §7, §10): a real service on
a real Valkey, real HTTP, and a real partner server on 127.0.0.1 that receives the
url pixels and the s2s batches."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.gpp import USNAT
from tests.configs import api_key
from tests.conftest import wait_for
from tests.gpp_encoder import gpp, us_section
from tests.partners import PartnerServer
from tests.services import Config

S2S_SECRET = "s2s-test-secret"
ADMIN = "qualify-admin-token"
PARTNER = 21


@pytest.fixture(scope="module")
def service_config(partner: PartnerServer) -> Config:
    base = partner.origin
    toml = f"""
[server]
trusted_proxies = ["127.0.0.1"]  # the tests play the TLS-terminating proxy
{api_key("admin", ADMIN, "admin")}
[[partners]]
dpid = {PARTNER}
name = "dsp"

[[traits]]
sid = 100
name = "Sports readers"
folder = "Interests/Sports"
rule = 'c_section == "sports"'

[[traits]]
sid = 101
name = "Big spenders"
folder = "Commerce"
rule = 'c_price > 100'

[[traits]]
sid = 102
name = "Young"
rule = 'p_age < 25'

[[traits]]
sid = 200
name = "CRM"
type = "onboarded"

[[traits]]
sid = 201
name = "Owned by the DSP"
type = "onboarded"
data_source = {PARTNER}

[[segments]]
sid = 500
name = "Sports"
folder = "Interests"
rule = '100T'

[[segments]]
sid = 501
name = "Sports fans"
rule = 'FREQUENCY([100T] <= 7D) >= 3'

[[segments]]
sid = 502
name = "Young spenders"
rule = '101T AND 102T'

[[segments]]
sid = 503
name = "Onboarded"
rule = '200T OR 201T'

[[destinations]]
id = 9
name = "dsp pixel"
type = "url"
partner = {PARTNER}
url = "{base}/px?d=9&seg=%ALIAS%&u=${{DP_UUID}}&v=${{DD_UUID}}&ack=${{ACK_URL}}"
secure_url = "{base}/px?d=9&secure=1&seg=%ALIAS%"
mappings = {{ "500" = "sports", "501" = "fan" }}

[[destinations]]
id = 10
name = "serialized, untracked"
type = "url"
partner = {PARTNER}
url = "{base}/px?d=10&segs=%ALIAS%"
serialize = true
delimiter = "|"
track = "none"
render = "iframe"
mappings = {{ "500" = "s", "502" = "y" }}

[[destinations]]
id = 11
name = "ad server key-values"
type = "cookie"
cookie_name = "aam_seg"
key = "seg"
domain = ".pub.test"
mappings = {{ "500" = "sportsfan", "502" = "young" }}

[[destinations]]
id = 12
name = "dsp real time"
type = "s2s"
partner = {PARTNER}
url = "{base}/s2s"
hmac_secret_env = "S2S_SECRET"
mappings = {{ "500" = "sports", "503" = "onboarded" }}
"""
    return Config(toml, keys=("qualify-key",), env={"S2S_SECRET": S2S_SECRET})


AUTH = {"authorization": f"Bearer {ADMIN}"}


async def new_visitor(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """A returning visitor: (uuid, the Cookie header to send)."""
    resp = await http.get("/event")
    cookie = resp.headers["set-cookie"].split(";", 1)[0]
    return cookie.split("=", 1)[1].split(".", 1)[0], {"cookie": cookie}


async def event(http: httpx.AsyncClient, cookie: dict[str, str], query: str) -> dict[str, Any]:
    resp = await http.get(f"/event?d_rtbd=json&{query}", headers=cookie)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


async def loss(http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.get("/v1/loss?window=15m", headers=AUTH)
    assert resp.status_code == 200
    doc: dict[str, Any] = resp.json()
    return doc


def dest(doc: dict[str, Any], dest_id: int) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in doc["destinations"] if d["id"] == dest_id)
    return found


async def test_traits_and_segments_in_every_answer_form(http: httpx.AsyncClient) -> None:
    uuid, cookie = await new_visitor(http)
    # A GIF /event qualifies too; the JSON one reports what the visitor is in.
    gif = await http.get("/event?c_section=sports", headers=cookie)
    assert gif.headers["content-type"] == "image/gif"
    doc = await event(http, cookie, "d_cts=2&c_price=250&p_age=19")
    assert doc["traits"] == [101, 102]
    assert doc["segments"] == [500, 502]
    doc = await event(http, cookie, "d_cts=1")
    assert doc["segments"] == [500, 502] and "traits" not in doc
    jsonp = await http.get("/event?d_cb=cb&d_cts=1&c_section=news", headers=cookie)
    assert jsonp.headers["content-type"].startswith("application/javascript")
    found = re.fullmatch(r"/\*\*/cb\((.*)\);", jsonp.text)
    assert found is not None and json.loads(found[1])["segments"] == [500, 502]
    user = (await http.get(f"/v1/users/{uuid}", headers=AUTH)).json()
    assert user["traits"] == [100, 101, 102] and user["segments"] == [500, 502]


async def test_frequency_counts_realizations(http: httpx.AsyncClient) -> None:
    _, cookie = await new_visitor(http)
    for expected in ([500], [500], [500, 501]):
        assert (await event(http, cookie, "d_cts=1&c_section=sports"))["segments"] == expected


async def test_d_sid_realizes_only_what_the_browser_may(http: httpx.AsyncClient) -> None:
    _, cookie = await new_visitor(http)
    # 201 belongs to the DSP (its data_source): a browser cannot realize it.
    doc = await event(http, cookie, "d_cts=2&d_sid=201")
    assert doc["traits"] == [] and doc["segments"] == []
    doc = await event(http, cookie, "d_cts=2&d_sid=200,999")
    assert doc["traits"] == [200] and doc["segments"] == [503]


async def test_new_visitors_are_stored_only_once_they_keep_the_cookie(
    http: httpx.AsyncClient,
) -> None:
    bounce = await http.get("/event?d_rtbd=json&d_cts=2&c_section=sports")
    assert bounce.status_code == 302  # the cookie bounce (tests/web/test_bounce.py)
    refused = await http.get(bounce.headers["location"])  # still without the cookie
    assert refused.json()["errors"][0]["code"] == 172
    cookie = {"cookie": bounce.headers["set-cookie"].split(";")[0]}
    uuid = cookie["cookie"].split("=", 1)[1].split(".")[0]
    doc = (await http.get(bounce.headers["location"], headers=cookie)).json()
    assert doc["uuid"] == uuid and doc["traits"] == [100] and doc["segments"] == [500]


async def test_url_destination_through_dest5_fire_and_ack(
    http: httpx.AsyncClient, partner: PartnerServer
) -> None:
    uuid, cookie = await new_visitor(http)
    await http.get(f"/ibs:dpid={PARTNER}&dpuuid=dsp-uid-7", headers=cookie)
    before = await loss(http)
    await http.get("/event?c_section=sports", headers=cookie)  # GIF: the fire waits
    page = await http.get("/dest5.html", headers=cookie)
    assert page.status_code == 200
    fires = re.findall(r'<img src="([^"]*/fire/[^"]*)"', page.text)
    assert len(fires) == 1
    assert re.search(r'<iframe src="[^"]*d=10&amp;segs=s"', page.text)  # serialized, untracked
    # The fire is handed out once: the next page has none.
    assert "/fire/" not in (await http.get("/dest5.html", headers=cookie)).text
    fire = fires[0].replace("&amp;", "&")
    resp = await http.get(fire)
    assert resp.status_code == 302
    target = urlsplit(resp.headers["location"])
    query = parse_qs(target.query)
    assert query["seg"] == ["sports"] and query["u"] == ["dsp-uid-7"] and query["v"] == [uuid]
    await http.get(fire)  # loaded again: counted once
    ack = query["ack"][0]
    assert ack.startswith(f"{http.base_url}/ack/".replace("http://", "http://"))
    for _ in range(2):
        assert (await http.get(ack)).status_code == 200

    async def counted() -> bool:
        d, b = dest(await loss(http), 9), dest(before, 9)
        return (d["instructed"] - b["instructed"], d["loaded"] - b["loaded"]) == (1, 1) and (
            d["confirmed"] - b["confirmed"] == 1
        )

    assert await wait_for(counted)
    after = dest(await loss(http), 10)
    assert after["instructed"] - dest(before, 10)["instructed"] == 1
    assert after["loaded"] == 0  # untracked: loads are not seen


async def test_json_dests_and_loss_of_pixels_never_loaded(http: httpx.AsyncClient) -> None:
    _, cookie = await new_visitor(http)
    before = dest(await loss(http), 9)
    doc = await event(http, cookie, "d_dst=1&c_section=sports")
    [fire] = [d for d in doc["dests"] if d["id"] == "9"]
    assert fire["y"] == "img" and "/fire/" in fire["c"] and "/fire/" in fire["e"]
    # Never loaded: instructed without loaded is the loss.

    async def counted() -> bool:
        return dest(await loss(http), 9)["instructed"] - before["instructed"] == 1

    assert await wait_for(counted)
    now = dest(await loss(http), 9)
    assert now["loaded"] == before["loaded"]
    assert now["loss_rate"] is not None and now["loss_rate"] > 0
    # The secure variant is the secure_url, also tracked.
    secure = await http.get(fire["e"])
    assert "secure=1" in secure.headers["location"]


async def test_tampered_fire_token_is_refused(http: httpx.AsyncClient) -> None:
    for path in ("/fire/garbage", "/ack/garbage.x.y"):
        resp = await http.get(path)
        assert resp.status_code == 400
        assert resp.headers["x-error"] == "323" and resp.headers["content-type"] == "image/gif"


async def test_cookie_destination_stuff_and_own_cookie(http: httpx.AsyncClient) -> None:
    _, cookie = await new_visitor(http)
    doc = await event(http, cookie, "c_section=sports&c_price=300&p_age=20")
    assert doc["stuff"] == [
        {"cn": "aam_seg", "cv": "seg=sportsfan,young", "ttl": 30, "dmn": ".pub.test"}
    ]
    resp = await http.get("/event?c_section=sports", headers={**cookie, "host": "px.pub.test"})
    set_cookies = resp.headers.get_list("set-cookie")
    own = [c for c in set_cookies if c.startswith("aam_seg=")]
    assert own and "Domain=.pub.test" in own[0] and "seg=sportsfan%2Cyoung" in own[0]
    resp = await http.get("/event?c_section=sports", headers=cookie)  # not a .pub.test host
    assert not [c for c in resp.headers.get_list("set-cookie") if c.startswith("aam_seg=")]


async def test_s2s_batches_are_signed_and_counted(
    http: httpx.AsyncClient, partner: PartnerServer
) -> None:
    uuid, cookie = await new_visitor(http)
    await http.get(f"/ibs:dpid={PARTNER}&dpuuid=dsp-s2s-1", headers=cookie)
    await event(http, cookie, "c_section=sports")

    async def received() -> list[tuple[dict[str, Any], str, bytes]]:
        batches = [(json.loads(r.body), r.headers.get("x-signature", ""), r.body)
                   for r in partner.seen("/s2s")]  # fmt: skip
        return [b for b in batches if b[0]["Users"][0]["AAM_UUID"] == uuid]

    [(doc, signature, body)] = await wait_for(received)
    expected = hmac.new(S2S_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert doc["AAM_Destination_Id"] == 12 and doc["User_DPID"] == PARTNER
    [user] = doc["Users"]
    assert user["DataPartner_UUID"] == "dsp-s2s-1"
    assert [(s["Segment_ID"], s["Status"]) for s in user["Segments"]] == [("sports", "1")]

    async def delivered() -> bool:
        d = dest(await loss(http), 12)
        return bool(d["delivered"] >= 1 and d["attempted"] >= 1)

    assert await wait_for(delivered)


async def test_privacy_opt_out_fires_nothing(http: httpx.AsyncClient) -> None:
    _, cookie = await new_visitor(http)
    doc = await event(http, cookie, "d_dst=1&d_cts=1&c_section=sports&us_privacy=1YYN")
    assert doc["segments"] == [500] and doc["dests"] == []


async def test_a_gpp_us_opt_out_fires_nothing_where_gpp_sid_names_it(
    http: httpx.AsyncClient,
) -> None:
    """usnat with SaleOptOut = 1: no fires with gpp_sid=7; the same string without it
    (gpp_sid naming another section) fires as any request does."""
    opted_out = gpp([(USNAT, us_section(USNAT, {"SaleOptOut": 1}, version=2))])
    query = f"d_dst=1&d_cts=1&c_section=sports&gpp={opted_out}"
    _, cookie = await new_visitor(http)
    doc = await event(http, cookie, f"{query}&gpp_sid=7")
    assert doc["segments"] == [500] and doc["dests"] == []
    _, cookie = await new_visitor(http)
    doc = await event(http, cookie, f"{query}&gpp_sid=8")
    assert doc["segments"] == [500] and [d for d in doc["dests"] if d["id"] == "9"]


async def test_erasure_deletes_the_profile(http: httpx.AsyncClient) -> None:
    uuid, cookie = await new_visitor(http)
    await event(http, cookie, "c_section=sports")

    async def stored() -> bool:
        user = (await http.get(f"/v1/users/{uuid}", headers=AUTH)).json()
        return bool(user.get("segments") == [500])

    assert await wait_for(stored)
    assert (await http.delete(f"/v1/users/{uuid}", headers=AUTH)).status_code == 204
    assert (await http.get(f"/v1/users/{uuid}", headers=AUTH)).status_code == 404


async def test_taxonomy(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/v1/taxonomy", headers=AUTH)).json()
    folders = {f["path"]: f for f in doc["folders"]}
    assert folders["Interests/Sports"]["traits"] == [100]
    assert folders["Interests"]["segments"] == [500]
    assert folders[""]["traits"] == [102, 200, 201]
    assert {"sid": 201, "name": "Owned by the DSP", "folder": "", "type": "onboarded"} in doc[
        "traits"
    ]
    assert (await http.get("/v1/taxonomy")).status_code == 401


async def test_loss_window_is_validated(http: httpx.AsyncClient) -> None:
    resp = await http.get("/v1/loss?window=2d", headers=AUTH)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_window"
    doc = (await http.get("/v1/loss?window=1h", headers=AUTH)).json()
    assert len(dest(doc, 9)["series"]) == 12
    assert [p["dpid"] for p in doc["partners"]] == [PARTNER]


async def test_https_pages_get_the_secure_url(http: httpx.AsyncClient) -> None:
    """Behind a trusted proxy, X-Forwarded-Proto: https makes dest5.html hand out the
    secure_url variant."""
    _, cookie = await new_visitor(http)
    await http.get("/event?c_section=sports", headers=cookie)
    page = await http.get("/dest5.html", headers={**cookie, "x-forwarded-proto": "https"})
    [fire] = re.findall(r'<img src="([^"]*/fire/[^"]*)"', page.text)
    target = (await http.get(fire.replace("&amp;", "&"))).headers["location"]
    assert parse_qs(urlsplit(target).query)["secure"] == ["1"]

"""The cookie bounce (SPEC §3) on every endpoint that stores for a new visitor: /event,
/ibs, /setuid, over real HTTP against a served pixelsync and the session's Valkey.

A request without our cookie that would store something is sent back to its own URL
plus d_bounce=1 with a fresh cookie; the follow-up with the cookie is stored with
everything the first request carried, the follow-up without it is answered with 172
and stores nothing, and there is never a second bounce. With `bounce = false` the
first request is stored at once.

The test client never sends the cookie back by itself (it is `Secure`, the service
plain HTTP): each follow-up says whether the browser kept it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from service.identity import CookieSigner, new_uuid, today
from service.profiles import Profile
from service.store import Store
from service.web.responses import GIF
from tests.configs import entry
from tests.conftest import wait_for
from tests.services import OPS, Config, Service, Services
from tests.test_consent import TRAFFECTIVE
from tests.writes import NOTHING, settled, written_since

KEY = "bounce-test-key"
ORIGIN = "http://publisher.test"
MAX_QUERY = 1024
# Host vendor 2 and partner vendor 3 are consented in TRAFFECTIVE, 284 is not.
TOML = (
    f"[server]\nvendor_id = 2\n\n[limits]\nmax_query_bytes = {MAX_QUERY}\n"
    + entry("partners", dpid=1234, name="acme", gvl_id=3)
    + entry("partners", dpid=1235, name="refused", gvl_id=284)
    + entry("partners", dpid=99, name="marker", gvl_id=3)
    + entry("traits", sid=100, name="sports", rule='c_section == "sports"')
    + entry("traits", sid=200, name="crm", type="onboarded")
    + entry("segments", sid=500, name="sports", rule="100T")
    + entry("segments", sid=501, name="seen once", rule="FREQUENCY([100T]) >= 1")
)
NO_BOUNCE = "[cookies]\nbounce = false\n"


@pytest.fixture(scope="module")
def service_config() -> Config:
    return Config(TOML, keys=(KEY,))


@pytest.fixture(scope="module")
def unbounced(services_module: Services) -> Service:
    return services_module.start(Config(NO_BOUNCE + TOML, keys=(KEY,)))


@pytest.fixture(scope="module")
def services_module(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Services]:
    with Services(tmp_path_factory, redis_url) as started:
        yield started


def kept(resp: httpx.Response) -> dict[str, str]:
    """The Cookie header of a browser that kept the visitor cookie `resp` set."""
    return {"cookie": resp.headers["set-cookie"].split(";")[0]}


def uuid_of(resp: httpx.Response) -> str:
    return resp.headers["set-cookie"].split("=", 1)[1].split(".")[0]


def cookie_for(uuid: str) -> dict[str, str]:
    return {"cookie": f"uuid={CookieSigner([KEY]).sign(uuid)}"}


async def profile(store: Store, uuid: str, sid: int) -> Profile:
    """The visitor's stored profile once trait `sid` is in it (another process wrote it)."""

    async def realized() -> Profile | None:
        found = (await store.visitor_state(uuid)).profile
        return found if sid in found.traits else None

    return await wait_for(realized) or (await store.visitor_state(uuid)).profile


# --------------------------------------------------------------------------- /event

# (what the first request carries, the trait it realizes or None, the d_cid uid or None)
STORING = [
    pytest.param("c_section=sports", 100, None, id="signals"),
    pytest.param("d_sid=200", 200, None, id="d_sid"),
    pytest.param("d_cid=1234%01{uid}", None, "{uid}", id="d_cid"),
]


@pytest.mark.parametrize(("query", "trait", "declared"), STORING)
@pytest.mark.parametrize("answer", ["", "&d_rtbd=json", "&d_cb=cb"], ids=["gif", "json", "jsonp"])
async def test_event_bounce_then_the_follow_up_with_the_cookie_is_stored(
    http: httpx.AsyncClient,
    store: Store,
    query: str,
    trait: int | None,
    declared: str | None,
    answer: str,
) -> None:
    uid = f"cid-{new_uuid()[:10]}"
    query = query.format(uid=uid) + answer + f"&gdpr=1&gdpr_consent={TRAFFECTIVE}"
    first = await http.get(f"/event?{query}")
    assert first.status_code == 302 and first.content == b""
    assert first.headers["location"] == f"/event?{query}&d_bounce=1"
    assert first.headers["cache-control"].startswith("no-cache")
    uuid = uuid_of(first)
    follow_up = await http.get(first.headers["location"], headers=kept(first))
    assert follow_up.status_code == 200 and "x-error" not in follow_up.headers
    assert uuid_of(follow_up) == uuid  # stored as the visitor the bounce made
    if answer == "&d_rtbd=json":
        assert follow_up.json()["uuid"] == uuid
    elif answer == "&d_cb=cb":
        assert follow_up.text.startswith('/**/cb({"uuid":"' + uuid)
    else:
        assert follow_up.content == GIF
    if trait is not None:
        assert (await profile(store, uuid, trait)).traits[trait] == [(today(), 1)]
    if declared is not None:  # with the consent the first request carried (gdpr=1)

        async def mapped() -> bool:
            return await store.lookup(1234, [uid], today()) == {uid: uuid}

        assert await wait_for(mapped)


@pytest.mark.parametrize(("query", "trait", "declared"), STORING)
@pytest.mark.parametrize("answer", ["", "&d_rtbd=json", "&d_cb=cb"], ids=["gif", "json", "jsonp"])
async def test_event_follow_up_without_the_cookie_is_172_and_stores_nothing(
    http: httpx.AsyncClient,
    store: Store,
    query: str,
    trait: int | None,
    declared: str | None,
    answer: str,
) -> None:
    uid = f"cid-{new_uuid()[:10]}"
    before = await settled(http, KEY)
    first = await http.get(f"/event?{query.format(uid=uid)}{answer}")
    assert first.status_code == 302
    refused = await http.get(first.headers["location"])  # the browser kept no cookie
    assert refused.status_code == 200  # answered as usual, never a second bounce
    assert refused.headers["x-error"] == "172" and "set-cookie" not in refused.headers
    if answer == "&d_rtbd=json":
        assert refused.json()["errors"][0]["code"] == 172
    elif answer == "&d_cb=cb":
        assert refused.headers["content-type"] == "application/javascript"
        assert refused.text.startswith('/**/cb({"errors":[{"code":172')
    else:
        assert refused.content == GIF
    # Nothing at all, for any visitor: the follow-up's own fresh uuid is never shown.
    assert await written_since(http, KEY, before) == NOTHING
    assert await store.lookup(1234, [uid], today()) == {}


async def test_event_storing_nothing_is_not_bounced(http: httpx.AsyncClient) -> None:
    before = await settled(http, KEY)
    for query in (
        "",
        "?c_section=news",  # realizes no trait
        "?d_rtbd=json&d_cts=2",
        "?d_sid=999",  # no such trait
        "?d_cid=1235%01x&gdpr=1&gdpr_consent=" + TRAFFECTIVE,  # the partner is refused
    ):
        resp = await http.get(f"/event{query}")
        assert resp.status_code == 200 and "x-error" not in resp.headers, query
        assert resp.headers["set-cookie"].startswith("uuid=")
    # d_bounce=1 on a request that stores nothing changes nothing either.
    assert (await http.get("/event?c_section=news&d_bounce=1")).status_code == 200
    assert await written_since(http, KEY, before) == NOTHING  # and it stored nothing


async def test_event_head_is_bounced_as_get(http: httpx.AsyncClient) -> None:
    resp = await http.head("/event?c_section=sports")
    assert resp.status_code == 302
    assert resp.headers["location"] == "/event?c_section=sports&d_bounce=1"


async def test_event_post_is_bounced_by_307_and_keeps_its_body(
    http: httpx.AsyncClient, store: Store
) -> None:
    body = {"c_section": "sports", "d_rtbd": "json", "d_cts": "2"}
    first = await http.post("/event", data=body)
    assert first.status_code == 307 and first.headers["location"] == "/event?d_bounce=1"
    with_query = await http.post("/event?d_cts=1", data=body)
    assert with_query.headers["location"] == "/event?d_cts=1&d_bounce=1"
    # The browser sends the body again to the Location.
    follow_up = await http.post(first.headers["location"], data=body, headers=kept(first))
    doc = follow_up.json()
    assert doc["uuid"] == uuid_of(first) and doc["traits"] == [100]
    assert sorted(doc["segments"]) == [500, 501]  # FREQUENCY counts the first view
    assert (await profile(store, doc["uuid"], 100)).traits[100] == [(today(), 1)]
    refused = await http.post(first.headers["location"], data=body)
    assert refused.json()["errors"][0]["code"] == 172


async def test_a_json_bounce_carries_cors(http: httpx.AsyncClient) -> None:
    resp = await http.get("/event?d_rtbd=json&c_section=sports", headers={"origin": ORIGIN})
    assert resp.status_code == 302
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert resp.headers["access-control-allow-credentials"] == "true"
    follow_up = await http.get(resp.headers["location"], headers={"origin": ORIGIN, **kept(resp)})
    assert follow_up.headers["access-control-allow-origin"] == ORIGIN
    gif = await http.get("/event?c_section=sports", headers={"origin": ORIGIN})
    assert gif.status_code == 302 and "access-control-allow-origin" not in gif.headers


async def test_a_query_at_the_limit_survives_the_bounce(
    http: httpx.AsyncClient, store: Store
) -> None:
    base = "c_section=sports&pad="
    query = base + "x" * (MAX_QUERY - len(base))
    assert len(query) == MAX_QUERY
    first = await http.get(f"/event?{query}")
    assert first.status_code == 302
    follow_up = await http.get(first.headers["location"], headers=kept(first))
    assert follow_up.status_code == 200  # not 414: the data is not lost on its way back
    assert 100 in (await profile(store, uuid_of(first), 100)).traits
    # The allowance is the bounce's own bytes, nothing more.
    assert (await http.get(f"/event?{query}x")).status_code == 414
    assert (await http.get(f"/event?{query}x&d_bounce=1")).status_code == 414
    assert (await http.get(f"/event?{query}&d_bounce=12")).status_code == 414


async def test_bounces_are_counted(http: httpx.AsyncClient) -> None:
    await http.get("/event?c_section=sports")
    await http.get("/ibs?dpid=99&dpuuid=counted")
    await http.get("/setuid?bidder=acme&uid=counted")

    async def counted() -> bool:
        text = (await http.get("/metrics", headers=OPS)).text
        return all(
            re.search(rf'pixelsync_requests_total\{{endpoint="{e}",outcome="bounce"\}} [1-9]', text)
            for e in ("event", "ibs", "setuid")
        )

    assert await wait_for(counted)  # counters are flushed each second


# --------------------------------------------------------------------------- /setuid


async def test_setuid_bounce_then_the_follow_up_with_the_cookie_is_stored(
    http: httpx.AsyncClient, store: Store
) -> None:
    uid = f"set-{new_uuid()[:10]}"
    first = await http.get(f"/setuid?bidder=acme&gdpr=1&gdpr_consent={TRAFFECTIVE}&uid={uid}")
    assert first.status_code == 302
    location = f"/setuid?bidder=acme&gdpr=1&gdpr_consent={TRAFFECTIVE}&uid={uid}&d_bounce=1"
    assert first.headers["location"] == location
    follow_up = await http.get(location, headers=kept(first))
    assert follow_up.status_code == 200 and "x-error" not in follow_up.headers

    async def mapped() -> bool:
        return await store.lookup(1234, [uid], today()) == {uid: uuid_of(first)}

    assert await wait_for(mapped)


async def test_setuid_follow_up_without_the_cookie_is_172(
    http: httpx.AsyncClient, store: Store
) -> None:
    uid = f"set-{new_uuid()[:10]}"
    before = await settled(http, KEY)
    first = await http.get(f"/setuid?bidder=acme&uid={uid}&f=b")
    refused = await http.get(first.headers["location"])
    assert refused.status_code == 200 and refused.headers["x-error"] == "172"
    assert refused.headers["content-type"] == "text/html"  # as asked, no second bounce
    assert "set-cookie" not in refused.headers  # never a cookie on a refusal, as /event's
    assert await written_since(http, KEY, before) == NOTHING
    assert await store.lookup(1234, [uid], today()) == {}


@pytest.mark.parametrize("form", ["/ibs:dpid=1234&dpuuid={uid}", "/ibs?dpid=1234&dpuuid={uid}"])
async def test_ibs_follow_up_without_the_cookie_is_172_and_stores_nothing(
    http: httpx.AsyncClient, store: Store, form: str
) -> None:
    uid = f"ibs-{new_uuid()[:10]}"
    before = await settled(http, KEY)
    first = await http.get(form.format(uid=uid))
    assert first.status_code == 302
    refused = await http.get(first.headers["location"])
    assert refused.status_code == 200 and refused.headers["x-error"] == "172"
    assert refused.content == GIF and "set-cookie" not in refused.headers
    assert await written_since(http, KEY, before) == NOTHING
    assert await store.lookup(1234, [uid], today()) == {}


# --------------------------------------------------------------------------- bounce = false


async def test_without_the_bounce_the_first_request_is_stored_at_once(
    unbounced: Service, store: Store
) -> None:
    uid = new_uuid()[:10]
    async with unbounced.client() as client:
        event = await client.get(f"/event?d_rtbd=json&d_cts=2&c_section=sports&d_cid=1234%01e{uid}")
        assert event.status_code == 200 and event.json()["traits"] == [100]
        assert event.json()["segments"] == [500, 501]
        ibs = await client.get(f"/ibs?dpid=99&dpuuid=i{uid}")
        setuid = await client.get(f"/setuid?bidder=acme&uid=s{uid}&f=i")
        for resp in (ibs, setuid):
            assert resp.status_code == 200 and "x-error" not in resp.headers
    uuid = event.json()["uuid"]
    assert (await profile(store, uuid, 100)).traits[100] == [(today(), 1)]

    async def mapped() -> bool:
        return (
            await store.lookup(1234, [f"e{uid}"], today()) == {f"e{uid}": uuid}
            and await store.lookup(99, [f"i{uid}"], today()) == {f"i{uid}": uuid_of(ibs)}
            and await store.lookup(1234, [f"s{uid}"], today()) == {f"s{uid}": uuid_of(setuid)}
        )

    assert await wait_for(mapped)


async def test_ibs_bounce_of_the_path_form_keeps_it(http: httpx.AsyncClient) -> None:
    uid = quote(f"p/{new_uuid()[:6]}", safe="")
    first = await http.get(f"/ibs:dpid=1234&dpuuid={uid}")
    assert first.headers["location"] == f"/ibs:dpid=1234&dpuuid={uid}&d_bounce=1"
    assert (await http.get(first.headers["location"], headers=kept(first))).status_code == 200

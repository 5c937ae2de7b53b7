"""/ibs over real HTTP, with a real partner server on 127.0.0.1."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from service.identity import CookieSigner, new_uuid, today
from service.store import PartnerUid, Store
from service.web.responses import GIF
from tests.configs import entry
from tests.conftest import wait_for
from tests.partners import PartnerServer
from tests.services import Config

KEY = "ibs-test-key"


@pytest.fixture(scope="module")
def service_config() -> Config:
    toml = entry("partners", dpid=1234, name="acme", redirect_domains=["localhost", "acme.test"])
    toml += entry("partners", dpid=99, name="other")
    return Config(toml, keys=(KEY,))


def cookie_for(uuid: str) -> dict[str, str]:
    return {"cookie": f"uuid={CookieSigner([KEY]).sign(uuid)}"}


async def test_path_and_query_forms_store_both_directions(
    http: httpx.AsyncClient, store: Store
) -> None:
    uuid = new_uuid()
    uid_a, uid_b = f"a-{uuid[:8]}", f"b-{uuid[:8]}"
    resp = await http.get(f"/ibs:dpid=1234&dpuuid={uid_a}", headers=cookie_for(uuid))
    assert resp.status_code == 200 and resp.content == GIF
    assert resp.headers["set-cookie"].startswith("uuid=")
    resp = await http.get(f"/ibs?dpid=99&dpuuid={uid_b}", headers=cookie_for(uuid))
    assert resp.status_code == 200 and resp.content == GIF
    await store.drain()

    async def both() -> bool:
        return len(await store.mappings(uuid, today())) == 2

    assert await wait_for(both)
    assert await store.mappings(uuid, today()) == {
        1234: PartnerUid(uid_a, today()),
        99: PartnerUid(uid_b, today()),
    }
    assert await store.lookup(1234, [uid_a], today()) == {uid_a: uuid}


async def test_cookie_bounce(http: httpx.AsyncClient, store: Store) -> None:
    uid = f"bounce-{new_uuid()[:10]}"
    first = await http.get(f"/ibs:dpid=1234&dpuuid={uid}")
    assert first.status_code == 302
    assert first.headers["location"] == f"/ibs:dpid=1234&dpuuid={uid}&d_bounce=1"
    cookie = first.headers["set-cookie"].split(";")[0]
    uuid = cookie.split("=", 1)[1].split(".")[0]

    refused = await http.get(first.headers["location"])  # the browser kept no cookie
    assert refused.status_code == 200 and refused.headers["x-error"] == "172"
    assert refused.content == GIF and "set-cookie" not in refused.headers

    query_form = await http.get(f"/ibs?dpid=1234&dpuuid={uid}&gdpr=0")
    assert query_form.headers["location"] == f"/ibs?dpid=1234&dpuuid={uid}&gdpr=0&d_bounce=1"

    kept = await http.get(first.headers["location"], headers={"cookie": cookie})
    assert kept.status_code == 200 and "x-error" not in kept.headers

    async def stored() -> dict[str, str]:
        return await store.lookup(1234, [uid], today())

    assert await wait_for(stored) == {uid: uuid}


async def test_redirect_to_the_partner_with_the_uuid(
    http: httpx.AsyncClient, partner: PartnerServer
) -> None:
    uuid = new_uuid()
    # An encoded & inside redir stays inside redir; a raw & ends it.
    redir = f"http://localhost:{partner.port}/done?u=${{DD_UUID}}&x=1"
    resp = await http.get(
        f"/ibs:dpid=1234&dpuuid=p-1&redir={quote(redir, safe='')}&gdpr=0",
        headers=cookie_for(uuid),
    )
    assert resp.status_code == 302
    assert resp.headers["location"] == f"http://localhost:{partner.port}/done?u={uuid}&x=1"
    assert resp.headers["cache-control"] == "no-cache, no-store, must-revalidate"
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(resp.headers["location"])).status_code == 200
    assert partner.requests[-1].query == {"u": [uuid], "x": ["1"]}


async def test_a_partner_initiated_sync_through_redirects(
    http: httpx.AsyncClient, partner: PartnerServer, store: Store
) -> None:
    """The partner sends the browser to /ibs with its uid and a redir to itself; the
    browser follows every hop with its cookie, as a browser does."""
    uuid = new_uuid()
    uid = f"acme-{uuid[:12]}"
    back = quote(f"http://localhost:{partner.port}/synced?ours={uid}&dmp=${{DD_UUID}}", safe="")
    url = f"{http.base_url}/ibs:dpid=1234&dpuuid={uid}&redir={back}"
    jar = {"uuid": CookieSigner([KEY]).sign(uuid)}
    async with httpx.AsyncClient(timeout=5) as browser:
        for _ in range(5):
            resp = await browser.get(url, headers={"cookie": f"uuid={jar['uuid']}"})
            if resp.status_code != 302:
                break
            url = resp.headers["location"]
    assert resp.status_code == 200
    last = partner.requests[-1]
    assert (last.path, last.query) == ("/synced", {"ours": [uid], "dmp": [uuid]})

    async def stored() -> dict[str, str]:
        return await store.lookup(1234, [uid], today())

    assert await wait_for(stored) == {uid: uuid}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/ibs:dpid=5&dpuuid=x", 400, "320"),
        ("/ibs:dpid=abc&dpuuid=x", 400, "320"),
        ("/ibs:dpuuid=x", 400, "320"),
        ("/ibs", 400, "320"),
        ("/ibs:dpid=1234", 400, "322"),
        ("/ibs:dpid=1234&dpuuid=", 400, "322"),
        ("/ibs:dpid=1234&dpuuid=a%20b", 400, "322"),
        ("/ibs:dpid=1234&dpuuid=%C3%A9", 400, "322"),
        ("/ibs:dpid=1234&dpuuid=" + "x" * 257, 400, "322"),
        ("/ibs:dpid=1234&dpuuid=x&redir=javascript:alert(1)", 400, "321"),
        ("/ibs:dpid=1234&dpuuid=x&redir=https%3A%2F%2Fevil.test%2F", 400, "321"),
        ("/ibs:dpid=1234&dpuuid=x&redir=https%3A%2F%2Facme.test%40evil.test%2F", 400, "321"),
        ("/ibs:dpid=99&dpuuid=x&redir=https%3A%2F%2Facme.test%2F", 400, "321"),  # not 99's
        ("/ibs:dpid=1234&dpuuid=x%zz", 400, "311"),
        ("/ibs:dpid=1234&dpuuid=%00", 400, "311"),
    ],
)
async def test_refusals_store_nothing(
    http: httpx.AsyncClient, store: Store, path: str, status: int, code: str
) -> None:
    uuid = new_uuid()
    resp = await http.get(path, headers=cookie_for(uuid))
    assert resp.status_code == status
    assert resp.headers["x-error"] == code
    assert resp.content == GIF and "location" not in resp.headers
    await http.get("/ibs:dpid=99&dpuuid=marker", headers=cookie_for(uuid))  # a later write

    async def marker() -> bool:
        return 99 in await store.mappings(uuid, today())

    assert await wait_for(marker)
    assert 1234 not in await store.mappings(uuid, today())


async def test_opted_out_browsers_are_not_synced(http: httpx.AsyncClient) -> None:
    resp = await http.get("/ibs:dpid=1234&dpuuid=x", headers={"cookie": "uuid=NOTARGET"})
    assert resp.status_code == 200 and resp.headers["x-error"] == "171"
    assert "location" not in resp.headers


async def test_the_latest_claim_of_a_uid_wins(http: httpx.AsyncClient, store: Store) -> None:
    first, second = new_uuid(), new_uuid()
    uid = f"shared-{first[:10]}"
    await http.get(f"/ibs:dpid=1234&dpuuid={uid}", headers=cookie_for(first))
    await http.get(f"/ibs:dpid=1234&dpuuid={uid}", headers=cookie_for(second))

    async def moved() -> bool:
        return await store.lookup(1234, [uid], today()) == {uid: second} and not (
            await store.mappings(first, today())
        )

    assert await wait_for(moved)


async def test_declared_ids_on_event(http: httpx.AsyncClient, store: Store) -> None:
    uuid = new_uuid()
    a, b = f"crm-{uuid[:6]}", f"mail-{uuid[:6]}"
    resp = await http.get(f"/event?d_cid=1234%01{a}&d_cid=99%01{b}", headers=cookie_for(uuid))
    assert resp.status_code == 200 and "x-error" not in resp.headers

    async def both() -> bool:
        return len(await store.mappings(uuid, today())) == 2

    assert await wait_for(both)
    assert await store.lookup(1234, [a], today()) == {a: uuid}
    assert await store.lookup(99, [b], today()) == {b: uuid}


@pytest.mark.parametrize(
    ("query", "code"),
    [("d_cid=5%01x", "320"), ("d_cid=1234%01a%20b", "322"), ("d_cid=1234%01", "322")],
)
async def test_bad_declared_ids_are_refused(
    http: httpx.AsyncClient, store: Store, query: str, code: str
) -> None:
    uuid = new_uuid()
    resp = await http.get(f"/event?d_cid=99%01ok&{query}", headers=cookie_for(uuid))
    assert resp.status_code == 400 and resp.headers["x-error"] == code
    as_json = await http.get(f"/event?d_rtbd=json&{query}", headers=cookie_for(uuid))
    assert as_json.json()["errors"][0]["code"] == int(code)
    await http.get("/ibs:dpid=1234&dpuuid=marker", headers=cookie_for(uuid))

    async def marker() -> bool:
        return 1234 in await store.mappings(uuid, today())

    assert await wait_for(marker)
    assert 99 not in await store.mappings(uuid, today())  # nothing of the refused request


async def test_declared_ids_of_a_browser_without_cookie_are_not_stored(
    http: httpx.AsyncClient, store: Store
) -> None:
    uid = f"anon-{new_uuid()[:10]}"
    bounce = await http.get(f"/event?d_rtbd=json&d_cid=1234%01{uid}")
    assert bounce.status_code == 302  # the cookie bounce (tests/web/test_bounce.py)
    resp = await http.get(bounce.headers["location"])  # the browser kept no cookie
    assert resp.status_code == 200 and resp.json()["errors"][0]["code"] == 172
    uuid = bounce.headers["set-cookie"].split("=", 1)[1].split(".")[0]
    await http.get("/ibs:dpid=99&dpuuid=marker", headers=cookie_for(uuid))

    async def marker() -> bool:
        return 99 in await store.mappings(uuid, today())

    assert await wait_for(marker)
    assert await store.lookup(1234, [uid], today()) == {}


async def test_an_opted_out_cookie_is_kept_on_ibs(http: httpx.AsyncClient) -> None:
    resp = await http.get("/ibs:dpid=1234&dpuuid=x", headers={"cookie": "uuid=NOTARGET"})
    assert resp.headers["set-cookie"].startswith("uuid=NOTARGET;")


@pytest.mark.parametrize(
    ("query", "headers", "reason"),
    [
        ("us_privacy=1YYN", {}, "us_privacy"),
        ("us_privacy=1nyn", {}, "us_privacy"),
        ("us_privacy=1NNN", {"sec-gpc": "1"}, "gpc"),
    ],
)
async def test_an_opt_out_of_sale_redirects_without_the_uuid_and_stores_nothing(
    http: httpx.AsyncClient,
    partner: PartnerServer,
    store: Store,
    query: str,
    headers: dict[str, str],
    reason: str,
) -> None:
    """SPEC §12: the partner's page flow goes on (the redirect), but it learns no uuid
    and no mapping is stored; X-Error 171 and X-Privacy say why."""
    uuid = new_uuid()
    uid = f"sale-{uuid[:10]}"
    redir = quote(f"http://localhost:{partner.port}/back?dmp=${{DD_UUID}}&x=1", safe="")
    resp = await http.get(
        f"/ibs:dpid=1234&dpuuid={uid}&redir={redir}&{query}",
        headers={**cookie_for(uuid), **headers},
    )
    assert resp.status_code == 302
    assert resp.headers["location"] == f"http://localhost:{partner.port}/back?dmp=&x=1"
    assert (resp.headers["x-error"], resp.headers["x-privacy"]) == ("171", reason)
    no_redir = await http.get(
        f"/ibs?dpid=1234&dpuuid={uid}&{query}", headers={**cookie_for(uuid), **headers}
    )
    assert no_redir.status_code == 200 and no_redir.content == GIF
    assert (no_redir.headers["x-error"], no_redir.headers["x-privacy"]) == ("171", reason)
    await http.get("/ibs:dpid=99&dpuuid=marker", headers=cookie_for(uuid))  # a later write

    async def marker() -> bool:
        return 99 in await store.mappings(uuid, today())

    assert await wait_for(marker)
    assert 1234 not in await store.mappings(uuid, today())
    assert await store.lookup(1234, [uid], today()) == {}


async def test_an_opt_out_of_sale_issues_no_cookie_and_no_bounce(http: httpx.AsyncClient) -> None:
    redir = quote("http://acme.test/back?dmp=${DD_UUID}", safe="")
    resp = await http.get(f"/ibs:dpid=1234&dpuuid=x&redir={redir}&us_privacy=1YYY")
    assert resp.status_code == 302 and resp.headers["location"] == "http://acme.test/back?dmp="
    assert "set-cookie" not in resp.headers


async def test_not_applicable_us_privacy_syncs(http: httpx.AsyncClient, store: Store) -> None:
    uuid = new_uuid()
    uid = f"na-{uuid[:10]}"
    resp = await http.get(f"/ibs:dpid=1234&dpuuid={uid}&us_privacy=1---", headers=cookie_for(uuid))
    assert resp.status_code == 200 and "x-error" not in resp.headers

    async def stored() -> dict[str, str]:
        return await store.lookup(1234, [uid], today())

    assert await wait_for(stored) == {uid: uuid}

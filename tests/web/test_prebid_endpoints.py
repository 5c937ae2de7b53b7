"""Prebid Server's user sync (SPEC §15) over real HTTP: POST /cookie_sync, GET /setuid
and GET /getuids against a served pixelsync and the session's Redis/Valkey."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from service.gpp import USNAT
from service.identity import CookieSigner, new_uuid, today
from service.store import PartnerUid, Store
from service.web.responses import GIF
from tests.conftest import wait_for
from tests.gpp_encoder import gpp, us_section
from tests.services import OPS, Config, Service, Services
from tests.test_consent import NO_VENDORS, TRAFFECTIVE, tcf
from tests.writes import NOTHING, settled, written_since

KEY = "prebid-test-key"
GPP_CONSENT = gpp([(2, TRAFFECTIVE)])  # GPP only: section 2 is the consent string
GPP_REFUSED = gpp([(2, NO_VENDORS)])
GPP_SALE_OPT_OUT = gpp([(USNAT, us_section(USNAT, {"SaleOptOut": 1}, version=2))])
ORIGIN = "http://publisher.test"
OTHER_ORIGIN = "https://elsewhere.test"  # not in [prebid] cors_origins

# Host vendor 2 and partner vendor 3 are consented in TRAFFECTIVE; 284 is not; NO_VENDORS
# consents to no vendor at all, the host's included.
PARTNERS = """
[[partners]]
dpid = 801
name = "Acme"
sync_url = "https://acme.test/sync?u=${DD_UUID}&gdpr=${GDPR}&redir=${CALLBACK}"
gvl_id = 3

[[partners]]
dpid = 802
name = "framer"
sync_type = "iframe"
sync_url = "https://framer.test/frame.html?redir=${CALLBACK}"
gvl_id = 3

[[partners]]
dpid = 803
name = "both"
sync_url = "https://both.test/img?redir=${CALLBACK}"
iframe_sync_url = "https://both.test/frame.html?redir=${CALLBACK}"
gvl_id = 284

[[partners]]
dpid = 804
name = "nosync"
"""


@pytest.fixture(scope="module")
def service_config() -> Config:
    return Config(
        f"[server]\nvendor_id = 2\n\n[limits]\nmax_body_bytes = 4096\n\n"
        # As an operator may write them: the service compares them as browsers send them.
        f'[prebid]\ncors_origins = ["HTTP://Publisher.test:80", "https://other.test:8443"]\n'
        f"{PARTNERS}",
        keys=(KEY,),
    )


def visitor(uuid: str | None = None) -> dict[str, str]:
    """The Cookie header of a visitor pixelsync knows (a fresh one by default)."""
    return {"cookie": f"uuid={CookieSigner([KEY]).sign(uuid or new_uuid())}"}


OPTED_OUT = {"cookie": "uuid=NOTARGET"}


async def stored_mappings(store: Store, uuid: str, count: int) -> dict[int, PartnerUid]:
    await store.drain()  # the test's own writes: in Redis for the service to read

    async def enough() -> dict[int, PartnerUid]:
        found = await store.mappings(uuid, today())
        return found if len(found) == count else {}

    return await wait_for(enough) or await store.mappings(uuid, today())


# --------------------------------------------------------------------------- /cookie_sync


def names(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(b["bidder"], b["usersync"]["type"]) for b in answer["bidder_status"]]


SURROGATE = "JSON parsing failed: a string holds a lone surrogate escape"
REFUSALS = [
    ("bad JSON", {}, b"{bidders", 400, "JSON parsing failed: "),
    ("an empty body", {}, b"", 400, "JSON parsing failed: "),
    ("a JSON array", {}, b"[]", 400, "JSON parsing failed: the request must be a JSON object"),
    ("a lone surrogate, debug", {}, b'{"bidders": ["\\ud800"], "debug": true}', 400, SURROGATE),
    ("a lone surrogate in gpp", {}, b'{"bidders": ["acme"], "gpp": "\\ud800"}', 400, SURROGATE),
    (
        "a lone surrogate in gdpr_consent",
        {},
        b'{"bidders": ["acme"], "gdpr": 0, "gdpr_consent": "\\ud800"}',
        400,
        SURROGATE,
    ),
    (
        "a lone surrogate as a filter mode",
        {},
        b'{"filterSettings": {"iframe": {"filter": "\\ud800"}}}',
        400,
        SURROGATE,
    ),
    (
        "a lone surrogate as filter bidders",
        {},
        b'{"filterSettings": {"iframe": {"bidders": "\\ud800"}}}',
        400,
        SURROGATE,
    ),
    ("gpp_sid not integers", {}, b'{"gpp_sid": "6,x"}', 400, "strconv.ParseInt: parsing"),
    ("opted out", OPTED_OUT, b"{}", 401, "User has opted out"),
    (
        "opted out, gdpr=1 without consent: the request is read first",
        OPTED_OUT,
        b'{"gdpr": 1}',
        400,
        "gdpr_consent is required if gdpr=1",
    ),
    ("gdpr=1 without consent", {}, b'{"gdpr": 1}', 400, "gdpr_consent is required if gdpr=1"),
    ("gpp_sid 2 without consent", {}, b'{"gpp_sid": "2"}', 400, "gdpr_consent is required"),
    (
        "a bad filter",
        {},
        b'{"filterSettings": {"iframe": {"bidders": "*", "filter": "nope"}}}',
        400,
        "error parsing filtersettings.iframe: invalid filter value 'nope'",
    ),
    ("a body over max_body_bytes", {}, b'{"x": "' + b"a" * 5000 + b'"}', 413, "body over"),
]


@pytest.mark.parametrize(
    ("description", "headers", "body", "status", "message"),
    REFUSALS,
    ids=[r[0] for r in REFUSALS],
)
async def test_cookie_sync_refusals(
    http: httpx.AsyncClient,
    description: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    message: str,
) -> None:
    resp = await http.post("/cookie_sync", content=body, headers={**headers, "origin": ORIGIN})
    assert resp.status_code == status, description
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text.startswith(message), (description, resp.text)
    assert resp.headers["access-control-allow-origin"] == ORIGIN  # the page may read why
    # No cookie on a refusal, but an opted-out visitor's is kept (SPEC §13).
    assert resp.headers.get("set-cookie", "").startswith("uuid=NOTARGET;") or (
        "set-cookie" not in resp.headers and status != 401
    )


HOST_BLOCKED = [
    ("consent string unparsable", {"gdpr": 1, "gdpr_consent": "not-a-string"}),
    ("host vendor not consented", {"gdpr": 1, "gdpr_consent": NO_VENDORS}),
    ("host vendor not consented, GPP only", {"gpp_sid": "2", "gpp": GPP_REFUSED}),
    ("gpp string unparsable", {"gdpr": 0, "gpp": "DBABM"}),
]


@pytest.mark.parametrize(("description", "fields"), HOST_BLOCKED, ids=[h[0] for h in HOST_BLOCKED])
async def test_cookie_sync_without_host_consent_answers_no_syncs_and_sets_no_cookie(
    http: httpx.AsyncClient, description: str, fields: dict[str, Any]
) -> None:
    resp = await http.post("/cookie_sync", json={**fields, "debug": True})
    assert resp.status_code == 200, description
    assert resp.json() == {"status": "no_cookie", "bidder_status": []}  # no empty debug
    assert "set-cookie" not in resp.headers


SYNCS = [
    (
        "every partner when no bidders are named; iframe preferred",
        {"debug": True},
        {},
        [("Acme", "redirect"), ("framer", "iframe"), ("both", "iframe")],
        [{"bidder": "nosync", "error": "No sync config"}],
    ),
    (
        "an empty list: every partner",
        {"bidders": []},
        {},
        [("Acme", "redirect"), ("framer", "iframe"), ("both", "iframe")],
        None,
    ),
    (
        "bidder codes in any case, answered as the request spelled them",
        {"bidders": ["ACME", "Framer", "zzz", "acme", "Framer"], "debug": True},
        {},
        [("ACME", "redirect"), ("Framer", "iframe")],
        [
            {"bidder": "zzz", "error": "Unsupported bidder"},
            {"bidder": "acme", "error": "Duplicate bidder synced as Acme"},
        ],
    ),
    ("limit", {"bidders": ["zzz", "both", "nosync"], "limit": 1}, {}, [("both", "iframe")], None),
    (
        "iframes excluded for everyone",
        {
            "bidders": ["framer", "both", "acme"],
            "filterSettings": {"iframe": {"bidders": "*", "filter": "exclude"}},
            "debug": True,
        },
        {},
        [("both", "redirect"), ("acme", "redirect")],
        [{"bidder": "framer", "error": "Rejected by request filter"}],
    ),
    (
        "images for listed bidders only",
        {
            "bidders": ["acme", "both"],
            "filterSettings": {
                "iframe": {"bidders": ["both"], "filter": "exclude"},
                "image": {"bidders": ["BOTH"], "filter": "include"},
            },
            "debug": True,
        },
        {},
        [("both", "redirect")],
        [{"bidder": "acme", "error": "Rejected by request filter"}],
    ),
    (
        "GDPR: partners whose vendor is consented",
        {
            "bidders": ["acme", "framer", "both"],
            "gdpr": 1,
            "gdpr_consent": TRAFFECTIVE,
            "debug": True,
        },
        {},
        [("acme", "redirect"), ("framer", "iframe")],
        [{"bidder": "both", "error": "Rejected by privacy"}],
    ),
    (
        "GPP only, GDPR: partners whose vendor section 2 consents",
        {"bidders": ["acme", "framer", "both"], "gpp_sid": "2", "gpp": GPP_CONSENT, "debug": True},
        {},
        [("acme", "redirect"), ("framer", "iframe")],
        [{"bidder": "both", "error": "Rejected by privacy"}],
    ),
    (
        "usnat opt-out of sale, gpp_sid naming it",
        {"bidders": ["acme"], "gpp_sid": "7", "gpp": GPP_SALE_OPT_OUT, "debug": True},
        {},
        [],
        [{"bidder": "acme", "error": "Rejected by privacy"}],
    ),
    (
        "usnat opt-out of sale, gpp_sid not naming it",
        {"bidders": ["acme"], "gpp_sid": "6", "gpp": GPP_SALE_OPT_OUT},
        {},
        [("acme", "redirect")],
        None,
    ),
    (
        "us_privacy opt-out of sale",
        {"bidders": ["acme"], "us_privacy": "1YYN", "debug": True},
        {},
        [],
        [{"bidder": "acme", "error": "Rejected by privacy"}],
    ),
    (
        "Sec-GPC",
        {"bidders": ["acme"], "debug": True},
        {"sec-gpc": "1"},
        [],
        [{"bidder": "acme", "error": "Rejected by privacy"}],
    ),
    (
        "us_privacy not applicable",
        {"bidders": ["acme"], "us_privacy": "1---"},
        {},
        [("acme", "redirect")],
        None,
    ),
]


@pytest.mark.parametrize(
    ("description", "fields", "headers", "expected", "debug"), SYNCS, ids=[s[0] for s in SYNCS]
)
async def test_cookie_sync_chooses(
    http: httpx.AsyncClient,
    description: str,
    fields: dict[str, Any],
    headers: dict[str, str],
    expected: list[tuple[str, str]],
    debug: list[dict[str, str]] | None,
) -> None:
    resp = await http.post("/cookie_sync", json=fields, headers={**headers, "origin": ORIGIN})
    assert resp.status_code == 200, description
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    answer = resp.json()
    assert answer["status"] == "no_cookie"  # a new visitor: nothing synced yet
    assert names(answer) == expected, description
    assert all(b["no_cookie"] is True for b in answer["bidder_status"])
    assert answer.get("debug") == debug, description


async def test_cookie_sync_for_a_new_visitor_sets_the_cookie_and_builds_the_urls(
    http: httpx.AsyncClient, svc: Service
) -> None:
    resp = await http.post(
        "/cookie_sync",
        content=json.dumps({"bidders": ["acme"], "gdpr": 0, "gpp_sid": "6"}),
        headers={"content-type": "text/plain", "origin": ORIGIN},  # as Prebid.js sends it
    )
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert resp.headers["access-control-allow-credentials"] == "true"
    cookie = resp.headers["set-cookie"]
    assert "SameSite=None" in cookie and "Secure" in cookie and "HttpOnly" in cookie
    uuid = cookie.split("=", 1)[1].split(".")[0]
    (sync,) = resp.json()["bidder_status"]
    url = urlsplit(sync["usersync"]["url"])
    query = parse_qs(url.query)
    assert (url.netloc, query["u"], query["gdpr"]) == ("acme.test", [uuid], ["0"])
    assert query["redir"] == [  # the uid last, as Prebid Server's default redirect URL
        f"{svc.url}/setuid?bidder=Acme&gdpr=0&gdpr_consent=&gpp=&gpp_sid=6&f=i&uid=$UID"
    ]


async def test_cookie_sync_already_synced(http: httpx.AsyncClient, store: Store) -> None:
    """A fresh mapping in the match table is "already synced"; one older than the
    partner's refresh_days (7 by default) is synced again."""
    uuid = new_uuid()
    store.put_mapping(uuid, 801, f"fresh-{uuid[:6]}", today() - 6)
    store.put_mapping(uuid, 802, f"stale-{uuid[:6]}", today() - 7)
    await stored_mappings(store, uuid, 2)
    resp = await http.post(
        "/cookie_sync", json={"bidders": ["acme", "framer"], "debug": True}, headers=visitor(uuid)
    )
    answer = resp.json()
    assert answer["status"] == "ok"
    assert names(answer) == [("framer", "iframe")]
    assert answer["debug"] == [{"bidder": "acme", "error": "Already in sync"}]
    assert resp.headers["set-cookie"].startswith(f"uuid={uuid}.")  # refreshed


async def test_cookie_sync_preflight_and_methods(http: httpx.AsyncClient) -> None:
    pre = await http.options(
        "/cookie_sync",
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert pre.headers["access-control-allow-credentials"] == "true"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert pre.headers["access-control-allow-headers"] == "content-type"
    wrong = await http.get("/cookie_sync")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "OPTIONS, POST"


# --------------------------------------------------------------------------- /setuid


SETUID_REFUSALS = [
    ("opted out", "bidder=acme&uid=x", OPTED_OUT, 401, ""),
    ("no bidder", "uid=x", None, 400, '"bidder" query param is required'),
    ("unknown bidder", "bidder=zzz&uid=x", None, 400, "The bidder name provided is not supported"),
    ("bad format", "bidder=acme&uid=x&f=j", None, 400, '"f" query param is invalid'),
    ("bad gdpr", "bidder=acme&uid=x&gdpr=yes", None, 400, "the gdpr query param must be either"),
    (
        "gdpr without consent",
        "bidder=acme&uid=x&gdpr=1",
        None,
        400,
        "gdpr_consent is required when",
    ),
    ("gpp_sid 2 without consent", "bidder=acme&uid=x&gpp_sid=2", None, 400, "gdpr_consent is req"),
    (
        "gpp unparsable",
        "bidder=acme&uid=x&gpp_sid=2&gpp=DBABM",
        None,
        400,
        "gdpr_consent was invalid. gpp string unparsable",
    ),
    (
        "host vendor not consented, GPP only",
        f"bidder=acme&uid=x&gpp_sid=2&gpp={GPP_REFUSED}",
        None,
        451,
        "The gdpr_consent string prevents cookies from being saved",
    ),
    (
        "consent unparsable",
        "bidder=acme&uid=x&gdpr=1&gdpr_consent=garbage!",
        None,
        400,
        "gdpr_consent was invalid. ",
    ),
    (
        "host vendor not consented",
        f"bidder=acme&uid=x&gdpr=1&gdpr_consent={NO_VENDORS}",
        None,
        451,
        "The gdpr_consent string prevents cookies from being saved",
    ),
    (
        "partner vendor not consented",
        f"bidder=both&uid=x&gdpr=1&gdpr_consent={TRAFFECTIVE}",
        None,
        451,
        "The gdpr_consent string prevents cookies from being saved",
    ),
    ("bad percent-encoding", "bidder=acme&uid=%zz", None, 400, "bad percent-encoding"),
    ("uid with a space", "bidder=acme&uid=a%20b", None, 400, "uid must be 1-256 printable"),
]


@pytest.mark.parametrize(
    ("description", "query", "headers", "status", "message"),
    SETUID_REFUSALS,
    ids=[r[0] for r in SETUID_REFUSALS],
)
async def test_setuid_refusals_store_nothing(
    http: httpx.AsyncClient,
    store: Store,
    description: str,
    query: str,
    headers: dict[str, str] | None,
    status: int,
    message: str,
) -> None:
    uuid = new_uuid()
    resp = await http.get(f"/setuid?{query}", headers=headers or visitor(uuid))
    assert resp.status_code == status, description
    assert resp.text.startswith(message) and (message or resp.content == b""), resp.text
    assert "location" not in resp.headers
    # No cookie on a refusal, but an opted-out visitor's is kept (SPEC §13).
    assert resp.headers.get("set-cookie", "").startswith("uuid=NOTARGET;") or (
        "set-cookie" not in resp.headers and status != 401
    )
    await http.get("/setuid?bidder=framer&uid=marker", headers=visitor(uuid))
    assert set(await stored_mappings(store, uuid, 1)) == {802}


STORED = [
    ("f=i: the GIF", "bidder=acme&f=i", "image/gif", GIF),
    ("f=b: empty HTML", "bidder=acme&f=b", "text/html", b""),
    ("a redirect partner: the GIF by default", "bidder=ACME", "image/gif", GIF),
    ("an iframe partner: empty HTML by default", "bidder=framer", "text/html", b""),
    (
        "with consent for host and partner",
        f"bidder=Acme&gdpr=1&gdpr_consent={TRAFFECTIVE}&gpp=&gpp_sid=&f=i",
        "image/gif",
        GIF,
    ),
    (
        "with consent for host and partner, GPP only",
        f"bidder=Acme&gdpr=1&gpp={GPP_CONSENT}&gpp_sid=2&f=i",
        "image/gif",
        GIF,
    ),
]


@pytest.mark.parametrize(
    ("description", "query", "content_type", "body"), STORED, ids=[s[0] for s in STORED]
)
async def test_setuid_stores_the_mapping(
    http: httpx.AsyncClient,
    store: Store,
    description: str,
    query: str,
    content_type: str,
    body: bytes,
) -> None:
    uuid = new_uuid()
    uid = f"set-{uuid[:10]}"
    resp = await http.get(f"/setuid?{query}&uid={uid}", headers=visitor(uuid))
    assert resp.status_code == 200, description
    assert resp.headers["content-type"] == content_type and resp.content == body
    assert resp.headers["content-length"] == str(len(body))
    assert resp.headers["set-cookie"].startswith(f"uuid={uuid}.")
    dpid = 802 if "framer" in query else 801
    assert (await stored_mappings(store, uuid, 1))[dpid].uid == uid
    assert await store.lookup(dpid, [uid], today()) == {uid: uuid}


async def test_setuid_empty_uid_deletes_the_mapping(http: httpx.AsyncClient, store: Store) -> None:
    uuid = new_uuid()
    for dpid, name in ((801, "acme"), (802, "framer")):
        await http.get(f"/setuid?bidder={name}&uid=del-{dpid}-{uuid[:6]}", headers=visitor(uuid))
    await stored_mappings(store, uuid, 2)
    resp = await http.get("/setuid?bidder=ACME&uid=&f=i", headers=visitor(uuid))
    assert resp.status_code == 200 and resp.content == GIF
    assert set(await stored_mappings(store, uuid, 1)) == {802}
    assert await store.lookup(801, [f"del-801-{uuid[:6]}"], today()) == {}
    again = await http.get("/setuid?bidder=acme", headers=visitor(uuid))  # nothing left
    assert again.status_code == 200


async def test_setuid_clear_from_a_new_browser_is_not_bounced(http: httpx.AsyncClient) -> None:
    """An empty uid from a browser without our cookie clears nothing (nothing is
    stored for a fresh uuid): answered at once, no bounce (SPEC §3: only a request
    that would store something is bounced)."""
    resp = await http.get("/setuid?bidder=acme&uid=&f=i")
    assert resp.status_code == 200 and resp.content == GIF
    assert "x-error" not in resp.headers and "location" not in resp.headers


async def test_setuid_without_the_visitor_cookie_stores_nothing(
    http: httpx.AsyncClient, store: Store
) -> None:
    """The cookie bounce, as /ibs's: a browser that came without our cookie gets one and
    comes back; still without it, nothing is stored, under any uuid (the follow-up's own
    fresh one is never shown): the service's applied writes say so (tests/writes.py)."""
    uid = f"nocookie-{new_uuid()[:10]}"
    before = await settled(http, KEY)
    bounce = await http.get(f"/setuid?bidder=acme&uid={uid}&f=i")
    assert bounce.status_code == 302
    assert bounce.headers["location"] == f"/setuid?bidder=acme&uid={uid}&f=i&d_bounce=1"
    resp = await http.get(bounce.headers["location"])
    assert resp.status_code == 200 and resp.content == GIF
    assert resp.headers["x-error"] == "172"
    assert await written_since(http, KEY, before) == NOTHING
    assert await store.lookup(801, [uid], today()) == {}


# --------------------------------------------------------------------------- /getuids


async def test_getuids(http: httpx.AsyncClient, store: Store) -> None:
    uuid = new_uuid()
    assert (await http.get("/getuids", headers=visitor(uuid))).json() == {}
    for name in ("ACME", "framer"):
        await http.get(f"/setuid?bidder={name}&uid={name}-{uuid[:6]}", headers=visitor(uuid))
    await stored_mappings(store, uuid, 2)
    resp = await http.get("/getuids", headers={**visitor(uuid), "origin": ORIGIN})
    assert resp.status_code == 200
    assert resp.json() == {
        "buyeruids": {"Acme": f"ACME-{uuid[:6]}", "framer": f"framer-{uuid[:6]}"}
    }
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    assert (await http.get("/getuids")).json() == {}
    assert (await http.get("/getuids", headers=OPTED_OUT)).json() == {}


CORS_HEADERS = ("access-control-allow-origin", "access-control-allow-credentials")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (ORIGIN, True),
        ("https://other.test:8443", True),
        (OTHER_ORIGIN, False),
        ("http://publisher.test:8080", False),  # another port is another origin
        ("https://publisher.test", False),  # another scheme too
        ("http://sub.publisher.test", False),
        ("http://publisher.test.evil.test", False),
        ("null", False),  # a sandboxed iframe, a data: URL, a redirect across sites
        (None, False),
    ],
)
async def test_getuids_cors_only_for_configured_origins(
    http: httpx.AsyncClient, store: Store, origin: str | None, allowed: bool
) -> None:
    """Credentialed CORS on /getuids only for [prebid] cors_origins: a page of any other
    origin cannot read the visitor's uids (the browser refuses it the answer)."""
    uuid = new_uuid()
    await http.get(f"/setuid?bidder=acme&uid=u-{uuid[:6]}", headers=visitor(uuid))
    await stored_mappings(store, uuid, 1)
    sent = {"origin": origin} if origin else {}
    for request in (
        http.get("/getuids", headers={**visitor(uuid), **sent}),
        http.get("/getuids", headers={**OPTED_OUT, **sent}),
        http.head("/getuids", headers={**visitor(uuid), **sent}),
    ):
        resp = await request
        assert resp.status_code == 200
        if allowed:
            assert resp.headers["access-control-allow-origin"] == origin
            assert resp.headers["access-control-allow-credentials"] == "true"
        else:
            assert not any(h in resp.headers for h in CORS_HEADERS), resp.headers
        assert "origin" in resp.headers["vary"].lower()
    # The answer itself is the same: it is the browser that withholds it.
    answer = await http.get("/getuids", headers={**visitor(uuid), **sent})
    assert answer.json() == {"buyeruids": {"Acme": f"u-{uuid[:6]}"}}
    preflight = await http.options(
        "/getuids",
        headers={
            **sent,
            "access-control-request-method": "GET",
            "access-control-request-headers": "x-requested-with",
        },
    )
    assert preflight.status_code == 204
    if allowed:
        assert preflight.headers["access-control-allow-origin"] == origin
        assert preflight.headers["access-control-allow-credentials"] == "true"
        assert "GET" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "x-requested-with"
    else:
        assert not any(h.startswith("access-control-") for h in preflight.headers)


async def test_json_answers_still_echo_any_origin(http: httpx.AsyncClient) -> None:
    """/cookie_sync and JSON /event serve publishers' pages: any origin, credentialed."""
    headers = {**visitor(), "origin": OTHER_ORIGIN}
    answers = [
        await http.post("/cookie_sync", json={"bidders": ["acme"]}, headers=headers),
        await http.get("/event?d_rtbd=json&c_x=1", headers=headers),
        await http.options(
            "/cookie_sync",
            headers={"origin": OTHER_ORIGIN, "access-control-request-method": "POST"},
        ),
    ]
    for resp in answers:
        assert resp.status_code in (200, 204), resp.text
        assert resp.headers["access-control-allow-origin"] == OTHER_ORIGIN
        assert resp.headers["access-control-allow-credentials"] == "true"


async def test_prebid_metrics(http: httpx.AsyncClient) -> None:
    uuid = new_uuid()
    await http.post("/cookie_sync", json={"bidders": ["acme"]}, headers=visitor(uuid))
    await http.post(
        "/cookie_sync",
        json={
            "bidders": ["framer"],
            "filterSettings": {"iframe": {"bidders": "*", "filter": "exclude"}},
        },
    )
    await http.post("/cookie_sync", content=b"{")
    await http.get(f"/setuid?bidder=acme&uid=m-{uuid[:6]}", headers=visitor(uuid))
    await http.get("/setuid?bidder=acme&uid=", headers=visitor(uuid))
    await http.get("/setuid?bidder=zzz&uid=1", headers=visitor(uuid))
    text = (await http.get("/metrics", headers=OPS)).text
    for line in (
        'pixelsync_cookie_sync_requests_total{status="ok"}',
        'pixelsync_cookie_sync_requests_total{status="bad_request"}',
        'pixelsync_syncer_requests_total{status="ok",syncer="Acme"}',
        'pixelsync_syncer_requests_total{status="rejected_by_filter",syncer="framer"}',
        'pixelsync_setuid_requests_total{status="ok"}',
        'pixelsync_setuid_requests_total{status="syncer_unknown"}',
        'pixelsync_syncer_sets_total{status="ok",syncer="Acme"}',
        'pixelsync_syncer_sets_total{status="cleared",syncer="Acme"}',
        'pixelsync_syncs_total{dpid="801",stage="instructed"}',
        'pixelsync_syncs_total{dpid="801",stage="completed"}',
    ):
        assert line in text, line


# --------------------------------------------------------------------------- forty bidders


async def test_forty_bidders_all_stay_retrievable(services: Services, store: Store) -> None:
    """Where a uids cookie holds about 30 ids, the match table keeps every one: forty
    bidders synced through their callbacks, all answered by /getuids, none due again."""
    partners = "".join(
        f'[[partners]]\ndpid = {9000 + i}\nname = "bidder{i:02d}"\n'
        f'sync_url = "https://b{i}.test/s?redir=${{CALLBACK}}"\n\n'
        for i in range(40)
    )
    svc = services.start(Config(partners, keys=(KEY,)))
    uuid = new_uuid()
    uids = {f"bidder{i:02d}": f"{i:02d}-{'x' * 34}" for i in range(40)}  # 36 characters
    async with svc.client() as http:
        answer = (await http.post("/cookie_sync", json={}, headers=visitor(uuid))).json()
        assert len(answer["bidder_status"]) == 40
        for sync in answer["bidder_status"]:
            callback = parse_qs(urlsplit(sync["usersync"]["url"]).query)["redir"][0]
            back = callback.replace("$UID", uids[sync["bidder"]])
            assert (await http.get(back, headers=visitor(uuid))).status_code == 200
        await stored_mappings(store, uuid, 40)
        got = (await http.get("/getuids", headers=visitor(uuid))).json()
        assert got == {"buyeruids": uids}
        again = (await http.post("/cookie_sync", json={}, headers=visitor(uuid))).json()
        assert again == {"status": "ok", "bidder_status": []}


async def test_cookie_sync_debug_shows_the_decoded_consent(http: httpx.AsyncClient) -> None:
    """With debug, the TCF string as read: the host's vendor (2) and the bidders'
    (3, 284), their consent, legitimate interest and publisher restrictions. Acme's
    vendor 3 is consented but restricted for purpose 1: not synced."""
    consent = tcf(
        max_vendor=3,
        bitfield="011",
        special_features=1 << 11,
        purposes_li=0b0111 << 20,
        publisher_cc="FR",
        li_max_vendor=3,
        li_bitfield="001",
        restrictions=[(1, 0, [(3, 3)]), (7, 1, [(1, 500)])],
    )
    fields: dict[str, Any] = {"bidders": ["acme", "both"], "gdpr": 1, "gdpr_consent": consent}
    resp = await http.post("/cookie_sync", json={**fields, "debug": True})
    answer = resp.json()
    assert resp.status_code == 200 and names(answer) == []
    assert answer["debug"] == [
        {"bidder": "acme", "error": "Rejected by privacy"},
        {"bidder": "both", "error": "Rejected by privacy"},
    ]
    tcf_debug = answer["privacy"]["tcf"]
    assert tcf_debug["publisher_cc"] == "FR" and tcf_debug["special_features"] == [1]
    assert tcf_debug["purposes"] == [1] and tcf_debug["purposes_li"] == [2, 3, 4]
    assert tcf_debug["purpose_one_treatment"] is False
    assert tcf_debug["publisher_restrictions"] == [
        {"purpose": 1, "type": "not_allowed", "ranges": 1},
        {"purpose": 7, "type": "require_consent", "ranges": 1},
    ]
    assert set(tcf_debug["vendors"]) == {"2", "3", "284"}
    assert tcf_debug["vendors"]["3"] == {
        "consent": True,
        "legitimate_interest": True,
        "restrictions": [
            {"purpose": 1, "type": "not_allowed"},
            {"purpose": 7, "type": "require_consent"},
        ],
        "purpose_one_allowed": False,
    }
    assert tcf_debug["vendors"]["2"]["purpose_one_allowed"] is True
    # Without debug, or without a TCF string read: no privacy member.
    quiet = await http.post("/cookie_sync", json=fields)
    assert "privacy" not in quiet.json()
    outside = await http.post("/cookie_sync", json={"bidders": ["acme"], "gdpr": 0, "debug": True})
    assert "privacy" not in outside.json() and names(outside.json()) == [("acme", "redirect")]

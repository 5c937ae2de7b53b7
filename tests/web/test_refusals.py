"""SPEC §13's refusal order, the same on every browser endpoint: method (405) → size
limits (414/413) → undecodable (311) → opted out (171, NOTARGET kept) → consent
(313/315/314) → the endpoint's own checks (320-323) → cookies blocked (172).

One table: each case is sent to every browser endpoint, and each must give the
refusal the order says, in its own shape (the GIF, the sync page, JSON, or Prebid
Server's plain text and status codes, SPEC §15)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest

from service.identity import CookieSigner, new_uuid
from tests.configs import api_key, entry
from tests.services import Config, Service
from tests.test_consent import TRAFFECTIVE

KEY = "refusals-test-key"
MAX_QUERY = 8192  # the default
OPTED_OUT = "uuid=NOTARGET"
ADMIN_TOKEN = "refusals-admin-token"


@pytest.fixture(scope="module")
def service_config() -> Config:
    # Host vendor 2 and partner vendor 3 are consented in TRAFFECTIVE; 4 is not.
    partners = entry(
        "partners",
        dpid=1234,
        name="consented",
        gvl_id=3,
        sync_url="https://sync.consented.test/s?u=${DD_UUID}",
    )
    partners += entry("partners", dpid=55, name="notconsented", gvl_id=4)
    toml = f"""
[server]
vendor_id = 2
data_dir = "data"

[limits]
max_query_bytes = {MAX_QUERY}
{partners}
{api_key("admin", ADMIN_TOKEN, "admin")}
"""
    return Config(toml, keys=(KEY,))


def known() -> str:
    return f"uuid={CookieSigner([KEY]).sign(new_uuid())}"


# How each endpoint is asked: its path, the parameters it needs to get as far as its own
# checks (after the case's: the first value of a parameter counts), and whether its
# refusals carry X-Error (Prebid Server's endpoints answer in their own shape).
@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    needs: str = ""
    x_error: bool = True


ENDPOINTS = [
    Endpoint("event", "/event"),
    Endpoint("ibs", "/ibs", "dpid=1234&dpuuid=u1"),
    Endpoint("dest5", "/dest5.html"),
    Endpoint("chain", "/sync/chain", "dpids=1234"),
    Endpoint("fire", "/fire/not-a-token"),  # the case's parameters replace the token
    Endpoint("ack", "/ack/not-a-token"),
    Endpoint("demoptout", "/demoptout.jpg"),
    Endpoint("setuid", "/setuid", "bidder=consented&uid=x", x_error=False),
    Endpoint("getuids", "/getuids", x_error=False),
    Endpoint("cookie_sync", "/cookie_sync", x_error=False),
]
GIFS = ("event", "ibs", "dest5", "chain", "fire", "ack")


@dataclass(frozen=True)
class Case:
    """A request, and the answer every endpoint gives it: (status, X-Error code)."""

    description: str
    query: str = ""  # before the endpoint's own parameters
    body: str = "{}"  # /cookie_sync's
    cookie: str | None = None  # None: a known visitor; "": no cookie
    method: str | None = None
    expected: dict[str, tuple[int, int | None]] | None = None


def every(
    status: int, code: int | None, **others: tuple[int, int | None]
) -> dict[str, tuple[int, int | None]]:
    """The same answer on the image endpoints, and the others' own where they differ."""
    return {**dict.fromkeys(GIFS, (status, code)), **others}


BAD_PERCENT = "x=%zz"
CONSENT_GARBAGE = "gdpr=1&gdpr_consent=garbage!"
OWN_CHECKS_FAIL = "dpid=999&d_cid=999%01x&bidder=nobody"  # an unknown dpid, bidder
ANYWHERE = every(405, None, **{e: (405, None) for e in ("demoptout", "setuid", "getuids")})
# /demoptout.jpg ignores its query: a mangled or long one never stops an opt-out.
TOO_LONG = every(414, 311, demoptout=(200, None), setuid=(414, None), getuids=(414, None))
# An opted-out browser: 171 with the image, 401 from /setuid, no uids from /getuids,
# and /demoptout.jpg opts it out again.
OPTED_OUT_ANSWERS = every(200, 171, demoptout=(200, None), setuid=(401, None), getuids=(200, None))
# Consent refused: the endpoints that take no consent go on to their own checks.
NO_CONSENT = {"fire": (400, 323), "ack": (400, 323), "demoptout": (200, None)}
CASES = [
    Case(
        "a method no endpoint takes",
        method="PUT",
        expected={**ANYWHERE, "cookie_sync": (405, None)},
    ),
    Case(
        "parameters over the size limit, from an opted-out visitor",
        query="c_x=" + "a" * MAX_QUERY,
        cookie=OPTED_OUT,
        expected={**TOO_LONG, "cookie_sync": (414, None)},
    ),
    Case(
        "bad percent-encoding, from an opted-out visitor: decoding comes first",
        query=BAD_PERCENT,
        body="{",
        cookie=OPTED_OUT,
        expected=every(
            400,
            311,
            demoptout=(200, None),  # its parameters change nothing: the opt-out holds
            setuid=(400, None),
            getuids=(200, None),  # it reads no parameters: an opted-out browser has none
            cookie_sync=(400, None),
        ),
    ),
    Case(
        "opted out, GDPR applies and no consent string: 171 before any consent check",
        query="gdpr=1",
        body='{"gdpr": 1}',
        cookie=OPTED_OUT,
        # Prebid Server refuses a GDPR request without consent while reading it
        expected={**OPTED_OUT_ANSWERS, "cookie_sync": (400, None)},
    ),
    Case(
        "opted out, consent string unparsable",
        query=CONSENT_GARBAGE,
        body='{"gdpr": 1, "gdpr_consent": "garbage!"}',
        cookie=OPTED_OUT,
        expected={**OPTED_OUT_ANSWERS, "cookie_sync": (401, None)},
    ),
    Case(
        "opted out, and the endpoint's own checks would fail",
        query=OWN_CHECKS_FAIL + "&t=forged",
        cookie=OPTED_OUT,
        expected={**OPTED_OUT_ANSWERS, "cookie_sync": (401, None)},
    ),
    Case(
        "consent string missing, and the endpoint's own checks would fail",
        query="gdpr=1&" + OWN_CHECKS_FAIL,
        body='{"gdpr": 1}',
        expected=every(
            200,
            315,
            **NO_CONSENT,
            setuid=(400, None),  # "gdpr_consent is required when gdpr=1"
            getuids=(200, None),
            cookie_sync=(400, None),
        ),
    ),
    Case(
        "consent string unparsable, and the endpoint's own checks would fail",
        query=CONSENT_GARBAGE + "&" + OWN_CHECKS_FAIL,
        body='{"gdpr": 1, "gdpr_consent": "garbage!"}',
        expected=every(
            400,
            313,
            **NO_CONSENT,
            setuid=(400, None),  # "gdpr_consent was invalid"
            getuids=(200, None),
            cookie_sync=(200, None),  # answered with no syncs, as Prebid Server does
        ),
    ),
]


def _request(endpoint: Endpoint, case: Case) -> tuple[str, str, bytes | None]:
    if endpoint.name == "cookie_sync":  # the request is its body; the query only counts
        url = f"{endpoint.path}?{case.query}" if case.query else endpoint.path
        return case.method or "POST", url, case.body.encode()
    if endpoint.name in ("fire", "ack"):  # the parameters are the token, in the path
        return case.method or "GET", endpoint.path.replace("not-a-token", case.query), None
    query = "&".join(p for p in (case.query, endpoint.needs) if p)
    return case.method or "GET", f"{endpoint.path}?{query}" if query else endpoint.path, None


@pytest.mark.parametrize("case", CASES, ids=[c.description for c in CASES])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
async def test_every_endpoint_refuses_in_the_same_order(
    http: httpx.AsyncClient, endpoint: Endpoint, case: Case
) -> None:
    assert case.expected is not None
    status, code = case.expected[endpoint.name]
    method, url, body = _request(endpoint, case)
    cookie = known() if case.cookie is None else case.cookie
    resp = await http.request(method, url, content=body, headers={"cookie": cookie})
    assert resp.status_code == status, resp.text[:200]
    assert resp.headers.get("x-error") == (str(code) if code and endpoint.x_error else None)
    assert "location" not in resp.headers  # a refusal sends the browser nowhere
    set_cookie = resp.headers.get("set-cookie", "")
    if cookie == OPTED_OUT and status != 405:
        # the opt-out is kept wherever the browser reaches the opening's opt-out step
        assert set_cookie.startswith("uuid=NOTARGET;") or status in (400, 414), set_cookie
        assert "uuid=" not in set_cookie or set_cookie.startswith("uuid=NOTARGET;")
    if code in (313, 314, 315):
        assert "uuid=" not in set_cookie  # no cookie where consent is wanting (SPEC §12)
    if endpoint.name in ("fire", "ack", "setuid", "cookie_sync") and cookie != OPTED_OUT:
        assert not set_cookie  # a pixel's load, Prebid Server's answers: never a cookie


async def test_consent_for_the_partner_comes_before_its_uid_check(
    http: httpx.AsyncClient,
) -> None:
    """/ibs: a partner without consent gets 314 even when its uid is also invalid."""
    refused = await http.get(
        f"/ibs?dpid=55&dpuuid=a%20b&gdpr=1&gdpr_consent={TRAFFECTIVE}",
        headers={"cookie": known()},
    )
    assert (refused.status_code, refused.headers["x-error"]) == (200, "314")
    invalid = await http.get(
        f"/ibs?dpid=1234&dpuuid=a%20b&gdpr=1&gdpr_consent={TRAFFECTIVE}",
        headers={"cookie": known()},
    )
    assert (invalid.status_code, invalid.headers["x-error"]) == (400, "322")


async def test_cookies_blocked_comes_last(http: httpx.AsyncClient) -> None:
    """A browser back from the cookie bounce still without a cookie: 172, but only once
    every other check passed."""
    blocked = await http.get("/ibs?dpid=1234&dpuuid=u1&d_bounce=1")
    assert (blocked.status_code, blocked.headers["x-error"]) == (200, "172")
    unknown = await http.get("/ibs?dpid=999&dpuuid=u1&d_bounce=1")
    assert (unknown.status_code, unknown.headers["x-error"]) == (400, "320")


HUGE = "9" * 4400  # past the 4,300 digits that make int() raise
HUGE_INTEGERS = [
    ("GET", f"/ibs?dpid={HUGE}&dpuuid=u1", None, 400, "320"),
    ("GET", f"/event?d_cid={HUGE}%01x", None, 400, "311"),
    ("GET", f"/event?d_cts={HUGE}", None, 400, "311"),
    ("GET", f"/event?d_sid={HUGE}", None, 400, "311"),
    ("GET", f"/sync/chain?dpids={HUGE}", None, 400, "311"),
    ("POST", "/cookie_sync", f'{{"gpp_sid": "{HUGE}"}}', 400, None),
    ("POST", "/cookie_sync", f'{{"gpp_sid": [{HUGE}]}}', 400, None),
    ("GET", f"/v1/partners/{HUGE}/users/u1", None, 404, None),
]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code"),
    HUGE_INTEGERS,
    ids=[h[1][:24] for h in HUGE_INTEGERS],
)
async def test_huge_integers_are_refused_as_bad_input(
    svc: Service, method: str, url: str, body: str | None, status: int, code: str | None
) -> None:
    # The default size limit, which lets integers of 4,400 digits through to the parsers.
    async with svc.client() as client:
        resp = await client.request(
            method,
            url,
            content=body,
            headers={"cookie": known(), "authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    assert resp.status_code == status, resp.text[:200]
    assert resp.headers.get("x-error") == code

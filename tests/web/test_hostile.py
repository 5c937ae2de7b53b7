"""The hostile-input suite (issue 9), over real HTTP against a real service: reflected
XSS, CR/LF and header injection, cookie tampering and token replay, API-key scoping
and brute force, oversized and nested input, invalid UTF-8 and percent-encoding.
Every payload is asserted. (The open-redirect payloads are in tests/test_redirects.py;
the hostile names of the dashboard's configuration in tests/web/test_dashboard.py.)

Payloads httpx will not send (raw CR/LF, bytes that are not ASCII in the request
line or in a header) go through `raw`, a plain socket."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import socket
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from urllib.parse import quote, urlsplit

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer

from service.config import ApiKey
from service.identity import OPT_OUT, CookieSigner, new_uuid, today
from service.store import Store
from service.web.api import ApiKeys
from tests.configs import api_key, sha256
from tests.conftest import signer_days_ago
from tests.services import Config, Service
from tests.test_consent import tcf

KEY = "hostile-new"
TOKENS = {"admin": "h-admin", "reader": "h-reader", "acme": "h-acme"}
PARTNER, OTHER, DESTINATION = 4321, 4322, 77
GIF_TYPE = "image/gif"
CSP = "default-src 'none'; img-src *; frame-src *"
PIXEL = 'mappings = { "701" = "seg" }, url = "https://px.acme.test/p?s=%ALIAS%"'
# Every value a browser or partner controls that reaches a partner's sync URL.
SYNC_URL = (
    "https://sync.acme.test/m?proto=%http_proto%&u=${DD_UUID}&p=${DP_UUID}&c=${GDPR_CONSENT}"
    "&us=${US_PRIVACY}&g=${GPP}&s=${GPP_SID}&cb=${CALLBACK}"
)


@pytest.fixture(scope="module")
def service_config() -> Config:
    toml = f"""
traits = [{{ sid = 700, name = "x", rule = 'c_x == "1"' }}]
segments = [{{ sid = 701, name = "xs", rule = "700T" }}]
partners = [
  {{ dpid = {PARTNER}, name = "acme", redirect_domains = ["acme.test"], sync_url = "{SYNC_URL}" }},
  {{ dpid = {OTHER}, name = "other", sync_url = "https://other.test/m?u=${{DD_UUID}}" }},
]
destinations = [
  {{ id = {DESTINATION}, name = "p", type = "url", partner = {PARTNER}, {PIXEL} }},
]

[server]
trusted_proxies = ["127.0.0.1"]
{api_key("admin", TOKENS["admin"], "admin")}
{api_key("reader", TOKENS["reader"], "read")}
{api_key("acme", TOKENS["acme"], "read", partner=PARTNER)}"""
    return Config(toml, keys=(KEY, "hostile-old"))


def cookie(uuid: str, extra: str = "") -> dict[str, str]:
    return {"cookie": f"uuid={CookieSigner([KEY]).sign(uuid)}{extra}"}


def auth(who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {TOKENS.get(who, who)}"}


class RawAnswer:
    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1]) if lines and lines[0] else 0
        self.headers = [tuple(v.strip() for v in line.split(b":", 1)) for line in lines[1:]]

    def names(self) -> set[bytes]:
        return {h[0].lower() for h in self.headers}

    def get(self, name: bytes) -> list[bytes]:
        return [h[1] for h in self.headers if h[0].lower() == name and len(h) == 2]


def raw(svc: Service, target: bytes, headers: bytes = b"", method: bytes = b"GET") -> RawAnswer:
    """One request as the bytes given, on its own connection: the answer, or status 0
    when the server closed the connection without one."""
    host, port = urlsplit(svc.url).hostname or "", urlsplit(svc.url).port or 80
    request = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(request + headers + b"\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return RawAnswer(b"".join(chunks))


def assert_refused(answer: RawAnswer, bad: bytes, code: int = 311) -> None:
    """Raw bytes that are not ASCII (or NUL) in the request line never reach the
    service: uvicorn's parser answers its own 400. Everything else is ours: 311."""
    if bad in RAW_BYTES and answer.get(b"content-type") == [b"text/plain; charset=utf-8"]:
        assert answer.status == 400 and answer.body == b"Invalid HTTP request received."
    else:
        assert_gif_error(answer, code)


def assert_gif_error(resp: httpx.Response | RawAnswer, code: int, status: int = 400) -> None:
    if isinstance(resp, RawAnswer):
        assert (resp.status, resp.get(b"x-error")) == (status, [str(code).encode()])
        assert resp.get(b"content-type") == [GIF_TYPE.encode()] and len(resp.body) == 43
    else:
        assert (resp.status_code, resp.headers.get("x-error")) == (status, str(code))
        assert resp.headers["content-type"] == GIF_TYPE and len(resp.content) == 43


# --- reflected XSS -------------------------------------------------------------------

XSS = [
    '"><script>alert(1)</script>',
    "'><img src=x onerror=alert(1)>",
    "<svg/onload=alert(1)>",
    '" onmouseover="alert(1)',
    "javascript:alert(1)",
    "</title><script>alert(1)</script>",
    "<iframe srcdoc='<script>alert(1)</script>'>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "\u2028<script>alert(1)</script>",
    "<scr<script>ipt>alert(1)</script>",
    '"><body onload=alert(1)>',
    "%3Cscript%3Ealert(1)%3C/script%3E",
]
CONSENT_PARAMS = ["gdpr_consent", "us_privacy", "gpp", "gpp_sid"]
ALLOWED_TAGS = {"html", "head", "meta", "title", "body", "img", "iframe"}
ALLOWED_ATTRS = {"src", "width", "height", "alt", "frameborder", "charset"}


class Structure(HTMLParser):
    """Every tag and attribute of a page, to prove that a payload added none."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs.update(name for name, _ in attrs)
        self.srcs += [value or "" for name, value in attrs if name == "src"]


def assert_clean_page(resp: httpx.Response, payload: str) -> Structure:
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert resp.headers["content-security-policy"] == CSP
    assert resp.headers["x-content-type-options"] == "nosniff"
    if any(c in payload for c in "<>\"'"):
        assert payload not in resp.text
    assert "<script" not in resp.text.lower()
    page = Structure()
    page.feed(resp.text)
    assert page.tags <= ALLOWED_TAGS and page.attrs <= ALLOWED_ATTRS, (page.tags, page.attrs)
    assert all(src.startswith(("http://", "https://")) for src in page.srcs)
    return page


@pytest.mark.parametrize("param", CONSENT_PARAMS)
@pytest.mark.parametrize("payload", XSS)
async def test_xss_through_consent_parameters_in_dest5(
    http: httpx.AsyncClient, param: str, payload: str
) -> None:
    """Consent values reach the partner's sync URL in an <img src>: encoded, escaped. A
    gpp string is decoded (SPEC §12): one that is not base64url is refused (313)."""
    resp = await http.get("/dest5.html", params={"gdpr": "0", param: payload})
    if param == "gpp":
        assert (resp.status_code, resp.headers["x-error"]) == (400, "313")
        assert payload not in resp.text and "<script" not in resp.text.lower()
        return
    assert resp.status_code == 200
    page = assert_clean_page(resp, payload)
    assert any("sync.acme.test" in src for src in page.srcs)


@pytest.mark.parametrize("payload", [p for p in XSS if p.isascii()])  # uids are ASCII
async def test_xss_through_a_partner_uid_in_dest5(
    http: httpx.AsyncClient, store: Store, payload: str
) -> None:
    """A partner stores any printable uid, and ${DP_UUID} puts it in the next sync URL."""
    uid = payload.replace(" ", "+")[:256]
    uuid = new_uuid()
    store.put_mapping(uuid, PARTNER, uid, today() - 30)  # synced long ago: due again
    await store.drain()
    resp = await http.get("/dest5.html", headers=cookie(uuid))
    page = assert_clean_page(resp, uid)
    assert f"p={quote(uid, safe='')}" in " ".join(page.srcs)


@pytest.mark.parametrize("payload", [p for p in XSS if p.isascii()])  # a header's
async def test_xss_through_x_forwarded_proto(http: httpx.AsyncClient, payload: str) -> None:
    """%http_proto% comes from the scheme; a trusted proxy's header sets it. Only
    http or https ever come out."""
    resp = await http.get("/dest5.html", headers={"x-forwarded-proto": payload})
    page = assert_clean_page(resp, payload)
    ours = [s for s in page.srcs if "sync.acme.test" in s]
    assert ours and all(re.search(r"\?proto=https?&", s) for s in ours)


JSONP_HOSTILE = [
    "alert(1);//",
    "<script>",
    "a b",
    "a\nb",
    "a(",
    'x"',
    "1abc",
    "a-b",
    "</script><script>alert(1)</script>",
    "a;alert(1)",
    "a" * 65,
    "\u0430lert",
    "a\u2028b",
    "",
    "a\r\nSet-Cookie: x=1",
]


@pytest.mark.parametrize("name", JSONP_HOSTILE)
async def test_jsonp_callbacks_are_refused_and_never_echoed(
    http: httpx.AsyncClient, name: str
) -> None:
    resp = await http.get("/event", params={"d_cb": name, "d_rtbd": "json"})
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.json()["errors"][0]["code"] == 311
    if name:
        assert name not in resp.text and quote(name) not in resp.text


@pytest.mark.parametrize("name", ["cb", "$", "_x.y$1", "jQuery1234_5678", "a" * 64])
async def test_jsonp_callbacks_that_pass(http: httpx.AsyncClient, name: str) -> None:
    resp = await http.get("/event", params={"d_cb": name})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/javascript"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.text.startswith(f"/**/{name}(") and resp.text.endswith(");")


@pytest.mark.parametrize("payload", XSS)
async def test_xss_in_the_dashboard_query(http: httpx.AsyncClient, payload: str) -> None:
    for params, headers in (({"token": payload}, {}), ({"x": payload}, auth("admin"))):
        resp = await http.get("/dashboard", params=params, headers=headers)
        assert resp.status_code in (200, 401)
        assert resp.headers["content-type"].startswith("text/html")
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in resp.headers["content-security-policy"]
        if any(c in payload for c in "<>\"'"):
            assert payload not in resp.text


# --- CR/LF and header injection ---------------------------------------------------

CRLF = [
    "%0d%0aX-Injected:%201",
    "%0D%0AX-Injected:%201",
    "%0aX-Injected:%201",
    "%0dX-Injected:%201",
    "%E5%98%8A%E5%98%8DX-Injected:%201",  # U+560A U+560D: CR LF in their low bytes
    "%C4%8D%C4%8AX-Injected:%201",
    "%00X-Injected:%201",
    "%0d%0a%0d%0a<script>alert(1)</script>",
    "%23%0d%0aX-Injected:%201",
    "%5cr%5cnX-Injected:%201",
]


def assert_not_injected(resp: httpx.Response) -> None:
    assert "x-injected" not in resp.headers
    assert resp.status_code in (200, 302, 400)
    for value in resp.headers.values():
        assert "\r" not in value and "\n" not in value


@pytest.mark.parametrize("payload", CRLF)
async def test_crlf_through_redir(http: httpx.AsyncClient, payload: str) -> None:
    uuid = new_uuid()
    for redir in (f"https://acme.test/{payload}", f"https://acme.test/?x={payload}"):
        target = f"/ibs?dpid={PARTNER}&dpuuid=u1&redir={quote(redir, safe='')}"
        resp = await http.get(target, headers=cookie(uuid))
        assert_not_injected(resp)
        if resp.status_code == 302:  # the encoded bytes stay encoded in the Location
            assert resp.headers["location"].startswith("https://acme.test/")
        else:
            assert_gif_error(resp, 321)
        raw_form = await http.get(
            f"/ibs:dpid={PARTNER}&dpuuid=u1&redir={redir}", headers=cookie(uuid)
        )
        assert_not_injected(raw_form)


@pytest.mark.parametrize("payload", CRLF)
async def test_crlf_through_uids_callbacks_and_consent(
    http: httpx.AsyncClient, payload: str
) -> None:
    uuid = new_uuid()
    resp = await http.get(f"/ibs?dpid={PARTNER}&dpuuid=a{payload}", headers=cookie(uuid))
    assert_not_injected(resp)
    assert resp.status_code == 400 and resp.headers["x-error"] in ("311", "322")
    resp = await http.get(f"/event?d_cb=a{payload}")
    assert_not_injected(resp)
    assert resp.status_code == 400
    for param in CONSENT_PARAMS:
        # Into the partner's URL: the chain's Location, and the dest5 page.
        chain = await http.get(f"/sync/chain?dpids={PARTNER}&gdpr=0&{param}=a{payload}")
        assert_not_injected(chain)
        page = await http.get(f"/dest5.html?gdpr=0&{param}=a{payload}")
        assert_not_injected(page)
        assert "X-Injected: 1" not in page.text


@pytest.mark.parametrize("payload", CRLF)
async def test_crlf_through_cookies(http: httpx.AsyncClient, payload: str) -> None:
    for jar in (f"uuid={payload}", f"dextp={payload}", f"uuid=NOTARGET{payload}"):
        resp = await http.get("/event?d_rtbd=json", headers={"cookie": jar})
        assert_not_injected(resp)
        assert resp.status_code == 200 and "uuid" in resp.json()


RAW_HEADER_INJECTIONS = [
    b"Cookie: uuid=x\r\nX-Injected: 1",  # a second header line: a plain extra header
    b"Origin: https://a.test\rX-Injected: 1",
    b"Origin: https://a.test\nX-Injected: 1",
    b"Origin: https://a.test\x00X-Injected: 1",
    b"Origin: https://a.test\x7f\x01",
    b"Origin: https://\xff\xfe.test",
    b"X-Forwarded-Proto: https\rX-Injected: 1",
    b"X-Forwarded-For: 1.2.3.4\r\n X-Injected: 1",  # obsolete line folding
    b"Cookie: uuid=\r\nX-Injected: 1",
    b"Referer: https://a.test/\x00",
]


@pytest.mark.parametrize("header", RAW_HEADER_INJECTIONS)
def test_raw_header_injection(svc: Service, header: bytes) -> None:
    """Bare CR, LF, NUL and other bytes in request headers: the server refuses the
    request or it is answered; nothing comes back as a header of its own."""
    for target in (b"/event?d_rtbd=json", b"/dest5.html", b"/ibs?dpid=4321&dpuuid=u"):
        answer = raw(svc, target, header + b"\r\n")
        assert answer.status in (0, 200, 302, 400), answer.status
        assert b"x-injected" not in answer.names()
        for origin in answer.get(b"access-control-allow-origin"):
            assert b"\r" not in origin and b"\n" not in origin and b"\x00" not in origin


@pytest.mark.parametrize(
    "origin", ["null", "https://evil.test", "https://a.test, https://b.test", "*", "x" * 2000]
)
async def test_cors_echoes_only_the_origin_sent(http: httpx.AsyncClient, origin: str) -> None:
    resp = await http.get("/event?d_rtbd=json", headers={"origin": origin})
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == origin
    assert resp.headers["vary"] == "Origin"
    gif = await http.get("/event", headers={"origin": origin})
    assert "access-control-allow-origin" not in gif.headers  # a GIF is no JSON answer


# --- cookie tampering, token replay --------------------------------------------------


def tampered_cookies(uuid: str) -> list[str]:
    signed = CookieSigner([KEY]).sign(uuid)
    body, sig = signed.rsplit(".", 1)
    return [
        f"{body}.{sig[:-3]}AAA",  # modified signature
        f"{body}.{sig[::-1]}",
        # another uuid, same signature
        f"{uuid[:-1]}{'2' if uuid.endswith('1') else '1'}.{signed.split('.', 1)[1]}",
        CookieSigner(["someone-else"]).sign(uuid),  # another key
        signed[:-1],  # truncated
        signed[: len(uuid)],
        signed + "x",
        signed + "." + sig,
        uuid,  # unsigned
        signed.replace(".", "..", 1),
        signed + "x" * 8000,  # oversized
        "x" * 4000,
        "",
        "NOTARGET.x",  # NOTARGET variants: not the opt-out
        "notarget",
        '"NOTARGET"',
        "NOTARGET%20",
        "NOTARGE",
    ]


@pytest.mark.parametrize("index", range(len(tampered_cookies("0" * 38))))
async def test_tampered_cookies_count_as_absent(http: httpx.AsyncClient, index: int) -> None:
    uuid = new_uuid()
    value = tampered_cookies(uuid)[index]
    for path in ("/event?d_rtbd=json", "/dest5.html", "/sync/chain", "/demoptout.jpg?x=1"):
        resp = await http.get(path, headers={"cookie": f"uuid={value}"})
        assert resp.status_code in (200, 302), (path, resp.status_code)
        if path.startswith("/event"):
            assert resp.json()["uuid"] != uuid  # a new visitor, not the tampered one
            fresh = resp.headers["set-cookie"].split(";")[0].removeprefix("uuid=")
            assert CookieSigner([KEY]).verify(fresh) is not None
    ibs = await http.get(
        f"/ibs?dpid={PARTNER}&dpuuid=t{index}", headers={"cookie": f"uuid={value}"}
    )
    assert ibs.status_code == 302 and "d_bounce=1" in ibs.headers["location"]  # as absent


async def test_the_exact_opt_out_value_opts_out(http: httpx.AsyncClient) -> None:
    resp = await http.get("/event?d_rtbd=json", headers={"cookie": f"uuid={OPT_OUT}"})
    assert resp.json()["errors"][0]["code"] == 171 and "uuid" not in resp.json()


async def test_tampered_dashboard_sessions(http: httpx.AsyncClient) -> None:
    signed = URLSafeTimedSerializer([KEY], salt="pixelsync.dashboard").dumps(["admin", "x" * 16])
    foreign = URLSafeTimedSerializer(["other"], salt="pixelsync.dashboard").dumps(["admin", ""])
    for value in (signed, foreign, signed[:-2], "x" * 5000, '["admin"]', signed + "."):
        resp = await http.get("/dashboard", headers={"cookie": f"ps_dashboard={value}"})
        assert resp.status_code == 401


async def loss_counts(http: httpx.AsyncClient) -> dict[str, int]:
    doc = (await http.get("/v1/loss?window=15m", headers=auth("admin"))).json()
    row = next(d for d in doc["destinations"] if d["id"] == DESTINATION)
    return {k: row[k] for k in ("loaded", "confirmed")}


def replayed_tokens() -> list[tuple[str, str]]:
    """(path prefix, token): signed with a foreign secret, or expired (2 days old)."""
    out = []
    for key, days in (("foreign-secret", 0), (KEY, 2), ("hostile-old", 2)):
        for salt, doc, prefix in (
            ("pixelsync.fire", [DESTINATION, f"n{key}{days}", "https://acme.test/"], "/fire/"),
            ("pixelsync.ack", [DESTINATION, f"a{key}{days}"], "/ack/"),
            ("pixelsync.chain", {"d": [PARTNER], "c": {}}, "/sync/chain?t="),
        ):
            serializer = URLSafeTimedSerializer(key, salt=salt, signer=signer_days_ago(days))
            out.append((prefix, str(serializer.dumps(doc))))
    fire = URLSafeTimedSerializer(KEY, salt="pixelsync.ack").dumps([DESTINATION, "x", "y"])
    out.append(("/fire/", str(fire)))  # an ack token (another salt) as a fire token
    return out


async def test_replayed_tokens_are_323_and_count_nothing(http: httpx.AsyncClient) -> None:
    before = await loss_counts(http)
    for prefix, token in replayed_tokens():
        resp = await http.get(prefix + token)
        assert_gif_error(resp, 323)
        assert "location" not in resp.headers
    await asyncio.sleep(1.5)  # counters reach Redis within a second
    assert await loss_counts(http) == before


# --- API keys ---------------------------------------------------------------------


@pytest.fixture
async def two_partner_visitor(store: Store) -> str:
    uuid = new_uuid()
    store.put_mapping(uuid, PARTNER, f"mine-{uuid[:8]}", today())
    store.put_mapping(uuid, OTHER, f"theirs-{uuid[:8]}", today())
    await store.drain()
    return uuid


async def test_partner_keys_see_their_partner_only(
    http: httpx.AsyncClient, two_partner_visitor: str
) -> None:
    uuid = two_partner_visitor
    mine = (await http.get(f"/v1/users/{uuid}", headers=auth("acme"))).json()
    assert mine["ids"] == {str(PARTNER): f"mine-{uuid[:8]}"}
    assert mine["traits"] == [] and mine["segments"] == []
    for method, path, body in (
        ("GET", f"/v1/partners/{OTHER}/users/theirs-{uuid[:8]}", None),
        ("POST", f"/v1/partners/{OTHER}/lookup", {"dpuuids": [f"theirs-{uuid[:8]}"]}),
    ):
        resp = await http.request(method, path, json=body, headers=auth("acme"))
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
        assert "theirs" not in resp.text
    rates = (await http.get("/v1/match-rates", headers=auth("acme"))).json()
    assert [p["dpid"] for p in rates["partners"]] == [PARTNER]
    loss = (await http.get("/v1/loss", headers=auth("acme"))).json()
    assert [p["dpid"] for p in loss["partners"]] == [PARTNER]
    assert {d["id"] for d in loss["destinations"]} <= {DESTINATION}


async def test_read_keys_cannot_write(http: httpx.AsyncClient, two_partner_visitor: str) -> None:
    for who in ("reader", "acme"):
        resp = await http.delete(f"/v1/users/{two_partner_visitor}", headers=auth(who))
        assert resp.status_code == 403
    resp = await http.get(f"/v1/users/{two_partner_visitor}", headers=auth("admin"))
    assert len(resp.json()["ids"]) == 2  # nothing was erased
    assert (await http.get("/dashboard", headers=auth("reader"))).status_code == 401


API_GETS = [
    "/v1/users/1",
    "/v1/partners/4321/users/x",
    "/v1/match-rates",
    "/v1/loss",
    "/v1/taxonomy",
]
WRONG: list[dict[str, str | bytes]] = [
    {},
    {"authorization": ""},
    {"authorization": "Bearer"},
    {"authorization": "Bearer %20"},
    {"authorization": "Bearer h-admin-"},
    {"authorization": "Bearer H-ADMIN"},
    {"authorization": "Basic aC1hZG1pbjo="},
    {"authorization": f"Bearer {sha256('h-admin')}"},  # the stored hash is not the token
    {"authorization": "Token h-admin"},
    {"authorization": b"Bearer h-admin\xa0"},
    {"authorization": "Bearer " + "x" * 8000},
]


@pytest.mark.parametrize("headers", WRONG)
async def test_unknown_keys_are_401_everywhere(
    http: httpx.AsyncClient, headers: dict[str, str | bytes]
) -> None:
    for path in API_GETS:
        resp = await http.get(path, headers=headers)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    resp = await http.post("/v1/partners/4321/lookup", json={"dpuuids": []}, headers=headers)
    assert resp.status_code == 401
    resp = await http.delete("/v1/users/1", headers=headers)
    assert resp.status_code == 401


async def test_brute_force_shaped_requests(http: httpx.AsyncClient) -> None:
    """Many wrong tokens in a row: each a 401 of the same shape, and the right token
    still works afterwards."""
    answers = []
    for batch in range(10):
        answers += await asyncio.gather(
            *(
                http.get("/v1/taxonomy", headers=auth(f"guess-{batch}-{i}-{'x' * i}"))
                for i in range(30)
            )
        )
    assert {r.status_code for r in answers} == {401}
    assert len({r.content for r in answers}) == 1
    shapes = {tuple(sorted(k for k in r.headers if k != "date")) for r in answers}
    assert len(shapes) == 1
    assert (await http.get("/v1/taxonomy", headers=auth("admin"))).status_code == 200


def test_keys_are_compared_by_hash_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured key's sha256 is compared with hmac.compare_digest, all of
    them whatever matched: no early exit, no comparison of the token itself."""
    keys = ApiKeys([ApiKey(name=f"k{i}", sha256=sha256(f"t{i}")) for i in range(3)])
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for token, expected in (("t0", "k0"), ("t2", "k2"), ("nope", None)):
        compared.clear()
        caller = keys.by_token(token)
        assert (caller.name if caller else None) == expected
        assert len(compared) == 3
        assert all(len(a) == len(b) == 32 for a, b in compared)
        assert all(a == hashlib.sha256(token.encode()).digest() for a, _ in compared)


# --- oversized and nested input ----------------------------------------------------

LONG = "x" * 8200


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (f"/event?c_a={LONG}", GIF_TYPE),
        (f"/event?d_rtbd=json&c_a={LONG}", "application/json"),
        (f"/ibs?dpid={PARTNER}&dpuuid=u&c={LONG}", GIF_TYPE),
        (f"/ibs:dpid={PARTNER}&dpuuid=u&c={LONG}", GIF_TYPE),
        (f"/dest5.html?gpp={LONG}", "text/html; charset=utf-8"),
        (f"/sync/chain?gpp={LONG}", GIF_TYPE),
    ],
)
async def test_long_queries_are_414(http: httpx.AsyncClient, path: str, kind: str) -> None:
    resp = await http.get(path)
    assert resp.status_code == 414 and resp.headers["content-type"] == kind
    assert resp.headers.get("x-error") in ("311", None)


async def test_large_bodies_are_413(http: httpx.AsyncClient) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = b"c_a=" + b"x" * (32 * 1024)
    resp = await http.post("/event", content=body, headers=form)
    assert resp.status_code == 413 and resp.headers["x-error"] == "311"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(40):
            yield b"c_a=" + b"x" * 1020

    resp = await http.post("/event?d_rtbd=json", content=chunks(), headers=form)
    assert resp.status_code == 413 and resp.json()["errors"][0]["code"] == 311
    lying = {**form, "content-length": str(40 * 1024)}
    resp = await http.post("/event", content=b"x" * 40 * 1024, headers=lying)
    assert resp.status_code == 413


@pytest.mark.parametrize(
    "header",
    [
        b"X-Big: " + b"x" * 60_000,
        b"Cookie: uuid=" + b"x" * 60_000,
        b"Cookie: " + b"; ".join(b"c%d=%d" % (i, i) for i in range(5000)),
        b"".join(b"X-H%d: v\r\n" % i for i in range(500)).rstrip(),
        b"Referer: https://a.test/" + b"x" * 30_000,
    ],
)
def test_huge_headers(svc: Service, header: bytes) -> None:
    """Answered, or refused by the server (431/400) — never a 500."""
    for target in (b"/event?d_rtbd=json", b"/dest5.html", b"/v1/taxonomy"):
        answer = raw(svc, target, header + b"\r\n")
        assert answer.status in (0, 200, 400, 401, 413, 431), answer.status


NESTED = [
    b"[" * 5000 + b"]" * 5000,
    b'{"dpuuids": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"dpuuids": [' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"]}",
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"dpuuids": [' + b"[" * 2000 + b"]" * 1999 + b"}",  # deep and unclosed
    b'{"dpuuids": ["a"], "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
]


@pytest.mark.parametrize("body", NESTED)
async def test_deeply_nested_json_is_400(http: httpx.AsyncClient, body: bytes) -> None:
    resp = await http.post(f"/v1/partners/{PARTNER}/lookup", content=body, headers=auth("admin"))
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] in ("bad_json", "bad_request")


# --- invalid UTF-8, bad percent-encoding, NUL ---------------------------------------

BAD_ENCODINGS = [b"%ff", b"%c3%28", b"%e2%82", b"%", b"%g0", b"%0", b"%00", b"%c0%af", b"%ed%a0%80"]
RAW_BYTES = [b"\xff", b"\xc3\x28", b"\x00", b"\xe2\x82"]
IMAGE_QUERIES = [
    b"/event?c_a=",
    b"/event?",
    b"/ibs?dpid=4321&dpuuid=u&x=",
    b"/ibs:dpid=4321&dpuuid=",
    b"/sync/chain?gpp=",
]


@pytest.mark.parametrize("bad", BAD_ENCODINGS + RAW_BYTES)
def test_bad_encodings_in_image_endpoints(svc: Service, bad: bytes) -> None:
    cookie_header = b"Cookie: uuid=" + CookieSigner([KEY]).sign(new_uuid()).encode() + b"\r\n"
    for target in IMAGE_QUERIES:
        answer = raw(svc, target + bad, cookie_header)
        assert_refused(answer, bad)
        assert b"set-cookie" not in answer.names() or all(
            b"NOTARGET" not in v for v in answer.get(b"set-cookie")
        )


@pytest.mark.parametrize("bad", BAD_ENCODINGS + RAW_BYTES)
def test_bad_encodings_in_dest5_and_json(svc: Service, bad: bytes) -> None:
    page = raw(svc, b"/dest5.html?gpp=" + bad)
    assert page.status == 400
    if bad not in RAW_BYTES:
        assert page.get(b"x-error") == [b"311"]
        assert page.get(b"content-type") == [b"text/html; charset=utf-8"]
        assert b"<img" not in page.body
    answer = raw(svc, b"/event?d_rtbd=json&c_a=" + bad)
    assert answer.status == 400
    if bad not in RAW_BYTES:
        assert b'"code":311' in answer.body


@pytest.mark.parametrize("bad", BAD_ENCODINGS + RAW_BYTES)
def test_bad_encodings_in_token_paths(svc: Service, bad: bytes) -> None:
    for prefix in (b"/fire/", b"/ack/"):
        assert_refused(raw(svc, prefix + b"abc" + bad + b"zz"), bad)
        assert_gif_error(raw(svc, prefix + b"abc" + b"def"), 323)  # well-formed, not ours


@pytest.mark.parametrize("bad", BAD_ENCODINGS)
async def test_opt_out_ignores_its_query(http: httpx.AsyncClient, bad: bytes) -> None:
    """/demoptout.jpg reads no parameter: a link with a mangled query still opts out."""
    resp = await http.get("/demoptout.jpg?x=" + bad.decode())
    assert resp.status_code == 200 and resp.headers["set-cookie"].startswith("uuid=NOTARGET;")


async def test_a_consent_string_bomb_is_answered_at_once(http: httpx.AsyncClient) -> None:
    """1,300 ranges over every vendor id, within the 8 KiB query (tests/test_consent.py)."""
    bomb = tcf(max_vendor=65535, ranges=[(1, 65535)] * 1300)
    assert len(bomb) < 8000
    started = time.perf_counter()
    resp = await http.get("/event", params={"gdpr": "1", "gdpr_consent": bomb})
    assert resp.status_code == 200 and time.perf_counter() - started < 1.0


# --- huge integers (issue 18) ------------------------------------------------------

HUGE = "9" * 5000  # past the 4,300 digits that make int() raise
PADDED = "0" * 4999 + "2"  # 5,000 digits, the value 2: the zeros count too
# Every integer a request carries, where it is read: (method, target, body, status,
# X-Error); {n} is the number. Image endpoints answer 400 with the GIF and their code.
INTEGER_FIELDS = [
    ("GET", "/ibs?dpid={n}&dpuuid=u1", None, 400, "320"),
    ("GET", "/ibs:dpid={n}&dpuuid=u1", None, 400, "320"),
    ("GET", "/event?d_sid={n}", None, 400, "311"),
    ("GET", "/event?d_sid=1,{n}", None, 400, "311"),
    ("GET", "/event?d_cts={n}", None, 400, "311"),
    ("GET", "/event?d_cid={n}%01x", None, 400, "311"),
    ("GET", "/event?gdpr={n}&c_x=1", None, 200, None),  # not 1: GDPR does not apply
    ("GET", "/sync/chain?dpids={n}", None, 400, "311"),
    ("GET", f"/sync/chain?dpids={PARTNER},{{n}}", None, 400, "311"),
    ("GET", "/dest5.html?gpp_sid={n}", None, 200, None),
    ("GET", "/setuid?bidder=acme&gdpr={n}", None, 400, None),
    ("POST", "/cookie_sync", '{{"gpp_sid": "{n}"}}', None, None),
    ("POST", "/cookie_sync", '{{"gpp_sid": "7,{n}"}}', None, None),
    ("POST", "/cookie_sync", '{{"gpp_sid": [{n}]}}', 400, None),
    ("POST", "/cookie_sync", '{{"gdpr": {n}}}', 400, None),
    ("POST", "/cookie_sync", '{{"limit": {n}}}', 400, None),
    ("GET", "/v1/partners/{n}/users/u1", None, 404, None),
    ("POST", "/v1/partners/{n}/lookup", '{{"dpuuids": ["u1"]}}', 404, None),
    ("POST", f"/v1/partners/{PARTNER}/lookup", '{{"dpuuids": [{n}]}}', 400, None),
    ("GET", "/v1/users/{n}", None, 404, None),
]


@pytest.mark.parametrize("number", [HUGE, PADDED], ids=["huge", "padded"])
@pytest.mark.parametrize(
    ("method", "target", "body", "status", "code"),
    INTEGER_FIELDS,
    ids=[f"{m} {t.split('{')[0]}{b or ''}"[:60] for m, t, b, _, _ in INTEGER_FIELDS],
)
async def test_huge_integers_everywhere(
    http: httpx.AsyncClient,
    method: str,
    target: str,
    body: str | None,
    status: int | None,
    code: str | None,
    number: str,
) -> None:
    """A 5,000-digit number (or a zero-padded small one) wherever an integer is read:
    the contract's refusal, never a 500. Where a padded number is a valid small one
    (gpp_sid "0…02" is section 2) any answer but a 5xx."""
    headers = {**cookie(new_uuid()), **auth("admin"), "content-type": "application/json"}
    content = body.format(n=number) if body is not None else None
    resp = await http.request(method, target.format(n=number), content=content, headers=headers)
    assert resp.status_code < 500, resp.text[:200]
    if number == HUGE and status is not None:
        assert resp.status_code == status, resp.text[:200]
        assert resp.headers.get("x-error") == code


@pytest.mark.parametrize(
    "jar",
    [
        f"dextp={HUGE}-1-{HUGE}",
        f"dextp={PADDED}-1-{PADDED}|1-1-{HUGE}",
        f"uuid={HUGE}",
        f"uuid={'1' * 38}.{HUGE}.{HUGE}",
    ],
)
async def test_huge_integers_in_cookies(http: httpx.AsyncClient, jar: str) -> None:
    for path in ("/event?d_rtbd=json", "/dest5.html", "/getuids"):
        resp = await http.get(path, headers={"cookie": jar})
        assert resp.status_code == 200, (path, resp.text[:200])


def test_a_huge_content_length(svc: Service) -> None:
    """Refused by the server or answered, never a 500."""
    for target in (b"/event", b"/cookie_sync"):
        answer = raw(svc, target, b"Content-Length: " + HUGE.encode() + b"\r\n", method=b"POST")
        assert answer.status in (0, 400, 413), answer.status

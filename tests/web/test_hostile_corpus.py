"""The hostile corpus (issue 18): input built to be the worst case for every parser on
the path, sent over real HTTP to every endpoint that parses it, against a service with
a numeric rule (`c_price > 100`) and `matchesregex` rules configured. For each request:

(a) it is answered, never with a 5xx (nor 413/414: every case is within the limits),
    in under 50 ms;
(b) the service's event loop is never blocked for 50 ms or more while it runs: a probe
    sends `GET /healthz` again and again on a connection of its own meanwhile, and its
    slowest answer, less the probe's own median when the service is idle, is the
    longest the loop was held.

The machine is a noisy 2-core box shared with other work: each case is sent three times
and fails only when the best of the three is over a bound (the probe's median is taken
off too); an attempt over a second is no noise, and ends the case.
Against the parsers before issue 18 the corpus fails: 8 KiB of digits and a letter in
a GET held the loop 3.9 s, the same in a 32 KiB POST over 30 s (the quadratic number
regex), a TCF bitfield of 43,000 vendors 59 ms, a zero-padded gpp_sid answered 500;
"(a+)+b" (Python's re) never ends. `test_report` prints the figures (with -v, per case).

Last, a batch-import case: a 100 KiB hostile line through the import's parser and the
rules, timed directly (batch lines reach the same rules as /event)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import pytest

from service.batch.files import MAX_LINE_BYTES, LineError, parse_line
from service.config import parse_settings
from service.gpp import MAX_GPP_CHARS, MAX_SECTION_ID
from service.identity import CookieSigner, new_uuid
from service.qualification import Qualifier
from service.rules import compile_trait_rule
from service.sync import DEXTP_MAX_BYTES
from tests.configs import api_key, entry
from tests.gpp_encoder import b64, gpp
from tests.services import Config, Service
from tests.test_consent import tcf

BOUND_S = 0.050  # SPEC §13: no request holds a worker for more than 50 ms
ATTEMPTS = 3
HOPELESS_S = 1.0  # an attempt this slow is no noise: no further attempt
KEY = "hostile-corpus-key"
ADMIN = "corpus-admin"
PARTNER = 4321
GET_MAX = 8192  # [limits] max_query_bytes
BODY_MAX = 32 * 1024  # [limits] max_body_bytes
FORM = {"content-type": "application/x-www-form-urlencoded"}
JSON_TYPE = {"content-type": "application/json"}
HUGE = "9" * 5000  # past the 4,300 digits that make int() raise
PADDED = "0" * 4999 + "2"  # 5,000 digits, the value 2: a length check must count them all
# Rules that read the signals the corpus sends: a numeric comparison on the key the
# digit runs go to, regexes of the kinds operators write, on a query key and on headers.
TRAITS = [
    ("c_price > 100", 800),
    ("c_price <= -1.5 OR p_age < 25", 801),
    ('c_url matchesregex "^https?://([a-z0-9-]+\\\\.)+example\\\\.com/(sport|news)/"', 802),
    ('h_user-agent matchesregex "(?i)(bot|crawl|spider)"', 803),
    ('h_referer matchesregex "[?&]utm_source=(mail|ads)"', 804),
    ('c_x matchesregex "(a+)+b"', 805),  # catastrophic in Python's re, linear in RE2
    ('c_x contains "zz" AND c_price >= 0', 806),
    # A DMP's hundreds of rules on one key: a request's cost is its values times these.
    *((f'c_s == "v{i}"', 1000 + i) for i in range(200)),
    *((f'c_s matchesregex "^(x|y)[0-9]+{i}$"', 1200 + i) for i in range(10)),
    *((f"c_s > {i * 10}", 1300 + i) for i in range(10)),
]


def _config() -> str:
    toml = "".join(entry("traits", sid=sid, name=f"t{sid}", rule=rule) for rule, sid in TRAITS)
    toml += entry("segments", sid=900, name="s", rule="800T OR 802T")
    toml += entry(
        "partners",
        dpid=PARTNER,
        name="acme",
        redirect_domains=["acme.test"],
        sync_url="https://sync.acme.test/m?u=${DD_UUID}&c=${GDPR_CONSENT}&cb=${CALLBACK}",
    )
    toml += entry("partners", dpid=4322, name="other", sync_url="https://o.test/m?u=${DD_UUID}")
    toml += f"""
[[destinations]]
id = 77
name = "p"
type = "url"
partner = {PARTNER}
url = "https://px.acme.test/p?s=%ALIAS%"
mappings = {{ "900" = "seg" }}
"""
    return toml + api_key("admin", ADMIN, "admin")


@pytest.fixture(scope="module")
def service_config() -> Config:
    return Config(_config(), keys=(KEY,))


# --- the corpus -------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    target: str  # path and query, encoded as sent
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None  # the answer's status, when the contract fixes it
    error: str | None = None  # its X-Error
    known: str = ""  # why this case is over a bound today, for a reason no parser's
    bulk: bool = False  # legitimate bulk work: its answer may take longer, its loop may not


def _fill(prefix: str, unit: str, limit: int, suffix: str = "") -> str:
    """prefix + unit repeated + suffix, as long as fits in `limit` characters."""
    return prefix + unit * ((limit - len(prefix) - len(suffix)) // len(unit)) + suffix


def _q(prefix: str, unit: str, suffix: str = "") -> str:
    """A query string of at most GET_MAX bytes."""
    return _fill(prefix, unit, GET_MAX, suffix)


def _b(prefix: str, unit: str, suffix: str = "") -> bytes:
    """A form body of at most BODY_MAX bytes."""
    return _fill(prefix, unit, BODY_MAX, suffix).encode()


def _consent_strings() -> Iterator[tuple[str, str]]:
    """(name, consent string) for a GET: each fits its query with gdpr=1 (so within the
    8 KiB cap)."""
    room = (GET_MAX - 40) * 6 - 300  # bits, less the core's fixed fields
    yield "bitfield of 43,000 vendors", tcf(max_vendor=43000, bitfield="1" * 43000)
    yield "ranges over every id", tcf(max_vendor=65535, ranges=[(1, 65535)] * (room // 33))
    singles = [(i, i) for i in range(1, room // 17)]
    yield "single-id ranges", tcf(max_vendor=65535, ranges=singles)
    yield "range count past the end", _ranges_cut_short()
    yield "all A", "A" * (GET_MAX - 40)
    yield "all _", "_" * (GET_MAX - 40)
    yield "all -", "-" * (GET_MAX - 40)
    yield "dots", "." * (GET_MAX - 40)


def _ranges_cut_short() -> str:
    """A range section announcing 4,095 ranges of 65,535 vendors, with none following."""
    bits = "000010" + "0" * 146 + "1" + "0" * 23 + "0" * 37 + "1" * 16 + "1" + "1" * 12
    bits += "0" * (-len(bits) % 8)
    raw = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _gpp_strings(size: int) -> Iterator[tuple[str, str]]:
    """(name, gpp string) of at most `size` characters, each unparsable."""
    yield "~ after ~", _fill("DBABMA", "~", size)
    yield "junk", _fill("", "%21", size)
    yield "all A", "A" * size
    # one section id, its Fibonacci code all zeros
    yield "deep Fibonacci", b64("000011000001000000000001" + "0" * (size * 6 - 60) + "11") + "~A"
    # 4,095 single ids announced, each an offset of 1: refused past id 999
    yield "range count", b64("000011000001" + "1" * 12 + "011" * ((size * 6 - 24) // 3))
    yield "usnat subsections", _fill("DBABLA~C", ".", size)


def _dextp(size: int) -> str:
    """A compact dextp value of `size` characters: one hour's group after another, each
    a sparse list of one-byte deltas (the most entries per byte the format allows)."""
    raw = bytearray([0x7F])  # newest hour
    while len(raw) * 4 // 3 < size:
        raw += bytes([0, 0x7E]) + bytes([1] * 63)  # an older hour 0: 63 deltas of 1
    return "2." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")[: size - 2]


def corpus() -> Iterator[Case]:
    digits_x = "1" * 3000 + "x"
    # --- /event: the numeric rule (quadratic regex: 1.3 s for 8 KiB, 21 s for 32 KiB)
    yield Case("event GET digit run", "GET", "/event?" + _q("c_price=", "1", "x"))
    yield Case("event GET digit run json", "GET", "/event?" + _q("d_rtbd=json&c_price=", "1", "x"))
    yield Case("event POST digit run", "POST", "/event", _b("c_price=", "1", "x"), FORM)
    distinct = ",".join(str(i) for i in range(8000))  # 220 rules on c_s
    yield Case("event GET distinct values", "GET", "/event?" + ("c_s=" + distinct)[:GET_MAX])
    yield Case(
        "event POST distinct values",
        "POST",
        "/event",
        ("c_s=" + distinct)[:BODY_MAX].encode(),
        FORM,
    )
    cids = "&".join(f"d_cid={PARTNER}%01u{i}" for i in range(120))
    yield Case("event GET 120 d_cid", "GET", "/event?" + cids, status=400, error="311")
    yield Case("event POST 1.1.1.1", "POST", "/event", _b("c_price=", "1."), FORM)
    yield Case("event POST 1e1e1e", "POST", "/event", _b("c_price=", "1e"), FORM)
    yield Case("event POST ----", "POST", "/event", _b("c_price=", "-"), FORM)
    yield Case("event POST ++++", "POST", "/event", _b("c_price=", "+"), FORM)
    yield Case("event POST 1.1e+", "POST", "/event", _b("c_price=", "1.1e+"), FORM)
    yield Case(
        "event POST many digit values", "POST", "/event", _b("c_price=", digits_x + ","), FORM
    )
    yield Case("event POST values 1,1,1", "POST", "/event", _b("c_price=", "1,"), FORM)
    yield Case("event POST same key again", "POST", "/event", _b("", "c_price=1x&"), FORM)
    yield Case("event GET same key again", "GET", "/event?" + _q("", "c_price=9&"))
    # --- /event: the regex rules (Python's re on "(a+)+b": 103 s for 30 characters)
    yield Case("event POST (a+)+b", "POST", "/event", _b("c_x=", "a", "!"), FORM)
    yield Case("event POST a,a,a", "POST", "/event", _b("c_x=", "aaaaaaaaaaaaaaaaaa,"), FORM)
    yield Case(
        "event POST url regex", "POST", "/event", _b("c_url=http://", "a-.", "example.com/x"), FORM
    )
    yield Case(
        "event POST url, wide", "POST", "/event", _b("c_url=https://", "www.example.com/"), FORM
    )
    yield Case(
        "event regex on headers",
        "GET",
        "/event?d_rtbd=json&c_x=1",
        headers={
            "user-agent": "Mozilla/5.0 " + "b" * 7000 + "o" * 7000,
            "referer": "https://pub.test/?" + "utm_source=mai&" * 700,
        },
    )
    # --- percent-encoding: runs of %, %2, nested encodings (311 or decoded once)
    yield Case("event POST %%%%", "POST", "/event", _b("c_x=", "%"), FORM, 400, "311")
    yield Case("event POST %2%2", "POST", "/event", _b("c_x=", "%2"), FORM, 400, "311")
    yield Case("event POST %25%25", "POST", "/event", _b("c_price=", "%25"), FORM)
    yield Case("event POST %2525", "POST", "/event", _b("c_price=%", "25", "31"), FORM)
    yield Case("event POST encoded digits", "POST", "/event", _b("c_price=", "%31"), FORM)
    yield Case("event GET %", "GET", "/event?" + _q("c_x=", "%"), status=400, error="311")
    yield Case("event POST &&&", "POST", "/event", _b("", "&"), FORM)
    yield Case("event POST ====", "POST", "/event", _b("", "="), FORM)
    yield Case("event POST many keys", "POST", "/event", _b("", "c_a=1&c_b=2&"), FORM)
    # --- system keys: JSONP names, d_sid / d_cid lists, huge integers
    yield Case("event d_cb long", "GET", "/event?" + _q("d_cb=", "a"), status=400)
    yield Case("event d_sid many", "GET", "/event?" + _q("d_sid=", "800,"))
    yield Case("event d_sid repeated", "GET", "/event?" + _q("", "d_sid=1&"))
    yield Case("event d_cid repeated", "GET", "/event?" + _q("", f"d_cid={PARTNER}%01u&"))
    distinct = "&".join(f"d_cid={PARTNER}%01u{i}" for i in range(GET_MAX // 20))
    yield Case(
        "event d_cid distinct", "GET", "/event?" + distinct[: distinct.rfind("&", 0, GET_MAX)]
    )
    for name in ("d_sid", "d_cts"):
        yield Case(f"event {name} huge", "GET", f"/event?{name}={HUGE}", status=400, error="311")
        yield Case(f"event {name} padded", "GET", f"/event?{name}={PADDED}", status=400)
    yield Case("event d_cid huge", "GET", f"/event?d_cid={HUGE}%01x", status=400, error="311")
    yield Case("event gdpr huge", "GET", f"/event?gdpr={HUGE}&gdpr_consent=x")
    yield Case("event gpp_sid huge", "GET", f"/event?gpp_sid={HUGE}")
    yield Case("event gpp_sid padded", "GET", f"/event?gpp_sid={PADDED}&gdpr_consent=x")
    # --- consent: TCF strings at the cap and past it, gpp, gpp_sid
    for name, text in _consent_strings():
        assert len(text) <= GET_MAX - 40, name
        yield Case(f"event consent {name}", "GET", f"/event?gdpr=1&gdpr_consent={text}")
    yield Case(
        "event POST consent 32 KiB of A (cap: 313)",
        "POST",
        "/event",
        _b("gdpr=1&gdpr_consent=", "A"),
        FORM,
        400,
        "313",
    )
    for char in "_-":
        body = _b("gdpr=1&gdpr_consent=", char)
        yield Case(f"event POST consent 32 KiB of {char}", "POST", "/event", body, FORM, 400, "313")
    # A bitfield of 65,535 vendors (11 KB: 62 ms to decode before): past the cap.
    bitfield = tcf(max_vendor=65535, bitfield="1" * 65535)
    yield Case(
        "event POST bitfield 65,535",
        "POST",
        "/event",
        f"gdpr=1&gdpr_consent={bitfield}".encode(),
        FORM,
        400,
        "313",
    )
    # gpp strings: decoded (SPEC §12), so junk is 313
    yield Case("event gpp ~~~", "GET", "/event?" + _q("gpp=DBABMA", "~"), status=400, error="313")
    for name, text in _gpp_strings(GET_MAX - 40):
        yield Case(f"event gpp {name}", "GET", f"/event?gpp_sid=2,7&gpp={text}", status=400)
    for name, text in _gpp_strings(MAX_GPP_CHARS):
        body = f"gpp_sid=7&gpp={text}".encode()
        yield Case(f"event POST gpp {name}", "POST", "/event", body, FORM, 400, "313")
    yield Case(
        "event POST gpp past the cap", "POST", "/event", _b("gpp=DBABMA~", "A"), FORM, 400, "313"
    )
    every = gpp([(sid, "A") for sid in range(1, MAX_SECTION_ID + 1)])  # read, all unnamed
    yield Case("event POST gpp every section id", "POST", "/event", f"gpp={every}".encode(), FORM)
    yield Case("event gpp_sid ,,,", "GET", "/event?" + _q("gpp_sid=", ","))
    yield Case("event gpp_sid 2,2,2", "GET", "/event?" + _q("gpp_sid=", "2,"))
    yield Case("event us_privacy long", "GET", "/event?" + _q("us_privacy=1Y", "Y"))
    yield Case("event POST gpp_sid 7,7", "POST", "/event", _b("gpp_sid=", "7, "), FORM)
    # --- cookies: dextp at its size, legacy dextp, many cookies, huge numbers in them
    yield Case(
        "event dextp max",
        "GET",
        "/event?d_rtbd=json",
        headers={"cookie": f"dextp={_dextp(DEXTP_MAX_BYTES)}"},
    )
    yield Case(
        "event dextp legacy",
        "GET",
        "/event?d_rtbd=json",
        headers={"cookie": "dextp=" + "1-1-1|" * 3000},
    )
    yield Case(
        "event dextp huge",
        "GET",
        "/event?d_rtbd=json",
        headers={"cookie": f"dextp={HUGE}-1-{HUGE}|{PADDED}-1-{PADDED}"},
    )
    yield Case(
        "event many cookies",
        "GET",
        "/event?d_rtbd=json",
        headers={"cookie": "; ".join(f"c{i}={i}" for i in range(2000))},
    )
    yield Case(
        "event uuid cookie huge", "GET", "/event", headers={"cookie": f"uuid={HUGE}.{HUGE}.x"}
    )
    # --- /ibs: uids of every byte class, at and past 256 bytes, redirects, dpids
    every = "".join(chr(c) for c in range(0x21, 0x7F))
    uid = quote((every * 3)[:256], safe="")
    yield Case("ibs uid every class", "GET", f"/ibs?dpid={PARTNER}&dpuuid={uid}")
    yield Case("ibs uid long", "GET", "/ibs?" + _q(f"dpid={PARTNER}&dpuuid=", "%7E"), status=400)
    yield Case("ibs dpid huge", "GET", f"/ibs?dpid={HUGE}&dpuuid=u", status=400, error="320")
    yield Case("ibs: dpid huge", "GET", f"/ibs:dpid={PADDED}&dpuuid=u", status=400, error="320")
    for name, host in (
        ("long host", "a" * 7000 + ".acme.test"),
        ("many labels", "a." * 3500 + "acme.test"),
        ("unicode host", "%C3%A9" * 1100 + ".acme.test"),
        ("many ports", "acme.test" + ":1" * 3000),
    ):
        target = f"/ibs?dpid={PARTNER}&dpuuid=u&redir=" + quote(f"https://{host}/", safe="%")
        yield Case(f"ibs redir {name}", "GET", target[:GET_MAX])
    yield Case("ibs many params", "GET", "/ibs?" + _q(f"dpid={PARTNER}&dpuuid=u&", "x=1&"))
    # --- Prebid Server's endpoints
    yield Case("setuid uid every class", "GET", f"/setuid?bidder=acme&uid={uid}")
    yield Case("setuid gdpr huge", "GET", f"/setuid?bidder=acme&gdpr={HUGE}", status=400)
    yield Case("setuid long bidder", "GET", "/setuid?" + _q("bidder=", "a"), status=400)
    sync_docs: list[tuple[str, bytes, int | None]] = [
        ("deep", b"[" * BODY_MAX, 400),
        ("deep object", b'{"a":' * (BODY_MAX // 5), 400),
        ("wide bidders", json.dumps({"bidders": ["acme"] * 4000}).encode(), None),
        (
            "wide filter",
            json.dumps({"filterSettings": {"image": {"bidders": ["a"] * 6000}}}).encode(),
            None,
        ),
        ("gpp_sid huge", json.dumps({"gpp_sid": HUGE}).encode(), 400),
        ("gpp_sid padded", json.dumps({"gpp_sid": PADDED}).encode(), None),
        ("gpp_sid list huge", f'{{"gpp_sid": [{HUGE}]}}'.encode(), 400),
        ("gpp_sid commas", json.dumps({"gpp_sid": "2," * 10000 + "2"}).encode(), None),
        ("limit huge", f'{{"limit": {HUGE}}}'.encode(), 400),
        ("limit 4,300 digits", f'{{"limit": {"9" * 4300}}}'.encode(), None),
        ("gdpr huge", f'{{"gdpr": {HUGE}}}'.encode(), 400),
        ("floats", b'{"x": [' + b"1e308," * 5000 + b"1]}", None),
        ("consent 32 KiB", json.dumps({"gdpr": 1, "gdpr_consent": "A" * 32000}).encode(), None),
        ("gpp 32 KiB", json.dumps({"gpp_sid": "2", "gpp": "DBABMA~" + "A" * 32000}).encode(), None),
        ("gpp ~~~", json.dumps({"gpp": "DBABMA" + "~" * 32000}).encode(), None),
    ]
    for name, body, status in sync_docs:
        assert len(body) <= BODY_MAX, name
        yield Case(f"cookie_sync {name}", "POST", "/cookie_sync", body, JSON_TYPE, status)
    yield Case(
        "getuids many cookies",
        "GET",
        "/getuids",
        headers={"cookie": "; ".join(f"uuid{i}=1" for i in range(2000))},
    )
    # --- dest5.html, /sync/chain, tracking tokens
    yield Case(
        "dest5 consent bitfield",
        "GET",
        f"/dest5.html?gdpr=1&gdpr_consent={tcf(max_vendor=43000, bitfield='1' * 43000)}",
    )
    yield Case("dest5 gpp_sid", "GET", "/dest5.html?" + _q("gpp_sid=", "2,"))
    yield Case(
        "dest5 dextp max",
        "GET",
        "/dest5.html",
        headers={"cookie": f"dextp={_dextp(DEXTP_MAX_BYTES)}"},
    )
    yield Case("chain dpids many", "GET", "/sync/chain?" + _q("dpids=", f"{PARTNER},"))
    yield Case("chain dpids huge", "GET", f"/sync/chain?dpids={HUGE}", status=400, error="311")
    yield Case("chain token long", "GET", "/sync/chain?" + _q("t=", "a."), status=400, error="323")
    yield Case("fire token long", "GET", "/fire/" + "a." * 3000, status=400, error="323")
    # --- /v1: dpids in paths, JSON bodies at the body limit
    auth = {"authorization": f"Bearer {ADMIN}"}
    yield Case("v1 dpid huge", "GET", f"/v1/partners/{HUGE}/users/u", headers=auth, status=404)
    yield Case("v1 dpid padded", "GET", f"/v1/partners/{PADDED}/users/u", headers=auth, status=404)
    yield Case(
        "v1 uid long",
        "GET",
        f"/v1/partners/{PARTNER}/users/" + "a" * 7000,
        headers=auth,
        status=404,
    )
    yield Case("v1 uuid huge", "GET", f"/v1/users/{HUGE}", headers=auth, status=404)
    lookups: list[tuple[str, bytes, int]] = [
        ("huge number", f'{{"dpuuids": [{HUGE}]}}'.encode(), 400),
        ("deep", b'{"dpuuids": ' + b"[" * 100_000, 400),
        (
            "10,000 uids",
            json.dumps({"dpuuids": [f"u{i}-" + "x" * 200 for i in range(10_000)]}).encode(),
            200,
        ),
        (
            "10,000 uids of quotes",  # each `\\"` counted off: never refused for its count
            json.dumps(
                {"dpuuids": [f'u{i}"\\' + '"' * 120 + "\\" for i in range(10_000)]}
            ).encode(),
            200,
        ),
        ("10,001 uids", json.dumps({"dpuuids": ["u"] * 10_001}).encode(), 400),
        ("3 MiB of numbers", b'{"dpuuids": [' + b"1e308," * 524_000 + b"1]}", 400),
        ("3 MiB of small numbers", b'{"dpuuids": [' + b"1," * 1_570_000 + b"1]}", 400),
        ("3 MiB of arrays", b'{"dpuuids": [' + b"[]," * 1_040_000 + b"[]]}", 400),
        ("3 MiB of objects", b'{"dpuuids": [' + b"{}," * 1_040_000 + b"{}]}", 400),
        ("3 MiB of short strings", b'{"dpuuids": [' + b'"a",' * 780_000 + b'"a"]}', 400),
        ("3 MiB, one more key", b'{"x": [' + b"[]," * 1_040_000 + b'[]], "dpuuids": []}', 400),
    ]
    for name, body, status in lookups:
        yield Case(
            f"v1 lookup {name}",
            "POST",
            f"/v1/partners/{PARTNER}/lookup",
            body,
            {**auth, **JSON_TYPE},
            status,
            # 10,000 lookups take longer than the bound (ten round trips of 1,000), but
            # each slice's answer is read in its own turn of the event loop.
            bulk=name.startswith("10,000 uids"),
        )
    yield Case(
        "v1 lookup dpid huge",
        "POST",
        f"/v1/partners/{HUGE}/lookup",
        b'{"dpuuids": []}',
        {**auth, **JSON_TYPE},
        404,
    )


CORPUS = [
    pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.known)] if c.known else [])
    for c in corpus()
]


# --- measuring --------------------------------------------------------------------


@dataclass
class Figures:
    answer_s: float = math.inf  # the best attempt's answer time
    blocked_s: float = math.inf  # the best attempt's longest loop block
    status: int = 0
    error: str | None = None


REPORT: dict[str, Figures] = {}


@pytest.fixture(scope="module")
async def clients(svc: Service) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """The hostile client and the probe's, each on a connection of its own, opened."""
    limits = httpx.Limits(max_connections=1)
    async with (
        httpx.AsyncClient(base_url=svc.url, timeout=30, limits=limits) as hostile,
        httpx.AsyncClient(base_url=svc.url, timeout=30, limits=limits) as probe,
    ):
        for client in (hostile, probe):
            assert (await client.get("/healthz")).status_code == 200
        yield hostile, probe


@pytest.fixture(scope="module")
async def baseline(clients: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> float:
    """The probe's median answer time with the service idle: what a probe costs by
    itself (both ends are on this machine), taken off every probe measured."""
    _, probe = clients
    times = []
    for _ in range(40):
        started = time.perf_counter()
        await probe.get("/healthz")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def attempt(
    case: Case, hostile: httpx.AsyncClient, probe: httpx.AsyncClient, baseline: float
) -> tuple[float, float, httpx.Response | None]:
    """(answer time, longest loop block, answer) of one request of `case` with the probe
    running; the answer is None when it timed out."""
    done = asyncio.Event()
    worst = 0.0

    async def probing() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.perf_counter()
            with contextlib.suppress(httpx.TimeoutException):  # then it waited that long
                await probe.get("/healthz")
            worst = max(worst, time.perf_counter() - started)

    task = asyncio.create_task(probing())
    await asyncio.sleep(0.002)  # the first probe is on its way
    cookie = {"cookie": "uuid=" + CookieSigner([KEY]).sign(new_uuid())}
    headers = {**cookie, **case.headers} if "cookie" not in case.headers else case.headers
    started = time.perf_counter()
    resp: httpx.Response | None
    try:
        resp = await hostile.request(case.method, case.target, content=case.body, headers=headers)
    except httpx.TimeoutException:
        resp = None
    answered = time.perf_counter() - started if resp is not None else math.inf
    done.set()
    await task  # the probe in flight may have waited behind the request: it counts
    if answered > HOPELESS_S:
        await idle(probe)
    return answered, max(0.0, worst - baseline), resp


async def idle(probe: httpx.AsyncClient, deadline_s: float = 120) -> None:
    """Wait until the service answers at once again: a request that timed out may still
    hold its loop, and would be counted against the next case."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        started = time.perf_counter()
        with contextlib.suppress(httpx.TimeoutException):
            await probe.get("/healthz")
        if time.perf_counter() - started < BOUND_S:
            return


@pytest.mark.parametrize("case", CORPUS)
async def test_hostile_request(
    case: Case, clients: tuple[httpx.AsyncClient, httpx.AsyncClient], baseline: float
) -> None:
    hostile, probe = clients
    figures = REPORT.setdefault(case.id, Figures())
    for _ in range(ATTEMPTS):
        answered, blocked, resp = await attempt(case, hostile, probe, baseline)
        figures.answer_s = min(figures.answer_s, answered)
        figures.blocked_s = min(figures.blocked_s, blocked)
        if resp is not None:
            assert resp.status_code < 500, (resp.status_code, resp.text[:300])
            if case.status is not None:
                assert resp.status_code == case.status, resp.text[:300]
            else:  # within the size limits by construction: it reached the parsers
                assert resp.status_code not in (413, 414), resp.text[:300]
            if case.error is not None:
                assert resp.headers.get("x-error") == case.error, resp.headers
            figures.status, figures.error = resp.status_code, resp.headers.get("x-error")
        if answered > HOPELESS_S or blocked > HOPELESS_S:
            break
    if not case.bulk:
        assert figures.answer_s < BOUND_S, f"answered in {figures.answer_s * 1000:.1f} ms at best"
    assert figures.blocked_s < BOUND_S, f"loop blocked {figures.blocked_s * 1000:.1f} ms at best"


def test_report(request: pytest.FixtureRequest) -> None:
    """The figures for docs/reliability.md: the slowest hostile request and the longest
    event-loop block of the corpus (the best of up to three attempts of each case)."""
    known = {c.values[0].id for c in CORPUS if c.marks}  # type: ignore[union-attr]
    measured = {k: v for k, v in REPORT.items() if math.isfinite(v.answer_s) and k not in known}
    if not measured:
        pytest.skip("no case of the corpus ran")
    bulk = {c.values[0].id for c in CORPUS if c.values[0].bulk}  # type: ignore[union-attr]
    slowest = max(
        ((k, v) for k, v in measured.items() if k not in bulk), key=lambda kv: kv[1].answer_s
    )
    blocking = max(measured.items(), key=lambda kv: kv[1].blocked_s)
    lines = [
        f"hostile corpus: {len(measured)} requests",
        f"slowest answer: {slowest[1].answer_s * 1000:.1f} ms ({slowest[0]})",
        f"longest loop block: {blocking[1].blocked_s * 1000:.1f} ms ({blocking[0]})",
        *(
            f"bulk (no answer bound): {k}: {REPORT[k].answer_s * 1000:.1f} ms"
            for k in sorted(bulk & measured.keys())
        ),
        *(
            f"known, left out: {k}: {REPORT[k].answer_s * 1000:.1f} ms, "
            f"blocked {REPORT[k].blocked_s * 1000:.1f} ms"
            for k in sorted(known & REPORT.keys())
        ),
    ]
    if request.config.getoption("verbose") > 0:
        lines += [
            f"  {v.answer_s * 1000:7.1f} ms {v.blocked_s * 1000:7.1f} ms  {v.status} "
            f"{v.error or ''}  {k}"
            for k, v in sorted(measured.items(), key=lambda kv: -kv[1].answer_s)
        ]
    print("\n" + "\n".join(lines))


# --- the batch import's parser -----------------------------------------------------------


def _qualifier() -> Qualifier:
    doc = {"traits": [{"sid": sid, "name": f"t{sid}", "rule": rule} for rule, sid in TRAITS]}
    return Qualifier(parse_settings(doc).traits, [])


def batch_lines() -> Iterator[tuple[str, bytes]]:
    """(name, line): 100 KiB lines (the most a line may hold) built against the parser
    and the rules its signals reach."""
    room = MAX_LINE_BYTES - 10

    def line(body: str) -> bytes:
        return ("u1\t" + body).encode()[:MAX_LINE_BYTES]

    yield "digit run signal", line('"c_price"="' + "1" * (room - 20) + 'x"')
    yield "1.1.1 signal", line('"c_price"="' + "1." * (room // 2 - 10) + '"')
    yield "(a+)+b signal", line('"c_x"="' + "a" * (room - 20) + '!"')
    yield "many signals", line('"c_price"="1x",' * (room // 15))
    yield "many trait ids", line("800," * (room // 4))
    yield "huge trait id", line(HUGE * (room // 5000))
    yield "padded removals", line((PADDED + ":0,") * (room // 5003))
    yield "d_sid huge", line("d_sid=" + "9" * (room - 6))
    yield "unbalanced quote", line('"' + "a," * (room // 2 - 1))
    yield "quotes", line('"",' * (room // 3))
    yield "bad token", line("x" * room)


@pytest.mark.parametrize(("name", "raw"), list(batch_lines()), ids=[n for n, _ in batch_lines()])
def test_hostile_batch_line(name: str, raw: bytes) -> None:
    """Parsed (or refused) and evaluated against the rules in under 50 ms, the best of
    three: the import runs on an event loop too (the worker's)."""
    assert len(raw) <= MAX_LINE_BYTES
    qualifier = _qualifier()
    best = math.inf
    for _ in range(ATTEMPTS):
        started = time.perf_counter()
        try:
            line = parse_line(raw)
        except LineError:
            line = None
        if line is not None and line.signals:
            qualifier.realize(line.signals, {})
        best = min(best, time.perf_counter() - started)
        if best < BOUND_S:
            break
    assert best < BOUND_S, f"{name}: {best * 1000:.1f} ms at best"


def test_the_numeric_rule_is_linear() -> None:
    """Direct, without HTTP: 32 KiB of digits and a letter (21 s before) and 32 KiB of
    other near-numbers, against `c_price > 100`."""
    rule = compile_trait_rule("c_price > 100")
    for value in ("1" * 32767 + "x", "1." * 16384, "1e" * 16384, "-" * 32768, "9" * 32768):
        best = math.inf
        for _ in range(ATTEMPTS):  # the best of three, as everywhere here
            started = time.perf_counter()
            assert rule({"c_price": [value]}) is False
            best = min(best, time.perf_counter() - started)
        assert best < BOUND_S, f"{value[:8]}…: {best * 1000:.1f} ms at best"
    assert rule({"c_price": ["1" + "0" * 97 + ".5"]}) is True  # 100 characters: a number
    assert rule({"c_price": ["1" + "0" * 98 + ".5"]}) is False  # 101: none

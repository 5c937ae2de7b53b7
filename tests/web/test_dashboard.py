"""GET /dashboard (SPEC §11) over real HTTP: who may see it, and that its figures are
those of /v1/loss and /v1/match-rates after crafted traffic.

Counters, distinct visitors and the match table may be shared with other tests (one
Redis for the session): this module's destinations and partners have ids drawn for
the run, and the totals are checked by how much they grew."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from html.parser import HTMLParser

import httpx
import pytest

from tests.configs import api_key
from tests.conftest import wait_for
from tests.partners import PartnerServer
from tests.services import OPS, Config

ADMIN = "dashboard-admin-token"
READER = "dashboard-read-token"
AUTH = {"authorization": f"Bearer {ADMIN}"}
RUN = secrets.randbelow(10**6)
OK_DEST, LOSSY_DEST = 200_000 + RUN, 300_000 + RUN  # delivered; never loaded
PARTNER = 1 + RUN % 10**5  # dpid
SEGMENT, TRAIT = 9100, 910
HOSTILE = "<script>alert(1)</script>"


@dataclass
class Row:
    ident: str
    over: bool
    cells: list[str] = field(default_factory=list)


class Tables(HTMLParser):
    """The page's tables (id -> rows by data-id), its chart circles (svg id -> series
    data-id -> count) and its totals (li id total-<key> -> the number in its <b>)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, Row]] = {}
        self.points: dict[str, dict[str, int]] = {}
        self._table: str | None = None
        self._row: Row | None = None
        self._cell: list[str] | None = None
        self._svg: str | None = None
        self._series: str | None = None
        self.totals: dict[str, int] = {}
        self._total: str | None = None
        self._bold = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = {}
        elif tag == "tr" and self._table is not None and a.get("data-id"):
            self._row = Row(a["data-id"] or "", a.get("class") == "over")
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "svg":
            self._svg = a.get("id") or ""
            self.points[self._svg] = {}
        elif tag == "g" and self._svg is not None:
            self._series = a.get("data-id") or ""
            self.points[self._svg][self._series] = 0
        elif tag == "circle" and self._svg is not None and self._series is not None:
            self.points[self._svg][self._series] += 1
        elif tag == "li" and (a.get("id") or "").startswith("total-"):
            self._total = (a.get("id") or "")[len("total-") :]
        elif tag == "b" and self._total is not None:
            self._bold = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.cells.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table][self._row.ident] = self._row
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "g":
            self._series = None
        elif tag == "svg":
            self._svg = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._bold and self._total is not None:
            self.totals[self._total] = int(re.sub(r"[^0-9]", "", data))
            self._total, self._bold = None, False


def parse(html: str) -> Tables:
    t = Tables()
    t.feed(html)
    return t


def dashboard_service(partner: PartnerServer) -> Config:
    """This module's service (and the browser test's, tests/e2e/): an admin and a
    reader key, a partner with a hostile name, and two url destinations of a segment
    served by `partner`."""
    base = partner.origin
    toml = f"""
[dashboard]
loss_threshold = 0.25
{api_key("admin", ADMIN, "admin")}
{api_key("reader", READER, "read")}

[[partners]]
dpid = {PARTNER}
name = "{HOSTILE}"
sync_url = "{base}/sync?u=${{DD_UUID}}"

[[traits]]
sid = {TRAIT}
name = "dashboard readers"
rule = 'c_dash == "1"'

[[segments]]
sid = {SEGMENT}
name = "dashboard segment"
rule = "{TRAIT}T"

[[destinations]]
id = {OK_DEST}
name = "delivered <b>pixel</b>"
type = "url"
partner = {PARTNER}
url = "{base}/px?d=ok&s=%ALIAS%"
mappings = {{ "{SEGMENT}" = "dash" }}

[[destinations]]
id = {LOSSY_DEST}
name = "lossy pixel"
type = "url"
partner = {PARTNER}
url = "{base}/px?d=lossy&s=%ALIAS%"
mappings = {{ "{SEGMENT}" = "dash" }}
"""
    return Config(toml, keys=("dashboard-key",))


@pytest.fixture(scope="module")
def service_config(partner: PartnerServer) -> Config:
    return dashboard_service(partner)


async def traffic(http: httpx.AsyncClient, visitors: int) -> None:
    """`visitors` returning visitors each enter the segment: both destinations are
    instructed once per visitor; only OK_DEST's pixels are loaded."""
    for _ in range(visitors):
        first = await http.get("/event")
        cookie = {"cookie": first.headers["set-cookie"].split(";", 1)[0]}
        doc = (await http.get("/event?d_rtbd=json&d_dst=1&c_dash=1", headers=cookie)).json()
        fires = {int(d["id"]): d["c"] for d in doc["dests"]}
        assert set(fires) == {OK_DEST, LOSSY_DEST}, doc
        loaded = await http.get(fires[OK_DEST])
        assert loaded.status_code == 302


async def page(http: httpx.AsyncClient) -> str:
    resp = await http.get("/dashboard", headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.text


async def test_only_admin_keys_see_it(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"authorization": f"Bearer {READER}"}, {"authorization": "Bearer x"}):
        resp = await http.get("/dashboard", headers=headers)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert "pixelsync — loss" not in resp.text
    assert (await http.get(f"/dashboard?token={READER}")).status_code == 401
    forged = {"cookie": "ps_dashboard=ImFkbWluIg.Zz0000.forged"}
    assert (await http.get("/dashboard", headers=forged)).status_code == 401
    assert (await http.get("/dashboard", headers=AUTH)).status_code == 200


async def test_a_token_once_opens_a_session(http: httpx.AsyncClient) -> None:
    resp = await http.get(f"/dashboard?token={ADMIN}")
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard"
    set_cookie = resp.headers["set-cookie"]
    assert set_cookie.startswith("ps_dashboard=")
    flags = {f.strip().lower() for f in set_cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/dashboard"} <= flags
    assert ADMIN not in set_cookie  # the session names the key; it is not the key
    session = {"cookie": set_cookie.split(";", 1)[0]}
    shown = await http.get("/dashboard", headers=session)
    assert shown.status_code == 200
    assert shown.headers["content-type"].startswith("text/html")
    csp = shown.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert shown.headers["cache-control"] == "no-store"
    # No external asset: nothing on the page is fetched from anywhere.
    assert not re.search(r"""(src|href)=["'](https?:)?//""", shown.text)
    assert '<meta http-equiv="refresh" content="60">' in shown.text


async def test_figures_equal_the_api_and_loss_is_highlighted(
    http: httpx.AsyncClient,
) -> None:
    before = parse(await page(http))
    await traffic(http, 3)

    async def counted() -> bool:  # the counters and the visitors seen are flushed apart
        doc = (await http.get("/v1/loss?window=1h", headers=AUTH)).json()
        if not any(d["id"] == OK_DEST and d["loaded"] == 3 for d in doc["destinations"]):
            return False
        seen = total(parse(await page(http)), "visitors-1h") - total(before, "visitors-1h")
        return seen >= 3

    assert await wait_for(counted)
    html = await page(http)
    loss = {
        w: (await http.get(f"/v1/loss?window={w}", headers=AUTH)).json()
        for w in ("1h", "24h", "7d")
    }
    rates = (await http.get("/v1/match-rates", headers=AUTH)).json()
    t = parse(html)
    for w, doc in loss.items():
        for d in doc["destinations"]:
            row = t.tables[f"dest-{w}"][f"d{d['id']}"]
            want = [f"{d[c]:,}" for c in ("instructed", "loaded", "confirmed", "delivered")]
            assert row.cells[2:6] == want
            assert row.cells[6] == f"{d['failed']:,}"
            assert row.cells[7] == pct(d["loss_rate"])
            assert row.over == (d["loss_rate"] is not None and d["loss_rate"] > 0.25)
            # One circle per point of the series that has a loss rate.
            defined = sum(p["loss_rate"] is not None for p in d["series"])
            assert t.points[f"chart-loss-{w}"][f"d{d['id']}"] == defined
        for p in doc["partners"]:
            row = t.tables[f"sync-{w}"][f"p{p['dpid']}"]
            assert row.cells[1:3] == [f"{p['instructed']:,}", f"{p['completed']:,}"]
            assert row.cells[4] == pct(p["loss_rate"])
            assert row.over == (p["loss_rate"] is not None and p["loss_rate"] > 0.25)
    one_hour = {d["id"]: d for d in loss["1h"]["destinations"]}
    assert (one_hour[OK_DEST]["instructed"], one_hour[OK_DEST]["loaded"]) == (3, 3)
    assert (one_hour[LOSSY_DEST]["instructed"], one_hour[LOSSY_DEST]["loaded"]) == (3, 0)
    assert not t.tables["dest-1h"][f"d{OK_DEST}"].over
    assert t.tables["dest-1h"][f"d{LOSSY_DEST}"].over  # 100 % lost > 25 %
    assert t.points["chart-loss-1h"][f"d{LOSSY_DEST}"] >= 1
    [partner] = [p for p in rates["partners"] if p["dpid"] == PARTNER]
    row = t.tables["match-rates-table"][f"p{PARTNER}"]
    assert row.cells[1:4] == [
        f"{partner['instructed']:,}",
        f"{partner['completed']:,}",
        pct(partner["match_rate"]),
    ]
    # Totals grew by this traffic: 6 browser requests and 3 new visitors per visit...
    grown = {k: total(t, k) - total(before, k) for k in ("requests-1h", "visitors-1h")}
    assert grown["requests-1h"] >= 3 * 3  # two /event and one /fire per visitor
    assert grown["visitors-1h"] == 3  # HyperLogLog is exact at this size


def pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f} %"


def total(t: Tables, key: str) -> int:
    return t.totals[key]


async def test_names_are_escaped(http: httpx.AsyncClient) -> None:
    html = await page(http)
    assert HOSTILE not in html and "<b>pixel</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "delivered &lt;b&gt;pixel&lt;/b&gt;" in html


def test_the_page_is_readable_without_traffic() -> None:
    """No destination, no partner, no figure: the page still renders."""
    from service.dashboard import Page, Totals, render

    html = render(
        Page(
            loss={w: {"window": w, "destinations": [], "partners": []} for w in ("1h", "24h")},
            match_rates={"partners": []},
            totals=Totals({}, {}, 0, True),
            threshold=0.2,
            refresh_s=30,
            generated="2026-11-30 07:00:00 UTC",
        )
    )
    assert "No destinations configured." in html and "Mappings stored<b>0</b>" in html


async def test_prometheus_shows_a_destination_that_never_loads(http: httpx.AsyncClient) -> None:
    """A tracked url destination's loaded counter exists from the start, at 0: a
    dashboard over Prometheus shows its loss as 100 %, not as a missing series."""
    text = (await http.get("/metrics", headers=OPS)).text
    labels = f'counter="loaded",destination="{LOSSY_DEST}"'
    line = re.search(rf"pixelsync_destination_events_total\{{{labels}\}} (\S+)", text)
    assert line is not None and float(line.group(1)) == 0
    assert re.search(r"pixelsync_distinct_visitors\{window=\"24h\"\} \S+", text)
    assert re.search(r"pixelsync_mappings_stored \S+", text)


def test_a_session_ends_when_its_key_is_replaced() -> None:
    """A session names its key and the start of the key's sha256: a key replaced under
    the same name (say, after a leak) no longer opens the page."""
    from service.config import ApiKey
    from service.web.api import ApiKeys

    old = hashlib.sha256(b"old").hexdigest()
    keys = ApiKeys([ApiKey(name="admin", sha256=old, scopes=["admin"])])
    assert keys.named("admin", keys.fingerprint("admin")) is not None
    new = hashlib.sha256(b"new").hexdigest()
    replaced = ApiKeys([ApiKey(name="admin", sha256=new, scopes=["admin"])])
    assert replaced.named("admin", old[:16]) is None
    assert replaced.named("someone", old[:16]) is None

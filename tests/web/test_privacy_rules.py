"""Per-partner privacy rules ([[partners.privacy]], service/activities.py) over real
HTTP: a partner denied `sync` where gpp_sid names 7 gets no sync while another does;
a partner denied `fire` gets no URL destination; the denials are counted in
/metrics and shown on the dashboard."""

from __future__ import annotations

import re

import httpx
import pytest

from service.identity import CookieSigner, new_uuid
from tests.conftest import wait_for
from tests.services import OPS, Config
from tests.writes import settled, written_since

KEY = "activities-test-key"

CONFIG = """
[[partners]]
dpid = 21
name = "guarded"
sync_url = "https://guarded.test/sync?p=21&u=${DD_UUID}"
redirect_domains = ["guarded.test"]

[[partners.privacy]]
deny = ["sync"]
gpp_sid = [7]

[[partners]]
dpid = 22
name = "open"
sync_url = "https://open.test/sync?p=22&u=${DD_UUID}"

[[partners]]
dpid = 23
name = "unfed"

[[partners.privacy]]
deny = ["fire"]

[[traits]]
sid = 100
name = "sports"
rule = 'c_section == "sports"'

[[segments]]
sid = 500
name = "sports"
rule = "100T"

[[destinations]]
id = 31
name = "unfed pixel"
type = "url"
partner = 23
url = "https://unfed.test/px?seg=%ALIAS%"
mappings = { "500" = "sports" }

[[destinations]]
id = 32
name = "open pixel"
type = "url"
partner = 22
url = "https://open.test/px?seg=%ALIAS%"
mappings = { "500" = "sports" }
"""


@pytest.fixture(scope="module")
def service_config() -> Config:
    return Config(CONFIG, keys=(KEY,))


def visitor() -> tuple[str, dict[str, str]]:
    uuid = new_uuid()
    return uuid, {"cookie": f"uuid={CookieSigner([KEY]).sign(uuid)}"}


def synced(resp: httpx.Response) -> set[str]:
    """The partners (p=) the dest5 page syncs."""
    return set(re.findall(r'<img src="https://\w+\.test/sync\?p=(\d+)', resp.text))


def denied(metrics: str, partner: int, activity: str, reason: str) -> float:
    labels = f'activity="{activity}",partner="{partner}",reason="{reason}"'
    found = re.search(rf"pixelsync_privacy_decisions_total\{{{labels}\}} (\S+)", metrics)
    return float(found.group(1)) if found else 0.0


async def metrics_text(http: httpx.AsyncClient) -> str:
    return (await http.get("/metrics", headers=OPS)).text


async def test_a_partner_denied_sync_for_gpp_sid_7_is_not_synced(http: httpx.AsyncClient) -> None:
    before = denied(await metrics_text(http), 21, "sync", "rule")
    _, cookie = visitor()
    page = await http.get("/dest5.html?gpp_sid=7", headers=cookie)
    assert page.status_code == 200
    assert synced(page) == {"22"}  # the other partner is synced
    assert denied(await metrics_text(http), 21, "sync", "rule") == before + 1

    _, cookie = visitor()  # another section, or none: the rule does not apply
    assert synced(await http.get("/dest5.html?gpp_sid=8", headers=cookie)) == {"21", "22"}
    _, cookie = visitor()
    assert synced(await http.get("/dest5.html", headers=cookie)) == {"21", "22"}


async def test_json_event_ibs_list_follows_the_rule(http: httpx.AsyncClient) -> None:
    _, cookie = visitor()
    doc = (await http.get("/event?d_rtbd=json&gpp_sid=7,8", headers=cookie)).json()
    assert [e["id"] for e in doc["ibs"]] == ["22"]


async def test_sync_chain_skips_the_denied_partner(http: httpx.AsyncClient) -> None:
    _, cookie = visitor()
    hop = await http.get("/sync/chain?dpids=21,22&gpp_sid=7", headers=cookie)
    assert hop.status_code == 302
    assert hop.headers["location"].startswith("https://open.test/sync?p=22")


async def test_cookie_sync_blocks_the_denied_bidder(http: httpx.AsyncClient) -> None:
    _, cookie = visitor()
    body = {"bidders": ["guarded", "open"], "gpp_sid": "7", "debug": True}
    doc = (await http.post("/cookie_sync", json=body, headers=cookie)).json()
    assert [s["bidder"] for s in doc["bidder_status"]] == ["open"]
    assert {"bidder": "guarded", "error": "Rejected by privacy"} in doc["debug"]


async def test_ibs_of_a_denied_partner_stores_nothing_and_passes_no_uuid(
    http: httpx.AsyncClient,
) -> None:
    uuid, cookie = visitor()
    redir = "https%3A%2F%2Fguarded.test%2Fback%3Fid%3D%24%7BDD_UUID%7D"
    before = await settled(http, KEY)
    resp = await http.get(f"/ibs:dpid=21&dpuuid=g-1&gpp_sid=7&redir={redir}", headers=cookie)
    assert resp.status_code == 302
    assert resp.headers["location"] == "https://guarded.test/back?id="
    assert (await written_since(http, KEY, before))["mapping"] == 0

    before = await settled(http, KEY)
    allowed = await http.get(f"/ibs:dpid=21&dpuuid=g-2&redir={redir}", headers=cookie)
    assert allowed.headers["location"] == f"https://guarded.test/back?id={uuid}"
    assert (await written_since(http, KEY, before))["mapping"] == 1


async def test_a_partner_denied_fire_gets_no_url_destination(http: httpx.AsyncClient) -> None:
    before = await metrics_text(http)
    _, cookie = visitor()
    doc = (await http.get("/event?d_rtbd=json&d_dst=1&c_section=sports", headers=cookie)).json()
    assert [d["id"] for d in doc["dests"]] == ["32"]
    after = await metrics_text(http)
    assert denied(after, 23, "fire", "rule") == denied(before, 23, "fire", "rule") + 1


async def test_the_dashboard_shows_denials_by_partner_and_reason(
    http: httpx.AsyncClient,
) -> None:
    _, cookie = visitor()
    await http.get("/dest5.html?gpp_sid=7", headers=cookie)
    await http.get("/dest5.html?us_privacy=1YYN", headers=cookie)

    def cells_of(table: str) -> list[str]:
        row = re.search(r'<tr data-id="p21">(.*?)</tr>', table)
        return re.findall(r"<td>([^<]*)</td>", row.group(1)) if row else []

    async def shown() -> str | None:
        """The table once both denials are in it (the tally flushes them apart)."""
        html = (await http.get("/dashboard", headers=OPS)).text
        table = re.search(r'<table id="privacy-1h">.*?</table>', html, re.S)
        cells = cells_of(table.group(0)) if table else []
        counted = cells and all(int(cells[i].replace(",", "")) >= 1 for i in (2, 5))
        return table.group(0) if table and counted else None

    table = await wait_for(shown)
    assert table is not None
    head = re.findall(r"<th>([^<]*)</th>", table)
    assert head == [
        "partner", "gdpr_consent", "us_privacy", "gpc", "gpp_us", "rule", "total", "activities"
    ]  # fmt: skip
    cells = cells_of(table)
    assert cells[0] == "guarded"
    assert "sync" in cells[7]


@pytest.mark.parametrize(
    ("description", "query", "status"),
    [
        ("the rule denies guarded's sync under usnat", "bidder=guarded&uid=s-1&gpp_sid=7", 451),
        ("no rule matches without gpp_sid 7", "bidder=guarded&uid=s-2", 200),
        ("an opt-out of sale", "bidder=open&uid=s-3&us_privacy=1YYN", 451),
        ("open is not ruled", "bidder=open&uid=s-4&gpp_sid=7", 200),
    ],
)
async def test_setuid_answers_451_where_a_sync_is_denied(
    http: httpx.AsyncClient, description: str, query: str, status: int
) -> None:
    """Prebid Server answers a /setuid its activity controls deny with a bare 451 and
    stores nothing; so do an opt-out of sale and the partner's rules here."""
    _, cookie = visitor()
    before = await settled(http, KEY)
    resp = await http.get(f"/setuid?{query}&f=i", headers=cookie)
    assert resp.status_code == status, description
    assert (await written_since(http, KEY, before))["mapping"] == (status == 200), description

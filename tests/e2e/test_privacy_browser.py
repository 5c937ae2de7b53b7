"""A real Chromium on a page whose consent platform sends only GPP (SPEC §12).

Three sites, no DNS, as in test_sync_browser.py and test_destinations_browser.py:
- the publisher page on http://127.0.0.1:<pub port>: its script loads the /event pixel
  and sends the signals as a credentialed JSON `fetch`, both with the page's privacy
  parameters (`gpp`, `gpp_sid`, and no `gdpr_consent`), then embeds
  `dest5.html?<the same parameters>`;
- pixelsync on http://localhost:<svc port>, with a host `vendor_id`: it stores nothing
  for a visitor whose consent does not cover its vendor;
- the partners on http://[::1]:<port>: two syncing partners (one consented, one not)
  and a url destination's pixel.

- An EU visitor whose TCF string travels in the GPP string's section 2 (`gpp_sid=2`)
  and consents: the visitor is stored and qualifies, the consented partner is synced
  (its uid reaches the match table) and its pixel fires; the other partner is not.
- The same page with consent refused: no visitor cookie, nothing stored, no sync, no
  pixel; /event answers 314.
- A US visitor whose `usnat` section (`gpp_sid=7`) opts out of sale: the visitor is
  stored and qualifies (first-party use), but no partner is synced and no pixel fires.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.async_api import Frame, Page

from service.identity import today
from service.store import Store
from tests.configs import api_key, entry
from tests.conftest import wait_for
from tests.e2e.browser import accepting_context, chromium, requires_chromium, serve_page
from tests.e2e.test_destinations_browser import Partner as PixelPartner
from tests.e2e.test_sync_browser import Partners, cookie_value, frame_images, settle, uuid_of
from tests.gpp_encoder import gpp, us_section
from tests.partners import third_site
from tests.services import Config, Service, Services
from tests.test_consent import tcf

TIMEOUT_MS = 20_000
TIMEOUT_S = TIMEOUT_MS / 1000
KEY = "privacy-browser-test-key"
ADMIN = "privacy-browser-admin-token"
AUTH = {"authorization": f"Bearer {ADMIN}"}

VENDOR = 755  # this service's TCF vendor id
CONSENTED, REFUSED = 41, 42  # partners' dpids; their gvl ids are the same numbers
TRAIT, SEGMENT, ALIAS = 410, 4100, "eu-sports"

pytestmark = requires_chromium


def consent_given() -> str:
    """Purpose 1 and vendor consent for this service and partner 41, not 42."""
    return tcf(max_vendor=VENDOR, ranges=[(CONSENTED, CONSENTED), (VENDOR, VENDOR)])


def consent_refused() -> str:
    """No purpose consented: the vendors are named, but nothing may be stored."""
    return tcf(purposes=0, max_vendor=VENDOR, ranges=[(CONSENTED, CONSENTED), (VENDOR, VENDOR)])


EU_GIVEN = f"gpp={gpp([(2, consent_given())])}&gpp_sid=2"
EU_REFUSED = f"gpp={gpp([(2, consent_refused())])}&gpp_sid=2"
US_SALE_OPT_OUT = (
    f"gpp={gpp([(7, us_section(7, {'SaleOptOutNotice': 1, 'SaleOptOut': 1}))])}&gpp_sid=7"
)


@pytest.fixture
def partners() -> Iterator[Partners]:
    with third_site(Partners) as p:
        yield p


@pytest.fixture
def pixels() -> Iterator[PixelPartner]:
    with third_site(PixelPartner) as p:
        yield p


@dataclass(frozen=True)
class Pixelsync:
    service: Service
    origin: str
    dest: int


def start_pixelsync(services: Services, partners: Partners, pixels: PixelPartner) -> Pixelsync:
    dest = 2_000_000 + secrets.randbelow(10**8)
    toml = f"[server]\nvendor_id = {VENDOR}\n" + api_key("e2e-admin", ADMIN, "admin")
    for dpid in (CONSENTED, REFUSED):
        sync = f"{partners.origin}/sync?p={dpid}&aam=${{DD_UUID}}&redir=${{CALLBACK}}"
        toml += entry("partners", dpid=dpid, name=f"p{dpid}", gvl_id=dpid, sync_url=sync)
    toml += entry("traits", sid=TRAIT, name="Sports readers", rule='c_section == "sports"')
    toml += entry("segments", sid=SEGMENT, name="Sports", rule=f"{TRAIT}T")
    px = f"{pixels.origin}/px?d={dest}&seg=%ALIAS%&uuid=${{DD_UUID}}"
    toml += f"""
[[destinations]]
id = {dest}
name = "consented partner's pixel (privacy e2e)"
type = "url"
partner = {CONSENTED}
url = "{px}"
mappings = {{ "{SEGMENT}" = "{ALIAS}" }}
"""
    service = services.start(Config(toml, keys=(KEY,), host="localhost"))
    return Pixelsync(service, service.origin, dest)


def publisher_page(pixel: str, privacy: str) -> bytes:
    """The page's script runs the visit with the privacy parameters its CMP gave: the
    /event pixel (the visitor cookie), dest5.html (the partner syncs), the JSON /event
    (qualification); the test reads `window.visit` (or `window.failure`) and embeds
    dest5.html again (`embedDest5`) for the destinations. Its CSP allows only pixelsync."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Publisher</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none';
  script-src 'unsafe-inline'; img-src {pixel}; connect-src {pixel}; frame-src {pixel}">
</head>
<body>
<h1>Sports news</h1>
<pre id="answer">waiting for the answer…</pre>
<div id="frames"></div>
<script>
const PIXEL = {pixel!r};
const PRIVACY = {privacy!r};

function pixel(src) {{
  return new Promise((resolve) => {{
    const img = new Image(1, 1);
    img.onload = () => resolve(true);
    img.onerror = () => resolve(false);
    img.src = src;
  }});
}}

function embedDest5(id) {{
  // Resolves on the iframe's load event: after every image in it has loaded.
  return new Promise((resolve) => {{
    const frame = document.createElement("iframe");
    frame.id = id;
    frame.title = id;
    frame.onload = () => resolve(frame.src);
    frame.src = PIXEL + "/dest5.html?" + PRIVACY;
    document.getElementById("frames").appendChild(frame);
  }});
}}

async function visit() {{
  await pixel(PIXEL + "/event?c_page=home&" + PRIVACY);
  await embedDest5("syncs");
  const resp = await fetch(PIXEL + "/event?d_rtbd=json&d_cts=1&c_section=sports&" + PRIVACY,
                           {{credentials: "include"}});
  const doc = await resp.json();
  document.getElementById("answer").textContent = JSON.stringify(doc, null, 1);
  return {{status: resp.status, doc}};
}}

visit().then((r) => {{ window.visit = r; }}, (e) => {{ window.failure = String(e); }});
</script>
</body></html>
""".encode()


async def frame_of(page: Page, frame_id: str) -> Frame:
    frame = await (await page.wait_for_selector(f"#{frame_id}")).content_frame()
    assert frame is not None
    return frame


async def run_page(page: Page, page_url: str) -> tuple[dict[str, Any], Frame, Frame]:
    """Load the page and wait for its visit, then embed dest5.html again: (the JSON
    /event answer, the first dest5.html's frame, the second's)."""
    await page.goto(page_url, wait_until="load", timeout=TIMEOUT_MS)
    await page.wait_for_function("window.visit || window.failure", timeout=TIMEOUT_MS)
    assert await page.evaluate("window.failure || null") is None
    visit: dict[str, Any] = await page.evaluate("window.visit")
    await page.evaluate("embedDest5('fires')")
    return visit, await frame_of(page, "syncs"), await frame_of(page, "fires")


async def api_ids(service: Service, uuid: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=service.url, timeout=5) as api:
        resp = await api.get(f"/v1/users/{uuid}", headers=AUTH)
    if resp.status_code == 404:
        return {}
    assert resp.status_code == 200, resp.text
    ids: dict[str, str] = resp.json()["ids"]
    return ids


async def test_gpp_only_eu_consent_syncs_and_stores(
    services: Services, partners: Partners, pixels: PixelPartner, store: Store, tmp_path: Path
) -> None:
    px = start_pixelsync(services, partners, pixels)
    with serve_page(publisher_page(px.origin, EU_GIVEN), TIMEOUT_S) as page_origin:
        async with chromium() as p, accepting_context(p, tmp_path / "profile", TIMEOUT_MS) as ctx:
            page = await ctx.new_page()
            visit, syncs, fires = await run_page(page, page_origin + "/")
            assert visit["status"] == 200, visit
            doc = visit["doc"]
            assert "errors" not in doc, doc
            assert SEGMENT in doc["segments"]
            cookie = await cookie_value(ctx, px.origin, "uuid")
            assert cookie is not None
            uuid = uuid_of(cookie)
            assert doc["uuid"] == uuid

            # dest5.html syncs the consented partner, not the other; the JSON answer
            # has no sync left to hand out; the second dest5.html fires the pixel.
            srcs = [i["src"] for i in await frame_images(syncs)]
            assert [s.split("&")[0] for s in srcs] == [f"{partners.origin}/sync?p={CONSENTED}"]
            assert doc["ibs"] == [], doc
            fired = [i["src"] for i in await frame_images(fires)]
            assert [s.split("/fire/")[0] for s in fired] == [px.origin], fired

            async def synced() -> dict[str, str] | None:
                ids = await api_ids(px.service, uuid)
                return ids if str(CONSENTED) in ids else None

            await settle(partners, synced)
            calls = partners.calls
            assert [c.dpid for c in calls] == [CONSENTED], calls
            assert calls[0].aam == uuid
            assert await api_ids(px.service, uuid) == {str(CONSENTED): calls[0].uid}

            async def fired() -> bool:
                return any(r.arg("d") == str(px.dest) for r in pixels.pixels)

            assert await wait_for(fired, TIMEOUT_S)
            fire = next(r for r in pixels.pixels if r.arg("d") == str(px.dest))
            assert (fire.arg("seg"), fire.arg("uuid")) == (ALIAS, uuid)
            await page.close()


async def test_gpp_only_eu_refusal_stores_nothing(
    services: Services, partners: Partners, pixels: PixelPartner, tmp_path: Path
) -> None:
    px = start_pixelsync(services, partners, pixels)
    with serve_page(publisher_page(px.origin, EU_REFUSED), TIMEOUT_S) as page_origin:
        async with chromium() as p, accepting_context(p, tmp_path / "profile", TIMEOUT_MS) as ctx:
            page = await ctx.new_page()
            async with page.expect_response(
                lambda r: "/event?c_page=home" in r.url, timeout=TIMEOUT_MS
            ) as event:
                visit, syncs, fires = await run_page(page, page_origin + "/")
            assert (await (await event.value).all_headers())["x-error"] == "314"
            assert [e["code"] for e in visit["doc"]["errors"]] == [314], visit
            assert "uuid" not in visit["doc"]
            assert await frame_images(syncs) == [] and await frame_images(fires) == []
            assert await cookie_value(ctx, px.origin, "uuid") is None
            await asyncio.sleep(1.0)  # the quiet period: nothing may arrive late either
            assert partners.calls == [] and pixels.pixels == []
            await page.close()


async def test_usnat_sale_opt_out_stops_syncs_and_fires(
    services: Services, partners: Partners, pixels: PixelPartner, store: Store, tmp_path: Path
) -> None:
    px = start_pixelsync(services, partners, pixels)
    with serve_page(publisher_page(px.origin, US_SALE_OPT_OUT), TIMEOUT_S) as page_origin:
        async with chromium() as p, accepting_context(p, tmp_path / "profile", TIMEOUT_MS) as ctx:
            page = await ctx.new_page()
            visit, syncs, fires = await run_page(page, page_origin + "/")
            doc = visit["doc"]
            assert visit["status"] == 200 and "errors" not in doc, visit
            assert SEGMENT in doc["segments"]  # first-party use goes on
            uuid = uuid_of(await cookie_value(ctx, px.origin, "uuid") or "")
            assert doc["ibs"] == [] and doc["stuff"] == [], doc
            for frame in (syncs, fires):
                assert await frame_images(frame) == []
                html = await frame.content()
                assert "/sync?p=" not in html and "/fire/" not in html, html
            await asyncio.sleep(1.0)
            assert partners.calls == [] and pixels.pixels == []
            assert await api_ids(px.service, uuid) == {}
            assert await store.mappings(uuid, today()) == {}
            await page.close()


def test_the_page_parameters_are_url_safe() -> None:
    """The strings go into the page's URLs as they are: base64url, `~`, `.`, digits."""
    for query in (EU_GIVEN, EU_REFUSED, US_SALE_OPT_OUT):
        assert quote(query, safe="=&~._-") == query

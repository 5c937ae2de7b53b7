"""A real Chromium qualifies a visitor for a segment and fires its destinations.

Three sites, no DNS (TESTING.md, "A real browser"), as in test_sync_browser.py:
- the publisher page on http://127.0.0.1:<pub port>: its script loads the /event pixel
  (the browser gets the visitor cookie), sends the signals as a credentialed JSON
  `fetch` (`d_rtbd=json&d_cts=1&c_section=sports`, plus a declared partner ID), shows
  the answer, writes the cookie destination's `stuff` into `document.cookie`, then
  embeds `dest5.html` in an iframe;
- pixelsync on http://localhost:<svc port> (its `public_url`);
- the partner on http://[::1]:<partner port>: the url destination's pixel lands there
  through `/fire/<token>`; the partner records it and answers a 302 to the `${ACK_URL}`
  it was given, so the browser itself loads `/ack/<token>` to confirm receipt.

Checked: the JSON answer's segments and `stuff` (cn/cv/ttl/dmn, readable by the page,
which stores the cookie on its own site); the partner gets the pixel once, with %ALIAS%
filled and the visitor's ids (${DD_UUID} = the uuid of the browser's visitor cookie,
${DP_UUID} = the declared partner uid); /v1/loss counts the url destination instructed
== loaded == confirmed == 1 (a destination id drawn for this run only, so a Redis shared
by earlier runs cannot have counted it); a second dest5.html fires nothing again.

See SPEC §4 (/event JSON, dest5.html), §6, §7 (url and cookie destinations, /fire,
/ack, loss), §10 (/v1/loss).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Frame, Page

from tests.configs import api_key
from tests.conftest import wait_for
from tests.e2e.browser import accepting_context, chromium, requires_chromium, serve_page
from tests.e2e.test_sync_browser import (
    GIF_LEN,
    UUID_RE,
    Responses,
    cookie_value,
    frame_images,
    screenshot_path,
    uuid_of,
)
from tests.partners import GIF, Answer, PartnerServer, Request, third_site
from tests.services import Config, Service, Services

TIMEOUT_MS = 20_000
TIMEOUT_S = TIMEOUT_MS / 1000
FLUSH_S = 1.5  # counters are flushed every second: longer than that, nothing more comes
KEY = "destinations-browser-test-key"
ADMIN = "destinations-browser-admin-token"
AUTH = {"authorization": f"Bearer {ADMIN}"}

DPID = 77  # the partner whose uid fills ${DP_UUID}
TRAIT = 700  # c_section == "sports"
SEGMENT = 7000  # 700T: entered by the first sports page view
LATER = 7001  # FREQUENCY([700T]) >= 3: not entered here, mapped too, must not fire
ALIAS = "sportsfan"
COOKIE_NAME = "aam_seg"
COOKIE_KEY = "seg"
COOKIE_ALIAS = "sports"
COOKIE_TTL_DAYS = 30
PUBLISHER_HOST = "127.0.0.1"

pytestmark = requires_chromium


# --- the partner site, on [::1] ------------------------------------------------------


class Partner(PartnerServer):
    """The partner's pixel endpoint, http://[::1]:<port>/px?…: records the request and
    answers 302 to its `ack` parameter (the ${ACK_URL}), or the GIF without one."""

    def __init__(self) -> None:
        super().__init__(self.answer, host="::1")

    @staticmethod
    def answer(request: Request) -> Answer:
        if request.path != "/px":
            return Answer(404)
        ack = request.arg("ack")
        if ack:
            return Answer(302, {"location": ack, "cache-control": "no-store"})
        return Answer(200, {"content-type": "image/gif", "cache-control": "no-store"}, GIF)

    @property
    def pixels(self) -> list[Request]:
        return self.seen("/px")


@pytest.fixture
def partner() -> Iterator[Partner]:
    with third_site(Partner) as p:
        yield p


# --- pixelsync, on localhost ---------------------------------------------------------


@dataclass(frozen=True)
class Pixelsync:
    service: Service
    origin: str  # http://localhost:<port>, the public_url
    url_dest: int
    cookie_dest: int


def start_pixelsync(services: Services, partner: Partner) -> Pixelsync:
    """A service with one rule trait, two segments, a url and a cookie destination.
    The destination ids are drawn for this run: their loss counters start at 0."""
    url_dest = 1_000_000 + 2 * secrets.randbelow(10**8)
    cookie_dest = url_dest + 1
    px = (
        f"{partner.origin}/px?d={url_dest}&seg=%ALIAS%&uuid=${{DD_UUID}}&dp=${{DP_UUID}}"
        "&proto=%http_proto%&rnd=%rnd%&ack=${ACK_URL}"
    )
    toml = f"""{api_key("e2e-admin", ADMIN, "admin")}
[[partners]]
dpid = {DPID}
name = "dsp"

[[traits]]
sid = {TRAIT}
name = "Sports readers"
folder = "Interests/Sports"
rule = 'c_section == "sports"'

[[segments]]
sid = {SEGMENT}
name = "Sports"
rule = '{TRAIT}T'

[[segments]]
sid = {LATER}
name = "Sports fans"
rule = 'FREQUENCY([{TRAIT}T]) >= 3'

[[destinations]]
id = {url_dest}
name = "dsp pixel (browser e2e)"
type = "url"
partner = {DPID}
url = "{px}"
mappings = {{ "{SEGMENT}" = "{ALIAS}", "{LATER}" = "fan" }}

[[destinations]]
id = {cookie_dest}
name = "ad server key-values (browser e2e)"
type = "cookie"
cookie_name = "{COOKIE_NAME}"
key = "{COOKIE_KEY}"
domain = "{PUBLISHER_HOST}"
ttl_days = {COOKIE_TTL_DAYS}
mappings = {{ "{SEGMENT}" = "{COOKIE_ALIAS}" }}
"""
    service = services.start(Config(toml, keys=(KEY,), host="localhost"))
    return Pixelsync(service, service.origin, url_dest, cookie_dest)


async def loss_row(api: httpx.AsyncClient, dest_id: int) -> dict[str, Any]:
    resp = await api.get("/v1/loss?window=15m", headers=AUTH)
    assert resp.status_code == 200, resp.text
    rows = [d for d in resp.json()["destinations"] if d["id"] == dest_id]
    assert len(rows) == 1, resp.text
    row: dict[str, Any] = rows[0]
    return row


def counters(row: dict[str, Any]) -> tuple[int, int, int]:
    return row["instructed"], row["loaded"], row["confirmed"]


# --- the publisher site, on 127.0.0.1 ------------------------------------------------


def publisher_page(pixel: str, declared_uid: str) -> bytes:
    """The page's script runs the visit; the test reads `window.signals` (or
    `window.failure`) and calls `embedDest5()`."""
    signals = f"d_rtbd=json&d_cts=1&c_section=sports&d_cid={DPID}%01{declared_uid}"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Publisher</title></head>
<body>
<h1>Sports news</h1>
<p>A publisher page sending signals to {pixel} and embedding its destination iframe.</p>
<pre id="answer">waiting for the answer…</pre>
<p id="checks"></p>
<div id="frames"></div>
<script>
const PIXEL = {pixel!r};
const SEGMENT = {SEGMENT};

function pixel(src) {{
  return new Promise((resolve, reject) => {{
    const img = new Image(1, 1);
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("pixel failed: " + src));
    img.src = src;
  }});
}}

function storeStuff(stuff) {{
  // The cookie destinations' key-values, for the page's own ad server.
  for (const s of stuff) {{
    const host = location.hostname;
    const domain = s.dmn.replace(/^\\./, "");
    const ours = domain && (host === domain || host.endsWith("." + domain));
    document.cookie = s.cn + "=" + s.cv + "; Max-Age=" + s.ttl * 86400 + "; Path=/"
      + (ours ? "; Domain=" + domain : "");
  }}
}}

async function visit() {{
  await pixel(PIXEL + "/event?c_page=home");  // the browser keeps the visitor cookie
  const resp = await fetch(PIXEL + "/event?{signals}", {{credentials: "include"}});
  const doc = await resp.json();
  document.getElementById("answer").textContent = JSON.stringify(doc, null, 1);
  storeStuff(doc.stuff);
  const checks = {{
    status: resp.status,
    segmentsOk: Array.isArray(doc.segments) && doc.segments.includes(SEGMENT),
    stuffOk: doc.stuff.length === 1 && document.cookie.includes(doc.stuff[0].cn + "="),
  }};
  document.getElementById("checks").textContent = JSON.stringify(checks);
  return {{doc, checks, cookie: document.cookie}};
}}

function embedDest5(id) {{
  // Resolves on the iframe's load event: after every pixel in it has loaded.
  return new Promise((resolve) => {{
    const frame = document.createElement("iframe");
    frame.id = id;
    frame.title = id;
    frame.width = "1";
    frame.height = "1";
    frame.style.border = "0";
    frame.onload = () => resolve(frame.src);
    frame.src = PIXEL + "/dest5.html";
    document.getElementById("frames").appendChild(frame);
  }});
}}

visit().then(
  (result) => {{ window.signals = result; }},
  (err) => {{ window.failure = String(err); }},
);
</script>
</body></html>
""".encode()


async def embed_dest5(page: Page, frame_id: str) -> Frame:
    """Have the page embed dest5.html; answers the iframe's frame once it has loaded."""
    await asyncio.wait_for(page.evaluate("(id) => embedDest5(id)", frame_id), TIMEOUT_S)
    handle = await page.wait_for_selector(f"#{frame_id}", timeout=TIMEOUT_MS)
    assert handle is not None
    frame = await handle.content_frame()
    assert frame is not None
    return frame


# --- the test ------------------------------------------------------------------------


async def test_a_qualified_visitor_fires_url_and_cookie_destinations_in_the_browser(
    services: Services,
    partner: Partner,
    tmp_path: Path,
) -> None:
    px = start_pixelsync(services, partner)
    pixel = px.origin
    declared_uid = f"dsp-uid-{secrets.token_hex(6)}"
    async with px.service.client() as api:
        # A destination id nobody counted before: the counts below are this test's.
        fresh = await loss_row(api, px.url_dest)
        assert counters(fresh) == (0, 0, 0), fresh
        assert fresh["type"] == "url" and fresh["loss_rate"] is None

        with serve_page(publisher_page(pixel, declared_uid), TIMEOUT_S) as page_origin:
            sites = {urlsplit(u).hostname for u in (page_origin, pixel, partner.origin)}
            assert len(sites) == 3, sites
            async with (
                chromium() as p,
                accepting_context(p, tmp_path / "profile", TIMEOUT_MS) as context,
            ):
                page = await context.new_page()
                fires = Responses(page, pixel + "/fire/")
                acks = Responses(page, pixel + "/ack/")
                events = Responses(page, pixel + "/event")
                await page.goto(page_origin + "/", wait_until="load", timeout=TIMEOUT_MS)

                # 1. The signals: the page got the visitor cookie, then the JSON answer.
                await page.wait_for_function(
                    "window.signals || window.failure", timeout=TIMEOUT_MS, polling=50
                )
                assert await page.evaluate("window.failure || null") is None
                signals: dict[str, Any] = await page.evaluate("window.signals")
                doc = signals["doc"]
                assert signals["checks"] == {"status": 200, "segmentsOk": True, "stuffOk": True}
                assert doc["segments"] == [SEGMENT], doc
                assert "errors" not in doc, doc

                visitor = await cookie_value(context, pixel, "uuid")
                assert visitor is not None, "the browser kept no visitor cookie"
                uuid = uuid_of(visitor)
                assert UUID_RE.match(doc["uuid"]) and doc["uuid"] == uuid
                [gif, answer] = events.seen
                assert (await gif.all_headers())["content-type"] == "image/gif"
                answer_headers = await answer.all_headers()
                assert answer_headers["access-control-allow-origin"] == page_origin
                assert answer_headers["access-control-allow-credentials"] == "true"
                assert "uuid=" in (await answer.request.all_headers()).get("cookie", "")

                # 4. The cookie destination: in `stuff`, and on the page's own site.
                assert doc["stuff"] == [
                    {
                        "cn": COOKIE_NAME,
                        "cv": f"{COOKIE_KEY}={COOKIE_ALIAS}",
                        "ttl": COOKIE_TTL_DAYS,
                        "dmn": PUBLISHER_HOST,
                    }
                ]
                assert f"{COOKIE_NAME}={COOKIE_KEY}={COOKIE_ALIAS}" in signals["cookie"]
                [kv] = [c for c in await context.cookies(page_origin) if c["name"] == COOKIE_NAME]
                assert kv["value"] == f"{COOKIE_KEY}={COOKIE_ALIAS}"
                assert kv["domain"] == PUBLISHER_HOST
                lifetime_days = (kv["expires"] - time.time()) / 86400
                assert COOKIE_TTL_DAYS - 1 < lifetime_days <= COOKIE_TTL_DAYS, kv

                # The visit is stored (profile with the queued fire, the declared ID)
                # before the page asks for its destinations.
                async def stored() -> dict[str, Any] | None:
                    resp = await api.get(f"/v1/users/{uuid}", headers=AUTH)
                    if resp.status_code != 200:
                        return None
                    user: dict[str, Any] = resp.json()
                    ok = user["segments"] == [SEGMENT] and user["ids"] == {str(DPID): declared_uid}
                    return user if ok else None

                assert await wait_for(stored, TIMEOUT_S), "the visit was not stored"

                # 2. dest5.html in an iframe: one pixel, through /fire, to the partner,
                # whose 302 makes the browser load the ack URL.
                frame = await embed_dest5(page, "dest5")
                assert frame.url == pixel + "/dest5.html"
                images = await frame_images(frame)
                assert len(images) == 1, images
                assert images[0]["src"].startswith(pixel + "/fire/"), images
                assert images[0]["width"] == 1  # the chain ended on the ack GIF

                [fired] = fires.seen
                fire_headers = await fired.all_headers()
                assert fired.status == 302, (fired.url, fire_headers)
                location = fire_headers["location"]
                assert location.startswith(f"{partner.origin}/px?d={px.url_dest}&"), location
                [acked] = acks.seen
                ack_headers = await acked.all_headers()
                assert acked.status == 200, (acked.url, ack_headers)
                assert ack_headers["content-type"] == "image/gif"
                assert "x-error" not in ack_headers
                assert len(await acked.body()) == GIF_LEN

                # 3. The partner got the pixel once, with the alias and the visitor's ids.
                [received] = partner.pixels
                q = received.query
                assert q["d"] == [str(px.url_dest)]
                assert q["seg"] == [ALIAS]  # %ALIAS% of the one segment entered
                assert q["uuid"] == [uuid]  # ${DD_UUID}: the browser's visitor cookie
                assert q["dp"] == [declared_uid]  # ${DP_UUID}: the declared partner uid
                assert q["proto"] == ["http"]
                assert q["rnd"][0].isdigit()
                assert q["ack"][0].startswith(pixel + "/ack/")
                assert "cookie" not in received.headers  # pixelsync's cookie stays its own
                assert acked.url == q["ack"][0]  # the browser loaded the partner's ack
                # One redirect chain: /fire -> the partner's pixel -> /ack.
                hop = acked.request.redirected_from
                assert hop is not None and hop.url.startswith(partner.origin + "/px?")
                assert parse_qs(urlsplit(hop.url).query) == parse_qs(urlsplit(location).query)
                assert hop.redirected_from is not None and hop.redirected_from.url == fired.url

                # A second iframe: the fire was handed out once, nothing is due again.
                again = await embed_dest5(page, "dest5-again")
                assert await frame_images(again) == []
                assert len(partner.pixels) == 1 and len(fires.seen) == 1

                await page.screenshot(
                    path=str(screenshot_path("destinations-browser.png")), full_page=True
                )
                await page.close()

        # 5. Loss: handed to the browser once, loaded once, confirmed once.
        async def counted() -> dict[str, Any] | None:
            row = await loss_row(api, px.url_dest)
            return row if counters(row) == (1, 1, 1) else None

        row = await wait_for(counted, TIMEOUT_S)
        assert row, await loss_row(api, px.url_dest)
        await asyncio.sleep(FLUSH_S)  # a late flush would only add: still exactly once
        row = await loss_row(api, px.url_dest)
        assert counters(row) == (1, 1, 1), row
        assert row["loss_rate"] == 0.0 and row["ack_loss_rate"] == 0.0, row
        assert sum(point["instructed"] for point in row["series"]) == 1
        cookie_row = await loss_row(api, px.cookie_dest)
        assert counters(cookie_row) == (0, 0, 0), cookie_row

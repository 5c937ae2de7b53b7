"""The cookie bounce in a real Chromium (SPEC §3): a publisher page on 127.0.0.1 sends
signals to pixelsync on localhost (another site: its cookie is a third-party one).

- A browser that accepts third-party cookies: a new visitor's first page view is
  bounced once, comes back with the cookie and is stored; `FREQUENCY` counts it. A
  JSONP `<script>` and a credentialed `fetch` get their answers through the bounce.
- A browser that refuses them: every request that would store is bounced at most
  once, answered with 172, and nothing is stored.

See TESTING.md, "A real browser"."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from playwright.async_api import Page, Request, Response

from service.identity import today
from service.profiles import Profile
from service.store import Store
from tests.configs import entry
from tests.conftest import wait_for
from tests.e2e.browser import (
    accepting_context,
    chromium,
    refusing_context,
    requires_chromium,
    serve_page,
)
from tests.services import Config, Services
from tests.writes import NOTHING, settled, written_since

pytestmark = requires_chromium

TIMEOUT_MS = 15_000
KEY = "bounce-browser-key"
CONFIG = Config(
    entry("partners", dpid=99, name="marker")
    + entry("traits", sid=100, name="sports", rule='c_section == "sports"')
    + entry("segments", sid=500, name="sports", rule="100T")
    + entry("segments", sid=501, name="once", rule="FREQUENCY([100T]) >= 1")
    + entry("segments", sid=502, name="twice", rule="FREQUENCY([100T]) >= 2"),
    keys=(KEY,),
    host="localhost",
)


def page_html(pixel: str) -> bytes:
    """A publisher page: the pixel with a signal; a CSP that allows only loopback."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none';
  script-src 'unsafe-inline' {pixel}; img-src {pixel}; connect-src {pixel}">
<title>Publisher</title></head>
<body><h1>Sports</h1>
<img id="px" alt="" src="{pixel}/event?c_section=sports">
<script>
window.jsonp = (query) => new Promise((resolve, reject) => {{
  window.cb = resolve;
  const s = document.createElement("script");
  s.src = "{pixel}/event?d_cb=cb&" + query;
  s.onerror = reject;
  document.body.appendChild(s);
}});
window.credentialed = async (query) => {{
  const r = await fetch("{pixel}/event?d_rtbd=json&" + query, {{credentials: "include"}});
  return {{status: r.status, redirected: r.redirected, body: await r.json()}};
}};
</script>
</body></html>""".encode()


@contextmanager
def publisher(pixel: str) -> Iterator[str]:
    with serve_page(page_html(pixel), TIMEOUT_MS / 1000) as origin:
        yield origin


class Traffic:
    """Every request the page makes to pixelsync, with its answer."""

    def __init__(self, page: Page, pixel: str) -> None:
        self.pixel = pixel
        self.requests: list[Request] = []
        self.responses: list[Response] = []
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, request: Request) -> None:
        if request.url.startswith(self.pixel + "/"):
            self.requests.append(request)

    def _response(self, response: Response) -> None:
        if response.url.startswith(self.pixel + "/"):
            self.responses.append(response)


async def load(page: Page, origin: str) -> None:
    await page.goto(origin + "/", wait_until="load", timeout=TIMEOUT_MS)
    await page.wait_for_function("document.getElementById('px').complete", polling=50)
    assert await page.evaluate("document.getElementById('px').naturalWidth") == 1


async def cookie_uuid(page: Page, pixel: str) -> str | None:
    found = [c for c in await page.context.cookies(pixel) if c["name"] == "uuid"]
    return found[0]["value"].strip('"').split(".")[0] if found else None


async def profile_with(store: Store, uuid: str, sid: int, count: int) -> Profile:
    """The stored profile once trait `sid` has been realized `count` times today (the
    service's process wrote it; this one reads Redis)."""

    async def stored() -> Profile | None:
        found = (await store.visitor_state(uuid)).profile
        return found if found.traits.get(sid) == [(today(), count)] else None

    return await wait_for(stored) or (await store.visitor_state(uuid)).profile


async def test_a_new_visitors_first_view_is_stored_through_the_bounce(
    services: Services, store: Store, tmp_path: Path
) -> None:
    service = services.start(CONFIG)
    pixel = service.origin
    with publisher(pixel) as origin:
        async with chromium() as p, accepting_context(p, tmp_path / "profile") as context:
            page = await context.new_page()
            traffic = Traffic(page, pixel)
            await load(page, origin)

            # The first view: bounced once, back with the cookie, stored as that visitor.
            first, back = traffic.requests
            assert first.url == f"{pixel}/event?c_section=sports"
            assert back.url == f"{pixel}/event?c_section=sports&d_bounce=1"
            assert back.redirected_from == first
            uuid = await cookie_uuid(page, pixel)
            assert uuid is not None
            assert (await back.all_headers())["cookie"].startswith(f"uuid={uuid}.")
            response = await back.response()
            assert response is not None and response.status == 200
            assert "x-error" not in await response.all_headers()
            assert (await profile_with(store, uuid, 100, 1)).traits[100] == [(today(), 1)]

            # FREQUENCY counts it: met after the first view, and after the second
            # (which is not bounced) for twice.
            answer = await page.evaluate("credentialed('d_cts=1')")
            assert answer["status"] == 200 and not answer["redirected"]
            assert answer["body"]["uuid"] == uuid
            assert answer["body"]["segments"] == [500, 501]
            await load(page, origin)
            assert traffic.requests[-1].url == f"{pixel}/event?c_section=sports"
            await profile_with(store, uuid, 100, 2)
            answer = await page.evaluate("credentialed('d_cts=1')")
            assert answer["body"]["segments"] == [500, 501, 502]

            # A new visitor again: JSONP, then a credentialed fetch, through the bounce.
            await context.clear_cookies()
            doc = await page.evaluate("jsonp('d_cts=2&c_section=sports')")
            jsonp_uuid = await cookie_uuid(page, pixel)
            assert jsonp_uuid not in (None, uuid)
            assert doc["uuid"] == jsonp_uuid and doc["traits"] == [100]
            assert "d_bounce=1" in traffic.requests[-1].url
            await profile_with(store, jsonp_uuid, 100, 1)

            await context.clear_cookies()
            answer = await page.evaluate("credentialed('d_cts=2&c_section=sports')")
            fetch_uuid = await cookie_uuid(page, pixel)
            assert fetch_uuid not in (None, uuid, jsonp_uuid)
            assert answer["status"] == 200 and answer["redirected"]
            assert answer["body"]["uuid"] == fetch_uuid and answer["body"]["traits"] == [100]
            await profile_with(store, fetch_uuid, 100, 1)
            await page.close()


async def test_a_browser_refusing_cookies_stores_nothing_and_bounces_once(
    services: Services,
) -> None:
    service = services.start(CONFIG)
    pixel = service.origin
    async with httpx.AsyncClient(base_url=service.url) as client:
        before = await settled(client, KEY)
    with publisher(pixel) as origin:
        async with chromium() as p, refusing_context(p) as context:
            page = await context.new_page()
            traffic = Traffic(page, pixel)
            await load(page, origin)  # the pixel still loads
            doc = await page.evaluate("jsonp('d_cts=2&c_section=sports')")
            assert doc["errors"][0]["code"] == 172
            answer = await page.evaluate("credentialed('d_cts=2&c_section=sports')")
            assert answer["status"] == 200 and answer["body"]["errors"][0]["code"] == 172
            await load(page, origin)
            assert await cookie_uuid(page, pixel) is None

            # Each request bounced once (302 with a cookie), then 172 without one.
            async def answered() -> bool:
                return len(traffic.responses) >= 8

            assert await wait_for(answered)  # Playwright's events come after the pages
            assert len(traffic.requests) == 8  # four requests, each twice
            outcomes: list[tuple[bool, int, str | None]] = []
            for response in traffic.responses:
                headers = await response.all_headers()
                bounced = response.url.endswith("&d_bounce=1")
                outcomes.append((bounced, response.status, headers.get("x-error")))
                assert "cookie" not in await response.request.all_headers()
                if not bounced:
                    assert headers["set-cookie"].startswith("uuid=")  # refused by the browser
            assert sorted(outcomes) == [(False, 302, None)] * 4 + [(True, 200, "172")] * 4
            await page.close()
    # Nothing written at all, for any visitor: not under the uuids the bounces handed
    # out, nor under the fresh ones the 172 follow-ups were given and never shown.
    async with httpx.AsyncClient(base_url=service.url) as client:
        assert await written_since(client, KEY, before) == NOTHING

"""A real Chromium runs the partner ID syncs: dest5.html in a publisher's iframe, and
the /sync/chain redirect chain.

Three sites, no DNS (TESTING.md, "A real browser"):
- the publisher page on http://127.0.0.1:<pub port>, embedding
  `<iframe src="http://localhost:<svc port>/dest5.html">`;
- pixelsync on http://localhost:<svc port> (its `public_url`);
- the partners on http://[::1]:<partner port>: each sync call answers 302 to the `redir`
  value with `$UID` replaced by the partner's own uid, as partners do.

- A browser that accepts third-party cookies completes every sync: the match table
  holds each partner's uid for the visitor in the uuid cookie, and a second page view
  syncs no one again (the dextp cookie and the match table both say synced).
- /sync/chain, navigated to at the top level, visits each partner once and ends on the
  GIF, with every mapping stored.
- A browser that refuses third-party cookies may run the syncs, but the cookie bounce
  on /ibs stores nothing (error 172).

See SPEC §3, §4 (dest5.html), §5.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import (
    BrowserContext,
    Frame,
    Page,
    Response,
)

from service.identity import today
from service.store import Store
from service.sync import parse_dextp
from tests.configs import api_key, syncing_partners
from tests.conftest import wait_for
from tests.e2e.browser import (
    ARTIFACTS,
    accepting_context,
    chromium,
    refusing_context,
    requires_chromium,
    serve_page,
)
from tests.partners import Answer, PartnerServer, Request, third_site
from tests.services import Config, Service, Services

TIMEOUT_MS = 20_000
TIMEOUT_S = TIMEOUT_MS / 1000
QUIET_S = 1.0  # no partner hit for this long: the page has settled
UUID_RE = re.compile(r"^\d{38}$")
KEY = "sync-browser-test-key"
TOKEN = "sync-browser-read-token"
GIF_LEN = 43

pytestmark = requires_chromium


# --- the partner site, on [::1] ------------------------------------------------------


@dataclass(frozen=True)
class PartnerCall:
    """One sync call a partner received, and the uid it sent back."""

    dpid: int
    aam: str  # the visitor uuid pixelsync put in the sync URL
    uid: str  # the partner's uid, sent back in place of $UID
    location: str  # where the partner redirected the browser
    at: float


class Partners(PartnerServer):
    """The sync endpoint of every partner, on http://[::1]:<port>/<any path>?p=<dpid>&…"""

    def __init__(self, host: str = "::1") -> None:
        self._calls: list[PartnerCall] = []
        super().__init__(self.answer, host=host)

    def answer(self, request: Request) -> Answer:
        try:
            dpid = int(request.query["p"][0])
            aam = request.query["aam"][0]
            redir = request.query["redir"][0]
        except (KeyError, ValueError):
            return Answer(400)
        # unique across runs: the session's Redis may outlive one test run
        uid = f"uid-{dpid}-{secrets.token_hex(6)}"
        location = redir.replace("$UID", uid)
        with self._lock:
            self._calls.append(PartnerCall(dpid, aam, uid, location, time.monotonic()))
        return Answer(302, {"location": location, "cache-control": "no-store"})

    @property
    def calls(self) -> list[PartnerCall]:
        with self._lock:
            return list(self._calls)


@pytest.fixture
def partners() -> Iterator[Partners]:
    with third_site(Partners) as p:
        yield p


# --- pixelsync, on localhost ---------------------------------------------------------


def start_pixelsync(
    services: Services,
    partners: Partners,
    dpids: tuple[int, ...],
    *,
    per_page: int = 5,
) -> tuple[Service, str]:
    """A service whose public URL is its own on `localhost`; answers (service, origin)."""
    toml = f"""
[sync]
max_partners_per_page = {per_page}
{api_key("e2e-reader", TOKEN, "read")}{syncing_partners(partners.origin, dpids)}"""
    service = services.start(Config(toml, keys=(KEY,), host="localhost"))
    return service, service.origin


async def api_ids(service: Service, uuid: str) -> dict[str, str]:
    """The match table as the API shows it: GET /v1/users/{uuid} -> ids ({} on 404)."""
    async with httpx.AsyncClient(base_url=service.url, timeout=5) as api:
        resp = await api.get(f"/v1/users/{uuid}", headers={"authorization": f"Bearer {TOKEN}"})
    if resp.status_code == 404:
        return {}
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["uuid"] == uuid
    ids = body["ids"]
    assert isinstance(ids, dict)
    return ids


# --- the publisher site, on 127.0.0.1 ------------------------------------------------


def publisher_page(pixel: str) -> bytes:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Publisher</title></head>
<body>
<h1>Sports news</h1>
<p>A publisher page embedding the sync iframe from {pixel}.</p>
<iframe id="sync" title="sync" width="320" height="80" src="{pixel}/dest5.html"></iframe>
</body></html>
""".encode()


@contextmanager
def publisher(pixel: str) -> Iterator[str]:
    """Serve the publisher page on 127.0.0.1; yields its origin."""
    body = publisher_page(pixel)

    with serve_page(body, TIMEOUT_S) as origin:
        yield origin


# --- the browser ---------------------------------------------------------------------


class Responses:
    """Every response a page sees (redirect answers included), filtered by URL prefix."""

    def __init__(self, page: Page, prefix: str) -> None:
        self.prefix = prefix
        self.seen: list[Response] = []
        page.on("response", self._on_response)

    def _on_response(self, response: Response) -> None:
        if response.url.startswith(self.prefix):
            self.seen.append(response)


async def view_publisher(page: Page, page_url: str, pixel: str) -> tuple[Response, Frame]:
    """Load the publisher page; answers the dest5.html response and its frame."""
    async with page.expect_response(
        lambda r: r.url.startswith(pixel + "/dest5.html"), timeout=TIMEOUT_MS
    ) as response_info:
        await page.goto(page_url, wait_until="load", timeout=TIMEOUT_MS)
    response = await response_info.value
    frame = await (await page.wait_for_selector("#sync", timeout=TIMEOUT_MS)).content_frame()
    assert frame is not None
    assert frame.url.startswith(pixel + "/dest5.html")
    return response, frame


async def frame_images(frame: Frame) -> list[dict[str, Any]]:
    """The iframe's images once every one has finished loading (or failed)."""
    await frame.wait_for_function(
        "Array.from(document.images).every((i) => i.complete)",
        timeout=TIMEOUT_MS,
        polling=50,
    )
    images: list[dict[str, Any]] = await frame.evaluate(
        "Array.from(document.images).map((i) => ({src: i.src, width: i.naturalWidth}))"
    )
    return images


async def cookie_value(context: BrowserContext, origin: str, name: str) -> str | None:
    found = [c["value"] for c in await context.cookies(origin) if c["name"] == name]
    assert len(found) <= 1, found
    return found[0] if found else None


def uuid_of(cookie: str) -> str:
    """The visitor uuid in a visitor cookie value (`<uuid>.<ts>.<sig>`)."""
    uuid = cookie.strip('"').split(".")[0]
    assert UUID_RE.match(uuid), cookie
    return uuid


def dpids_in(dextp: str | None) -> set[int]:
    """The dpids a dextp cookie records."""
    return set(parse_dextp((dextp or "").strip('"')))


async def settle(partners: Partners, done: Callable[[], Any]) -> None:
    """Wait (bounded) until `done()` holds and no partner was hit for QUIET_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        calls = partners.calls
        last = max((c.at for c in calls), default=0.0)
        if await done() and time.monotonic() - last >= QUIET_S:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the page did not settle in {TIMEOUT_S} s: {partners.calls}")


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


# --- the tests -----------------------------------------------------------------------


async def test_an_accepting_browser_completes_every_sync_once(
    services: Services,
    partners: Partners,
    store: Store,
    tmp_path: Path,
) -> None:
    dpids = (31, 32, 33)
    service, pixel = start_pixelsync(services, partners, dpids, per_page=3)
    with publisher(pixel) as page_origin:
        assert len({urlsplit(u).hostname for u in (page_origin, pixel, partners.origin)}) == 3
        async with (
            chromium() as p,
            accepting_context(p, tmp_path / "profile", TIMEOUT_MS) as context,
        ):
            page = await context.new_page()
            ibs = Responses(page, pixel + "/ibs:")

            # First view: the iframe hands out three syncs; each image runs one.
            dest5, frame = await view_publisher(page, page_origin + "/", pixel)
            assert dest5.status == 200
            assert "x-error" not in await dest5.all_headers()
            images = await frame_images(frame)
            assert len(images) == 3, images
            assert all(i["src"].startswith(partners.origin + "/sync?p=") for i in images)
            assert [i["width"] for i in images] == [1, 1, 1]  # back through /ibs: the GIF

            visitor = await cookie_value(context, pixel, "uuid")
            assert visitor is not None
            uuid = uuid_of(visitor)
            assert dpids_in(await cookie_value(context, pixel, "dextp")) == set(dpids)

            calls = partners.calls
            assert sorted(c.dpid for c in calls) == list(dpids)  # each partner once
            assert {c.aam for c in calls} == {uuid}  # the visitor in the cookie
            sent = {str(c.dpid): c.uid for c in calls}

            async def all_three() -> dict[str, str] | None:
                ids = await api_ids(service, uuid)
                return ids if len(ids) >= len(dpids) else None

            assert await wait_for(all_three, TIMEOUT_S) == sent
            stored = await store.mappings(uuid, today())
            assert {dpid: m.uid for dpid, m in stored.items()} == {
                int(k): v for k, v in sent.items()
            }

            # The browser kept the cookie: /ibs stored at once, no bounce, no error.
            assert len(ibs.seen) == 3, [r.url for r in ibs.seen]
            for response in ibs.seen:
                headers = await response.all_headers()
                assert response.status == 200, (response.url, headers)
                assert "d_bounce" not in response.url
                assert "x-error" not in headers
                assert headers["content-type"] == "image/gif"

            await page.screenshot(
                path=str(screenshot_path("sync-browser-accepted.png")), full_page=True
            )

            # Second view: nobody is due; no sync request reaches a partner.
            before = len(partners.calls)
            again, frame = await view_publisher(page, page_origin + "/", pixel)
            assert again.status == 200
            cookie_header = (await again.request.all_headers()).get("cookie", "")
            assert "uuid=" in cookie_header and "dextp=" in cookie_header
            assert await frame_images(frame) == []
            await asyncio.sleep(QUIET_S)
            assert len(partners.calls) == before
            assert len(ibs.seen) == 3
            assert uuid_of(await cookie_value(context, pixel, "uuid") or "") == uuid

            # The match table alone says synced too: the uuid cookie without dextp.
            async with httpx.AsyncClient(base_url=service.url, timeout=5) as http:
                alone = await http.get("/dest5.html", headers={"cookie": f"uuid={visitor}"})
            assert alone.status_code == 200
            assert "<img" not in alone.text, alone.text
            await page.close()


async def test_a_sync_chain_through_three_partners_completes_in_the_browser(
    services: Services,
    partners: Partners,
    store: Store,
    tmp_path: Path,
) -> None:
    dpids = (41, 42, 43)
    service, pixel = start_pixelsync(services, partners, dpids, per_page=3)
    profile = tmp_path / "profile"
    async with chromium() as p, accepting_context(p, profile, TIMEOUT_MS) as context:
        page = await context.new_page()
        url = f"{pixel}/sync/chain?dpids={','.join(map(str, dpids))}"
        final = await page.goto(url, wait_until="load", timeout=TIMEOUT_MS)
        assert final is not None
        headers = await final.all_headers()
        assert final.status == 200, (final.url, headers)
        assert headers["content-type"] == "image/gif"
        assert "x-error" not in headers
        assert len(await final.body()) == GIF_LEN
        # The last hop is the last partner's callback: /ibs, without a further redir.
        assert final.url.startswith(f"{pixel}/ibs:dpid={dpids[-1]}&dpuuid=")

        hops: list[str] = []
        request = final.request
        while request is not None:
            hops.append(request.url)
            request = request.redirected_from
        hops.reverse()
        assert hops[0] == url
        assert [h for h in hops if h.startswith(partners.origin)] == [
            h for h in hops if h.startswith(partners.origin + "/sync?p=")
        ]
        assert [int(parse_qs(urlsplit(h).query)["p"][0]) for h in hops if "/sync?p=" in h] == list(
            dpids
        )
        assert sum(h.startswith(pixel + "/ibs:") for h in hops) == 3
        assert sum(h.startswith(pixel + "/sync/chain?t=") for h in hops) == 2
        assert not [h for h in hops if "d_bounce" in h]  # the cookie was kept at once

        visitor = await cookie_value(context, pixel, "uuid")
        assert visitor is not None
        uuid = uuid_of(visitor)
        calls = partners.calls
        assert [c.dpid for c in calls] == list(dpids)
        assert {c.aam for c in calls} == {uuid}
        sent = {str(c.dpid): c.uid for c in calls}

        async def all_three() -> dict[str, str] | None:
            ids = await api_ids(service, uuid)
            return ids if len(ids) >= len(dpids) else None

        assert await wait_for(all_three, TIMEOUT_S) == sent
        stored = await store.mappings(uuid, today())
        assert {dpid: m.uid for dpid, m in stored.items()} == {int(k): v for k, v in sent.items()}
        await page.screenshot(path=str(screenshot_path("sync-browser-chain.png")), full_page=True)
        await page.close()


async def test_a_refusing_browser_stores_no_mapping(
    services: Services,
    partners: Partners,
    store: Store,
) -> None:
    dpids = (51, 52, 53)
    service, pixel = start_pixelsync(services, partners, dpids, per_page=3)
    with publisher(pixel) as page_origin:
        async with chromium() as p, refusing_context(p, TIMEOUT_MS) as context:
            page = await context.new_page()
            ibs = Responses(page, pixel + "/ibs:")

            # The iframe loads and hands the syncs out; the partners may run them.
            dest5, frame = await view_publisher(page, page_origin + "/", pixel)
            assert dest5.status == 200
            dest5_headers = await dest5.all_headers()
            assert "x-error" not in dest5_headers
            offered = [i["src"] for i in await frame_images(frame)]
            assert len(offered) == 3, offered
            assert all(u.startswith(partners.origin + "/sync?p=") for u in offered)

            async def callbacks_answered() -> bool:
                # every partner's callback came to a final (non-redirect) /ibs answer
                final = [r for r in ibs.seen if not 300 <= r.status < 400]
                return len(final) >= len(partners.calls) >= len(dpids)

            await settle(partners, callbacks_answered)
            await page.screenshot(
                path=str(screenshot_path("sync-browser-refused.png")), full_page=True
            )

            # The browser kept no cookie on any of the sites.
            assert [c for c in await context.cookies() if c["name"] in ("uuid", "dextp")] == []

            # Nothing stored: not for the partners' uids, not for any uuid handed out.
            calls = partners.calls
            handed_out = {c.aam for c in calls}
            assert all(UUID_RE.match(u) for u in handed_out)
            for dpid in dpids:
                uids = [c.uid for c in calls if c.dpid == dpid]
                assert await store.lookup(dpid, uids, today()) == {}
            for uuid in handed_out:
                assert await store.mappings(uuid, today()) == {}
                assert await api_ids(service, uuid) == {}

            # Each callback bounced once (302 to itself plus d_bounce=1), then 172.
            assert sorted(c.dpid for c in calls) == list(dpids)
            outcomes = []
            for response in ibs.seen:
                headers = await response.all_headers()
                bounced = "d_bounce=1" in response.url
                outcomes.append((bounced, response.status, headers.get("x-error")))
                if not bounced:
                    assert response.status == 302
                    assert headers["location"].endswith("&d_bounce=1")
                    assert headers.get("set-cookie", "").startswith("uuid=")
            assert sorted(outcomes) == [(False, 302, None)] * 3 + [(True, 200, "172")] * 3
            await page.close()

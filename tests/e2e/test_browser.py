"""A real Chromium: a publisher page on one site embeds the pixel from another site.

The page is served from http://127.0.0.1:<pub port>, the pixel from
http://localhost:<svc port>: two different sites, both secure origins, so the visitor
cookie (`Secure; SameSite=None`) is a third-party cookie that works over plain HTTP.

- A browser that accepts third-party cookies (persistent context with
  `cookie_controls_mode: 0`) keeps the visitor's uuid across page views and sends it back.
- A default Playwright context refuses third-party cookies: the pixel still loads, but
  no uuid is kept and nothing is sent back.

See TESTING.md, "A real browser", and SPEC §3, §4.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import (
    Page,
    Request,
    Response,
)

from tests.e2e.browser import (
    ARTIFACTS,
    accepting_context,
    chromium,
    refusing_context,
    requires_chromium,
    serve_page,
)
from tests.services import Config, Services

TIMEOUT_MS = 15_000
TIMEOUT_S = TIMEOUT_MS / 1000
UUID_RE = re.compile(r"^\d{38}$")
# The pixel's origin on `localhost`: another site than the page on 127.0.0.1.
LOCALHOST = Config(host="localhost")

pytestmark = requires_chromium


# --- the publisher site ---------------------------------------------------------------


def publisher_page(pixel_origin: str) -> bytes:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Publisher</title></head>
<body>
<h1>Sports news</h1>
<p>A publisher page embedding the pixel from {pixel_origin}.</p>
<img id="px" alt="" src="{pixel_origin}/event?c_section=sports">
</body></html>
""".encode()


@contextmanager
def publisher(pixel_origin: str) -> Iterator[str]:
    """Serve the publisher page on 127.0.0.1; yields its origin."""
    body = publisher_page(pixel_origin)

    with serve_page(body, TIMEOUT_S) as origin:
        yield origin


# --- the browser ------------------------------------------------------------------------


@dataclass
class PixelView:
    """One page view: the /event request the image made and its answer."""

    request_headers: dict[str, str]
    response: Response
    response_headers: dict[str, str]
    natural_width: int


@dataclass
class EventRequests:
    """Every /event request a page makes."""

    requests: list[Request] = field(default_factory=list)

    def listener(self, pixel: str) -> Callable[[Request], None]:
        def on_request(request: Request) -> None:
            if request.url.startswith(pixel + "/event"):
                self.requests.append(request)

        return on_request


async def view_page(page: Page, page_url: str, pixel: str) -> PixelView:
    """Load the publisher page; wait for the pixel image to load."""
    async with page.expect_response(
        lambda r: r.url.startswith(pixel + "/event?c_section=sports"), timeout=TIMEOUT_MS
    ) as response_info:
        await page.goto(page_url, wait_until="load", timeout=TIMEOUT_MS)
    response = await response_info.value
    await page.wait_for_function(
        "document.getElementById('px').complete", timeout=TIMEOUT_MS, polling=50
    )
    natural_width = await page.evaluate("document.getElementById('px').naturalWidth")
    return PixelView(
        request_headers=await response.request.all_headers(),
        response=response,
        response_headers=await response.all_headers(),
        natural_width=int(natural_width),
    )


async def fetch_json_uuid(page: Page, pixel: str) -> str:
    """From the publisher page: a credentialed cross-site fetch of the JSON answer."""
    body = await page.evaluate(
        """async (url) => {
            const r = await fetch(url, {credentials: "include"});
            return {status: r.status, body: await r.json()};
        }""",
        f"{pixel}/event?d_rtbd=json&c_section=sports",
    )
    assert body["status"] == 200, body
    uuid = body["body"]["uuid"]
    assert isinstance(uuid, str)
    assert UUID_RE.match(uuid), body
    return uuid


def cookie_uuids(header: str | None) -> list[str]:
    """The uuids in a Cookie request header (the prefix of `uuid=<uuid>.<ts>.<sig>`)."""
    if not header:
        return []
    found = []
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == "uuid":
            found.append(value.strip('"').split(".")[0])
    return found


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


# --- the tests --------------------------------------------------------------------------


async def test_browser_accepting_third_party_cookies_keeps_the_uuid(
    services: Services, tmp_path: Path
) -> None:
    pixel = services.start(LOCALHOST).origin
    with publisher(pixel) as page_origin:
        assert urlsplit(page_origin).hostname != urlsplit(pixel).hostname  # cross-site
        async with (
            chromium() as p,
            accepting_context(p, tmp_path / "profile", TIMEOUT_MS) as context,
        ):
            page = await context.new_page()
            seen = EventRequests()
            page.on("request", seen.listener(pixel))

            # First view: the pixel loads and sets the visitor cookie.
            first = await view_page(page, page_origin + "/", pixel)
            assert first.response.status == 200
            assert first.response_headers["content-type"].startswith("image/gif")
            assert first.natural_width == 1
            assert cookie_uuids(first.request_headers.get("cookie")) == []
            set_cookie = first.response_headers.get("set-cookie", "")
            assert set_cookie.startswith("uuid="), first.response_headers

            cookies = [c for c in await context.cookies(pixel) if c["name"] == "uuid"]
            assert len(cookies) == 1, await context.cookies()
            cookie = cookies[0]
            assert cookie["domain"] == "localhost"
            assert cookie["path"] == "/"
            assert cookie["httpOnly"] is True
            assert cookie["secure"] is True
            assert cookie["sameSite"] == "None"
            assert cookie["expires"] > 0  # persistent (Max-Age), not a session cookie
            uuid = cookie["value"].strip('"').split(".")[0]
            assert UUID_RE.match(uuid), cookie
            # the page's own site holds no cookie: the uuid is a third-party cookie
            assert [c for c in await context.cookies(page_origin) if c["name"] == "uuid"] == []

            await page.screenshot(
                path=str(screenshot_path("browser-third-party-accepted.png")), full_page=True
            )

            # Second view: the image request carries the cookie; the uuid is unchanged.
            second = await view_page(page, page_origin + "/", pixel)
            assert second.natural_width == 1
            assert cookie_uuids(second.request_headers.get("cookie")) == [uuid]
            again = [c for c in await context.cookies(pixel) if c["name"] == "uuid"]
            assert len(again) == 1
            assert again[0]["value"].strip('"').split(".")[0] == uuid

            # The page's listener saw both image requests, the second with the cookie.
            assert len(seen.requests) == 2
            sent = [cookie_uuids((await r.all_headers()).get("cookie")) for r in seen.requests]
            assert sent == [[], [uuid]]

            # A credentialed cross-site fetch of the JSON answer names the same visitor.
            assert await fetch_json_uuid(page, pixel) == uuid
            assert await fetch_json_uuid(page, pixel) == uuid
            await page.close()


async def test_browser_refusing_third_party_cookies_keeps_nothing(
    services: Services,
) -> None:
    pixel = services.start(LOCALHOST).origin
    with publisher(pixel) as page_origin:
        async with chromium() as p, refusing_context(p, TIMEOUT_MS) as context:
            page = await context.new_page()
            seen = EventRequests()
            page.on("request", seen.listener(pixel))

            # Why cookies were refused, as Chromium reports it.
            blocked: list[dict[str, Any]] = []
            cdp = await context.new_cdp_session(page)
            await cdp.send("Network.enable")

            def on_extra_info(params: dict[str, Any]) -> None:
                for entry in params.get("blockedCookies", []):
                    if str(entry.get("cookieLine", "")).startswith("uuid="):
                        blocked.append(entry)

            cdp.on("Network.responseReceivedExtraInfo", on_extra_info)

            first = await view_page(page, page_origin + "/", pixel)
            assert first.response.status == 200
            assert first.response_headers["content-type"].startswith("image/gif")
            assert first.natural_width == 1  # the pixel still loads
            # the service did offer the cookie; the browser refused it
            assert first.response_headers.get("set-cookie", "").startswith("uuid=")
            assert [c for c in await context.cookies() if c["name"] == "uuid"] == []

            for _ in range(int(TIMEOUT_S / 0.05)):
                if blocked:
                    break
                await asyncio.sleep(0.05)
            assert blocked, "Chromium reported no blocked uuid cookie"
            reasons = {r for entry in blocked for r in entry.get("blockedReasons", [])}
            assert "UserPreferences" in reasons, blocked

            await page.screenshot(
                path=str(screenshot_path("browser-third-party-refused.png")), full_page=True
            )

            second = await view_page(page, page_origin + "/", pixel)
            assert second.natural_width == 1
            assert cookie_uuids(second.request_headers.get("cookie")) == []
            assert [c for c in await context.cookies() if c["name"] == "uuid"] == []
            assert len(seen.requests) == 2
            for request in seen.requests:
                assert cookie_uuids((await request.all_headers()).get("cookie")) == []

            # Without a cookie, every answer names a fresh visitor.
            one = await fetch_json_uuid(page, pixel)
            two = await fetch_json_uuid(page, pixel)
            assert one != two
            assert [c for c in await context.cookies() if c["name"] == "uuid"] == []

            await cdp.detach()
            await page.close()

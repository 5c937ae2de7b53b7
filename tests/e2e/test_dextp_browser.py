"""Our cookies stay small whatever the number of partners (issue 17, SPEC §5): a real
Chromium that accepts third-party cookies runs credentialed `fetch`es of JSON /event
from a publisher page (http://127.0.0.1) to pixelsync (http://localhost), with 500
partners configured.

- A dextp cookie in the older format (150 partners handed out over the last 30 hours,
  3.1 KB) is read, and rewritten in the compact one on the first view.
- Every view hands out `max_partners_per_page` syncs until each partner was handed out
  once; a further view hands out nothing (paced by refresh_days, from the cookie alone:
  no partner here ever syncs back). Every cookie of ours stays within 1 KiB.
- Partners whose hand-out is older than their refresh_days are due again.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from playwright.async_api import BrowserContext, Page

from service.sync import DAY_MS, DEXTP_MAX_BYTES, HOUR_MS, format_dextp, parse_dextp
from tests.configs import syncing_partners
from tests.e2e.browser import accepting_context, chromium, requires_chromium, serve_page
from tests.services import Config, Services

pytestmark = requires_chromium

TIMEOUT_MS = 20_000
KEY = "dextp-browser-test-key"
DPIDS = [1000 + 7 * i for i in range(500)]  # spread out: no bitmap of consecutive dpids
PER_PAGE = 50
REFRESH_DAYS = 7
PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>Publisher</title></head>
<body><h1>Sports news</h1></body></html>"""
FETCH = """async (url) => {
  const resp = await fetch(url, {credentials: "include"});
  return {status: resp.status, body: await resp.json()};
}"""


async def view(page: Page, pixel: str) -> list[int]:
    """One page view's JSON /event: the dpids of its `ibs` list."""
    answer: dict[str, Any] = await page.evaluate(FETCH, f"{pixel}/event?d_rtbd=json")
    assert answer["status"] == 200, answer
    return [int(entry["id"]) for entry in answer["body"]["ibs"]]


async def our_cookies(context: BrowserContext, pixel: str) -> dict[str, str]:
    cookies = await context.cookies(pixel)
    assert len({c["name"] for c in cookies}) == len(cookies), cookies
    return {c["name"]: c["value"] for c in cookies}


async def set_dextp(context: BrowserContext, pixel: str, value: str) -> None:
    cookie: Any = {
        "name": "dextp",
        "value": value,
        # Chromium's CDP takes a Secure cookie for an https URL only; the host is the same,
        # and http://localhost is a secure origin: the browser sends it to pixelsync.
        "url": pixel.replace("http://", "https://", 1),
        "httpOnly": True,
        "secure": True,
        "sameSite": "None",
    }
    await context.add_cookies([cookie])


async def test_cookies_stay_small_and_pace_500_partners(services: Services, tmp_path: Path) -> None:
    toml = f"""
[sync]
max_partners_per_page = {PER_PAGE}
refresh_days = {REFRESH_DAYS}
{syncing_partners("http://[::1]:9", DPIDS)}"""  # never loaded: a JSON answer's syncs
    pixel = services.start(Config(toml, keys=(KEY,), host="localhost")).origin
    now_ms = int(time.time() * 1000)
    # Handed out before in the older format (as browsers hold it today): five partners a
    # view, a view an hour for the last 30 hours.
    before = {dpid: now_ms - i // 5 * HOUR_MS for i, dpid in enumerate(DPIDS[::-1][:150])}
    legacy = "|".join(f"{dpid}-1-{ms}" for dpid, ms in before.items())
    assert len(legacy) > 3000
    with serve_page(PAGE) as publisher:
        async with (
            chromium() as p,
            accepting_context(p, tmp_path / "profile", TIMEOUT_MS) as context,
        ):
            page = await context.new_page()
            await page.goto(publisher + "/", wait_until="load")
            await set_dextp(context, pixel, legacy)

            handed_out: Counter[int] = Counter()
            sizes = []
            for _ in range(len(DPIDS) // PER_PAGE + 1):
                dpids = await view(page, pixel)
                assert len(dpids) <= PER_PAGE
                handed_out.update(dpids)
                cookies = await our_cookies(context, pixel)
                assert cookies.keys() == {"uuid", "dextp"}
                assert all(len(v) <= DEXTP_MAX_BYTES for v in cookies.values()), cookies
                sizes.append(len(cookies["dextp"]))
                if not dpids:
                    break
            # Each partner handed out once; none of those the older cookie recorded.
            assert set(handed_out) == set(DPIDS) - set(before)
            assert set(handed_out.values()) == {1}
            assert await view(page, pixel) == []  # no one is due again yet
            dextp = (await our_cookies(context, pixel))["dextp"]
            assert dextp.startswith("2.") and sizes[-1] == len(dextp) <= DEXTP_MAX_BYTES
            recorded = parse_dextp(dextp)
            assert recorded.keys() == set(DPIDS)
            assert recorded == {d: ms - ms % HOUR_MS for d, ms in recorded.items()}

            # Thirty hand-outs older than refresh_days: those partners are due again.
            aged = DPIDS[100:130]
            old = now_ms - (REFRESH_DAYS * DAY_MS + HOUR_MS)
            await set_dextp(context, pixel, format_dextp({**recorded, **dict.fromkeys(aged, old)}))
            assert sorted(await view(page, pixel)) == aged
            assert await view(page, pixel) == []
            dextp = (await our_cookies(context, pixel))["dextp"]
            assert len(dextp) <= DEXTP_MAX_BYTES and parse_dextp(dextp).keys() == set(DPIDS)

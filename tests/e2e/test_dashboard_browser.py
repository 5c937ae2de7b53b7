"""The dashboard in a real Chromium (SPEC §11): refused without a key; opened once with
`?token=`, it shows the figures of /v1/loss and /v1/match-rates after crafted traffic,
its charts are drawn (one circle per point with a value), it has no horizontal scroll
on a phone-sized screen, and nothing on it reaches outside the service.

Screenshots (laptop and phone) go to tests/artifacts/."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.e2e.browser import chromium, refusing_context, requires_chromium
from tests.e2e.test_sync_browser import screenshot_path
from tests.partners import PartnerServer
from tests.services import Config, Service
from tests.web.test_dashboard import (
    ADMIN,
    AUTH,
    LOSSY_DEST,
    OK_DEST,
    dashboard_service,
    pct,
    traffic,
)

pytestmark = requires_chromium
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def service_config(partner: PartnerServer) -> Config:
    return dashboard_service(partner)  # the HTTP-level tests' service: a module of its own


ROWS_JS = """table => [...document.querySelectorAll(`#${table} tbody tr`)].map(
  tr => [tr.dataset.id, tr.className, [...tr.cells].map(td => td.textContent.trim())])"""
POINTS_JS = """svg => Object.fromEntries([...document.querySelectorAll(`#${svg} g.series`)].map(
  g => [g.dataset.id, g.querySelectorAll('circle').length]))"""


async def test_the_dashboard_in_a_browser(
    svc: Service,
    http: httpx.AsyncClient,
) -> None:
    await traffic(http, 2)

    async def counted() -> bool:
        doc = (await http.get("/v1/loss?window=1h", headers=AUTH)).json()
        return any(d["id"] == LOSSY_DEST and d["instructed"] >= 2 for d in doc["destinations"])

    assert await wait_for(counted)
    await asyncio.sleep(1.5)  # nothing more is on its way to the counters
    outside: list[str] = []
    async with chromium() as p, refusing_context(p, TIMEOUT_MS) as context:
        page = await context.new_page()
        page.on(
            "request",
            lambda r: None if r.url.startswith(svc.url) else outside.append(r.url),
        )
        refused = await page.goto(f"{svc.url}/dashboard")
        assert refused is not None and refused.status == 401
        shown = await page.goto(f"{svc.url}/dashboard?token={ADMIN}")
        assert shown is not None and shown.status == 200
        assert page.url == f"{svc.url}/dashboard"  # the key left the address bar
        loss = {
            w: (await http.get(f"/v1/loss?window={w}", headers=AUTH)).json()
            for w in ("1h", "24h", "7d")
        }
        rates = (await http.get("/v1/match-rates", headers=AUTH)).json()
        for w, doc in loss.items():
            rows = {r[0]: r for r in await page.evaluate(ROWS_JS, f"dest-{w}")}
            points = await page.evaluate(POINTS_JS, f"chart-loss-{w}")
            for d in doc["destinations"]:
                ident, cls, cells = rows[f"d{d['id']}"]
                assert cells[2:8] == [
                    *(f"{d[c]:,}" for c in ("instructed", "loaded", "confirmed")),
                    *(f"{d[c]:,}" for c in ("delivered", "failed")),
                    pct(d["loss_rate"]),
                ]
                assert (cls == "over") == (d["loss_rate"] is not None and d["loss_rate"] > 0.25)
                assert points[ident] == sum(p["loss_rate"] is not None for p in d["series"])
            syncs = {r[0]: r for r in await page.evaluate(ROWS_JS, f"sync-{w}")}
            match_points = await page.evaluate(POINTS_JS, f"chart-match-{w}")
            for partner in doc["partners"]:
                _, _, cells = syncs[f"p{partner['dpid']}"]
                assert cells[1:3] == [f"{partner['instructed']:,}", f"{partner['completed']:,}"]
                defined = sum(q["instructed"] > 0 for q in partner["series"])
                assert match_points[f"p{partner['dpid']}"] == defined
        one_hour = {d["id"]: d for d in loss["1h"]["destinations"]}
        assert one_hour[LOSSY_DEST]["loss_rate"] == 1.0 and one_hour[OK_DEST]["loss_rate"] == 0
        assert await page.locator(f'#dest-1h tr[data-id="d{LOSSY_DEST}"].over').count() == 1
        assert await page.locator("#chart-loss-1h polyline, #chart-loss-1h circle").count() > 0
        table = {r[0]: r[2] for r in await page.evaluate(ROWS_JS, "match-rates-table")}
        for partner in rates["partners"]:
            cells = table[f"p{partner['dpid']}"]
            assert cells[1:4] == [
                f"{partner['instructed']:,}",
                f"{partner['completed']:,}",
                pct(partner["match_rate"]),
            ]
        # The hostile partner name is text on the page, not a script that ran.
        assert await page.evaluate("() => document.scripts.length") == 0
        assert "<script>alert(1)</script>" in await page.locator("#sync-1h").inner_text()
        await page.screenshot(path=str(screenshot_path("dashboard-laptop.png")), full_page=True)
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.reload()
        fits: Any = await page.evaluate(
            "() => document.documentElement.scrollWidth <= window.innerWidth"
        )
        assert fits, "the page scrolls sideways on a phone"
        await page.screenshot(path=str(screenshot_path("dashboard-phone.png")), full_page=True)
        await page.close()
    assert outside == []

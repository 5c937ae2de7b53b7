"""A real Chromium runs Prebid's user syncs against pixelsync (SPEC §15), the way
Prebid.js's server-to-server adapter does.

Two sites, no DNS (TESTING.md, "A real browser"):
- the publisher page on http://localhost:<page port>: it POSTs /cookie_sync to pixelsync
  cross-site with credentials, then drops each sync it gets back, an <img> for
  "redirect" and an <iframe> for "iframe";
- pixelsync on http://127.0.0.1:<svc port> (its public_url), and the bidders' sync
  server on http://127.0.0.1:<bidder port> (the sync partners of test_sync_browser):
  each sync call answers 302 to the callback with the bidder's own uid in place of
  $UID, as bidders do.

Afterwards /getuids, fetched by the page with credentials (its origin is in [prebid]
cors_origins, which credentialed CORS on /getuids needs), has every bidder's uid,
and a second /cookie_sync hands out no sync: all are in the match table. A browser that
refuses third-party cookies runs the same syncs, but /setuid stores nothing: each
callback is bounced once (SPEC §3) and comes back without a cookie (172).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.identity import today
from service.store import Store
from tests.conftest import wait_for
from tests.e2e.browser import (
    accepting_context,
    chromium,
    refusing_context,
    requires_chromium,
    serve_page,
)
from tests.e2e.test_sync_browser import Partners, Responses, cookie_value, uuid_of
from tests.services import Config, Services

TIMEOUT_MS = 20_000
KEY = "prebid-browser-test-key"
BIDDERS = {901: ("redirector", "redirect"), 902: ("framer", "iframe"), 903: ("both", "both")}

pytestmark = requires_chromium


@pytest.fixture
def bidders() -> Iterator[Partners]:
    """Every bidder's sync server, on 127.0.0.1 (the site of pixelsync, another port)."""
    server = Partners(host="127.0.0.1")
    yield server
    server.close()


def called(bidders: Partners) -> dict[int, tuple[str, str]]:
    """dpid -> (how the bidder was called: img or frame, the uid it sent back)."""
    paths = {int(r.query["p"][0]): r.path.strip("/") for r in bidders.requests}
    return {c.dpid: (paths[c.dpid], c.uid) for c in bidders.calls}


def config(bidders: Partners, page_origin: str) -> Config:
    """The bidders as partners; the publisher's page may read /getuids."""
    blocks = [f"[prebid]\ncors_origins = [{json.dumps(page_origin)}]\n"]
    for dpid, (code, kind) in BIDDERS.items():
        query = f"p={dpid}&aam=${{DD_UUID}}&redir=${{CALLBACK}}"
        frame, img = f"{bidders.origin}/frame?{query}", f"{bidders.origin}/img?{query}"
        lines = [f"dpid = {dpid}", f'name = "{code}"']
        if kind == "iframe":
            lines += ['sync_type = "iframe"', f'sync_url = "{frame}"']
        else:
            lines.append(f'sync_url = "{img}"')
        if kind == "both":
            lines.append(f'iframe_sync_url = "{frame}"')
        blocks.append("[[partners]]\n" + "\n".join(lines) + "\n")
    return Config("\n".join(blocks), keys=(KEY,))


def page() -> bytes:
    """A publisher page doing what Prebid.js's pbsBidAdapter does with s2sConfig's
    syncEndpoint: POST /cookie_sync with credentials, then one image or iframe per sync.
    pixelsync's origin comes in the page's query (?sync=): the page is served first, so
    that pixelsync's configuration can name the page's origin."""
    script = """
const SYNC = new URLSearchParams(location.search).get("sync");
window.answer = fetch(SYNC + "/cookie_sync", {
  method: "POST",
  credentials: "include",
  headers: {"content-type": "text/plain"},
  body: JSON.stringify({bidders: ["REDIRECTOR", "Framer", "both"], gdpr: 0, debug: true}),
}).then((r) => r.json()).then((answer) => {
  for (const b of answer.bidder_status) {
    const tag = document.createElement(b.usersync.type === "iframe" ? "iframe" : "img");
    tag.src = b.usersync.url;
    tag.width = tag.height = 0;
    document.body.appendChild(tag);
  }
  return answer;
});
window.uids = () => fetch(SYNC + "/getuids", {credentials: "include"}).then((r) => r.json());
window.again = () => fetch(SYNC + "/cookie_sync", {
  method: "POST", credentials: "include", body: "{}",
}).then((r) => r.json());
"""
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Publisher</title></head>'
        f"<body><h1>News</h1><script>{script}</script></body></html>"
    ).encode()


async def test_prebid_syncs_in_a_browser_that_accepts_third_party_cookies(
    services: Services, bidders: Partners, store: Store, tmp_path: Path
) -> None:
    with serve_page(page(), TIMEOUT_MS / 1000) as origin:
        site = origin.replace("127.0.0.1", "localhost")  # another site
        pixel = services.start(config(bidders, site)).origin  # http://127.0.0.1:<port>
        page_url = f"{site}/?sync={pixel}"
        async with chromium() as p, accepting_context(p, tmp_path / "profile") as context:
            tab = await context.new_page()
            await tab.goto(page_url, wait_until="load")
            answer: dict[str, Any] = await tab.evaluate("window.answer")
            assert answer["status"] == "no_cookie"
            assert [(b["bidder"], b["usersync"]["type"]) for b in answer["bidder_status"]] == [
                ("REDIRECTOR", "redirect"),  # as the request spelled them
                ("Framer", "iframe"),
                ("both", "iframe"),
            ]
            cookie = await cookie_value(context, pixel, "uuid")
            assert cookie is not None
            uuid = uuid_of(cookie)

            async def all_stored() -> bool:
                return len(await store.mappings(uuid, today())) == len(BIDDERS)

            assert await wait_for(all_stored, timeout=TIMEOUT_MS / 1000)
            calls = called(bidders)
            assert {d: kind for d, (kind, _) in calls.items()} == {
                901: "img",
                902: "frame",
                903: "frame",
            }
            assert all(c.aam == uuid for c in bidders.calls)  # ${DD_UUID}
            uids: dict[str, Any] = await tab.evaluate("window.uids()")
            assert uids == {"buyeruids": {BIDDERS[d][0]: uid for d, (_, uid) in calls.items()}}
            again: dict[str, Any] = await tab.evaluate("window.again()")
            assert again == {"status": "ok", "bidder_status": []}


async def test_a_browser_that_refuses_third_party_cookies_stores_nothing(
    services: Services, bidders: Partners, store: Store
) -> None:
    with serve_page(page(), TIMEOUT_MS / 1000) as origin:
        site = origin.replace("127.0.0.1", "localhost")  # another site
        pixel = services.start(config(bidders, site)).origin  # http://127.0.0.1:<port>
        async with chromium() as p, refusing_context(p) as context:
            tab = await context.new_page()
            setuids = Responses(tab, pixel + "/setuid")
            await tab.goto(f"{site}/?sync={pixel}", wait_until="load")
            answer: dict[str, Any] = await tab.evaluate("window.answer")
            assert len(answer["bidder_status"]) == len(BIDDERS)  # handed out all the same

            async def all_called_back() -> bool:
                return len(setuids.seen) == 2 * len(BIDDERS)

            # Each callback bounced once (302 to itself plus d_bounce=1), then 172.
            assert await wait_for(all_called_back, timeout=TIMEOUT_MS / 1000)
            outcomes = [
                (r.url.endswith("&d_bounce=1"), r.status, r.headers.get("x-error"))
                for r in setuids.seen
            ]
            assert sorted(outcomes) == [(False, 302, None)] * len(BIDDERS) + [
                (True, 200, "172")
            ] * len(BIDDERS)
            await store.drain()
            for dpid, (_, uid) in called(bidders).items():
                assert await store.lookup(dpid, [uid], today()) == {}
            assert await tab.evaluate("window.uids()") == {}

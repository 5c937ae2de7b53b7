"""GET /dashboard (SPEC §11): the loss and match-rate page, for unscoped admin keys only.

An admin key is presented as a bearer token, or once as `?token=`: that answer sets a
signed, HttpOnly session cookie and redirects to /dashboard, so the key leaves the
address bar and the history, and the page's own refreshes carry the cookie. The
session names the key: removing the key from the configuration ends its sessions."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, Final

from itsdangerous import BadData, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .. import metrics
from ..activities import denials
from ..config import DashboardConfig
from ..dashboard import CSP, Page, Totals, render
from ..loss import WINDOWS, minutes
from ..store import Store, StoreError
from ..tally import REQUESTS_FIELD
from .api import MATCH_RATE_MINUTES, Api, ApiKeys, Caller

log = logging.getLogger("pixelsync.dashboard")

SESSION_COOKIE: Final = "ps_dashboard"
PAGE_WINDOWS: Final = ("1h", "24h", "7d")
HOURS: Final = {"1h": 1, "24h": 24, "7d": 168}
MAPPINGS_MAX_AGE_S: Final = 30.0
_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Stats:
    """The totals that are not in the per-minute buckets: distinct visitors (a few
    PFCOUNTs) and mappings stored (a thousand HLENs, so kept MAPPINGS_MAX_AGE_S);
    also set as Prometheus gauges."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._mappings: tuple[float, int, bool] | None = None

    async def get(self) -> tuple[dict[str, int], int, bool]:
        now = time.time()
        visitors = {w: await self.store.distinct_visitors(h, now) for w, h in HOURS.items()}
        if self._mappings is None or now - self._mappings[0] > MAPPINGS_MAX_AGE_S:
            self._mappings = (now, *await self.store.mappings_stored())
        _, mappings, exact = self._mappings
        for w, n in visitors.items():
            metrics.DISTINCT_VISITORS.labels(w).set(n)
        metrics.MAPPINGS_STORED.set(mappings)
        return visitors, mappings, exact


class Dashboard:
    def __init__(
        self,
        store: Store,
        api: Api,
        keys: ApiKeys,
        secret_keys: list[str],
        options: DashboardConfig,
        public_url: str = "",
    ) -> None:
        self.store = store
        self.api = api
        self.keys = keys
        self.stats = Stats(store)
        self.threshold = options.loss_threshold
        self.refresh_s = options.refresh_s
        self.session_s = options.session_hours * 3600
        # Behind a TLS proxy that is not in trusted_proxies, the request looks like
        # plain HTTP: the public URL says how browsers reach us.
        self.https = public_url.startswith("https://")
        # itsdangerous wants keys oldest first; it signs with the last.
        self._sessions = URLSafeTimedSerializer(
            list(reversed(secret_keys)), salt="pixelsync.dashboard"
        )

    async def show(self, request: Request) -> Response:
        token = request.query_params.get("token")
        if token is not None:
            caller = self.keys.by_token(token)
            if not _admin(caller):
                return _refused()
            assert caller is not None
            response = RedirectResponse("/dashboard", status_code=303, headers=_HEADERS)
            response.set_cookie(
                SESSION_COOKIE,
                self._sessions.dumps([caller.name, self.keys.fingerprint(caller.name)]),
                max_age=self.session_s,
                path="/dashboard",
                secure=request.url.scheme == "https" or self.https,
                httponly=True,
                samesite="strict",
            )
            return response
        caller = self.keys.caller(request) or self._session(request)
        if not _admin(caller):
            return _refused()
        try:
            page = await self.page()
        except StoreError:
            return HTMLResponse(
                "<!doctype html><title>503</title><p>The store is unreachable; this page "
                "refreshes on its own.",
                status_code=503,
                headers={**_HEADERS, "Retry-After": "10", "Refresh": "10"},
            )
        return HTMLResponse(render(page), headers=_HEADERS)

    async def page(self) -> Page:
        """Every figure of the page from one read of 7 days of per-minute buckets, cut
        into the windows as /v1/loss and /v1/match-rates cut them."""
        now = time.time()
        now_minute = int(now) // 60
        span = range(now_minute - MATCH_RATE_MINUTES, now_minute + 1)
        buckets = await self.store.counts_by_minute(span)
        loss: dict[str, Any] = {}
        requests: dict[str, int] = {}
        privacy: dict[str, Any] = {}
        for window in PAGE_WINDOWS:
            wanted = minutes(window, now_minute)
            part = buckets[wanted.start - span.start :]
            assert len(part) == len(wanted) and window in WINDOWS
            loss[window] = self.api.loss_doc(window, now_minute, part)
            requests[window] = sum(b.get(REQUESTS_FIELD, 0) for b in part)
            privacy[window] = denials(_summed(part), self.api.names)
        totals = _summed(buckets)
        visitors, mappings, exact = await self.stats.get()
        return Page(
            loss=loss,
            match_rates=self.api.match_rates_doc(totals),
            totals=Totals(requests, visitors, mappings, exact),
            threshold=self.threshold,
            refresh_s=self.refresh_s,
            privacy=privacy,
            generated=datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        )

    def _session(self, request: Request) -> Caller | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            doc = self._sessions.loads(raw, max_age=self.session_s)
        except BadData:
            return None
        if not (isinstance(doc, list) and len(doc) == 2 and all(isinstance(v, str) for v in doc)):
            return None
        return self.keys.named(doc[0], doc[1])


def _summed(buckets: list[dict[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for bucket in buckets:
        for field, n in bucket.items():
            totals[field] = totals.get(field, 0) + n
    return totals


def _admin(caller: Caller | None) -> bool:
    """The page shows every partner and the service's totals: an operator's key only."""
    return caller is not None and caller.operator


def _refused() -> Response:
    return HTMLResponse(
        "<!doctype html><title>401</title><p>The dashboard needs an admin API key: "
        "<code>Authorization: Bearer &lt;key&gt;</code>, or open "
        "<code>/dashboard?token=&lt;key&gt;</code> once.",
        status_code=401,
        headers={**_HEADERS, "WWW-Authenticate": 'Bearer realm="pixelsync"'},
    )

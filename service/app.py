"""create_app(settings): the HTTP app (routes, middleware, lifespan) over the store and
the domain objects that wiring.py builds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from . import gctune, metrics
from .config import ConfigError, Settings, UrlDestinationConfig, load_settings
from .consent import PurposeOnePolicy
from .identity import CookieSigner, today
from .logs import AccessLog
from .prebid import Bidders
from .signing_keys import settings_key_check
from .store import Prune, Store, StoreError
from .sync import ChainTokens, outbound_partners, partner_rules
from .tally import REQUESTS_FIELD, Tally
from .web.api import Api, ApiKeys, http_error
from .web.chain import ChainEndpoint
from .web.cookies import VisitorCookies
from .web.dashboard import Dashboard, Stats
from .web.dest5 import Dest5Endpoint, SyncOffers
from .web.event import EventEndpoint, OptOutEndpoint
from .web.ibs import PATH_FORM as IBS_PATH_FORM
from .web.ibs import IbsEndpoint
from .web.openapi import openapi
from .web.ops import Listeners, admin_only, healthz, metrics_endpoint, not_found, readyz
from .web.pipeline import Opening, PrivacyRules
from .web.prebid import PrebidEndpoints
from .web.tracking import ACK_PREFIX, FIRE_PREFIX, AckEndpoint, FireEndpoint
from .wiring import Domain, build_store

log = logging.getLogger("pixelsync")


async def _flush_counts_forever(store: Store, interval_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(interval_s)
        store.flush_counts(time.time())
        metrics.flush()  # the hot paths' Prometheus counts


async def _stats_forever(stats: Stats, interval_s: float = 60.0) -> None:
    """The gauges of distinct visitors and mappings stored, for Prometheus."""
    while True:
        with contextlib.suppress(StoreError):  # next round; /readyz says why
            await stats.get()
        await asyncio.sleep(interval_s)


async def _sweep_forever(store: Store, interval_s: int, profiles: Prune) -> None:
    """Retention (SPEC §12): one process at a time, as the Redis lock decides."""
    await asyncio.sleep(random.uniform(5, 60))
    while True:
        try:
            if await store.acquire_lock("sweep", interval_s * 1000):
                counts = await store.sweep(today(), profiles=profiles)
                log.info("retention sweep done", extra=counts)
        except Exception as exc:  # the sweeper must outlive any failure
            log.error("retention sweep failed", extra={"error": repr(exc)})
        await asyncio.sleep(interval_s)


class HotPaths:
    """Sends the hot endpoints straight to their raw ASGI handlers, past Starlette's
    middleware and router; everything else (and the lifespan) goes to Starlette.
    An exception in a handler is answered 500 by the server, as Starlette would."""

    def __init__(
        self,
        app: Starlette,
        hot: dict[str, ASGIApp],
        prefixed: dict[str, ASGIApp],
        tally: Tally | None = None,
        listeners: Listeners | None = None,
    ) -> None:
        self.app = app
        self._listeners = listeners  # with an admin listener: who answers what
        self.state = app.state
        self._tally = tally or Tally()  # browser requests, for the dashboard's totals
        self._hot = hot
        self._prefixed = list(prefixed.items())  # /ibs:…, /fire/<token>, /ack/<token>

    @property
    def paths(self) -> list[str]:
        """Every path served: the hot ones and Starlette's routes."""
        routes = (str(getattr(r, "path", "")) for r in self.app.routes)
        return [*self._hot, *(p for p, _ in self._prefixed), *routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if self._listeners is not None and not self._listeners.allows(scope, path):
                await not_found(scope, receive, send)
                return
            handler = self._hot.get(path)
            if handler is None:
                for prefix, candidate in self._prefixed:
                    if path.startswith(prefix):
                        handler = candidate
                        break
            if handler is not None:
                self._tally.add(REQUESTS_FIELD)
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings, *, server_times_body: bool = False) -> HotPaths:
    """`server_times_body`: the server bounds a POST body's time itself (uvicorn with
    our protocol), so the endpoints need not."""
    if not settings.redis_url:
        # Several workers must share one server: `pixelsync serve` starts it once.
        raise ConfigError(
            [
                "[server]: key 'redis_url': empty; run `pixelsync serve`, which "
                "starts the embedded Valkey, or set a Redis URL"
            ]
        )
    store = build_store(settings, settings.redis_url)
    cookies = VisitorCookies(settings.cookies, CookieSigner(settings.secret_keys))
    access = AccessLog()
    privacy = PrivacyRules(
        vendor_id=settings.server.vendor_id,
        gdpr_default=settings.privacy.gdpr_default,
        honor_gpc=settings.privacy.honor_gpc,
        purpose_one=PurposeOnePolicy(
            settings.privacy.purpose_one_treatment, settings.privacy.purpose_one_access_allowed
        ),
    )
    opening = Opening(
        cookies,
        privacy,
        max_query=settings.limits.max_query_bytes,
        max_body=settings.limits.max_body_bytes,
        body_timeout_s=None if server_times_body else settings.limits.head_timeout_s,
    )

    domain = Domain.build(settings, store)
    for d in settings.destinations:
        if isinstance(d, UrlDestinationConfig) and d.tracked:
            # At 0 from the start: a destination whose pixels never load must show a
            # 100 % loss in Prometheus, not a missing series.
            for counter in ("instructed", "loaded"):
                metrics.child(metrics.DESTINATIONS, str(d.id), counter)
    qualifier, tokens, loss = domain.qualifier, domain.tokens, domain.loss
    sender, realtime, profiles = domain.sender, domain.realtime, domain.profiles
    if sender is not None:  # erasures reach the s2s partners as exits (SPEC §12)
        store.on_erased(profiles.erased)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.start()  # a bucket-count mismatch (StoreError) stops start-up
        if sender is not None:
            sender.start()
        visitor_days = settings.cookies.ttl_days
        sweeper = asyncio.create_task(
            _sweep_forever(
                store,
                settings.store.sweep_interval_s,
                lambda profile, day, seen: profiles.pruned(profile, day, visitor_days, seen),
            )
        )
        access_writer = asyncio.create_task(access.run())
        counter = asyncio.create_task(_flush_counts_forever(store))
        stats = asyncio.create_task(_stats_forever(dashboard.stats))
        log.info("pixelsync ready", extra={"public_url": settings.public_url})
        try:
            yield
        finally:
            sweeper.cancel()
            access_writer.cancel()
            access.flush()
            counter.cancel()
            stats.cancel()
            await domain.close(timeout=5.0)
            store.flush_counts(time.time())
            metrics.flush()
            await store.close()
            log.info("pixelsync stopped", extra={"unflushed": store.buffered})

    offers = SyncOffers(
        store,
        outbound_partners(settings.partners),
        settings.cookies,
        limit=settings.sync.max_partners_per_page,
        public_url=settings.public_url,
        gate=domain.gate,
    )
    prebid = PrebidEndpoints(
        store,
        opening,
        Bidders(settings.partners),
        public_url=settings.public_url,
        bounce=settings.cookies.bounce,
        shuffle=random.Random().shuffle,
        cors_origins=frozenset(o.encode() for o in settings.prebid.allowed_origins),
        gate=domain.gate,
    )
    hot: dict[str, ASGIApp] = {
        "/event": EventEndpoint(
            opening, store, settings, access, offers, profiles, realtime or None
        ),
        "/dest5.html": Dest5Endpoint(opening, offers, profiles),
        "/demoptout.jpg": OptOutEndpoint(opening, store),
        "/ibs": IbsEndpoint(
            opening,
            store,
            partner_rules(settings.partners),
            bounce=settings.cookies.bounce,
            public_url=settings.public_url,
            gate=domain.gate,
        ),
        "/sync/chain": ChainEndpoint(
            opening, offers, ChainTokens(settings.secret_keys), public_url=settings.public_url
        ),
        "/cookie_sync": prebid.cookie_sync(),
        "/setuid": prebid.setuid(),
        "/getuids": prebid.getuids(),
    }
    prefixed: dict[str, ASGIApp] = {
        IBS_PATH_FORM: hot["/ibs"],
        FIRE_PREFIX: FireEndpoint(opening, store, tokens, loss),
        ACK_PREFIX: AckEndpoint(opening, store, tokens, loss),
    }
    keys = ApiKeys(settings.api_keys)
    api = Api(
        store,
        keys,
        settings.partners,
        qualifier=qualifier,
        destinations=settings.destinations,
        traits=settings.traits,
        segments=settings.segments,
    )
    dashboard = Dashboard(
        store, api, keys, settings.secret_keys, settings.dashboard, settings.public_url
    )
    admin = settings.server.admin_address
    # The operator endpoints: on the admin listener only, or for admin keys (web/ops.py).
    listeners = None if admin is None else Listeners(admin[1])
    operator = admin_only(keys) if listeners is None else (lambda endpoint: endpoint)
    routes = [
        *api.routes(),
        Route("/dashboard", dashboard.show, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", operator(readyz(store)), methods=["GET", "HEAD"]),
        Route("/metrics", operator(metrics_endpoint), methods=["GET"]),
        Route("/openapi.json", operator(openapi), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.store = store
    app.state.settings = settings
    return HotPaths(app, hot, prefixed, store.tally, listeners)


def app_from_env() -> ASGIApp:
    """The uvicorn factory used by `pixelsync serve` (config path and URL come by env)."""
    settings = load_settings()
    if "PIXELSYNC_SERVER" not in os.environ:  # not started by `pixelsync serve`, which
        # judged the keys knowing its --host: a server's own command line did
        keys = settings_key_check(settings, listen_host=None)
        if keys.refused:
            raise ConfigError(list(keys.lines))
    # Set by `pixelsync serve` for uvicorn with our protocol (cli._uvicorn).
    server_times_body = os.environ.get("PIXELSYNC_BODY_TIMER") == "server"
    app: ASGIApp = create_app(settings, server_times_body=server_times_body)
    trusted = settings.server.trusted_proxies
    if os.environ.get("PIXELSYNC_SERVER") == "granian" and trusted:
        # uvicorn does this itself (proxy_headers, forwarded_allow_ips); granian does not.
        app = cast(ASGIApp, ProxyHeadersMiddleware(cast(Any, app), trusted_hosts=trusted))
    gctune.tune()  # in each worker, once its app is built
    return app

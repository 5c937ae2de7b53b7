"""Builds the store and the domain objects from the settings: shared by the web app
(app.py) and the batch commands (batch/run.py), which load no HTTP code."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from urllib.parse import urlsplit

import httpx

from .activities import Policies, PrivacyGate
from .config import ConfigError, FileDestinationConfig, S2SDestinationConfig, Settings
from .destinations import DestinationRules, Tokens
from .macros import Template
from .outbound.realtime import RealtimeCaller, RealtimePartner, RealtimeSettings
from .outbound.s2s import S2SDestination, S2SSender
from .qualification import Qualifier
from .replacements.partner_transport import ClientGetter, PartnerTransport, proxied
from .store import KeySchema, Retention, Store, connect
from .visits import Profiles, TallyCounters, loss_counters, realtime_counters


class _NoCookies(DefaultCookiePolicy):
    def set_ok(self, cookie: Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: urllib.request.Request) -> bool:
        return False


_NO_COOKIES = _NoCookies()


def build_store(settings: Settings, url: str, *, read_back: bool = True) -> Store:
    retention = Retention(
        visitor_days=settings.cookies.ttl_days,
        mapping_days={p.dpid: p.mapping_ttl_days for p in settings.partners},
        default_mapping_days=settings.sync.mapping_ttl_days,
    )
    cluster = settings.server.redis_cluster
    return Store(
        connect(url, cluster=cluster),
        KeySchema(settings.store.match_buckets),
        retention,
        buffer_max=settings.store.buffer_max_ops,
        write_client=connect(url, cluster=cluster, socket_timeout=None),
        write_url=url,
        read_back=read_back,
        exports=[
            (d.id, d.partner)
            for d in settings.destinations
            if isinstance(d, FileDestinationConfig) and d.partner is not None
        ],
    )


@dataclass
class Domain:
    """The domain objects wired to a store: shared by the web app and the batch jobs."""

    qualifier: Qualifier
    rules: DestinationRules
    tokens: Tokens
    loss: TallyCounters
    partner_http: httpx.AsyncClient  # one client for every partner call
    sender: S2SSender | None
    realtime: RealtimeCaller
    profiles: Profiles
    gate: PrivacyGate  # every partner's privacy policy, its denials counted
    gdpr_default: int = 0  # [privacy] gdpr_default: whether GDPR applies to an export

    @classmethod
    def build(cls, settings: Settings, store: Store) -> Domain:
        qualifier = Qualifier(settings.traits, settings.segments)
        rules = DestinationRules(settings.destinations)
        tokens = Tokens(settings.secret_keys, settings.public_url)
        loss = loss_counters(store.tally)
        gate = PrivacyGate(Policies(settings.partners), store.tally)
        s2s_destinations = s2s_from(settings, os.environ)
        # One client for every partner call, keep-alive and bounded. A visitor's call
        # must not carry a cookie a partner set for another: no cookie is kept.
        getter: PartnerTransport | ClientGetter
        if proxied(os.environ):  # the pool speaks no proxy: httpx's transport does
            partner_http = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
                follow_redirects=False,
                cookies=CookieJar(policy=_NO_COOKIES),
            )
            getter = ClientGetter(partner_http)
        else:
            getter = PartnerTransport(max_connections=32, max_keepalive=32)
            partner_http = httpx.AsyncClient(
                transport=getter, follow_redirects=False, cookies=CookieJar(policy=_NO_COOKIES)
            )
        sender = (
            S2SSender(
                s2s_destinations,
                partner_http,
                loss.count,
                client_id=urlsplit(settings.public_url).hostname or "pixelsync",
            )
            if s2s_destinations
            else None
        )
        rt = settings.realtime
        realtime = RealtimeCaller(
            [
                RealtimePartner(p.dpid, Template.parse(p.realtime_url), dict(p.realtime_traits))
                for p in settings.partners
                if p.realtime_url
            ],
            getter,
            realtime_counters(store.tally).count,
            RealtimeSettings(
                budget_s=rt.budget_ms / 1000,
                cache_s=rt.cache_s,
                breaker_failures=rt.breaker_failures,
                breaker_open_s=rt.breaker_open_s,
                max_answer_bytes=rt.max_answer_bytes,
                max_in_flight=rt.max_in_flight,
            ),
        )
        profiles = Profiles(
            store,
            qualifier,
            rules,
            tokens,
            loss,
            s2s=sender,
            gate=gate,
            region=settings.server.region,
        )
        return cls(
            qualifier,
            rules,
            tokens,
            loss,
            partner_http,
            sender,
            realtime,
            profiles,
            gate,
            settings.privacy.gdpr_default,
        )

    def export_allowed(self, dpid: int) -> bool:
        """Whether the partner's rules let its file destinations be exported to."""
        return self.gate.export_permits(dpid, self.gdpr_default)

    async def close(self, timeout: float = 5.0) -> None:
        if self.sender is not None:
            await self.sender.close(timeout=timeout)
        await self.realtime.close()
        await self.partner_http.aclose()


def s2s_from(settings: Settings, environ: Mapping[str, str]) -> list[S2SDestination]:
    """The s2s destinations, their HMAC secrets read from the environment."""
    out, problems = [], []
    for d in settings.destinations:
        if not isinstance(d, S2SDestinationConfig):
            continue
        secret = None
        if d.hmac_secret_env:
            value = environ.get(d.hmac_secret_env)
            if not value:
                problems.append(
                    f"[[destinations]] id {d.id}: key 'hmac_secret_env': "
                    f"environment variable {d.hmac_secret_env} is not set"
                )
                continue
            secret = value.encode()
        assert d.partner is not None  # required for s2s by the config
        out.append(
            S2SDestination(
                d.id,
                d.url,
                d.partner,
                secret,
                batch_max_users=d.batch_max_users,
                timeout_ms=d.timeout_ms,
                retries=d.retries,
            )
        )
    if problems:
        raise ConfigError(problems)
    return out

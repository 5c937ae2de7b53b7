"""Service-initiated ID syncs (SPEC §5): which partners to sync now, handed out in
the `dest5.html` iframe and in the `ibs` list of JSON /event answers."""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .. import metrics
from ..activities import Activity, PrivacyGate
from ..config import CookiesConfig
from ..consent import Privacy
from ..destinations import Fire
from ..errors import RequestError
from ..identity import Visitor, VisitorKind, today
from ..macros import consent_values
from ..signals import consent_params, first_values, parse_pairs
from ..store import PartnerUid, Store, StoreError
from ..sync import (
    OutboundPartner,
    due_partners,
    is_compact_dextp,
    parse_dextp,
    record_hand_outs,
    sync_url,
)
from ..visits import Profiles
from .common import SyncCounters
from .cookies import cookie_value
from .pipeline import BrowserEndpoint, Call, Opening, refusal_headers
from .responses import NO_CACHE, NOSNIFF, Headers, send

MAPPING_READ_TIMEOUT_S: Final = 0.05  # an unreachable Redis must not hold the answer up
CSP: Final = (b"content-security-policy", b"default-src 'none'; img-src *; frame-src *")


@dataclass(frozen=True)
class Offer:
    partner: OutboundPartner
    url: str


class SyncOffers:
    """Picks the due partners for a visitor and records them in the dextp cookie."""

    def __init__(
        self,
        store: Store,
        partners: list[OutboundPartner],
        cookies: CookiesConfig,
        *,
        limit: int,
        public_url: str,
        gate: PrivacyGate,
    ) -> None:
        self.store = store
        self.gate = gate
        self.partners = partners
        self.limit = limit
        self.public_url = public_url
        self.name = cookies.sync_name
        self._prefix = self.name.encode() + b"="
        domain = f"; Domain={cookies.domain}" if cookies.domain else ""
        self._attrs = (
            f"; Path=/; Max-Age={cookies.ttl_days * 86400}{domain}; HttpOnly; Secure; SameSite=None"
        ).encode()
        self.by_dpid = {p.dpid: p for p in partners}
        self.counters = SyncCounters(store.tally, self.by_dpid)

    async def offer(
        self,
        visitor: Visitor,
        privacy: Privacy,
        headers: Mapping[bytes, bytes],
        consent: Mapping[str, str],
        proto: str,
        now: float | None = None,
        mapped: Mapping[int, PartnerUid] | None = None,
        iframes: bool = True,
    ) -> tuple[list[Offer], tuple[bytes, bytes] | None]:
        """(syncs to hand out, the dextp Set-Cookie recording them or None).
        `mapped`: the visitor's mappings when the caller has read them already.
        `iframes`: whether partners whose sync page must load in an iframe count."""
        if visitor.uuid is None or not self.partners:
            return [], None
        if not privacy.outbound_allowed:  # counted once per partner it would consider
            for p in self.partners:
                if iframes or p.render != "iframe":
                    self.gate.permits(p.dpid, Activity.SYNC, privacy)
            return [], None
        now = time.time() if now is None else now
        value = self.value(headers)
        handed = parse_dextp(value)
        # A cookie in the older, larger format is rewritten at once, even with no hand-out.
        rewrite = None if is_compact_dextp(value) else self.hand_out(handed, [], now)
        candidates = [
            p
            for p in self.partners
            if (iframes or p.render != "iframe")
            and self.gate.permits(p.dpid, Activity.SYNC, privacy)
        ]
        everyone = len(candidates)
        if not due_partners(candidates, handed, {}, now=now, limit=everyone):
            return [], rewrite  # the cookie says all were handed out recently: no read
        if mapped is None:
            known = visitor.kind is VisitorKind.KNOWN
            mapped = await read_mappings(self.store, visitor.uuid) if known else {}
        synced = {dpid: m.day for dpid, m in mapped.items()}
        due = due_partners(candidates, handed, synced, now=now, limit=self.limit)
        if not due:
            return [], rewrite
        values = consent_values(consent, gdpr=int(privacy.gdpr_applies))
        offers = []
        for p in due:
            url = sync_url(
                p,
                uuid=visitor.uuid,
                partner_uid=m.uid if (m := mapped.get(p.dpid)) else "",
                public_url=self.public_url,
                proto=proto,
                consent=values,
                rand=str(secrets.randbelow(10**9)),
            )
            offers.append(Offer(p, url))
        return offers, self.hand_out(handed, due, now, synced)

    def hand_out(
        self,
        handed: Mapping[int, int],
        partners: list[OutboundPartner],
        now: float,
        synced: Mapping[int, int] | None = None,
    ) -> tuple[bytes, bytes]:
        """Count the syncs handed out; answer the dextp Set-Cookie that records them.
        `synced`: the day of each of the visitor's mappings, when read."""
        for p in partners:
            self.counters.instructed(p.dpid)
        dpids = [p.dpid for p in partners]
        value = record_hand_outs(handed, dpids, self.by_dpid, synced or {}, now=now)
        return (b"set-cookie", self._prefix + value.encode() + self._attrs)

    def value(self, headers: Mapping[bytes, bytes]) -> str | None:
        return cookie_value(headers.get(b"cookie"), self._prefix)

    def handed(self, headers: Mapping[bytes, bytes]) -> dict[int, int]:
        return parse_dextp(self.value(headers))


async def read_mappings(
    store: Store, uuid: str, timeout: float = MAPPING_READ_TIMEOUT_S
) -> dict[int, PartnerUid]:
    """The visitor's live mappings, by dpid; {} when Redis does not answer within
    `timeout` (then the caller decides without them)."""
    found = await try_read_mappings(store, uuid, timeout)
    return {} if found is None else found


async def try_read_mappings(
    store: Store, uuid: str, timeout: float = MAPPING_READ_TIMEOUT_S
) -> dict[int, PartnerUid] | None:
    """Like read_mappings, but None when Redis does not answer within `timeout`."""
    try:
        return await store.mappings(uuid, today(), timeout)
    except StoreError:
        metrics.REDIS_ERRORS.labels("read").inc()
        return None


def ibs_entries(offers: list[Offer]) -> list[dict[str, Any]]:
    """The `ibs` list of a JSON /event answer; ttl in minutes until due again."""
    return [
        {
            "id": str(o.partner.dpid),
            "tag": o.partner.render,
            "url": [o.url],
            "ttl": o.partner.refresh_days * 1440,
        }
        for o in offers
    ]


def page(offers: Sequence[Offer], fires: Sequence[Fire] = (), *, secure: bool = False) -> bytes:
    """The iframe page: one image or iframe per sync and per destination fire, as each
    wants to be loaded; every URL escaped, no script."""
    tags = [_tag(o.partner.render, o.url) for o in offers]
    tags += [_tag(f.render, f.secure_url if secure else f.url) for f in fires]
    images = "".join(tags)
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>pixelsync</title></head>'
        f"<body>{images}</body></html>"
    ).encode()


def _tag(render: str, url: str) -> str:
    src = html.escape(url, quote=True)
    if render == "iframe":
        return f'<iframe src="{src}" width="0" height="0" frameborder="0"></iframe>'
    return f'<img src="{src}" width="1" height="1" alt="">'


class Dest5Endpoint(BrowserEndpoint[dict[str, str]]):
    """GET/HEAD /dest5.html."""

    name = "dest5"

    def __init__(self, opening: Opening, offers: SyncOffers, profiles: Profiles) -> None:
        super().__init__(opening)
        self.offers = offers
        self.profiles = profiles
        self.fires_possible = bool(profiles.rules.url)

    def parse(self, call: Call, params: bytes, body: bytes) -> dict[str, str]:
        return consent_params(first_values(parse_pairs(params)))

    def consent(self, req: dict[str, str]) -> Mapping[str, str]:
        return req

    async def answer(self, call: Call, req: dict[str, str], privacy: Privacy | None) -> str:
        assert privacy is not None
        visitor = call.visitor
        fires: list[Fire] = []
        mapped = None
        if self.fires_possible and visitor.kind is VisitorKind.KNOWN:
            state = await self.profiles.read(visitor)
            fires = self.profiles.drain(visitor, state, privacy, req)
            mapped = self.profiles.mapped(state, today())  # {} when the read failed
        offers, dextp = await self.offers.offer(
            visitor, privacy, call.headers, req, call.scheme, mapped=mapped
        )
        out = [self.cookies.set_header(visitor)]
        if dextp is not None:
            out.append(dextp)
        await self._page(call, 200, out, offers, fires)
        return "ok"

    async def refuse(
        self, call: Call, exc: RequestError, req: dict[str, str] | None, tid: str
    ) -> str:
        out = refusal_headers(exc, call.visitor, self.cookies)
        await self._page(call, exc.status, out, [], [])
        return f"error_{int(exc.code)}"

    @staticmethod
    async def _page(
        call: Call, status: int, out: Headers, offers: list[Offer], fires: list[Fire]
    ) -> None:
        body = page(offers, fires, secure=call.scheme == "https")
        headers: Headers = [
            CSP,
            NOSNIFF,
            *NO_CACHE,
            *out,
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send(call.send, status, headers, body, head=call.head)

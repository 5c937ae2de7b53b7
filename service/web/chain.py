"""/sync/chain (SPEC §5): ID syncs as a chain of redirects, for places where no iframe
runs. Each hop goes to a partner, whose callback returns through /ibs, which sends
the browser on to the next hop: a signed, expiring token naming the partners left."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..activities import Activity
from ..consent import Privacy
from ..macros import consent_values
from ..signals import consent_params, first_values, parse_pairs
from ..sync import MAX_HOPS, ChainTokens, chain_callback, parse_dpid_list, sync_url
from .dest5 import SyncOffers
from .pipeline import BrowserEndpoint, Call, Opening
from .responses import GIF, GIF_HEADERS, NO_CACHE, Headers, send


@dataclass(slots=True)
class ChainRequest:
    token: str | None  # t=: a hop after the first, which carries the rest and the consent
    dpids: list[int]  # dpids=, or the token's
    consent: dict[str, str] = field(default_factory=dict)


class ChainEndpoint(BrowserEndpoint[ChainRequest]):
    name = "chain"

    def __init__(
        self, opening: Opening, offers: SyncOffers, tokens: ChainTokens, *, public_url: str
    ) -> None:
        super().__init__(opening)
        self.offers = offers
        self.tokens = tokens
        self.public_url = public_url

    def parse(self, call: Call, params: bytes, body: bytes) -> ChainRequest:
        query = first_values(parse_pairs(params))
        if "t" in query:
            return ChainRequest(query["t"], [])
        dpids = parse_dpid_list(query["dpids"]) if query.get("dpids") else []
        return ChainRequest(None, dpids, consent_params(query))

    def consent(self, req: ChainRequest) -> Mapping[str, str]:
        if req.token is not None:  # its partners and consent are the token's (or 323)
            req.dpids, req.consent = self.tokens.read(req.token)
        return req.consent

    async def answer(self, call: Call, req: ChainRequest, privacy: Privacy | None) -> str:
        assert privacy is not None
        visitor, consent, dpids = call.visitor, req.consent, req.dpids
        assert visitor.uuid is not None
        out: Headers = [self.cookies.set_header(visitor)]
        if req.token is None and not dpids:  # no list given: whoever is due
            due, _ = await self.offers.offer(
                visitor, privacy, call.headers, consent, call.scheme, iframes=False
            )
            dpids = [o.partner.dpid for o in due]
        hops = [
            p
            for d in dpids
            if (p := self.offers.by_dpid.get(d)) is not None
            and p.render != "iframe"  # a hop is a redirect
            and self.offers.gate.permits(p.dpid, Activity.SYNC, privacy)
        ][:MAX_HOPS]
        if not hops:  # the end of the chain
            await send(call.send, 200, [*GIF_HEADERS, *out], GIF, head=call.head)
            return "end"
        first, rest = hops[0], hops[1:]
        next_hop = None
        if rest:
            token = self.tokens.make([p.dpid for p in rest], consent)
            next_hop = f"{self.public_url}/sync/chain?t={token}"
        target = sync_url(
            first,
            uuid=visitor.uuid,
            partner_uid="",
            public_url=self.public_url,
            proto=call.scheme,
            consent=consent_values(consent, gdpr=int(privacy.gdpr_applies)),
            rand=str(secrets.randbelow(10**9)),
            callback=chain_callback(self.public_url, first, next_hop),
        )
        out.append(self.offers.hand_out(self.offers.handed(call.headers), [first], time.time()))
        redirect: Headers = [
            (b"location", target.encode()),
            (b"content-length", b"0"),
            *NO_CACHE,
            *out,
        ]
        await send(call.send, 302, redirect, b"")
        return "hop"

"""/sync/chain (SPEC §5): ID syncs as a chain of redirects, for places where no iframe
runs. Each hop goes to a partner, whose callback returns through /ibs, which sends
the browser on to the next hop: a signed, expiring token naming the partners left."""

from __future__ import annotations

import logging
import secrets
import time

from ..errors import Code, RequestError
from ..macros import consent_values
from ..signals import CONSENT_KEYS, parse_pairs
from ..sync import MAX_HOPS, ChainTokens, chain_callback, parse_dpid_list, sync_url
from .common import (
    METHODS_PIXEL,
    Outcomes,
    PrivacyRules,
    method_not_allowed,
    new_tid,
    refusal_headers,
    request_headers,
)
from .cookies import VisitorCookies
from .dest5 import SyncOffers
from .responses import GIF, GIF_HEADERS, NO_CACHE, Headers, Receive, Scope, Send

log = logging.getLogger("pixelsync.web")


class ChainEndpoint:
    def __init__(
        self,
        offers: SyncOffers,
        cookies: VisitorCookies,
        privacy: PrivacyRules,
        tokens: ChainTokens,
        *,
        public_url: str,
        max_query: int,
    ) -> None:
        self.offers = offers
        self.cookies = cookies
        self.privacy = privacy
        self.tokens = tokens
        self.public_url = public_url
        self.max_query = max_query
        self.outcomes = Outcomes("chain")

    async def __call__(self, scope: Scope, receive: Receive, send_: Send) -> None:
        started = time.perf_counter()
        if scope["method"] not in METHODS_PIXEL:
            await method_not_allowed(send_, b"GET, HEAD")
            return
        headers = request_headers(scope)
        visitor = self.cookies.resolve(headers.get(b"cookie"))
        out: Headers = []
        try:
            query: bytes = scope["query_string"]
            if len(query) > self.max_query:
                raise RequestError(Code.MALFORMED, "query string too long", status=414)
            params = dict(reversed(parse_pairs(query)))  # the first value of each counts
            if "t" in params:
                dpids, consent = self.tokens.read(params["t"])
            else:
                consent = {k: v for k, v in params.items() if k in CONSENT_KEYS}
                dpids = parse_dpid_list(params["dpids"]) if params.get("dpids") else []
            privacy = self.privacy.evaluate(consent, headers)
            if visitor.opted_out:
                raise RequestError(Code.OPTED_OUT, "visitor opted out")
            assert visitor.uuid is not None
            out.append(self.cookies.set_header(visitor))
            if "t" not in params and not dpids:  # no list given: whoever is due
                due, _ = await self.offers.offer(
                    visitor, privacy, headers, consent, scope.get("scheme", "http"), iframes=False
                )
                dpids = [o.partner.dpid for o in due]
            hops = [
                p
                for d in dpids
                if (p := self.offers.by_dpid.get(d)) is not None
                and p.render != "iframe"  # a hop is a redirect
                and privacy.partner_allowed(p.gvl_id)
            ][:MAX_HOPS]
            if not hops or not privacy.outbound_allowed:
                await self._gif(send_, out, scope)  # the end of the chain
                self.outcomes.count("end", started)
                return
            first, rest = hops[0], hops[1:]
            next_hop = None
            if rest:
                token = self.tokens.make([p.dpid for p in rest], consent)
                next_hop = f"{self.public_url}/sync/chain?t={token}"
            values = consent_values(consent, gdpr=int(privacy.gdpr_applies))
            target = sync_url(
                first,
                uuid=visitor.uuid,
                partner_uid="",
                public_url=self.public_url,
                proto=scope.get("scheme", "http"),
                consent=values,
                rand=str(secrets.randbelow(10**9)),
                callback=chain_callback(self.public_url, first, next_hop),
            )
            out.append(self.offers.hand_out(self.offers.handed(headers), [first], time.time()))
        except RequestError as exc:
            log.info("chain refused", extra={"tid": new_tid(), "code": int(exc.code)})
            refusal = [*GIF_HEADERS, *refusal_headers(exc, visitor, self.cookies)]
            await send_({"type": "http.response.start", "status": exc.status, "headers": refusal})
            await send_(
                {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else GIF}
            )
            self.outcomes.count(f"error_{int(exc.code)}", started)
            return
        redirect: Headers = [
            (b"location", target.encode()),
            (b"content-length", b"0"),
            *NO_CACHE,
            *out,
        ]
        await send_({"type": "http.response.start", "status": 302, "headers": redirect})
        await send_({"type": "http.response.body", "body": b""})
        self.outcomes.count("hop", started)

    @staticmethod
    async def _gif(send_: Send, out: Headers, scope: Scope) -> None:
        await send_({"type": "http.response.start", "status": 200, "headers": [*GIF_HEADERS, *out]})
        await send_(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else GIF}
        )

"""/ibs (SPEC §5, §3): a partner-initiated ID sync, in the DMP path form
(`/ibs:dpid=…&dpuuid=…`) and the query form (`/ibs?dpid=…`)."""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from ..errors import Code, RequestError
from ..identity import Visitor, VisitorKind, today
from ..redirects import normalize_domains
from ..signals import parse_pairs
from ..store import Store
from ..sync import PartnerRules, parse_ibs, redirect_target
from .common import (
    METHODS_PIXEL,
    Outcomes,
    PrivacyRules,
    SyncCounters,
    method_not_allowed,
    new_tid,
    refusal_headers,
    request_headers,
)
from .cookies import VisitorCookies
from .responses import GIF, GIF_HEADERS, NO_CACHE, Headers, Receive, Scope, Send

log = logging.getLogger("pixelsync.web")

PATH_FORM = "/ibs:"


class IbsEndpoint:
    def __init__(
        self,
        store: Store,
        cookies: VisitorCookies,
        partners: dict[int, PartnerRules],
        privacy: PrivacyRules,
        *,
        bounce: bool,
        max_query: int,
        public_url: str,
    ) -> None:
        host = urlsplit(public_url).hostname or ""
        self.own_chain = (f"{public_url}/sync/chain?", normalize_domains([host]))
        self.store = store
        self.cookies = cookies
        self.partners = partners
        self.privacy = privacy
        self.bounce = bounce
        self.max_query = max_query
        self.outcomes = Outcomes("ibs")
        self.counters = SyncCounters(store.tally, partners)

    async def __call__(self, scope: Scope, receive: Receive, send_: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        if method not in METHODS_PIXEL:
            await method_not_allowed(send_, b"GET, HEAD")
            return
        head = method == "HEAD"
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope["query_string"]
        # Path form: the parameters are the rest of the path, still percent-encoded.
        params = raw_path[len(PATH_FORM) :] if raw_path.startswith(PATH_FORM.encode()) else b""
        if query:
            params = params + b"&" + query if params else query
        headers = request_headers(scope)
        visitor = self.cookies.resolve(headers.get(b"cookie"))
        try:
            if len(params) > self.max_query:
                raise RequestError(Code.MALFORMED, "request too long", status=414)
            req = parse_ibs(parse_pairs(params), self.partners, self.own_chain)
            if visitor.opted_out:
                raise RequestError(Code.OPTED_OUT, "visitor opted out")
            privacy = self.privacy.evaluate(req.consent, headers)
            if not privacy.partner_allowed(req.partner.gvl_id):
                raise RequestError(Code.CONSENT_REFUSED, "no consent for this partner")
            if visitor.kind is VisitorKind.NEW and self.bounce:
                if req.bounced:
                    raise RequestError(Code.COOKIES_BLOCKED, "the browser refuses cookies")
                # Set a cookie and come back: only a browser that keeps it gets stored.
                # The same URL plus d_bounce=1: parameters are never empty here.
                location = raw_path + (b"?" + query if query else b"") + b"&d_bounce=1"
                await self._redirect(send_, location, self.cookies.set_header(visitor), head)
                self.outcomes.count("bounce", started)
                return
        except RequestError as exc:
            await self._refuse(send_, exc, visitor, head)
            self.outcomes.count(f"error_{int(exc.code)}", started)
            return
        assert visitor.uuid is not None
        self.store.put_mapping(visitor.uuid, req.partner.dpid, req.uid, today())
        self.counters.completed(req.partner.dpid)
        cookie = self.cookies.set_header(visitor)
        if req.redir is not None:
            target = redirect_target(req.redir, visitor.uuid)
            await self._redirect(send_, target, cookie, head)
        else:
            await send_(
                {"type": "http.response.start", "status": 200, "headers": [*GIF_HEADERS, cookie]}
            )
            await send_({"type": "http.response.body", "body": b"" if head else GIF})
        self.outcomes.count("ok", started)

    @staticmethod
    async def _redirect(
        send_: Send, location: bytes, cookie: tuple[bytes, bytes], head: bool
    ) -> None:
        headers: Headers = [(b"location", location), (b"content-length", b"0"), *NO_CACHE, cookie]
        await send_({"type": "http.response.start", "status": 302, "headers": headers})
        await send_({"type": "http.response.body", "body": b""})

    async def _refuse(self, send_: Send, exc: RequestError, visitor: Visitor, head: bool) -> None:
        log.info(
            "ibs refused",
            extra={"tid": new_tid(), "code": int(exc.code), "reason": exc.msg},
        )
        headers = [*GIF_HEADERS, *refusal_headers(exc, visitor, self.cookies)]
        await send_({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send_({"type": "http.response.body", "body": b"" if head else GIF})

"""Prebid Server's user-sync endpoints (SPEC §15) over the match table: POST
/cookie_sync, GET /setuid and GET /getuids. The decisions are service/prebid.py's."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .. import metrics
from ..activities import Activity, PrivacyGate
from ..consent import Privacy
from ..errors import Code, RequestError
from ..identity import Visitor, VisitorKind, today
from ..macros import consent_values
from ..prebid import (
    Bidders,
    CookieSyncOutcome,
    CookieSyncRequest,
    Evaluation,
    PrebidError,
    SetuidOutcome,
    Shuffle,
    Status,
    SyncerSet,
    buyeruids,
    choose,
    cookie_sync_answer,
    cookie_sync_refusal,
    missing_consent,
    parse_cookie_sync,
    parse_setuid,
    privacy_debug,
    setuid_consent,
    setuid_refusal,
    usersync_url,
)
from ..signals import first_values, parse_pairs
from ..store import PartnerUid, Store
from .common import SyncCounters
from .dest5 import read_mappings
from .pipeline import (
    METHODS_PIXEL,
    BrowserEndpoint,
    Call,
    Opening,
    Req,
    opt_out_kept,
    request_headers,
)
from .responses import (
    GIF,
    GIF_HEADERS,
    NO_CACHE,
    NOSNIFF,
    Headers,
    Receive,
    Scope,
    Send,
    cors,
    json_body,
    json_headers,
    send,
)

log = logging.getLogger("pixelsync.web")

JSON_UTF8: Final = b"application/json; charset=utf-8"
PREFLIGHT_MAX_AGE: Final = b"86400"


@dataclass
class PrebidEndpoints:
    """What the three endpoints share: the bidders, the store, cookies and privacy."""

    store: Store
    opening: Opening
    bidders: Bidders
    public_url: str
    bounce: bool  # [cookies] bounce: /setuid stores only for a browser with our cookie
    shuffle: Shuffle  # the order /cookie_sync evaluates bidders in under a limit
    # [prebid] cors_origins, as browsers send them: the pages that may read /getuids
    # with credentials (a visitor's uids); none by default.
    cors_origins: frozenset[bytes] = frozenset()
    # Every partner's privacy policy (activities.py); None: opt-out and consent only.
    gate: PrivacyGate | None = None

    def __post_init__(self) -> None:
        self.counters = SyncCounters(self.store.tally, self.bidders.names)

    async def mapped(self, visitor: Visitor) -> dict[int, PartnerUid]:
        """The visitor's live mappings; none for a visitor without a cookie. Redis
        slow: none either (answered within SPEC §14's 100 ms, as dest5 does)."""
        if visitor.kind is not VisitorKind.KNOWN or visitor.uuid is None:
            return {}
        return await read_mappings(self.store, visitor.uuid)

    def cookie_sync(self) -> CookieSyncEndpoint:
        return CookieSyncEndpoint(self.opening, self)

    def setuid(self) -> SetuidEndpoint:
        return SetuidEndpoint(self.opening, self)

    def getuids(self) -> GetuidsEndpoint:
        return GetuidsEndpoint(self.opening, self)


def _text(status: int, message: str) -> tuple[int, Headers, bytes]:
    """A refusal as Prebid Server answers it: the message as plain text."""
    body = (message + "\n").encode() if message else b""
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        NOSNIFF,
        *NO_CACHE,
    ]
    return status, headers, body


class _PrebidEndpoint(BrowserEndpoint[Req]):
    """One of the three: the opening is the pipeline's; a refusal of the opening is
    answered in Prebid Server's shape, its outcome one of Prebid Server's labels."""

    logs_refusals = False  # each logs its own, with Prebid Server's outcome label

    # The methods a CORS preflight (OPTIONS) allows; b"": OPTIONS is not served.
    preflight_methods = b""

    def __init__(self, opening: Opening, shared: PrebidEndpoints) -> None:
        super().__init__(opening)
        self.s = shared

    async def __call__(self, scope: Scope, receive: Receive, send_: Send) -> None:
        if scope["method"] != "OPTIONS" or not self.preflight_methods:
            await super().__call__(scope, receive, send_)
            return
        started = time.perf_counter()
        headers = request_headers(scope)
        await _preflight(send_, self.preflight_methods, self.cors_origin(headers), headers)
        self.outcomes.count("preflight", started)

    def cors_origin(self, headers: Mapping[bytes, bytes]) -> bytes | None:
        """The request's Origin if it may read the answer with credentials."""
        return headers.get(b"origin")


class CookieSyncEndpoint(_PrebidEndpoint[CookieSyncRequest]):
    """POST /cookie_sync: the syncs this visitor still needs, for Prebid.js (called
    cross-site, with credentials) and AMP's load-cookie page."""

    name = "cookie_sync"
    methods = frozenset({"OPTIONS", "POST"})
    preflight_methods = b"POST, OPTIONS"

    def parse(self, call: Call, params: bytes, body: bytes) -> CookieSyncRequest:
        try:
            req = parse_cookie_sync(body)
        except PrebidError as exc:
            raise RequestError(Code.MALFORMED, exc.message) from None
        # Prebid Server refuses a GDPR request without a consent string as a bad
        # request, before it reads the cookie (an opt-out).
        wanting = missing_consent(req.consent, self.privacy.gdpr_default)
        if wanting:
            raise RequestError(Code.MALFORMED, wanting)
        return req

    def consent(self, req: CookieSyncRequest) -> Mapping[str, str]:
        return req.consent

    async def answer(self, call: Call, req: CookieSyncRequest, privacy: Privacy | None) -> str:
        assert privacy is not None
        visitor = call.visitor
        mapped = await self.s.mapped(visitor)
        day = today()
        synced = {d: m.day for d, m in mapped.items()}
        gate = self.s.gate
        permits = None if gate is None else lambda dpid: gate.permits(dpid, Activity.SYNC, privacy)
        evaluations = choose(req, self.s.bidders, synced, privacy, day, self.s.shuffle, permits)
        syncs = self._syncs(req, evaluations, visitor, mapped, privacy.gdpr_applies, call.scheme)
        for e in evaluations:
            if e.bidder is not None and e.status.label:
                metrics.child(metrics.SYNCER_REQUESTS, e.bidder.name, e.status.label).inc()
        consent = privacy_debug(privacy, self.privacy.vendor_id, evaluations) if req.debug else None
        doc = cookie_sync_answer(bool(mapped), syncs, evaluations, req.debug, consent)
        await self._send(call, CookieSyncOutcome.OK, doc, [self.cookies.set_header(visitor)])
        return CookieSyncOutcome.OK.label

    async def refuse(
        self, call: Call, exc: RequestError, req: CookieSyncRequest | None, tid: str
    ) -> str:
        origin = call.headers.get(b"origin")
        if exc.code.is_consent and req is not None:
            outcome = cookie_sync_refusal(exc.code)
            if outcome is not CookieSyncOutcome.BAD_REQUEST:
                # The host may not set its cookie: no syncs, and no cookie (SPEC §12).
                await self._send(call, outcome, cookie_sync_answer(False, [], [], req.debug), [])
                return outcome.label
        elif exc.code is Code.OPTED_OUT:
            outcome = CookieSyncOutcome.OPT_OUT
        else:  # the body over its limit, undecodable, or invalid for Prebid Server
            outcome = CookieSyncOutcome.BAD_REQUEST
        metrics.child(metrics.COOKIE_SYNC_REQUESTS, outcome.label).inc()
        message = exc.msg if outcome is CookieSyncOutcome.BAD_REQUEST else outcome.message
        log.info("cookie_sync refused", extra={"status": outcome.label, "reason": message})
        # A size limit keeps its own status (413, 414); Prebid Server's otherwise.
        status = exc.status if exc.status in (413, 414) else outcome.status
        code, out, body = _text(status, message)
        cors(out, origin)
        out += opt_out_kept(exc, self.cookies)
        await send(call.send, code, out, body)
        return outcome.label

    async def _send(
        self, call: Call, outcome: CookieSyncOutcome, doc: dict[str, object], out: Headers
    ) -> None:
        metrics.child(metrics.COOKIE_SYNC_REQUESTS, outcome.label).inc()
        body = json_body(doc)
        headers = json_headers(body, JSON_UTF8)
        cors(headers, call.headers.get(b"origin"))
        await send(call.send, 200, headers + out, body)

    def _syncs(
        self,
        req: CookieSyncRequest,
        evaluations: list[Evaluation],
        visitor: Visitor,
        mapped: Mapping[int, PartnerUid],
        gdpr_applies: bool,
        proto: str,
    ) -> list[tuple[Evaluation, str]]:
        assert visitor.uuid is not None
        macros = consent_values(req.consent, gdpr=int(gdpr_applies))
        out = []
        for e in evaluations:
            if e.status is not Status.OK or e.bidder is None:
                continue
            url = usersync_url(
                e,
                uuid=visitor.uuid,
                partner_uid=m.uid if (m := mapped.get(e.bidder.dpid)) else "",
                public_url=self.s.public_url,
                proto=proto,
                consent=req.consent,
                macros=macros,
                rand=str(secrets.randbelow(10**9)),
            )
            self.s.counters.instructed(e.bidder.dpid)
            out.append((e, url))
        return out


async def _preflight(
    send_: Send, methods: bytes, origin: bytes | None, headers: Mapping[bytes, bytes]
) -> None:
    """A CORS preflight's answer, allowing `origin` (None: no origin is allowed)."""
    out: Headers = [(b"content-length", b"0")]
    if origin:
        out += [
            (b"access-control-allow-methods", methods),
            (
                b"access-control-allow-headers",
                headers.get(b"access-control-request-headers", b"content-type"),
            ),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE),
        ]
        cors(out, origin)
    else:
        out.append((b"vary", b"Origin"))
    await send(send_, 204, out, b"")


class SetuidEndpoint(_PrebidEndpoint[dict[str, str]]):
    """GET /setuid: a bidder's callback with its uid, stored in the match table. It
    answers the GIF (f=i) or empty HTML (f=b); a redirect only for the cookie bounce."""

    name = "setuid"

    def parse(self, call: Call, params: bytes, body: bytes) -> dict[str, str]:
        return first_values(parse_pairs(params))

    def consent(self, req: dict[str, str]) -> Mapping[str, str]:
        return setuid_consent(req)

    async def answer(self, call: Call, req: dict[str, str], privacy: Privacy | None) -> str:
        assert privacy is not None
        try:
            sync = parse_setuid(req, self.s.bidders)
            if not privacy.partner_allowed(sync.bidder.gvl_id):
                raise PrebidError(SetuidOutcome.GDPR_BLOCKED)
            gate = self.s.gate
            if gate is not None and not gate.permits(sync.bidder.dpid, Activity.SYNC, privacy):
                raise PrebidError(SetuidOutcome.PRIVACY_BLOCKED)
        except PrebidError as exc:
            return await self._refuse(call, exc, [])
        visitor = call.visitor
        outcome = SetuidOutcome.OK
        if visitor.kind is VisitorKind.NEW and not sync.uid:
            # A clear for a fresh uuid: nothing is stored for it, so nothing to clear
            # and nothing to bounce for (SPEC §3: only what would store is bounced).
            metrics.child(metrics.SYNCER_SETS, sync.bidder.name, SyncerSet.CLEARED).inc()
        elif visitor.kind is VisitorKind.NEW and self.s.bounce:
            if not sync.bounced:
                metrics.child(metrics.SETUID_REQUESTS, SetuidOutcome.BOUNCE.label).inc()
                return await self.cookie_bounce(call)
            outcome = SetuidOutcome.COOKIES_BLOCKED
        else:
            assert visitor.uuid is not None
            name, dpid = sync.bidder.name, sync.bidder.dpid
            if sync.uid:
                self.s.store.put_mapping(visitor.uuid, dpid, sync.uid, today())
                self.s.counters.completed(dpid)
                metrics.child(metrics.SYNCER_SETS, name, SyncerSet.OK).inc()
            else:
                self.s.store.clear_mapping(visitor.uuid, dpid)
                metrics.child(metrics.SYNCER_SETS, name, SyncerSet.CLEARED).inc()
        metrics.child(metrics.SETUID_REQUESTS, outcome.label).inc()
        if outcome is SetuidOutcome.COOKIES_BLOCKED:  # never a cookie on a refusal
            out: Headers = [(b"x-error", b"172")]
        else:
            out = [self.cookies.set_header(visitor)]
        if sync.format == "i":
            await send(call.send, 200, [*GIF_HEADERS, *out], GIF, head=call.head)
        else:
            blank = [(b"content-type", b"text/html"), (b"content-length", b"0"), *NO_CACHE]
            await send(call.send, 200, [*blank, *out], b"", head=call.head)
        return outcome.label

    async def refuse(
        self, call: Call, exc: RequestError, req: dict[str, str] | None, tid: str
    ) -> str:
        if exc.code is Code.OPTED_OUT:
            refusal = PrebidError(SetuidOutcome.OPT_OUT)
        elif exc.code.is_consent:
            refusal = setuid_refusal(exc.code, exc.msg)
        else:  # too long (414) or undecodable (400)
            refusal = PrebidError(SetuidOutcome.BAD_REQUEST, exc.msg)
            return await self._refuse(call, refusal, [], status=exc.status)
        return await self._refuse(call, refusal, opt_out_kept(exc, self.cookies))

    async def _refuse(
        self, call: Call, exc: PrebidError, out: Headers, status: int | None = None
    ) -> str:
        refused = exc.outcome
        metrics.child(metrics.SETUID_REQUESTS, refused.label).inc()
        log.info("setuid refused", extra={"status": refused.label, "reason": exc.message})
        code, headers, body = _text(status or refused.status, exc.message)
        await send(call.send, code, headers + out, body, head=call.head)
        return refused.label


class GetuidsEndpoint(_PrebidEndpoint[None]):
    """GET /getuids: the visitor's uid per bidder, from the match table. Another site's
    page may read it with credentials only when its origin is in [prebid] cors_origins:
    otherwise any page could read a visitor's partner uids."""

    name = "getuids"
    methods = METHODS_PIXEL | {"OPTIONS"}
    preflight_methods = b"GET, HEAD, OPTIONS"

    def cors_origin(self, headers: Mapping[bytes, bytes]) -> bytes | None:
        origin = headers.get(b"origin")
        return origin if origin in self.s.cors_origins else None

    def parse(self, call: Call, params: bytes, body: bytes) -> None:
        return None  # no parameters

    async def answer(self, call: Call, req: None, privacy: Privacy | None) -> str:
        mapped = await self.s.mapped(call.visitor)
        await self._send(call, {d: m.uid for d, m in mapped.items()}, [])
        return "ok"

    async def refuse(self, call: Call, exc: RequestError, req: None, tid: str) -> str:
        if exc.code is not Code.OPTED_OUT:
            log.info("getuids refused", extra={"status": exc.status, "reason": exc.msg})
            code, out, body = _text(exc.status, exc.msg)
            await send(call.send, code, out, body, head=call.head)
            return f"error_{int(exc.code)}"
        # An opted-out browser has no uids, as Prebid Server answers its cookie.
        await self._send(call, {}, opt_out_kept(exc, self.cookies))
        return "opt_out"

    async def _send(self, call: Call, mapped: Mapping[int, str], out: Headers) -> None:
        body = json_body(buyeruids(self.s.bidders.names, mapped))
        headers = json_headers(body, JSON_UTF8)
        allowed = self.cors_origin(call.headers)
        if allowed:
            cors(headers, allowed)
        else:
            headers.append((b"vary", b"Origin"))
        await send(call.send, 200, headers + out, body, head=call.head)

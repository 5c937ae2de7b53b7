"""Prebid Server's user-sync endpoints (SPEC §15) over the match table: POST
/cookie_sync, GET /setuid and GET /getuids. The decisions are service/prebid.py's."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final

from .. import metrics
from ..errors import RequestError
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
    setuid_refusal,
    usersync_url,
)
from ..signals import parse_pairs
from ..store import Store
from .common import (
    METHODS_PIXEL,
    ClientGone,
    Outcomes,
    PrivacyRules,
    SyncCounters,
    method_not_allowed,
    read_body,
    request_headers,
)
from .cookies import VisitorCookies
from .dest5 import read_mappings, try_read_mappings
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
CLEAR_RETRY_S: Final = 300.0  # how long a /setuid clear waits for Redis in the background
CLEAR_BACKOFF_S: Final = (0.1, 5.0)  # first and longest wait between its reads


@dataclass
class PrebidEndpoints:
    """What the three endpoints share: the bidders, the store, cookies and privacy."""

    store: Store
    cookies: VisitorCookies
    bidders: Bidders
    privacy: PrivacyRules
    public_url: str
    bounce: bool  # [cookies] bounce: /setuid stores only for a browser with our cookie
    max_query: int
    max_body: int
    shuffle: Shuffle  # the order /cookie_sync evaluates bidders in under a limit
    clearing: set[asyncio.Task[None]] = field(default_factory=set)  # /setuid clears waiting

    def __post_init__(self) -> None:
        self.counters = SyncCounters(self.store.tally, self.bidders.names)

    async def mapped(self, visitor: Visitor) -> dict[int, tuple[str, int]]:
        """The visitor's live mappings; none for a visitor without a cookie. Redis
        slow: none either (answered within SPEC §14's 100 ms, as dest5 does)."""
        if visitor.kind is not VisitorKind.KNOWN or visitor.uuid is None:
            return {}
        return await read_mappings(self.store, visitor.uuid)

    async def clear(self, uuid: str, dpid: int) -> None:
        """Delete the visitor's mapping for a partner. When the read of it fails, the
        deletion is not lost: it is retried in the background, never holding the
        answer up."""
        found = await try_read_mappings(self.store, uuid)
        if found is None:
            task = asyncio.create_task(self._clear_later(uuid, dpid))
            self.clearing.add(task)
            task.add_done_callback(self.clearing.discard)
        elif dpid in found:
            self.store.delete_mapping(uuid, dpid, found[dpid][0])

    async def _clear_later(self, uuid: str, dpid: int) -> None:
        wait, longest = CLEAR_BACKOFF_S
        give_up = time.monotonic() + CLEAR_RETRY_S
        try:
            while time.monotonic() < give_up:
                await asyncio.sleep(wait)
                wait = min(wait * 2, longest)
                found = await try_read_mappings(self.store, uuid, timeout=1.0)
                if found is not None:
                    if dpid in found:
                        self.store.delete_mapping(uuid, dpid, found[dpid][0])
                    return
        except asyncio.CancelledError:
            log.error("setuid clear lost", extra={"dpid": dpid, "reason": "shutdown"})
            raise
        log.error("setuid clear lost", extra={"dpid": dpid, "reason": "redis unreachable"})

    def cookie_sync(self) -> CookieSyncEndpoint:
        return CookieSyncEndpoint(self)

    def setuid(self) -> SetuidEndpoint:
        return SetuidEndpoint(self)

    def getuids(self) -> GetuidsEndpoint:
        return GetuidsEndpoint(self)


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


@dataclass(frozen=True)
class Call:
    """One request to one of the endpoints, its headers read and its visitor known."""

    scope: Scope
    receive: Receive
    send: Send
    headers: Mapping[bytes, bytes]
    visitor: Visitor


class _Endpoint:
    """One of the three: the method check, the request's headers and visitor, and its
    answers counted by outcome."""

    endpoint: ClassVar[str]
    methods: ClassVar[frozenset[str]] = METHODS_PIXEL

    def __init__(self, shared: PrebidEndpoints) -> None:
        self.s = shared
        self.outcomes = Outcomes(self.endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send_: Send) -> None:
        started = time.perf_counter()
        if scope["method"] not in self.methods:
            await method_not_allowed(send_, ", ".join(sorted(self.methods)).encode())
            return
        headers = request_headers(scope)
        visitor = self.s.cookies.resolve(headers.get(b"cookie"))
        outcome = await self.answer(Call(scope, receive, send_, headers, visitor))
        if outcome:
            self.outcomes.count(outcome, started)

    async def answer(self, call: Call) -> str:
        """Answer the request; the outcome to count ("": none, the client left)."""
        raise NotImplementedError


class CookieSyncEndpoint(_Endpoint):
    """POST /cookie_sync: the syncs this visitor still needs, for Prebid.js (called
    cross-site, with credentials) and AMP's load-cookie page."""

    endpoint = "cookie_sync"
    methods = frozenset({"OPTIONS", "POST"})

    async def answer(self, call: Call) -> str:
        origin = call.headers.get(b"origin")
        if call.scope["method"] == "OPTIONS":
            await self._preflight(call.send, origin, call.headers)
            return "preflight"
        try:
            body = await read_body(call.receive, self.s.max_body, call.headers)
            answer = await self._answer(
                body, call.visitor, call.headers, call.scope.get("scheme", "http")
            )
        except ClientGone:
            return ""
        except RequestError as exc:  # a body over the limit
            await self._refuse(
                call.send, CookieSyncOutcome.BAD_REQUEST, exc.msg, origin, exc.status
            )
            return CookieSyncOutcome.BAD_REQUEST.label
        except PrebidError as exc:
            await self._refuse(call.send, exc.outcome, exc.message, origin, exc.outcome.status)
            return exc.outcome.label
        outcome, doc, set_cookie = answer
        metrics.child(metrics.COOKIE_SYNC_REQUESTS, outcome.label).inc()
        body_out = json_body(doc)
        out = json_headers(body_out, JSON_UTF8)
        cors(out, origin)
        if set_cookie:
            out.append(self.s.cookies.set_header(call.visitor))
        await send(call.send, 200, out, body_out)
        return outcome.label

    async def _answer(
        self, body: bytes, visitor: Visitor, headers: Mapping[bytes, bytes], proto: str
    ) -> tuple[CookieSyncOutcome, dict[str, object], bool]:
        """(outcome, answer, whether to set the visitor cookie); PrebidError to refuse."""
        req = parse_cookie_sync(body)
        wanting = missing_consent(req.consent, self.s.privacy.gdpr_default)
        if wanting:  # before the opt-out, as Prebid Server reads the request first
            raise PrebidError(CookieSyncOutcome.BAD_REQUEST, wanting)
        if visitor.opted_out:
            raise PrebidError(CookieSyncOutcome.OPT_OUT)
        try:
            privacy = self.s.privacy.evaluate(req.consent, headers)
        except RequestError as exc:
            outcome = cookie_sync_refusal(exc.code)
            if outcome is CookieSyncOutcome.BAD_REQUEST:
                raise PrebidError(outcome, exc.msg) from None
            # The host may not set its cookie: no syncs, and no cookie (SPEC §12).
            return outcome, cookie_sync_answer(False, [], [], req.debug), False
        mapped = await self.s.mapped(visitor)
        day = today()
        synced = {d: seen for d, (_, seen) in mapped.items()}
        evaluations = choose(req, self.s.bidders, synced, privacy, day, self.s.shuffle)
        syncs = self._syncs(req, evaluations, visitor, mapped, privacy.gdpr_applies, proto)
        for e in evaluations:
            if e.bidder is not None and e.status.label:
                metrics.child(metrics.SYNCER_REQUESTS, e.bidder.name, e.status.label).inc()
        doc = cookie_sync_answer(bool(mapped), syncs, evaluations, req.debug)
        return CookieSyncOutcome.OK, doc, True

    def _syncs(
        self,
        req: CookieSyncRequest,
        evaluations: list[Evaluation],
        visitor: Visitor,
        mapped: Mapping[int, tuple[str, int]],
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
                partner_uid=mapped.get(e.bidder.dpid, ("", 0))[0],
                public_url=self.s.public_url,
                proto=proto,
                consent=req.consent,
                macros=macros,
                rand=str(secrets.randbelow(10**9)),
            )
            self.s.counters.instructed(e.bidder.dpid)
            out.append((e, url))
        return out

    async def _refuse(
        self,
        send_: Send,
        outcome: CookieSyncOutcome | SetuidOutcome,
        message: str,
        origin: bytes | None,
        status: int,
    ) -> None:
        metrics.child(metrics.COOKIE_SYNC_REQUESTS, outcome.label).inc()
        log.info("cookie_sync refused", extra={"status": outcome.label, "reason": message})
        code, out, body = _text(status, message)
        cors(out, origin)
        await send(send_, code, out, body)

    @staticmethod
    async def _preflight(send_: Send, origin: bytes | None, headers: Mapping[bytes, bytes]) -> None:
        out: Headers = [
            (b"access-control-allow-methods", b"POST, OPTIONS"),
            (
                b"access-control-allow-headers",
                headers.get(b"access-control-request-headers", b"content-type"),
            ),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE),
            (b"content-length", b"0"),
        ]
        cors(out, origin)
        await send(send_, 204, out, b"")


class SetuidEndpoint(_Endpoint):
    """GET /setuid: a bidder's callback with its uid, stored in the match table. It
    answers the GIF (f=i) or empty HTML (f=b), never a redirect."""

    endpoint = "setuid"

    async def answer(self, call: Call) -> str:
        head = call.scope["method"] == "HEAD"
        try:
            outcome, fmt = await self._set(call.scope["query_string"], call.visitor, call.headers)
        except PrebidError as exc:
            refused = exc.outcome
            metrics.child(metrics.SETUID_REQUESTS, refused.label).inc()
            log.info("setuid refused", extra={"status": refused.label, "reason": exc.message})
            code, out, body = _text(refused.status, exc.message)
            await send(call.send, code, out, body, head=head)
            return refused.label
        metrics.child(metrics.SETUID_REQUESTS, outcome.label).inc()
        out = [self.s.cookies.set_header(call.visitor)]
        if outcome is SetuidOutcome.COOKIES_BLOCKED:
            out.append((b"x-error", b"172"))
        if fmt == "i":
            await send(call.send, 200, [*GIF_HEADERS, *out], GIF, head=head)
        else:
            blank = [(b"content-type", b"text/html"), (b"content-length", b"0"), *NO_CACHE]
            await send(call.send, 200, [*blank, *out], b"", head=head)
        return outcome.label

    async def _set(
        self, query: bytes, visitor: Visitor, headers: Mapping[bytes, bytes]
    ) -> tuple[SetuidOutcome, str]:
        """Store (or clear) the uid: (outcome, answer format); PrebidError to refuse."""
        if visitor.opted_out:
            raise PrebidError(SetuidOutcome.OPT_OUT)
        if len(query) > self.s.max_query:
            raise PrebidError(SetuidOutcome.BAD_REQUEST, "query string too long")
        try:
            params = dict(reversed(parse_pairs(query)))  # the first value of each counts
        except RequestError as exc:
            raise PrebidError(SetuidOutcome.BAD_REQUEST, exc.msg) from None
        req = parse_setuid(params, self.s.bidders)
        try:
            privacy = self.s.privacy.evaluate(req.consent, headers)
        except RequestError as exc:
            raise setuid_refusal(exc.code, exc.msg) from None
        if not privacy.partner_allowed(req.bidder.gvl_id):
            raise PrebidError(SetuidOutcome.GDPR_BLOCKED)
        if visitor.kind is VisitorKind.NEW and self.s.bounce:
            return SetuidOutcome.COOKIES_BLOCKED, req.format
        assert visitor.uuid is not None
        name, dpid = req.bidder.name, req.bidder.dpid
        if req.uid:
            self.s.store.put_mapping(visitor.uuid, dpid, req.uid, today())
            self.s.counters.completed(dpid)
            metrics.child(metrics.SYNCER_SETS, name, SyncerSet.OK).inc()
        else:
            await self.s.clear(visitor.uuid, dpid)
            metrics.child(metrics.SYNCER_SETS, name, SyncerSet.CLEARED).inc()
        return SetuidOutcome.OK, req.format


class GetuidsEndpoint(_Endpoint):
    """GET /getuids: the visitor's uid per bidder, from the match table."""

    endpoint = "getuids"

    async def answer(self, call: Call) -> str:
        mapped = await self.s.mapped(call.visitor)
        body = json_body(buyeruids(self.s.bidders.names, {d: u for d, (u, _) in mapped.items()}))
        out = json_headers(body, JSON_UTF8)
        cors(out, call.headers.get(b"origin"))
        await send(call.send, 200, out, body, head=call.scope["method"] == "HEAD")
        return "ok"

"""/event and /demoptout.jpg (SPEC §4, §12): raw ASGI, because they are the hot path."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from ..config import Settings
from ..consent import Privacy
from ..destinations import Fire
from ..errors import Code, RequestError
from ..identity import Visitor, VisitorKind, needs_touch, today
from ..logs import AccessLog
from ..outbound.realtime import RealtimeCaller
from ..qualification import Qualification
from ..signals import CALLBACK, EventRequest, parse_event, parse_pairs
from ..store import Store
from ..sync import check_declared_ids
from ..tally import partner_field
from .common import (
    METHODS_PIXEL,
    ClientGone,
    Outcomes,
    PrivacyRules,
    method_not_allowed,
    new_tid,
    read_body,
    refusal_headers,
    request_headers,
)
from .cookies import VisitorCookies, cookie_value
from .dest5 import SyncOffers, ibs_entries
from .qualify import Profiles, State
from .responses import (
    GIF,
    GIF_HEADERS,
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

_FORM_TYPES: Final = (b"application/x-www-form-urlencoded", b"text/plain")
_METHODS_EVENT: Final = frozenset({"GET", "HEAD", "POST"})


def _wants_json(query: bytes, pairs: list[tuple[str, str]] | None) -> bool:
    """Whether the refusal of a request we could not fully parse should be JSON."""
    if pairs is None:
        return b"d_rtbd=json" in query or b"d_cb=" in query
    return any((k == "d_rtbd" and v == "json") or k == "d_cb" for k, v in pairs)


class EventEndpoint:
    """GET/HEAD/POST /event: signals in, GIF or JSON/JSONP out."""

    def __init__(
        self,
        store: Store,
        cookies: VisitorCookies,
        settings: Settings,
        access: AccessLog,
        privacy: PrivacyRules,
        offers: SyncOffers,
        profiles: Profiles,
        realtime: RealtimeCaller | None = None,
    ) -> None:
        self.offers = offers
        self.realtime = realtime
        self.profiles = profiles
        self.qualifier = profiles.qualifier
        self.signal_keys = profiles.qualifier.index.keys  # what realize() can look at
        rules = profiles.rules
        # When an answer needs the visitor's segments even if nothing was realized.
        self.has_cookie_dests = bool(rules.cookie)
        self.has_url_dests = bool(rules.url)
        self.gif_needs_state = bool(rules.own_cookies)
        self.store = store
        self.access = access
        self.cookies = cookies
        self.region = settings.server.region
        self.max_query = settings.limits.max_query_bytes
        self.max_body = settings.limits.max_body_bytes
        self.dpids = frozenset(p.dpid for p in settings.partners)
        self.gvl_ids = {p.dpid: p.gvl_id for p in settings.partners}
        self.privacy = privacy
        self.outcomes = Outcomes("event")

    async def __call__(self, scope: Scope, receive: Receive, send_: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        if method not in _METHODS_EVENT:
            await method_not_allowed(send_, b"GET, HEAD, POST")
            return
        headers = request_headers(scope)
        query: bytes = scope["query_string"]
        visitor = self.cookies.resolve(headers.get(b"cookie"))
        req: EventRequest | None = None
        pairs: list[tuple[str, str]] | None = None
        try:
            if len(query) > self.max_query:
                raise RequestError(Code.MALFORMED, "query string too long", status=414)
            pairs = parse_pairs(query)
            if method == "POST":
                body = await read_body(receive, self.max_body, headers)
                ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
                if body and ctype not in _FORM_TYPES:
                    raise RequestError(Code.MALFORMED, "body must be form-encoded")
                pairs = pairs + parse_pairs(body)
            req = parse_event(pairs, headers, self.signal_keys)
            if visitor.opted_out:
                raise RequestError(Code.OPTED_OUT, "visitor opted out")
            check_declared_ids(req.declared_ids, self.dpids)
            privacy = self.privacy.evaluate(req.consent, headers)
            self._record(visitor, req, privacy)
        except RequestError as exc:
            as_json = req.answers_json if req is not None else _wants_json(query, pairs)
            await self._refuse(exc, visitor, req, as_json, headers, method, send_)
            self.outcomes.count(f"error_{int(exc.code)}", started)
            return
        except ClientGone:
            self.outcomes.count("client_gone", started)
            return
        assert visitor.uuid is not None
        out: Headers = [self.cookies.set_header(visitor)]
        realized = (
            self.qualifier.realize(req.signals, req.private, req.trait_sids)
            if self.qualifier.active
            else []
        )
        json_answer = req.answers_json
        if json_answer:
            needs_state = bool(
                req.cts or self.has_cookie_dests or (req.dests and self.has_url_dests)
            )
        else:
            needs_state = self.gif_needs_state
        # Real-time partners need the visitor's uids at them: a read for a known visitor.
        asks = bool(self.realtime) and visitor.kind is VisitorKind.KNOWN
        if realized or needs_state or asks:
            state, result, fires = await self._qualify(visitor, req, privacy, realized)
            segments, realized = result.segments, result.realized
            if not state.degraded:  # segments unknown: leave the page's cookie alone
                out += self._own_cookies(segments, privacy, headers)
        else:
            state, segments, fires = None, frozenset(), []
        if json_answer:
            doc = self._answer(visitor, req)
            if req.cts >= 1:
                doc["segments"] = sorted(segments)
            if req.cts >= 2:
                doc["traits"] = realized
            doc["stuff"] = [
                {"cn": c.name, "cv": value, "ttl": c.ttl_days, "dmn": c.domain}
                for c, value in self.profiles.stuff(segments, privacy)
            ]
            doc["dests"] = [f.doc() for f in fires]
            mapped = None  # unread: offer() reads them if it needs them
            if state is not None and state.stored:
                mapped = self.profiles.mapped(state, today())  # {} when the read failed
            offers, dextp = await self.offers.offer(
                visitor, privacy, headers, req.consent, scope.get("scheme", "http"), mapped=mapped
            )
            doc["ibs"] = ibs_entries(offers)
            if dextp is not None:
                out.append(dextp)
            self.access.add("event answered", tid=doc["tid"], uuid=visitor.uuid)
            await self._send_json(doc, req.callback, headers, out, send_, 200, method)
        else:  # the hottest answer: straight to the server, no helper coroutine
            out[:0] = GIF_HEADERS
            await send_({"type": "http.response.start", "status": 200, "headers": out})
            await send_({"type": "http.response.body", "body": b"" if method == "HEAD" else GIF})
        self.outcomes.count("ok", started)

    async def _qualify(
        self, visitor: Visitor, req: EventRequest, privacy: Privacy, realized: list[int]
    ) -> tuple[State, Qualification, list[Fire]]:
        state = await self.profiles.read(visitor)
        if self.realtime and state.stored and not state.degraded:
            day = today()
            mapped = {d: uid for d, (uid, _) in self.profiles.mapped(state, day).items()}
            values = self.profiles.macro_values(visitor, state, privacy, req.consent, day)
            extra = await self.realtime.ask(mapped, values)
            realized = realized + [sid for sid in extra if sid not in realized]
        result, fires = self.profiles.qualify(
            visitor,
            state,
            realized,
            privacy,
            req.consent,
            hand_out=req.answers_json and req.dests,
        )
        return state, result, fires

    def _own_cookies(
        self, segments: frozenset[int], privacy: Privacy, headers: Mapping[bytes, bytes]
    ) -> Headers:
        """Set-Cookie for the cookie destinations whose domain is the request host's."""
        if not self.gif_needs_state:
            return []
        host = headers.get(b"host", b"").decode("latin-1")
        values = dict(self.profiles.stuff(segments, privacy))
        sent = headers.get(b"cookie")
        return [
            c.set_cookie(values.get(c, ""))  # "": the visitor left them all, expire it
            for c in self.profiles.rules.own_cookies
            if c.own_domain(host)
            and (c in values or cookie_value(sent, c.name.encode() + b"=") is not None)
        ]

    def _record(self, visitor: Visitor, req: EventRequest, privacy: Privacy) -> None:
        """Everything /event stores. Writes are buffered: no Redis round trip here."""
        if visitor.kind is not VisitorKind.KNOWN:
            # A browser without our cookie may be one that refuses cookies: storing
            # for it would make a new visitor on every page view.
            return
        assert visitor.uuid is not None
        self.store.seen(visitor.uuid)
        now = time.time()
        for dpid, uid in req.declared_ids:
            if privacy.partner_allowed(self.gvl_ids[dpid]):
                self.store.put_mapping(visitor.uuid, dpid, uid, today(now))
                self.store.tally.add(partner_field(dpid, "mappings"))
        if needs_touch(visitor, now) and not req.declared_ids:
            self.store.touch_visitor(visitor.uuid, today(now))

    def _answer(self, visitor: Visitor, req: EventRequest) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "uuid": visitor.uuid,
            "tid": new_tid(),
            "dcs_region": self.region,
            "stuff": [],
            "dests": [],
            "ibs": [],
        }
        if req.cts >= 1:
            doc["segments"] = []
        if req.cts >= 2:
            doc["traits"] = []
        return doc

    async def _send_json(
        self,
        doc: dict[str, Any],
        callback: str | None,
        headers: Mapping[bytes, bytes],
        out: Headers,
        send_: Send,
        status: int,
        method: str,
    ) -> None:
        body = json_body(doc)
        if callback is not None:
            body = b"/**/" + callback.encode() + b"(" + body + b");"
            resp = json_headers(body, b"application/javascript")
        else:
            resp = json_headers(body)
            cors(resp, headers.get(b"origin"))
        await send(send_, status, resp + out, body, head=method == "HEAD")

    async def _refuse(
        self,
        exc: RequestError,
        visitor: Visitor,
        req: EventRequest | None,
        as_json: bool,
        headers: Mapping[bytes, bytes],
        method: str,
        send_: Send,
    ) -> None:
        code = int(exc.code)
        tid = new_tid()
        log.info(
            "event refused",
            extra={"tid": tid, "code": code, "reason": exc.msg, "status": exc.status},
        )
        # Refresh a cookie the browser already had; never issue one on a refusal.
        out = refusal_headers(exc, visitor, self.cookies)
        if not as_json:
            await send(send_, exc.status, GIF_HEADERS + out, GIF, head=method == "HEAD")
            return
        doc: dict[str, Any] = {"errors": [{"code": code, "msg": exc.msg}], "tid": tid}
        if exc.code is Code.OPTED_OUT:
            doc.update({"dcs_region": self.region, "stuff": [], "dests": [], "ibs": []})
        # A refused callback name is never echoed: the error goes out as plain JSON.
        callback = req.callback if req is not None else None
        if callback is not None and not CALLBACK.fullmatch(callback):
            callback = None
        await self._send_json(doc, callback, headers, out, send_, exc.status, method)


class OptOutEndpoint:
    """GET/HEAD /demoptout.jpg: NOTARGET cookie, erase the visitor, answer the GIF."""

    def __init__(self, store: Store, cookies: VisitorCookies) -> None:
        self.store = store
        self.cookies = cookies
        self.outcomes = Outcomes("demoptout")

    async def __call__(self, scope: Scope, receive: Receive, send_: Send) -> None:
        started = time.perf_counter()
        if scope["method"] not in METHODS_PIXEL:
            await method_not_allowed(send_, b"GET, HEAD")
            return
        visitor = self.cookies.resolve(request_headers(scope).get(b"cookie"))
        if visitor.kind is VisitorKind.KNOWN and visitor.uuid is not None:
            self.store.erase_visitor(visitor.uuid)
        out = [*GIF_HEADERS, self.cookies.opt_out_header()]
        await send(send_, 200, out, GIF, head=scope["method"] == "HEAD")
        self.outcomes.count("ok", started)

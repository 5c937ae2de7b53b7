"""/event and /demoptout.jpg (SPEC §4, §12): raw ASGI, because they are the hot path."""

from __future__ import annotations

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
from ..visits import Profiles, State
from .common import new_tid
from .cookies import cookie_value
from .dest5 import SyncOffers, ibs_entries
from .pipeline import BrowserEndpoint, Call, Opening, refusal_headers
from .responses import (
    GIF,
    GIF_HEADERS,
    Headers,
    Scope,
    cors,
    json_body,
    json_headers,
    send,
)

_FORM_TYPES: Final = (b"application/x-www-form-urlencoded", b"text/plain")


def _wants_json(pairs: list[tuple[str, str]]) -> bool:
    """Whether the refusal of a request we could not fully parse should be JSON."""
    return any((k == "d_rtbd" and v == "json") or k == "d_cb" for k, v in pairs)


def _query_wants_json(query: bytes) -> bool:
    try:
        return _wants_json(parse_pairs(query))
    except RequestError:  # undecodable: as well as it can be told
        return b"d_rtbd=json" in query or b"d_cb=" in query


class _Unparsable(RequestError):
    """A refusal of parse_event, knowing whether the request wanted JSON."""

    def __init__(self, exc: RequestError, as_json: bool) -> None:
        super().__init__(exc.code, exc.msg, status=exc.status)
        self.as_json = as_json


class EventEndpoint(BrowserEndpoint[EventRequest]):
    """GET/HEAD/POST /event: signals in, GIF or JSON/JSONP out."""

    name = "event"
    methods = frozenset({"GET", "HEAD", "POST"})

    def __init__(
        self,
        opening: Opening,
        store: Store,
        settings: Settings,
        access: AccessLog,
        offers: SyncOffers,
        profiles: Profiles,
        realtime: RealtimeCaller | None = None,
    ) -> None:
        super().__init__(opening)
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
        self.region = settings.server.region
        self.dpids = frozenset(p.dpid for p in settings.partners)
        self.gvl_ids = {p.dpid: p.gvl_id for p in settings.partners}
        # [cookies] bounce: a visitor without our cookie is stored only once it comes
        # back with one; without the bounce, its first request is stored at once.
        self.bounces = settings.cookies.bounce

    def parse(self, call: Call, params: bytes, body: bytes) -> EventRequest:
        pairs = parse_pairs(params)
        try:
            if call.method == "POST":
                ctype = call.headers.get(b"content-type", b"").split(b";")[0].strip().lower()
                if body and ctype not in _FORM_TYPES:
                    raise RequestError(Code.MALFORMED, "body must be form-encoded")
                pairs = pairs + parse_pairs(body)
            return parse_event(pairs, call.headers, self.signal_keys)
        except RequestError as exc:
            raise _Unparsable(exc, _wants_json(pairs)) from None

    def consent(self, req: EventRequest) -> Mapping[str, str]:
        return req.consent

    async def answer(self, call: Call, req: EventRequest, privacy: Privacy | None) -> str:
        assert privacy is not None
        check_declared_ids(req.declared_ids, self.dpids)
        visitor = call.visitor
        realized = (
            self.qualifier.realize(req.signals, req.private, req.trait_sids)
            if self.qualifier.active
            else []
        )
        if (
            visitor.kind is VisitorKind.NEW
            and self.bounces
            and (realized or self._declares(req, privacy))
        ):
            if req.bounced:
                raise RequestError(Code.COOKIES_BLOCKED, "the browser refuses cookies")
            extra: Headers = []
            if req.answers_json:  # fetch() follows the redirect only if it passes CORS
                cors(extra, call.headers.get(b"origin"))
            return await self.cookie_bounce(call, extra)
        self._record(visitor, req, privacy)
        assert visitor.uuid is not None
        out: Headers = [self.cookies.set_header(visitor)]
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
                out += self._own_cookies(segments, privacy, call.headers)
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
                visitor, privacy, call.headers, req.consent, call.scheme, mapped=mapped
            )
            doc["ibs"] = ibs_entries(offers)
            if dextp is not None:
                out.append(dextp)
            self.access.add("event answered", tid=doc["tid"], uuid=visitor.uuid)
            await self._send_json(call, doc, req.callback, out, 200)
        else:  # the hottest answer: straight to the server, no helper coroutine
            out[:0] = GIF_HEADERS
            await call.send({"type": "http.response.start", "status": 200, "headers": out})
            await call.send({"type": "http.response.body", "body": b"" if call.head else GIF})
        return "ok"

    async def _qualify(
        self, visitor: Visitor, req: EventRequest, privacy: Privacy, realized: list[int]
    ) -> tuple[State, Qualification, list[Fire]]:
        state = await self.profiles.read(visitor, store_new=not self.bounces)
        if self.realtime and state.stored and not state.degraded:
            day = today()
            mapped = {d: m.uid for d, m in self.profiles.mapped(state, day).items()}
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
        if visitor.kind is not VisitorKind.KNOWN and self.bounces:
            # A browser without our cookie whose request would store something was
            # bounced (a browser that refuses cookies would make a new visitor on
            # every page view): what is left stores nothing.
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

    def _declares(self, req: EventRequest, privacy: Privacy) -> bool:
        """Whether the request declares an id that would be stored (d_cid)."""
        return any(privacy.partner_allowed(self.gvl_ids[dpid]) for dpid, _ in req.declared_ids)

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
        self, call: Call, doc: dict[str, Any], callback: str | None, out: Headers, status: int
    ) -> None:
        body = json_body(doc)
        if callback is not None:
            body = b"/**/" + callback.encode() + b"(" + body + b");"
            resp = json_headers(body, b"application/javascript")
        else:
            resp = json_headers(body)
            cors(resp, call.headers.get(b"origin"))
        await send(call.send, status, resp + out, body, head=call.head)

    async def refuse(
        self, call: Call, exc: RequestError, req: EventRequest | None, tid: str
    ) -> str:
        # Refresh a cookie the browser already had; never issue one on a refusal.
        out = refusal_headers(exc, call.visitor, self.cookies)
        if req is not None:
            as_json = req.answers_json
        elif isinstance(exc, _Unparsable):
            as_json = exc.as_json
        else:  # a body over its limit, or a query that cannot be decoded
            as_json = _query_wants_json(call.scope["query_string"])
        if not as_json:
            await send(call.send, exc.status, GIF_HEADERS + out, GIF, head=call.head)
        else:
            code = int(exc.code)
            doc: dict[str, Any] = {"errors": [{"code": code, "msg": exc.msg}], "tid": tid}
            if exc.code is Code.OPTED_OUT:
                doc.update({"dcs_region": self.region, "stuff": [], "dests": [], "ibs": []})
            # A refused callback name is never echoed: the error goes out as plain JSON.
            callback = req.callback if req is not None else None
            if callback is not None and not CALLBACK.fullmatch(callback):
                callback = None
            await self._send_json(call, doc, callback, out, exc.status)
        return f"error_{int(exc.code)}"


class OptOutEndpoint(BrowserEndpoint[None]):
    """GET/HEAD /demoptout.jpg: NOTARGET cookie, erase the visitor, answer the GIF."""

    name = "demoptout"
    refuses_opted_out = False  # opting out again refreshes the opt-out

    def __init__(self, opening: Opening, store: Store) -> None:
        super().__init__(opening)
        self.store = store

    def params(self, scope: Scope) -> bytes:
        return b""  # its query is ignored: a mangled or long one never stops an opt-out

    def parse(self, call: Call, params: bytes, body: bytes) -> None:
        return None  # its parameters, if any, change nothing: an opt-out always holds

    async def answer(self, call: Call, req: None, privacy: Privacy | None) -> str:
        visitor = call.visitor
        if visitor.kind is VisitorKind.KNOWN and visitor.uuid is not None:
            self.store.erase_visitor(visitor.uuid, "optout")
        out = [*GIF_HEADERS, self.cookies.opt_out_header()]
        await send(call.send, 200, out, GIF, head=call.head)
        return "ok"

"""The one opening of every browser endpoint (SPEC §13).

A request is answered by the first of these that applies, in this order, the same on
every endpoint:

    method (405) → size limits (414, 413) → undecodable request (311) → opted out
    (171, the NOTARGET cookie kept) → consent (313, 315, and 314 for this service) →
    the endpoint's own checks (314 for a partner, 320-323) → cookies blocked (172)
    → the endpoint's answer

and every answer is counted by outcome. `BrowserEndpoint` runs the order; an endpoint
supplies only what differs: how it reads its request (`parse`), the consent
parameters it carries (`consent`), its decision and answer (`answer`, which raises a
RequestError for its own checks), and how it renders a refusal (`refuse`). An
endpoint that would store for a visitor without our cookie answers with the cookie
bounce instead (`cookie_bounce`, SPEC §3).

One exception is in the nature of things: /sync/chain's hops carry their consent in a
signed token, so an invalid token (323) is found while reading the consent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Generic, TypeVar

from ..consent import PBS_PURPOSE_ONE, Privacy, PurposeOnePolicy, evaluate
from ..errors import Code, RequestError
from ..identity import Visitor, VisitorKind
from ..numbers import parse_uint
from .common import Outcomes, new_tid
from .cookies import VisitorCookies
from .responses import GIF, GIF_HEADERS, NO_CACHE, Headers, Message, Receive, Scope, Send, send

log = logging.getLogger("pixelsync.web")

METHODS_PIXEL: Final = frozenset({"GET", "HEAD"})
# What the cookie bounce adds to a request's URL; its follow-up is let past the size
# limit by these bytes, so that a request at the limit is not lost to a 414 on its way back.
BOUNCED: Final = b"d_bounce=1"
_BOUNCED_LAST: Final = b"&" + BOUNCED

Req = TypeVar("Req")


class PrivacyRules:
    """The [privacy] settings and the host vendor id, applied to one request."""

    def __init__(
        self,
        *,
        vendor_id: int,
        gdpr_default: int,
        honor_gpc: bool,
        purpose_one: PurposeOnePolicy = PBS_PURPOSE_ONE,
    ) -> None:
        self.vendor_id = vendor_id
        self.gdpr_default = gdpr_default
        self.honor_gpc = honor_gpc
        self.purpose_one = purpose_one
        # Most requests carry no consent parameter: their answer, with and without GPC,
        # decided once (a Privacy, or the refusal to raise).
        self._without: dict[bool, Privacy | RequestError] = {}
        for gpc in (False, True):
            try:
                self._without[gpc] = self._evaluate({}, gpc)
            except RequestError as exc:
                self._without[gpc] = exc

    def evaluate(self, params: Mapping[str, str], headers: Mapping[bytes, bytes]) -> Privacy:
        gpc = self.honor_gpc and headers.get(b"sec-gpc", b"").strip() == b"1"
        if params:
            return self._evaluate(params, gpc)
        decided = self._without[gpc]
        if isinstance(decided, RequestError):
            raise RequestError(decided.code, decided.msg, status=decided.status)
        return decided

    def _evaluate(self, params: Mapping[str, str], gpc: bool) -> Privacy:
        return evaluate(
            params,
            vendor_id=self.vendor_id,
            gdpr_default=self.gdpr_default,
            gpc=gpc,
            honor_gpc=self.honor_gpc,
            purpose_one=self.purpose_one,
        )


@dataclass(frozen=True, slots=True)
class Opening:
    """What every browser endpoint's opening needs: built once, shared by all."""

    cookies: VisitorCookies
    privacy: PrivacyRules
    max_query: int  # bytes of a query string (or of the parameters in a path)
    max_body: int  # bytes of a POST body
    # To receive a POST body, once its head is in; None where the server bounds it
    # itself (uvicorn with our protocol: its body timer ends the request).
    body_timeout_s: float | None


@dataclass(slots=True)
class Call:
    """One request, its headers read and its visitor known."""

    scope: Scope
    receive: Receive
    send: Send
    method: str
    headers: dict[bytes, bytes]
    visitor: Visitor
    head: bool  # a HEAD request: the answer's headers without its body

    @property
    def scheme(self) -> str:
        return str(self.scope.get("scheme", "http"))


class ClientGone(Exception):
    """The client disconnected before its request was complete: nothing to answer."""


class BrowserEndpoint(Generic[Req]):
    """A raw-ASGI browser endpoint: the opening in SPEC §13's order, then `answer`."""

    name: ClassVar[str]  # the endpoint's label in metrics and logs
    methods: ClassVar[frozenset[str]] = METHODS_PIXEL
    # /demoptout.jpg answers an opted-out visitor as any other: it refreshes the opt-out
    refuses_opted_out: ClassVar[bool] = True
    too_long: ClassVar[str] = "query string too long"  # the 414's message
    # Prebid Server's endpoints log their refusals themselves, with their outcome labels
    logs_refusals: ClassVar[bool] = True

    def __init__(self, opening: Opening) -> None:
        self.cookies = opening.cookies
        self.privacy = opening.privacy
        self.max_query = opening.max_query
        self.max_body = opening.max_body
        self.body_timeout_s = opening.body_timeout_s
        self.outcomes = Outcomes(self.name)
        self._allow = ", ".join(sorted(self.methods)).encode()
        self._refused = f"{self.name} refused"

    async def __call__(self, scope: Scope, receive: Receive, send_: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        if method not in self.methods:
            await method_not_allowed(send_, self._allow)
            return
        headers = request_headers(scope)
        visitor = self.cookies.resolve(headers.get(b"cookie"))
        call = Call(scope, receive, send_, method, headers, visitor, method == "HEAD")
        req: Req | None = None
        try:
            params = self.params(scope)
            if len(params) > self.max_query and not _bounced_within(params, self.max_query):
                raise RequestError(Code.MALFORMED, self.too_long, status=414)
            if method == "POST":
                body = await read_body(receive, self.max_body, headers, self.body_timeout_s)
            else:
                body = b""
            req = self.parse(call, params, body)
            if visitor.kind is VisitorKind.OPTED_OUT and self.refuses_opted_out:
                raise RequestError(Code.OPTED_OUT, "visitor opted out")
            consent = self.consent(req)
            privacy = None if consent is None else self.privacy.evaluate(consent, headers)
            outcome = await self.answer(call, req, privacy)
        except RequestError as exc:
            tid = new_tid()
            if exc.status == 408:  # the rest of a slow body is not waited for
                call.send = _closing(call.send)
            if self.logs_refusals:
                log.info(
                    self._refused,
                    extra={
                        "tid": tid,
                        "code": int(exc.code),
                        "reason": exc.msg,
                        "status": exc.status,
                    },
                )
            outcome = await self.refuse(call, exc, req, tid)
        except ClientGone:
            # uvicorn drops this answer (the client is gone); granian also tells an app
            # its body was cut off by granian's own limits (trailers over its buffer)
            # so, and answers a 500 for an app that gave no answer (SPEC §13: never).
            gone = RequestError(Code.MALFORMED, "request body not received", status=400)
            call.send = _closing(call.send)
            await self.refuse(call, gone, req, new_tid())
            outcome = "client_gone"
        self.outcomes.count(outcome, started)

    # ------------------------------------------------------------ what an endpoint gives

    def params(self, scope: Scope) -> bytes:
        """The request's parameters, still encoded, as the size limit counts them."""
        query: bytes = scope["query_string"]
        return query

    def parse(self, call: Call, params: bytes, body: bytes) -> Req:
        """Decode the request; RequestError 311 when it cannot be."""
        raise NotImplementedError

    def consent(self, req: Req) -> Mapping[str, str] | None:
        """The request's consent parameters; None on an endpoint that takes none (then
        no privacy rule is evaluated, and `answer` gets None)."""
        return None

    async def answer(self, call: Call, req: Req, privacy: Privacy | None) -> str:
        """The endpoint's own checks (RequestError) and its answer; the outcome to count."""
        raise NotImplementedError

    async def refuse(self, call: Call, exc: RequestError, req: Req | None, tid: str) -> str:
        """Answer a refusal; the outcome to count. The GIF, unless the endpoint says."""
        out = [*GIF_HEADERS, *refusal_headers(exc, call.visitor, self.cookies)]
        await send(call.send, exc.status, out, GIF, head=call.head)
        return f"error_{int(exc.code)}"

    # ------------------------------------------------------------------ the cookie bounce

    async def cookie_bounce(self, call: Call, extra: Headers | None = None) -> str:
        """SPEC §3: instead of storing for a visitor without our cookie, set a fresh one
        and send the browser back to the same URL plus d_bounce=1 (307 for a POST, so
        that its body is sent again); only a browser that keeps the cookie gets stored.
        The endpoint answers the follow-up still without a cookie with 172, never a
        second bounce. `extra`: headers the redirect must carry (CORS)."""
        headers: Headers = [
            (b"location", self.bounce_location(call.scope)),
            (b"content-length", b"0"),
            *NO_CACHE,
            self.cookies.set_header(call.visitor),
        ]
        if extra:
            headers += extra
        await send(call.send, 307 if call.method == "POST" else 302, headers, b"", head=call.head)
        return "bounce"

    def bounce_location(self, scope: Scope) -> bytes:
        """The request's own URL, relative, plus d_bounce=1."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope["query_string"]
        if query:
            return raw_path + b"?" + query + _BOUNCED_LAST
        return raw_path + b"?" + BOUNCED


# --------------------------------------------------------------------------- helpers


async def method_not_allowed(send_: Send, allow: bytes) -> None:
    await send(send_, 405, [(b"allow", allow), (b"content-length", b"0")], b"")


async def read_body(
    receive: Receive, limit: int, headers: Mapping[bytes, bytes], timeout_s: float | None
) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes, and with
    408 when it is not whole within `timeout_s` (a slowloris of the body). With
    `timeout_s` None (the server bounds the body's time), each message is a plain
    await: no task, and no suspension for a body that is there already."""
    too_large = RequestError(Code.MALFORMED, f"body over {limit} bytes", status=413)
    declared = parse_uint(headers.get(b"content-length", b""), 20)
    if declared is not None and declared > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
    while True:
        if deadline is None:
            message = await receive()
        else:
            try:
                # wait_for, not asyncio.timeout: on 3.11 the app may run outside a task
                # (replacements/uvicorn_protocol.py).
                left = deadline - asyncio.get_running_loop().time()
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                msg = f"body not received within {timeout_s:g} s"
                raise RequestError(Code.MALFORMED, msg, status=408) from None
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _closing(send_: Send) -> Send:
    """send_, its answer closing the connection (Connection: close)."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], (b"connection", b"close")]}
        await send_(message)

    return closing


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """Header name -> value; several Cookie headers count as one (RFC 6265 §5.4)."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    headers = dict(raw)
    if len(headers) != len(raw):  # a repeated header: join the Cookie ones
        cookies = [value for name, value in raw if name == b"cookie"]
        if len(cookies) > 1:
            headers[b"cookie"] = b"; ".join(cookies)
    return headers


def _bounced_within(params: bytes, limit: int) -> bool:
    """A cookie bounce's follow-up of a request within the limit."""
    return params.endswith(_BOUNCED_LAST) and len(params) - len(_BOUNCED_LAST) <= limit


def opt_out_kept(exc: RequestError, cookies: VisitorCookies) -> Headers:
    """For the answers that never set the visitor cookie (a pixel's load, Prebid
    Server's): none, but an opted-out visitor's NOTARGET is refreshed (SPEC §13)."""
    return [cookies.opt_out_header()] if exc.code is Code.OPTED_OUT else []


def refusal_headers(exc: RequestError, visitor: Visitor, cookies: VisitorCookies) -> Headers:
    """X-Error names the reason; a browser's cookie is refreshed if it had one (a
    refusal never issues one; an opted-out visitor's NOTARGET is refreshed), and none
    is set at all where consent is wanting."""
    out: Headers = [(b"x-error", str(int(exc.code)).encode())]
    if visitor.kind is not VisitorKind.NEW and not exc.code.is_consent:
        out.append(cookies.set_header(visitor))
    return out

"""Pieces every raw-ASGI browser endpoint uses."""

from __future__ import annotations

import secrets
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Final

from .. import metrics
from ..consent import Privacy, evaluate
from ..errors import Code, RequestError
from ..identity import Visitor, VisitorKind
from ..tally import Tally, partner_field
from .cookies import VisitorCookies
from .responses import Headers, Receive, Scope, Send, send

METHODS_PIXEL: Final = frozenset({"GET", "HEAD"})


class Outcomes:
    """An endpoint's answers, counted by outcome, and their latency: in plain ints on
    the hot path, added to Prometheus by flush() (metrics.counted_locally)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.latency = metrics.LATENCY.labels(endpoint)
        self._bounds = [*metrics.LATENCY_BUCKETS, float("inf")]  # the histogram's, +Inf last
        self._counts: dict[str, int] = {}
        self._buckets = [0] * len(self._bounds)
        self._sum = 0.0
        metrics.counted_locally(self)

    def count(self, outcome: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        counts = self._counts
        counts[outcome] = counts.get(outcome, 0) + 1
        self._buckets[bisect_left(self._bounds, elapsed)] += 1  # observe()'s `<=` bound
        self._sum += elapsed

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        buckets, self._buckets = self._buckets, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        for outcome, n in counts.items():
            metrics.child(metrics.REQUESTS, self.endpoint, outcome).inc(n)
        if counts:
            metrics.add_observations(self.latency, buckets, total)


class SyncCounters:
    """Match rates per partner (SPEC §5): syncs handed out and completed, and mappings
    stored, in Prometheus and in the per-minute buckets."""

    def __init__(self, tally: Tally, dpids: Iterable[int]) -> None:
        self.tally = tally
        for dpid in dpids:  # at 0 from the start: a partner never synced shows as such
            for stage in ("instructed", "completed"):
                metrics.child(metrics.SYNCS, str(dpid), stage)

    def instructed(self, dpid: int) -> None:
        metrics.child(metrics.SYNCS, str(dpid), "instructed").inc()
        self.tally.add(partner_field(dpid, "instructed"))

    def completed(self, dpid: int) -> None:
        metrics.child(metrics.SYNCS, str(dpid), "completed").inc()
        self.tally.add(partner_field(dpid, "completed"))
        self.tally.add(partner_field(dpid, "mappings"))


async def method_not_allowed(send_: Send, allow: bytes) -> None:
    await send(send_, 405, [(b"allow", allow), (b"content-length", b"0")], b"")


async def read_body(receive: Receive, limit: int, headers: Mapping[bytes, bytes]) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    too_large = RequestError(Code.MALFORMED, f"body over {limit} bytes", status=413)
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
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


class ClientGone(Exception):
    """The client disconnected before its request was complete: nothing to answer."""


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """Header name -> value; several Cookie headers count as one (RFC 6265 §5.4)."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    headers = dict(raw)
    if len(headers) != len(raw):  # a repeated header: join the Cookie ones
        cookies = [value for name, value in raw if name == b"cookie"]
        if len(cookies) > 1:
            headers[b"cookie"] = b"; ".join(cookies)
    return headers


class PrivacyRules:
    """The [privacy] settings and the host vendor id, applied to one request."""

    def __init__(self, *, vendor_id: int, gdpr_default: int, honor_gpc: bool) -> None:
        self.vendor_id = vendor_id
        self.gdpr_default = gdpr_default
        self.honor_gpc = honor_gpc

    def evaluate(self, params: Mapping[str, str], headers: Mapping[bytes, bytes]) -> Privacy:
        gpc = self.honor_gpc and headers.get(b"sec-gpc", b"").strip() == b"1"
        return evaluate(params, vendor_id=self.vendor_id, gdpr_default=self.gdpr_default, gpc=gpc)


def refusal_headers(exc: RequestError, visitor: Visitor, cookies: VisitorCookies) -> Headers:
    """X-Error names the reason; a browser's cookie is refreshed if it had one (a
    refusal never issues one), and none is set at all where consent is wanting."""
    out: Headers = [(b"x-error", str(int(exc.code)).encode())]
    if visitor.kind is not VisitorKind.NEW and not exc.code.is_consent:
        out.append(cookies.set_header(visitor))
    return out


def new_tid() -> str:
    """A 12-character transaction id for support, in JSON answers and in the logs."""
    return secrets.token_urlsafe(9)

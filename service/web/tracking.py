"""/fire/<token> and /ack/<token> (SPEC §7): count a destination pixel's load (or the
partner's confirmation) once, however often the URL is loaded, then redirect to the
partner (fire) or answer the GIF (ack)."""

from __future__ import annotations

import logging
import time

from ..destinations import Tokens
from ..errors import RequestError
from ..signals import decode_path_part
from ..store import Store
from .common import METHODS_PIXEL, Outcomes, method_not_allowed, new_tid
from .qualify import TallyCounters
from .responses import GIF, GIF_HEADERS, NO_CACHE, Headers, Receive, Scope, Send, send

log = logging.getLogger("pixelsync.web")

FIRE_PREFIX = "/fire/"
ACK_PREFIX = "/ack/"


class TrackingEndpoint:
    """One class for both: `kind` is "fire" (302 to the partner) or "ack" (GIF)."""

    def __init__(self, kind: str, store: Store, tokens: Tokens, loss: TallyCounters) -> None:
        self.kind = kind
        self.prefix = FIRE_PREFIX if kind == "fire" else ACK_PREFIX
        self.counter = "loaded" if kind == "fire" else "confirmed"
        self.store = store
        self.tokens = tokens
        self.loss = loss
        self.outcomes = Outcomes(kind)

    async def __call__(self, scope: Scope, receive: Receive, send_: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        if method not in METHODS_PIXEL:
            await method_not_allowed(send_, b"GET, HEAD")
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        try:
            token = decode_path_part(raw_path[len(self.prefix) :])
            if self.kind == "fire":
                destination, nonce, target = self.tokens.read_fire(token)
            else:
                destination, nonce = self.tokens.read_ack(token)
                target = ""
        except RequestError as exc:
            log.info(f"{self.kind} refused", extra={"tid": new_tid(), "code": int(exc.code)})
            headers = [*GIF_HEADERS, (b"x-error", str(int(exc.code)).encode())]
            await send(send_, exc.status, headers, GIF, head=method == "HEAD")
            self.outcomes.count(f"error_{int(exc.code)}", started)
            return
        self.store.count_once(
            f"{self.kind}:{nonce}".encode(),
            lambda: self.loss.count(destination, self.counter),
        )
        if self.kind == "fire":
            out: Headers = [
                (b"location", target.encode("latin-1", "replace")),
                (b"content-length", b"0"),
                *NO_CACHE,
            ]
            await send(send_, 302, out, b"")
        else:
            await send(send_, 200, GIF_HEADERS, GIF, head=method == "HEAD")
        self.outcomes.count("ok", started)

"""/fire/<token> and /ack/<token> (SPEC §7): count a destination pixel's load (or the
partner's confirmation) once, however often the URL is loaded, then redirect to the
partner (fire) or answer the GIF (ack)."""

from __future__ import annotations

from typing import ClassVar

from ..consent import Privacy
from ..destinations import Tokens
from ..errors import RequestError
from ..signals import decode_path_part
from ..store import Store
from ..visits import TallyCounters
from .pipeline import BrowserEndpoint, Call, Opening, opt_out_kept
from .responses import GIF, GIF_HEADERS, NO_CACHE, Headers, Scope, send

FIRE_PREFIX = "/fire/"
ACK_PREFIX = "/ack/"


class TrackingEndpoint(BrowserEndpoint[str]):
    """/fire (302 to the partner) and /ack (the GIF). An opted-out browser is refused
    as everywhere else: it is not sent on to the partner."""

    prefix: ClassVar[bytes]
    counter: ClassVar[str]  # the loss counter a first load counts

    too_long = "request too long"

    def __init__(self, opening: Opening, store: Store, tokens: Tokens, loss: TallyCounters) -> None:
        super().__init__(opening)
        self.store = store
        self.tokens = tokens
        self.loss = loss

    def params(self, scope: Scope) -> bytes:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        return raw_path[len(self.prefix) :]

    def parse(self, call: Call, params: bytes, body: bytes) -> str:
        return decode_path_part(params)  # the token

    async def answer(self, call: Call, req: str, privacy: Privacy | None) -> str:
        destination, nonce, target = self.read(req)
        self.store.count_once(
            f"{self.name}:{nonce}".encode(),
            lambda: self.loss.count(destination, self.counter),
        )
        if target is not None:
            out: Headers = [
                (b"location", target.encode("latin-1", "replace")),
                (b"content-length", b"0"),
                *NO_CACHE,
            ]
            await send(call.send, 302, out, b"")
        else:
            await send(call.send, 200, GIF_HEADERS, GIF, head=call.head)
        return "ok"

    async def refuse(self, call: Call, exc: RequestError, req: str | None, tid: str) -> str:
        # The load of a pixel: no visitor cookie is set, only an opt-out kept.
        out = [*GIF_HEADERS, (b"x-error", str(int(exc.code)).encode())]
        out += opt_out_kept(exc, self.cookies)
        await send(call.send, exc.status, out, GIF, head=call.head)
        return f"error_{int(exc.code)}"

    def read(self, token: str) -> tuple[int, str, str | None]:
        """(destination, nonce, where to redirect or None); 323 for a bad token."""
        raise NotImplementedError


class FireEndpoint(TrackingEndpoint):
    name = "fire"
    prefix = FIRE_PREFIX.encode()
    counter = "loaded"

    def read(self, token: str) -> tuple[int, str, str | None]:
        return self.tokens.read_fire(token)


class AckEndpoint(TrackingEndpoint):
    name = "ack"
    prefix = ACK_PREFIX.encode()
    counter = "confirmed"

    def read(self, token: str) -> tuple[int, str, str | None]:
        destination, nonce = self.tokens.read_ack(token)
        return destination, nonce, None

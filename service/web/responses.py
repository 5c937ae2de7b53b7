"""Precomputed bodies and headers, and raw-ASGI senders for the hot endpoints."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

# 1x1 transparent GIF, 43 bytes.
GIF: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
assert len(GIF) == 43

NO_CACHE: Final[Headers] = [
    (b"cache-control", b"no-cache, no-store, must-revalidate"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
]
GIF_HEADERS: Final[Headers] = [
    (b"content-type", b"image/gif"),
    (b"content-length", b"43"),
    *NO_CACHE,
]
NOSNIFF: Final = (b"x-content-type-options", b"nosniff")


async def send(
    send_: Send, status: int, headers: Headers, body: bytes, *, head: bool = False
) -> None:
    await send_({"type": "http.response.start", "status": status, "headers": headers})
    await send_({"type": "http.response.body", "body": b"" if head else body})


def json_body(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def json_headers(body: bytes, content_type: bytes = b"application/json") -> Headers:
    return [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        NOSNIFF,
        *NO_CACHE,
    ]


def cors(headers: Headers, origin: bytes | None) -> None:
    """Credentialed CORS for JSON answers: echo the Origin."""
    if origin:
        headers.append((b"access-control-allow-origin", origin))
        headers.append((b"access-control-allow-credentials", b"true"))
        headers.append((b"vary", b"Origin"))

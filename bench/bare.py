"""The ceiling: the GIF answer of /event and nothing else, served by the same uvicorn.

Run as `uvicorn bench.bare:app --lifespan off --no-access-log --no-server-header`.
It answers every path, /healthz included, so the harness can wait for it like pixelsync.
"""

from __future__ import annotations

from service.web.responses import GIF, GIF_HEADERS, Receive, Scope, Send, send


async def app(scope: Scope, receive: Receive, send_: Send) -> None:
    if scope["type"] == "http":
        await send(send_, 200, GIF_HEADERS, GIF, head=scope["method"] == "HEAD")

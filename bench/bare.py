"""The ceilings: the GIF answer of /event and nothing else, served by the same uvicorn.

    uvicorn bench.bare:app            raw ASGI: the cost of uvicorn alone
    uvicorn bench.bare:starlette_app  a Starlette route answering a Response: the "bare
                                      Starlette GIF" the issues' figures are ratios to

Run with `--lifespan off --no-access-log --no-server-header`. Both answer every path,
/healthz included, so the harness can wait for them like pixelsync.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.web.responses import GIF, GIF_HEADERS, Receive, Scope, Send, send


async def app(scope: Scope, receive: Receive, send_: Send) -> None:
    if scope["type"] == "http":
        await send(send_, 200, GIF_HEADERS, GIF, head=scope["method"] == "HEAD")


_NO_CACHE = {k.decode(): v.decode() for k, v in GIF_HEADERS if k != b"content-length"}
_NO_CACHE.pop("content-type")


async def _gif(request: Request) -> Response:
    return Response(GIF, media_type="image/gif", headers=_NO_CACHE)


starlette_app = Starlette(routes=[Route("/{path:path}", _gif, methods=["GET", "HEAD"])])

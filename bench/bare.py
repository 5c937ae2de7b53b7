"""The ceilings: the GIF answer of /event and nothing else, served by the same uvicorn
as `pixelsync serve` (its one-send httptools protocol,
service/replacements/uvicorn_protocol.py):

    python -m bench.bare PORT WORKERS [APP] [--stock]
      bench.bare:app            raw ASGI: the cost of uvicorn alone (the default APP)
      bench.bare:starlette_app  a Starlette route answering a Response: the "bare
                                Starlette GIF" the issues' figures are ratios to
      --stock                   uvicorn's own httptools protocol (two sends a response)

Both answer every path, /healthz included, so the harness can wait for them like
pixelsync.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.cli import UVICORN_HTTP
from service.web.responses import GIF, GIF_HEADERS, Receive, Scope, Send, send


async def app(scope: Scope, receive: Receive, send_: Send) -> None:
    if scope["type"] == "http":
        await send(send_, 200, GIF_HEADERS, GIF, head=scope["method"] == "HEAD")


_NO_CACHE = {k.decode(): v.decode() for k, v in GIF_HEADERS if k != b"content-length"}
_NO_CACHE.pop("content-type")


async def _gif(request: Request) -> Response:
    return Response(GIF, media_type="image/gif", headers=_NO_CACHE)


starlette_app = Starlette(routes=[Route("/{path:path}", _gif, methods=["GET", "HEAD"])])


def main(argv: list[str]) -> None:
    stock = "--stock" in argv
    port, workers, *app = [a for a in argv if a != "--stock"]
    uvicorn.run(
        app[0] if app else "bench.bare:app",
        host="127.0.0.1",
        port=int(port),
        workers=int(workers),
        lifespan="off",
        access_log=False,
        server_header=False,
        log_level="warning",
        http="httptools" if stock else UVICORN_HTTP,
        ws="none",
    )


if __name__ == "__main__":
    main(sys.argv[1:])

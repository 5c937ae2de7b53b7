"""/healthz, /readyz and /metrics (SPEC §11)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import metrics
from ..store import Store


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readyz(store: Store) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        if await store.ping():
            return JSONResponse({"status": "ready", "buffered_writes": store.buffered})
        return JSONResponse(
            {"status": "redis unreachable", "buffered_writes": store.buffered}, status_code=503
        )

    return endpoint


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)

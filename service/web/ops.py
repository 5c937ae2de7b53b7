"""/healthz, /readyz and /metrics (SPEC §11), and who may reach the operator endpoints.

/metrics shows partner ids and traffic, /openapi.json the whole API and /readyz the
state of Redis: with `[server] admin_listen` they answer on that listener only (which
serves nothing else but /healthz), otherwise only to an unscoped admin API key.
/healthz stays public: a load balancer's probe carries no key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from .. import metrics
from ..store import Store
from .api import ApiKeys, error

OPERATOR_PATHS: Final = frozenset({"/metrics", "/readyz", "/openapi.json"})
PUBLIC_EVERYWHERE: Final = "/healthz"

Endpoint = Callable[[Request], Awaitable[Response]]


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def readyz(store: Store) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        if await store.ping():
            return JSONResponse({"status": "ready", "buffered_writes": store.buffered})
        return JSONResponse(
            {"status": "redis unreachable", "buffered_writes": store.buffered}, status_code=503
        )

    return endpoint


async def metrics_endpoint(request: Request) -> Response:
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)


def admin_only(keys: ApiKeys) -> Callable[[Endpoint], Endpoint]:
    """An operator endpoint on the public listener: 401 without a known key, 403 for a
    key without the admin scope or scoped to one partner (it would see all of them)."""

    def guard(handler: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            caller = keys.caller(request)
            if caller is None:
                return error(401, "unauthorized", "missing or unknown bearer token")
            if not caller.operator:
                return error(403, "forbidden", "an unscoped admin key is needed")
            return await handler(request)

        return endpoint

    return guard


class Listeners:
    """With an admin listener: which paths a request may reach, by the port it came in
    on (scope["server"], the socket's own address, which uvicorn's proxy-headers
    middleware leaves alone)."""

    def __init__(self, admin_port: int) -> None:
        self.admin_port = admin_port

    def allows(self, scope: Scope, path: str) -> bool:
        if path == PUBLIC_EVERYWHERE:
            return True
        server = scope.get("server")
        on_admin = server is not None and server[1] == self.admin_port
        return on_admin == (path in OPERATOR_PATHS)


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """What Starlette answers a path it has no route for."""
    body = b"Not Found"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"9")]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})

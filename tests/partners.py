"""Real partner servers for the tests: a threaded HTTP server on a loopback address
that records every request and answers as the test's `respond` function decides."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: bytes

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def gif(request: Request) -> Answer:
    """The default answer: a pixel."""
    return Answer(200, {"content-type": "image/gif"}, GIF)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up on a slow answer: nothing to report


class _V6Server(_Server):
    address_family = socket.AF_INET6


class PartnerServer:
    """`respond(request)` runs in the server's thread for every request (it may block,
    e.g. to play a slow partner). `host` "::1" makes a third site next to 127.0.0.1
    and localhost for the browser tests."""

    def __init__(
        self, respond: Callable[[Request], Answer] = gif, *, host: str = "127.0.0.1"
    ) -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        partner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                request = Request(
                    self.command,
                    url.path,
                    parse_qs(url.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                with partner._lock:
                    partner.requests.append(request)
                answer = respond(request)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(answer.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(answer.body)
                except OSError:
                    pass  # the caller gave up on us

            do_GET = do_POST = do_HEAD = _serve

            def log_message(self, *args: object) -> None:
                pass

        server_class = _V6Server if ":" in host else _Server
        self.server = server_class((host, 0), Handler)
        self.port = int(self.server.server_address[1])
        self.origin = (
            f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        )
        # A short poll interval: shutdown() waits up to one of them.
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def seen(self, path: str | None = None) -> list[Request]:
        """The requests so far (to this path only, when given)."""
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SyncingPartner(PartnerServer):
    """Receives our sync call and redirects the browser back to ${CALLBACK} with its
    own uid in place of $UID, as partners do (tests.configs.syncing_partners)."""

    def __init__(self) -> None:
        super().__init__(self.answer)

    def answer(self, request: Request) -> Answer:
        uid = f"partner-{len(self.requests)}-{(request.arg('aam') or '')[:6]}"
        return Answer(302, {"location": (request.arg("redir") or "").replace("$UID", uid)})


P = TypeVar("P", bound=PartnerServer)


@contextlib.contextmanager
def third_site(make: Callable[[], P]) -> Iterator[P]:
    """A partner server on [::1]: a third site beside 127.0.0.1 and localhost for the
    browser tests, which skip where there is no IPv6 loopback."""
    try:
        partner = make()
    except OSError as exc:
        pytest.skip(f"IPv6 loopback [::1] is unavailable here ({exc}): no third site")
    try:
        yield partner
    finally:
        partner.close()

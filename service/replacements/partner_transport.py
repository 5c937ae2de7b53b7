"""The keep-alive HTTP/1.1 transport under the shared partner `httpx.AsyncClient`.

httpx's default transport (httpcore 1.0.9) examines every pooled connection on every
request: a getpeername() and a poll() per connection (httpcore PR #928, still open).
With 32 connections to two real-time partners that cost about 2 ms of CPU per call, and
the calls of a busy worker queued behind each other far past their budget. Here each
origin has a LIFO list of idle connections; a connection the partner closed is known
from its protocol's connection_lost, so no socket is ever polled. Responses are parsed
by httptools (llhttp, the parser uvicorn serves with) and streamed to httpx, which
still decodes the content encoding and applies its own API.

Scope: what partners need. HTTP/1.1 over TCP or TLS, one request at a time per
connection, request bodies read whole (the s2s batches), no HTTP/2, no upgrades and no
proxies: with HTTP(S)_PROXY set, app.py keeps httpx's own transport (and ClientGetter)."""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Final, cast
from urllib.parse import urlsplit

import httptools
import httpx

# Unread body bytes a connection holds before it stops reading from the socket.
HIGH_WATER: Final = 256 * 1024
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_PORTS: Final = {"http": 80, "https": 443}
_GET: Final = (
    b"GET %s HTTP/1.1\r\nhost: %s\r\naccept: application/json\r\n"
    b"accept-encoding: gzip, deflate\r\nuser-agent: pixelsync\r\n\r\n"
)

Origin = tuple[str, str, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    """One socket; one response at a time, fed by the parser's callbacks."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None  # set once the socket is gone
        self.closed = False
        self.idle_since = 0.0
        self.used = False  # has carried a response before (reuse may meet a closed socket)
        self._parser: httptools.HttpResponseParser | None = None
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self.headers_done = False
        self._until_close = False
        self.complete = False
        self.keep_alive = False
        self.trailing = False  # bytes after the response: not reusable
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self.complete:
            self.trailing = True  # nothing asked for these bytes
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self._until_close:
            self.complete = True  # a body without a length ends with the connection
            self._wake()
        else:
            self._fail(httpx.RemoteProtocolError("server disconnected"))

    # --- httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer in the same bytes: nobody asked for it
            self.trailing = True

    def on_status(self, status: bytes) -> None:
        if not self.complete:
            self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        self.headers_done = True
        names = {name.lower() for name, _ in self._headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self.complete:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: the answer proper comes next.
            self._reason, self._headers, self.headers_done = b"", [], False
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()

    # --- used by the transport
    def send(self, data: bytes) -> None:
        if self._paused and self.transport is not None:  # a body left unread before
            self._paused = False
            self.transport.resume_reading()
        self._parser = httptools.HttpResponseParser(self)
        self._reason, self._headers, self._chunks, self._buffered = b"", [], [], 0
        self.headers_done = self.complete = self.keep_alive = False
        assert self.transport is not None
        self.transport.write(data)

    async def head(self, timeout: float | None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        while not self.headers_done:
            await self._wait(timeout)
        assert self._parser is not None
        return self._parser.get_status_code(), self._reason, self._headers

    async def chunk(self, timeout: float | None) -> bytes:
        """The next piece of the body; b"" at its end."""
        while not self._chunks:
            if self.complete:
                return b""
            await self._wait(timeout)
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.keep_alive
            and self.lost is None
            and not (self.closed or self.trailing)
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        if self.lost is not None and not self.complete:
            raise self.lost
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout("partner sent nothing in time") from None
        finally:
            self._waiter = None


class _Body(httpx.AsyncByteStream):
    def __init__(self, pool: PartnerTransport, conn: _Connection, timeout: float | None) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            data = await self._conn.chunk(self._timeout)
            if not data:
                return
            yield data

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._conn)


class PartnerTransport(httpx.AsyncBaseTransport):
    """A bounded keep-alive pool: at most `max_connections` sockets in all, of which at
    most `max_keepalive` idle; an idle socket is reused for `keepalive_expiry` s."""

    def __init__(
        self,
        max_connections: int = 32,
        max_keepalive: int = 32,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._n_idle = 0
        self.open = 0  # sockets open or being opened
        self._waiters: list[asyncio.Future[None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        if url.scheme not in _PORTS:
            raise httpx.UnsupportedProtocol(f"no transport for {url.scheme!r} URLs")
        origin = (url.scheme, url.host, url.port or _PORTS[url.scheme])
        data = _request_bytes(request, await request.aread())
        conn, (status, reason, headers) = await self._exchange(
            origin, data, request.method in _IDEMPOTENT, timeouts
        )
        if request.method == "HEAD":
            conn.trailing = True  # llhttp would wait for a body: not reused
            conn.complete = True
        return httpx.Response(
            status,
            headers=headers,
            stream=_Body(self, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def get(self, url: str, limit: int, timeout: float = 5.0) -> tuple[int, bytes]:
        """A GET without httpx's request and response objects, for the real-time calls
        (half of a call's CPU went to them): the status and the decoded body, cut at
        `limit` + 1 bytes. Same pool, same errors as through the client."""
        parts = urlsplit(url)
        if parts.scheme not in _PORTS or not parts.hostname:
            raise httpx.UnsupportedProtocol(f"no transport for {url!r}")
        origin = (parts.scheme, parts.hostname, parts.port or _PORTS[parts.scheme])
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        try:
            data = _GET % (target.encode("ascii"), host.encode("ascii"))
        except UnicodeError:  # rendered templates are percent-encoded; hosts may not be
            raise httpx.LocalProtocolError(f"not an ASCII URL: {url!r}") from None
        timeouts = {"connect": timeout, "read": timeout, "pool": timeout}
        conn, (status, _, headers) = await self._exchange(origin, data, True, timeouts)
        encoding = b""
        try:
            encoding = next((v for k, v in headers if k.lower() == b"content-encoding"), b"")
            decoder = _decoder(encoding.strip().lower())
            body = bytearray()
            while len(body) <= limit:
                chunk = await conn.chunk(timeout)
                if not chunk:
                    break
                body += decoder.decompress(chunk, limit + 1 - len(body)) if decoder else chunk
            return status, bytes(body[: limit + 1])
        except zlib.error as exc:
            raise httpx.DecodingError(f"undecodable {encoding!r} body: {exc}") from None
        finally:
            self.release(conn)

    async def _exchange(
        self, origin: Origin, data: bytes, repeatable: bool, timeouts: Mapping[str, float | None]
    ) -> tuple[_Connection, tuple[int, bytes, list[tuple[bytes, bytes]]]]:
        """Send a request; its connection and the head of the answer."""
        for attempt in (1, 2):
            conn = await self._acquire(origin, timeouts.get("pool"), timeouts.get("connect"))
            reused = conn.used
            conn.used = True
            try:
                conn.send(data)
                return conn, await conn.head(timeouts.get("read"))
            except httpx.RemoteProtocolError:
                self.release(conn)
                # A kept-alive socket the partner closed as we sent: once more on a
                # new one, when the request may be repeated.
                if attempt == 1 and reused and repeatable:
                    continue
                raise
            except BaseException:
                self.release(conn)
                raise
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self.open -= self._n_idle
        self._idle.clear()
        self._n_idle = 0

    def release(self, conn: _Connection) -> None:
        """Back to the idle list when the response was read whole, else closed."""
        if conn.reusable:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, []).append(conn)
            self._n_idle += 1
            if self._n_idle > self.max_keepalive:
                self._evict_one()
        else:
            conn.close()
            self.open -= 1
        self._wake_one()

    # --- the pool
    async def _acquire(
        self, origin: Origin, pool_timeout: float | None, connect_timeout: float | None
    ) -> _Connection:
        try:
            async with asyncio.timeout(pool_timeout):
                while True:
                    conn = self._take_idle(origin)
                    if conn is not None:
                        return conn
                    if self.open < self.max_connections or self._evict_one():
                        break
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
                        elif waiter.done() and not waiter.cancelled():
                            self._wake_one()  # woken, then cancelled: pass the turn on
                        raise
        except TimeoutError:
            raise httpx.PoolTimeout("no partner connection free in time") from None
        self.open += 1
        try:
            return await self._connect(origin, connect_timeout)
        except BaseException:
            self.open -= 1
            self._wake_one()
            raise

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            tls = self._ssl = self._ssl or httpx.create_ssl_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} in time") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{host}:{port}: {exc}") from exc
        return conn

    def _take_idle(self, origin: Origin) -> _Connection | None:
        conns = self._idle.get(origin)
        expired = time.monotonic() - self.keepalive_expiry
        while conns:
            conn = conns.pop()  # the newest: the least likely to be closed by now
            self._n_idle -= 1
            if not conn.closed and conn.idle_since > expired:
                return conn
            conn.close()
            self.open -= 1
        return None

    def _evict_one(self) -> bool:
        """Close the longest idle socket of any origin (to make room)."""
        oldest: list[_Connection] | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest[0].idle_since):
                oldest = conns
        if oldest is None:
            return False
        oldest.pop(0).close()
        self._n_idle -= 1
        self.open -= 1
        return True

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return


def _decoder(encoding: bytes) -> zlib._Decompress | None:
    if encoding in (b"", b"identity"):
        return None
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == b"deflate":
        return zlib.decompressobj()
    raise httpx.DecodingError(f"unsupported content-encoding {encoding!r}")


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        head.append(b"%s: %s\r\n" % (name, value))
    head.append(b"\r\n")
    if chunked:  # httpx asked for it (a body of unknown length): one chunk
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return b"".join(head) + body


class ClientGetter:
    """PartnerTransport.get's contract through an httpx client: for partners reached
    through an HTTP proxy, which the pool does not speak."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, url: str, limit: int) -> tuple[int, bytes]:
        async with self.client.stream("GET", url) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    break
            return response.status_code, bytes(body[: limit + 1])


PROXY_VARIABLES: Final = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def proxied(environ: Mapping[str, str]) -> bool:
    """Are partner calls to go through a proxy (httpx's environment variables)?"""
    return any(environ.get(k) or environ.get(k.lower()) for k in PROXY_VARIABLES)

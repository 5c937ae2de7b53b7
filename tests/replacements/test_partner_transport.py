"""The partner transport against real sockets: a raw asyncio server on 127.0.0.1 whose
answers and connection handling each test scripts."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from service.replacements.partner_transport import PartnerTransport
from tests.partners import Answer, PartnerServer, Request

Reply = Callable[[bytes], Awaitable[bytes | None]]  # request head -> raw answer (None: hang up)


def ok(body: bytes = b'{"segments": []}', *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawServer:
    """Counts connections; answers each request on a connection with `reply`."""

    def __init__(self, reply: Reply, *, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after  # hang up after each answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                answer = await self.reply(head)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, PartnerTransport]]:
    transport = PartnerTransport(max_connections=2, max_keepalive=2)
    async with httpx.AsyncClient(transport=transport, timeout=2) as c:
        yield c, transport


async def test_a_kept_alive_connection_carries_the_next_requests(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    http, transport = client

    async def reply(head: bytes) -> bytes:
        return ok(b"hello")

    async with RawServer(reply) as server:
        for _ in range(5):
            resp = await http.get(server.url + "/rt?u=1")
            assert resp.status_code == 200 and resp.content == b"hello"
        assert server.connections == 1
        assert server.requests[0].startswith(b"GET /rt?u=1 HTTP/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:" in server.requests[0].lower()
        assert transport.open == 1


async def test_a_connection_the_partner_closes_is_not_reused(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    http, transport = client

    async def reply(head: bytes) -> bytes | None:
        return ok(b"bye", "connection: close")

    async with RawServer(reply) as server:
        for _ in range(3):
            assert (await http.get(server.url)).content == b"bye"
        assert server.connections == 3
        await asyncio.sleep(0.05)
        assert transport.open <= 1  # at most the last one, closed when next taken


async def test_a_kept_alive_connection_closed_while_idle_is_replaced(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    """The partner hangs up an idle connection just as the next request goes out: the
    GET is sent again on a new connection instead of failing."""
    http, _ = client
    answered = 0

    async def reply(head: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        # Every second request on the server: hang up without answering.
        return None if answered % 2 == 0 else ok(b"x")

    async with RawServer(reply) as server:
        assert (await http.get(server.url)).content == b"x"
        assert (await http.get(server.url)).content == b"x"  # first try hung up on
        assert server.connections == 2


async def test_a_post_is_not_sent_twice(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    http, _ = client
    answered = 0

    async def reply(head: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        return None if answered == 2 else ok(b"x")

    async with RawServer(reply) as server:
        assert (await http.post(server.url, content=b"{}")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(server.url, content=b"{}")
        assert answered == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
        % (len(gzip.compress(b"hello world")), gzip.compress(b"hello world")),
        b"HTTP/1.0 200 OK\r\n\r\nhello world",  # no length: the body ends with the connection
    ],
    ids=["chunked", "gzip", "until-close"],
)
async def test_bodies_in_every_framing(
    client: tuple[httpx.AsyncClient, PartnerTransport], answer: bytes
) -> None:
    http, _ = client
    until_close = b"content-length" not in answer and b"chunked" not in answer

    async def reply(head: bytes) -> bytes | None:
        return answer

    async with RawServer(reply, close_after=until_close) as server:
        for _ in range(2):
            assert (await http.get(server.url)).content == b"hello world"


async def test_a_big_body_arrives_whole(client: tuple[httpx.AsyncClient, PartnerTransport]) -> None:
    http, _ = client
    body = bytes(range(256)) * 8192  # 2 MiB: reading pauses and resumes

    async def reply(head: bytes) -> bytes:
        return ok(body)

    async with RawServer(reply) as server:
        assert (await http.get(server.url)).content == body
        assert (await http.get(server.url)).content == body
        assert server.connections == 1


async def test_the_pool_is_bounded(client: tuple[httpx.AsyncClient, PartnerTransport]) -> None:
    """max_connections 2: a third concurrent call waits for a socket; its pool timeout
    ends the wait with httpx's PoolTimeout."""
    http, transport = client
    gate = asyncio.Event()

    async def reply(head: bytes) -> bytes:
        await gate.wait()
        return ok(b"x")

    async with RawServer(reply) as server:
        calls = [asyncio.create_task(http.get(server.url)) for _ in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await http.get(server.url, timeout=httpx.Timeout(2, pool=0.1))
        third = asyncio.create_task(http.get(server.url))
        await asyncio.sleep(0.1)
        assert server.connections == 2 and not third.done()
        gate.set()
        for resp in await asyncio.gather(*calls, third):
            assert resp.content == b"x"
        assert server.connections == 2 and transport.open == 2


async def test_an_idle_socket_of_another_origin_makes_room(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    http, transport = client

    async def reply(head: bytes) -> bytes:
        return ok(b"x")

    async with RawServer(reply) as a, RawServer(reply) as b, RawServer(reply) as c:
        for server in (a, b, c, a):
            assert (await http.get(server.url)).content == b"x"
        assert transport.open == 2
        assert a.connections == 2  # its socket was closed to make room for c's


async def test_failures_are_httpx_errors(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    http, transport = client
    free = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = free.sockets[0].getsockname()[1]
    free.close()
    await free.wait_closed()
    with pytest.raises(httpx.ConnectError):
        await http.get(f"http://127.0.0.1:{port}/")

    async def silent(head: bytes) -> bytes:
        await asyncio.sleep(5)
        return ok()

    async def garbage(head: bytes) -> bytes:
        return b"SPDY/9 what\r\n\r\n"

    async with RawServer(silent) as slow, RawServer(garbage) as bad:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(slow.url, timeout=0.2)
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(bad.url)
    assert transport.open == 0  # none of them is kept


async def test_a_call_cancelled_mid_answer_gives_its_socket_up(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    http, transport = client

    async def trickle(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n12345"  # 95 bytes short

    async with RawServer(trickle) as server:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2), http.stream("GET", server.url) as resp:
                await resp.aread()
        assert transport.open == 0
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await http.get(server.url)
        assert server.connections == 2  # the half-read socket was not handed out again


def test_post_bodies_and_headers_reach_the_partner() -> None:
    partner = PartnerServer(lambda r: Answer(202, {"x-seen": str(len(r.body))}, b"ok"))

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=PartnerTransport()) as http:
            return await http.post(
                partner.origin + "/s2s?a=1",
                content=b'{"users": []}',
                headers={"X-Signature": "sha256=abc"},
            )

    try:
        resp = asyncio.run(post())
    finally:
        partner.close()
    assert resp.status_code == 202 and resp.text == "ok" and resp.headers["x-seen"] == "13"
    [seen] = partner.seen("/s2s")
    assert isinstance(seen, Request)
    assert seen.method == "POST" and seen.query == {"a": ["1"]}
    assert seen.body == b'{"users": []}' and seen.headers["x-signature"] == "sha256=abc"


async def test_get_shares_the_pool_and_decodes() -> None:
    """The real-time calls' lean GET: same keep-alive sockets, gzip decoded, the body cut
    at limit + 1 bytes (a compressed bomb inflates no further than that)."""
    bomb = gzip.compress(b"0" * 10_000_000)

    async def reply(head: bytes) -> bytes:
        if b" /bomb " in head:
            return ok(bomb, "content-encoding: gzip")
        return ok(gzip.compress(b'{"segments": ["a"]}'), "content-encoding: gzip")

    pool = PartnerTransport()
    try:
        async with RawServer(reply) as server:
            for _ in range(3):
                assert await pool.get(server.url + "/rt?u=1", 100) == (200, b'{"segments": ["a"]}')
            assert server.connections == 1
            head = server.requests[0].lower()
            assert head.startswith(b"get /rt?u=1 http/1.1\r\n")
            assert f"host: {server.url[7:]}\r\n".encode() in head
            status, body = await pool.get(server.url + "/bomb", 1000)
            assert status == 200 and body == b"0" * 1001
    finally:
        await pool.aclose()


async def test_get_refuses_what_it_cannot_send() -> None:
    pool = PartnerTransport()
    for url in ("http://exämple.test/rt", "ftp://partner.test/rt", "http:///rt"):
        with pytest.raises(httpx.HTTPError):  # counted as the partner's error, not a crash
            await pool.get(url, 100)
    assert pool.open == 0


async def test_interim_answers_and_stray_bytes(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    """A 103 before the answer is skipped; bytes after an answer (nobody asked for
    them) make its socket unfit for the next request."""
    http, _ = client

    async def early_hints(head: bytes) -> bytes:
        return b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n" + ok(b"after hints")

    async def stray(head: bytes) -> bytes:
        return ok(b"first") + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray"

    async with RawServer(early_hints) as hints, RawServer(stray) as chatty:
        resp = await http.get(hints.url)
        assert (resp.status_code, resp.content) == (200, b"after hints")
        assert "link" not in resp.headers
        assert (await http.get(chatty.url)).content == b"first"
        assert (await http.get(chatty.url)).content == b"first"  # not "stray"
        assert chatty.connections == 2


async def test_the_client_getter_behind_a_proxy() -> None:
    """With HTTP(S)_PROXY set, real-time calls go through httpx's own transport (which
    honours the proxy) under the same contract as PartnerTransport.get."""
    from service.replacements.partner_transport import ClientGetter, proxied

    assert proxied({"HTTPS_PROXY": "http://proxy.test:3128"})
    assert proxied({"http_proxy": "http://proxy.test:3128"})
    assert not proxied({"NO_PROXY": "*"})

    async def reply(head: bytes) -> bytes:
        return ok(b"0123456789")

    async with RawServer(reply) as server, httpx.AsyncClient(trust_env=False) as http:
        getter = ClientGetter(http)
        assert await getter.get(server.url, 100) == (200, b"0123456789")
        assert await getter.get(server.url, 4) == (200, b"01234")


# ------------------------------------------- the httpx hooks the transport plugs into


async def test_httpx_hands_over_the_timeouts_it_was_given() -> None:
    """httpx passes its Timeout as request.extensions["timeout"]: without it the
    transport would wait on a partner forever."""
    seen: list[dict[str, float | None]] = []

    class Watching(PartnerTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.extensions["timeout"])
            return await super().handle_async_request(request)

    async def reply(head: bytes) -> bytes:
        return ok(b"x")

    async with RawServer(reply) as server, httpx.AsyncClient(transport=Watching()) as watched:
        timeout = httpx.Timeout(1.5, connect=0.25, pool=0.75)
        assert (await watched.get(server.url, timeout=timeout)).content == b"x"
    assert seen == [{"connect": 0.25, "read": 1.5, "write": 1.5, "pool": 0.75}]


async def test_httpx_closing_a_response_gives_its_socket_back(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    """httpx calls the response stream's aclose() when the response is closed: read
    whole, the socket goes back to the idle list; closed mid-body, it is closed."""
    http, transport = client

    async def reply(head: bytes) -> bytes:
        if b" /short " in head:
            return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n12345"  # more to come
        return ok(b"hello")

    async with RawServer(reply) as server:
        async with http.stream("GET", server.url) as resp:
            assert (transport.open, transport._n_idle) == (1, 0)  # in use
            assert await resp.aread() == b"hello"
        assert (transport.open, transport._n_idle) == (1, 1)
        async with http.stream("GET", server.url + "/short") as resp:
            assert resp.status_code == 200  # the rest of the body is never read
        assert (transport.open, transport._n_idle) == (0, 0)
        assert (await http.get(server.url)).content == b"hello"
        assert server.connections == 2


async def test_httpx_shows_the_status_line_the_transport_read(
    client: tuple[httpx.AsyncClient, PartnerTransport],
) -> None:
    """The response extensions httpx reads reason_phrase and http_version from."""
    http, _ = client

    async def reply(head: bytes) -> bytes:
        return b"HTTP/1.1 299 Fine Thanks\r\ncontent-length: 2\r\n\r\nok"

    async with RawServer(reply) as server:
        resp = await http.get(server.url)
    assert (resp.status_code, resp.reason_phrase, resp.http_version) == (
        299,
        "Fine Thanks",
        "HTTP/1.1",
    )

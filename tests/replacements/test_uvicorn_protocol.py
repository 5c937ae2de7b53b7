"""The HTTP protocol `pixelsync serve` runs under uvicorn
(service/replacements/uvicorn_protocol.py): each answer in one write, and each
request's app started at once, with a task only for a request that has to wait. Over
raw sockets, against the module's real service."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
from uvicorn.server import ServerState

from service.identity import new_uuid
from service.replacements.uvicorn_protocol import (
    CoalescingHttpToolsProtocol,
    HeadLimits,
    LimitedConfig,
)
from service.web.responses import GIF
from tests.conftest import cookie_signed_days_ago
from tests.services import DEFAULT_KEYS, Service

PIPELINED = 500  # more than Python's recursion limit allows nested runs for


def connect(svc: Service) -> socket.socket:
    url = urlsplit(svc.url)
    return socket.create_connection((url.hostname, url.port), timeout=10)


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """`count` HTTP/1.1 answers with a Content-Length, in order."""
    data, answers = b"", []
    while len(answers) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end]
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            if len(data) >= head_end + 4 + length:
                answers.append(data[: head_end + 4 + length])
                data = data[head_end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(answers)} answers"
        data += chunk
    return answers


def test_pipelined_requests_are_all_answered_in_order(svc: Service) -> None:
    """The first waits for Redis (its segments, d_cts=1): the others queue behind it,
    and each is started from the answer of the one before; they answer at once."""
    cookie = f"Cookie: uuid={cookie_signed_days_ago(new_uuid(), DEFAULT_KEYS[0], 0)}\r\n"
    first = f"GET /event?d_rtbd=json&d_cts=1 HTTP/1.1\r\nHost: x\r\n{cookie}\r\n"
    rest = [f"GET /event?c_n={i} HTTP/1.1\r\nHost: x\r\n{cookie}\r\n" for i in range(PIPELINED)]
    with connect(svc) as sock:
        sock.sendall("".join([first, *rest]).encode())
        answers = read_answers(sock, 1 + PIPELINED)
    assert answers[0].startswith(b"HTTP/1.1 200 ") and b'"segments"' in answers[0]
    assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(GIF) for a in answers[1:])


def test_a_gif_answer_is_one_write(svc: Service) -> None:
    """Head and body arrive together: one recv gets the whole answer."""
    with connect(svc) as sock:
        for _ in range(20):
            sock.sendall(b"GET /event HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.01)  # whatever was written has arrived
            data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(GIF)


def test_a_request_that_waits_for_its_body_is_answered(svc: Service) -> None:
    with connect(svc) as sock:
        body = b"c_section=sports&d_rtbd=json"
        sock.sendall(
            b"POST /event HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        time.sleep(0.3)  # the app starts, then waits for the body in a task
        sock.sendall(body)
        [answer] = read_answers(sock, 1)
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"uuid"' in answer
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection goes on
        [again] = read_answers(sock, 1)
        assert again.startswith(b"HTTP/1.1 200 ")


async def test_many_connections_at_once(svc: Service) -> None:
    url = urlsplit(svc.url)

    async def one(i: int) -> bytes:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        try:
            writer.write(
                f"GET /event?c_n={i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            return await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    answers = await asyncio.gather(*(one(i) for i in range(200)))
    assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(GIF) for a in answers)


# ------------------------------------------------- in-process: the hooks it relies on


class _Transport(asyncio.Transport):
    """What the protocol writes, kept; the socket details a real transport gives."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _protocol(app: object, **config: object) -> tuple[CoalescingHttpToolsProtocol, _Transport]:
    cfg = uvicorn.Config(app, http=CoalescingHttpToolsProtocol, log_level="warning", **config)  # type: ignore[arg-type]
    protocol = CoalescingHttpToolsProtocol(cfg, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def _answer(scope: dict[str, object], receive: object, send: object) -> None:
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_the_app_runs_at_once_in_the_protocols_own_hook() -> None:
    """uvicorn calls _start_asgi_task for each request: if a release renames it, the
    app runs a loop turn later, in uvicorn's own task, and this fails."""
    seen: list[asyncio.Task[object] | None] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "http":
            seen.append(asyncio.current_task())
            await _answer(scope, receive, send)

    protocol, transport = _protocol(app)
    protocol.data_received(REQUEST)
    assert len(seen) == 1, "the app did not run within data_received"
    if sys.version_info >= (3, 12):
        assert seen[0] is not None  # an eager task: asyncio.timeout and wait_for work
    assert not protocol.tasks  # answered without waiting: no task is left
    assert transport.writes == []  # the answer goes out at the end of the loop turn
    await asyncio.sleep(0)
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"\r\n\r\nok")


async def test_an_app_that_waits_runs_on_in_a_task_and_may_use_timeouts() -> None:
    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(0)
            async with asyncio.timeout(1):
                await asyncio.wait_for(asyncio.sleep(0.01), 1)
            await _answer(scope, receive, send)

    protocol, transport = _protocol(app)
    protocol.data_received(REQUEST)
    assert len(protocol.tasks) == 1
    await asyncio.wait_for(asyncio.gather(*protocol.tasks), 5)
    await asyncio.sleep(0)
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 200 ")


async def test_timeouts_work_before_the_first_wait_on_python_312_and_later() -> None:
    """What /readyz and every wait_for of a request need from 3.12 on."""
    if sys.version_info < (3, 12):
        pytest.skip("3.11 has no eager tasks: the app runs outside a task until it waits")

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "http":
            async with asyncio.timeout(1):
                await _answer(scope, receive, send)

    protocol, transport = _protocol(app)
    protocol.data_received(REQUEST)
    await asyncio.sleep(0)
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 200 ")


_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("_VAR", default="unset")


@pytest.mark.parametrize(("reset", "expected"), [(False, "server"), (True, "unset")])
async def test_reset_contextvars_is_honoured(reset: bool, expected: str) -> None:
    seen: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "http":
            seen.append(_VAR.get())
            _VAR.set("request")  # never leaks out to the server or the next request
            await _answer(scope, receive, send)

    async def serve() -> None:
        _VAR.set("server")
        protocol, _ = _protocol(app, reset_contextvars=reset)
        protocol.data_received(REQUEST + REQUEST)
        await asyncio.sleep(0.05)
        assert _VAR.get() == "server"

    await asyncio.create_task(serve())
    assert seen == [expected, expected]


async def test_an_app_that_fails_at_once_is_answered_500_by_uvicorns_cycle() -> None:
    """The app runs inside uvicorn's RequestResponseCycle.run_asgi, which catches what it
    raises and answers 500, even when it raises before its first wait (no task yet)."""

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "http":
            raise RuntimeError("boom")

    protocol, transport = _protocol(app)
    protocol.data_received(REQUEST)  # nothing escapes into the event loop's protocol call
    await asyncio.sleep(0)
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 500 ")
    assert not protocol.tasks


# ------------------------------------------------------ in-process: the head limits


def _limited(app: object, limits: HeadLimits) -> tuple[CoalescingHttpToolsProtocol, _Transport]:
    cfg = LimitedConfig(app, http=CoalescingHttpToolsProtocol, log_level="warning")  # type: ignore[arg-type]
    cfg.head_limits = limits
    protocol = CoalescingHttpToolsProtocol(cfg, ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def _served(scope: dict[str, object], receive: object, send: object) -> None:
    if scope["type"] == "http":
        await _answer(scope, receive, send)


async def test_a_whole_head_in_one_read_leaves_no_timer() -> None:
    """The fast path: the connection's one timer is cancelled by its first head, and a
    head that comes whole starts none; a head split over reads has one until it ends."""
    protocol, transport = _limited(_served, HeadLimits())
    assert protocol._head_timer is not None  # the connection's: it may send nothing
    for _ in range(3):
        protocol.data_received(REQUEST)
        assert protocol._head_timer is None
    protocol.data_received(REQUEST[:10])
    assert protocol._head_timer is not None
    protocol.data_received(REQUEST[10:])
    assert protocol._head_timer is None
    await asyncio.sleep(0)
    assert b"".join(transport.writes).count(b"HTTP/1.1 200 ") == 4 and not transport.closing


async def test_the_head_cap_counts_one_head_not_one_read() -> None:
    """Pipelined heads far over the cap in one read are each within it: all answered.
    A single head one byte over, split over reads, is refused without a parser error."""
    limit = len(REQUEST) + 5
    protocol, transport = _limited(_served, HeadLimits(max_bytes=limit))
    protocol.data_received(REQUEST * 50)
    for _ in range(10):
        await asyncio.sleep(0)
    assert b"".join(transport.writes).count(b"HTTP/1.1 200 ") == 50 and not transport.closing

    over = REQUEST[:-2] + b"X: " + b"a" * (limit - len(REQUEST) - 4) + b"\r\n\r\n"
    assert len(over) == limit + 1
    protocol, transport = _limited(_served, HeadLimits(max_bytes=limit))
    protocol.data_received(over[:7])
    protocol.data_received(over[7:])
    await asyncio.sleep(0)
    assert transport.writes[0].startswith(b"HTTP/1.1 431 ")
    assert transport.closing
    exact = over[:-4].replace(b"X: a", b"X: ", 1) + b"\r\n\r\n"
    assert len(exact) == limit
    protocol, transport = _limited(_served, HeadLimits(max_bytes=limit))
    protocol.data_received(exact)
    await asyncio.sleep(0)
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 200 ")


async def test_a_head_that_times_out_is_408_and_a_silent_connection_closed() -> None:
    protocol, transport = _limited(_served, HeadLimits(timeout_s=0.05))
    await asyncio.sleep(0.2)
    assert transport.closing and transport.writes == []
    protocol, transport = _limited(_served, HeadLimits(timeout_s=0.05))
    protocol.data_received(REQUEST[:10])
    await asyncio.sleep(0.2)
    assert transport.closing and b"".join(transport.writes).startswith(b"HTTP/1.1 408 ")


async def test_a_body_that_does_not_come_is_408_and_the_app_told() -> None:
    """The body's timer: started by a head whose body did not come with it (none for
    a request that came whole), it answers 408 and the waiting app gets a disconnect."""
    got: list[object] = []

    async def app(scope: dict[str, object], receive: Any, send: object) -> None:
        if scope["type"] == "http":
            got.append(await receive())
            got.append(await receive())

    protocol, transport = _limited(app, HeadLimits(timeout_s=0.05))
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert protocol._head_timer is not None
    await asyncio.sleep(0.3)
    assert got == [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert transport.closing and b"".join(transport.writes).startswith(b"HTTP/1.1 408 ")


async def _turns() -> None:
    """Some turns of the loop: a task waiting for its body resumed, its answer flushed."""
    for _ in range(5):
        await asyncio.sleep(0)


async def _reads_body(scope: dict[str, object], receive: Any, send: object) -> None:
    """Answers 200 once its body is whole, with the headers it was given."""
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body", False):
            break
    names = b",".join(name for name, _ in scope["headers"])  # type: ignore[attr-defined]
    headers = [(b"content-length", str(len(names)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": names})  # type: ignore[operator]


CHUNKED = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"


async def test_trailers_are_not_kept_and_a_few_are_accepted() -> None:
    """A chunked body's trailers (headers to httptools) reach neither the request's
    headers nor the app; within the caps, the request is answered as any other."""
    protocol, transport = _limited(_reads_body, HeadLimits(max_headers=3))
    protocol.data_received(CHUNKED + b"X-T1: 1\r\nX-T2: 2\r\n")
    protocol.data_received(b"X-T3: 3\r\n\r\n")
    await _turns()
    answer = b"".join(transport.writes)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"host,transfer-encoding")
    assert not transport.closing
    assert protocol.headers == [(b"host", b"x"), (b"transfer-encoding", b"chunked")]


async def test_trailers_over_max_headers_are_431_and_closed() -> None:
    """The reviewer's case: endless `a:b` trailers. Stopped at max_headers, none kept,
    the app (waiting for the end of its body) told the client is gone."""
    protocol, transport = _limited(_reads_body, HeadLimits(max_headers=100))
    protocol.data_received(CHUNKED + b"a:b\r\n" * 20_000)
    await asyncio.sleep(0)
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 431 ")
    assert transport.closing
    assert len(protocol.headers) == 2


async def test_trailer_bytes_are_capped_even_in_one_endless_trailer() -> None:
    """One trailer that never ends never reaches on_header (httptools keeps it): the
    reads after the last chunk are counted, and the cap closes the connection."""
    limit = 4096
    protocol, transport = _limited(_reads_body, HeadLimits(max_bytes=limit))
    protocol.data_received(CHUNKED + b"X-Big: ")
    reads = 0
    while not transport.closing:
        protocol.data_received(b"b" * 1000)
        reads += 1
        assert reads <= limit // 1000 + 1
    await asyncio.sleep(0)
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 431 ")


async def test_a_chunk_size_line_split_from_its_bytes_is_not_taken_for_trailers() -> None:
    """A chunk's size line at the end of a read, its bytes in the next ones: a body,
    however large, not trailers."""
    protocol, transport = _limited(_reads_body, HeadLimits(max_bytes=1024))
    protocol.data_received(CHUNKED[: -len(b"0\r\n")] + b"1000\r\n")
    for _ in range(4):
        protocol.data_received(b"c" * 1024)
    protocol.data_received(b"\r\n800\r\n")
    protocol.data_received(b"d" * 2048 + b"\r\n0\r\n\r\n")
    await _turns()
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 200 ") and not transport.closing


async def test_a_pipelined_refusal_waits_for_the_answer_before_it() -> None:
    """A 431 for the second of pipelined requests, found while the first still waits:
    written after the first one's answer, not ahead of it (nor instead of it)."""
    release = asyncio.Event()

    async def app(scope: dict[str, object], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await release.wait()
            await _answer(scope, receive, send)

    too_many = b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 5 + b"\r\n"
    too_long = b"GET / HTTP/1.1\r\nX: " + b"a" * 200
    for second, reads in ((too_many, 1), (too_long, 2)):
        release.clear()
        protocol, transport = _limited(app, HeadLimits(max_bytes=100, max_headers=3))
        if reads == 1:
            protocol.data_received(REQUEST + second)
        else:  # the first read within the cap, the next over it
            protocol.data_received(REQUEST + second[:50])
            protocol.data_received(second[50:])
        await asyncio.sleep(0)
        assert transport.writes == [] and not transport.closing
        release.set()
        await _turns()
        answers = b"".join(transport.writes)
        assert answers.startswith(b"HTTP/1.1 200 ") and answers.endswith(b"\r\n\r\n")
        assert answers.index(b"HTTP/1.1 431 ") > answers.index(b"\r\n\r\nok")
        assert answers.count(b"HTTP/1.1 ") == 2 and transport.closing


async def test_a_pipelined_head_is_held_to_twice_the_cap_at_most() -> None:
    """What deploy/README.md says holds for pipelined requests: a next head's bytes in
    the read that ended the request before it are not counted, so it may pass the cap,
    but never twice the cap: one byte more is 431 (after the first one's answer)."""
    limit = 1024

    def after_first(size: int) -> bytes:
        second = b"GET / HTTP/1.1\r\nX: " + b"a" * (size - 23) + b"\r\n\r\n"
        assert len(second) == size
        return REQUEST + second

    protocol, transport = _limited(_served, HeadLimits(max_bytes=limit))
    protocol.data_received(after_first(limit + 500))  # over the cap, let through
    await _turns()
    assert b"".join(transport.writes).count(b"HTTP/1.1 200 ") == 2 and not transport.closing
    protocol, transport = _limited(_served, HeadLimits(max_bytes=limit))
    protocol.data_received(after_first(2 * limit + 1))
    await _turns()
    answers = b"".join(transport.writes)
    assert answers.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 431 " in answers
    assert transport.closing

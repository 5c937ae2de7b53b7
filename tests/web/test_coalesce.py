"""The HTTP protocol `pixelsync serve` runs under uvicorn (service/web/coalesce.py):
each answer in one write, and each request's app started at once, with a task only for
a request that has to wait. Over raw sockets, against the module's real service."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from urllib.parse import urlsplit

from service.identity import new_uuid
from service.web.responses import GIF
from tests.conftest import Service, cookie_signed_days_ago

PIPELINED = 500  # more than Python's recursion limit allows nested runs for


def connect(service: Service) -> socket.socket:
    url = urlsplit(service.url)
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


def test_pipelined_requests_are_all_answered_in_order(service: Service) -> None:
    """The first waits for Redis (its segments, d_cts=1): the others queue behind it,
    and each is started from the answer of the one before; they answer at once."""
    cookie = f"Cookie: uuid={cookie_signed_days_ago(new_uuid(), 'test-key-new', 0)}\r\n"
    first = f"GET /event?d_rtbd=json&d_cts=1 HTTP/1.1\r\nHost: x\r\n{cookie}\r\n"
    rest = [f"GET /event?c_n={i} HTTP/1.1\r\nHost: x\r\n{cookie}\r\n" for i in range(PIPELINED)]
    with connect(service) as sock:
        sock.sendall("".join([first, *rest]).encode())
        answers = read_answers(sock, 1 + PIPELINED)
    assert answers[0].startswith(b"HTTP/1.1 200 ") and b'"segments"' in answers[0]
    assert all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(GIF) for a in answers[1:])


def test_a_gif_answer_is_one_write(service: Service) -> None:
    """Head and body arrive together: one recv gets the whole answer."""
    with connect(service) as sock:
        for _ in range(20):
            sock.sendall(b"GET /event HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.01)  # whatever was written has arrived
            data = sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(GIF)


def test_a_request_that_waits_for_its_body_is_answered(service: Service) -> None:
    with connect(service) as sock:
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


async def test_many_connections_at_once(service: Service) -> None:
    url = urlsplit(service.url)

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

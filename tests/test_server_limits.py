"""The HTTP server's own limits ([limits], issue 18 class 5), over raw sockets, on both
servers `pixelsync serve` runs: a cap on the request head's bytes and headers, a
deadline for the head (slowloris, a connection that sends nothing) and for a POST
body, an idle keep-alive timeout, and the requests one worker takes at once.

One service per server kind for the module, with short timeouts. The time bounds are
the point of these tests: each is the configured timeout plus a margin of seconds
(a loaded 2-core machine delays a close by milliseconds, not seconds), and a lower
bound shows the timer is the one that closed the connection."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from service.web.responses import GIF
from tests.services import Service, start_service

HEAD_TIMEOUT = 2  # s
KEEP_ALIVE = 4  # s
MAX_CONCURRENCY = 4
MAX_HEAD = 32768  # the default
MAX_HEADERS = 100  # the default
MARGIN = 3.0  # s: how much later than its timer a connection may close
CONFIG = f"""
[limits]
head_timeout_s = {HEAD_TIMEOUT}
keep_alive_s = {KEEP_ALIVE}
max_concurrency = {MAX_CONCURRENCY}
"""


@dataclass
class Server:
    kind: str
    service: Service

    def connect(self) -> socket.socket:
        url = urlsplit(self.service.url)
        return socket.create_connection((url.hostname, url.port), timeout=30)


@pytest.fixture(scope="module", params=["uvicorn", "granian"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Server]:
    kind: str = request.param
    svc = start_service(tmp_path_factory.mktemp(kind), CONFIG, redis_url=redis_url, server=kind)
    try:
        yield Server(kind, svc)
    finally:
        assert svc.stop() == 0, svc.log()


def head(path: str = "/healthz", *, size: int = 0, headers: int = 1) -> bytes:
    """A GET's head: `headers` headers (Host first), padded to `size` bytes if given."""
    lines = [f"GET {path} HTTP/1.1", "Host: x", *(f"X-H{i}: 1" for i in range(headers - 1))]
    text = ("\r\n".join(lines) + "\r\n\r\n").encode()
    if size:
        pad = b"\r\nX-Pad: "
        text = text[:-4] + pad + b"a" * (size - len(text) - len(pad)) + b"\r\n\r\n"
        assert len(text) == size
    return text


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer[9:12])


def closed_after(sock: socket.socket, started: float) -> float:
    """Seconds from `started` until the server closed the connection."""
    read_until_closed(sock)
    return time.monotonic() - started


def test_a_normal_request_still_works(server: Server) -> None:
    with server.connect() as sock:
        for _ in range(3):  # and the connection is kept for the next
            sock.sendall(head("/event"))
            answer = sock.recv(65536)
            assert status(answer) == 200 and answer.endswith(GIF)


def test_the_largest_head_accepted_is_max_head_bytes(server: Server) -> None:
    """A head (request line and headers) of exactly max_head_bytes is answered; one
    byte more is 431, and the connection closed."""
    with server.connect() as sock:
        sock.sendall(head(size=MAX_HEAD))
        assert status(sock.recv(65536)) == 200
    with server.connect() as sock:
        sock.sendall(head(size=MAX_HEAD + 1))
        assert status(read_until_closed(sock)) == 431


def test_a_16_mib_header_is_431(server: Server) -> None:
    """The attacker's case: one 16 MiB header, sent whole. The answer comes once the
    cap is reached, and the server closes without reading the rest (so the client's
    send fails, or its reads end, long before 16 MiB are through)."""
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 16 * 1024 * 1024:
                sent += sock.send(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(sock)
    assert answer == b"" or status(answer) == 431
    assert sent < 16 * 1024 * 1024


def test_too_many_headers_is_431(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(head(headers=MAX_HEADERS))
        assert status(sock.recv(65536)) == 200
    with server.connect() as sock:
        sock.sendall(head(headers=MAX_HEADERS + 1))
        assert status(read_until_closed(sock)) == 431


def test_endless_chunked_trailers_are_cut_off(server: Server) -> None:
    """A chunked body's trailers are headers too: endless `a:b` lines after the last
    chunk must meet the head's caps, not be kept until the body's timer. uvicorn
    (our protocol) answers 431 at max_headers and closes; granian (hyper) is asserted
    for what it does: the connection ends well before 16 MiB, with no 5xx."""
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(
            b"POST /event HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        )
        started = time.monotonic()
        sent = 0
        lines = b"a:b\r\n" * 13107  # 64 KiB
        try:
            while sent < 16 * 1024 * 1024:
                sent += sock.send(lines)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert sent < 16 * 1024 * 1024  # loopback buffers are a few MiB at most
    assert elapsed < HEAD_TIMEOUT  # cut off, not closed by the body's timer
    if server.kind == "uvicorn":
        assert status(answer) == 431
    else:
        assert answer == b"" or status(answer) < 500, answer[:100]


def test_an_unfinished_huge_head_is_closed_at_the_cap(server: Server) -> None:
    """A head that never ends (the 64 MiB case): the server stops reading at the cap
    and closes, without waiting for the head's deadline; what the client got through
    is the kernel's socket buffers, not the server's memory."""
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        started = time.monotonic()
        sent = 0
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while sent < 64 * 1024 * 1024:
                sent += sock.send(b"a" * 65536)
        elapsed = time.monotonic() - started
    assert sent < 16 * 1024 * 1024  # loopback buffers are a few MiB at most
    assert elapsed < HEAD_TIMEOUT  # closed at the cap, not by the head's timer


def test_a_slowloris_is_closed_after_head_timeout(server: Server) -> None:
    """One header line every 0.5 s, never the blank line that ends the head: the
    connection is closed head_timeout_s after the head began (uvicorn answers 408)."""
    with server.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        closed = False
        line = 0
        while not closed and time.monotonic() - started < HEAD_TIMEOUT + MARGIN + 5:
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                answer = read_until_closed(sock)
                closed = True
                break
            try:
                sock.sendall(f"X-Slow-{line}: 1\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            line += 1
        lived = time.monotonic() - started
    assert closed
    assert HEAD_TIMEOUT - 0.5 < lived < HEAD_TIMEOUT + MARGIN, lived
    if server.kind == "uvicorn":
        assert status(answer) == 408
    else:  # granian closes without an answer
        assert answer == b"" or status(answer) == 408


def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    if server.kind == "granian":
        pytest.skip("granian 2.8 starts its header timer at the first byte (deploy/README.md)")
    with server.connect() as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        lived = time.monotonic() - started
    assert HEAD_TIMEOUT - 0.5 < lived < HEAD_TIMEOUT + MARGIN, lived


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    """uvicorn closes it after keep_alive_s; granian has no idle timeout of its own
    and closes it after head_timeout_s (its header timer runs while it waits for the
    next request)."""
    idle = KEEP_ALIVE if server.kind == "uvicorn" else HEAD_TIMEOUT
    with server.connect() as sock:
        sock.sendall(head())
        assert status(sock.recv(65536)) == 200
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        lived = time.monotonic() - started
    assert idle - 0.5 < lived < idle + MARGIN, lived


def slow_post(server: Server) -> socket.socket:
    """A connection whose POST /event has sent its head and 5 of its 100 body bytes."""
    sock = server.connect()
    sock.sendall(b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nc_a=1")
    return sock


def test_a_slow_body_is_408_after_head_timeout(server: Server) -> None:
    """The body's slowloris: the endpoint stops waiting head_timeout_s after it began
    reading, answers 408, and closes the connection."""
    with slow_post(server) as sock:
        started = time.monotonic()
        answer = read_until_closed(sock)
        lived = time.monotonic() - started
    assert status(answer) == 408 and b"connection: close" in answer.lower()
    assert lived < HEAD_TIMEOUT + MARGIN, lived


def reading_post(server: Server) -> socket.socket:
    """A slow POST /event known to be in the app: sent with Expect: 100-continue, the
    server's 100 Continue says the app asked for its body (both servers send it then);
    then 5 of its 100 body bytes."""
    sock = server.connect()
    sock.sendall(
        b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        assert chunk, interim
        interim += chunk
    assert status(interim) == 100, interim
    sock.sendall(b"c_a=1")
    return sock


def test_requests_over_max_concurrency(server: Server) -> None:
    """uvicorn (limit_concurrency) answers 503 at once when max_concurrency
    connections (this one included) or requests are open in the worker; granian
    (backpressure) holds the connection beyond max_concurrency until one ends."""
    full = MAX_CONCURRENCY - 1 if server.kind == "uvicorn" else MAX_CONCURRENCY
    held = [reading_post(server) for _ in range(full)]  # each holds a request open
    try:
        with server.connect() as sock:
            started = time.monotonic()
            sock.sendall(head())
            answer = sock.recv(65536)
            waited = time.monotonic() - started
        if server.kind == "uvicorn":
            assert status(answer) == 503
        else:
            assert status(answer) == 200
            assert waited > 1.0  # behind the held ones (released by their 408 at ~2 s)
    finally:
        for sock in held:
            sock.close()
    # And afterwards served again, once the server has seen the held ones close (until
    # then uvicorn may still count them, and answer 503).
    deadline = time.monotonic() + HEAD_TIMEOUT + MARGIN
    while True:
        with server.connect() as sock:
            sock.sendall(head())
            answer = sock.recv(65536)
        if status(answer) == 200 or time.monotonic() > deadline:
            break
        assert status(answer) == 503, answer[:100]
        time.sleep(0.05)  # polling the server's state, not waiting for a write
    assert status(answer) == 200, answer[:100]


def test_a_body_trickled_after_the_answer_is_cut_off(server: Server) -> None:
    """A POST answered without its body being read (405 here; a 401 of the API alike),
    whose body then comes a byte every 0.5 s: the connection does not live on."""
    with server.connect() as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < HEAD_TIMEOUT + MARGIN + 5:
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                try:
                    closed = sock.recv(65536) == b""
                except ConnectionResetError:
                    closed = True
                continue
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        lived = time.monotonic() - started
    assert closed and lived < HEAD_TIMEOUT + MARGIN, lived

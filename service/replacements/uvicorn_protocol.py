"""uvicorn's httptools protocol, writing each response in one send() instead of two,
and starting each request's app at once instead of in a new task.

- uvicorn writes the status line and headers on `http.response.start` and the body on
  `http.response.body`: two system calls, two TCP segments, and two wake-ups of the
  client, for a 43-byte GIF. Profiled on /event, those two writes were 43 % of the
  worker's time. Here the writes of one turn of the event loop are joined and sent
  once, at the end of that turn (`call_soon`): a response's head and body leave
  together.
- uvicorn runs each request in a task of its own, scheduled for the next turn of the
  loop. Most pixel requests never wait on anything: here the app runs at once (as
  Python 3.12's eager tasks do), in a context of its own, and only a request that has
  to wait (for Redis, a partner, its body) gets a task, which resumes it where it
  stopped.
- uvicorn's httptools protocol caps neither the size of a request head nor its number
  of headers, and gives a head all the time it wants (a connection that sends nothing
  is never closed). Here a head over `HeadLimits.max_bytes` or `max_headers` is answered
  431 and the connection closed, without reading the rest; a head not whole within
  `timeout_s` of its first byte (of the connection, for the first request) closes the
  connection, with a 408 if any of it came; and so does a body not whole within
  `timeout_s` of its head (even one the app answered without reading: uvicorn would
  read its trickle for ever).
- A chunked body's trailers are headers to httptools, which uvicorn would append to
  the request's headers without limit, even after the app has them. Here they are not
  kept (ASGI has no use for them) and are capped as a head is: over `max_headers` of
  them, or over `max_bytes` of their bytes, the connection is answered 431 (if its
  request was not answered yet) and closed.
- A refusal of a pipelined request (431, 408) is written after the answers of the
  requests before it, never ahead of them.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

# What uvicorn's private uvicorn._types calls ASGI3Application; we only pass it on.
ASGIApp = Callable[..., Awaitable[None]]


class CoalescingTransport:
    """A transport whose writes of one loop turn go out in one write; the rest is the
    wrapped transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending = self._pending
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()  # what was written before close() is sent, as by the real transport
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:  # asked on every request: not through __getattr__
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Rest:
    """The rest of a coroutine that ran until its first wait: awaited in a task, it
    hands the task what the coroutine waits on, and resumes it with what comes back
    (a value, or an exception such as a cancellation)."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                value = yield waiting
            except BaseException as exc:  # thrown in by the task: on to the coroutine
                try:
                    waiting = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting = coro.send(value)
                except StopIteration as stop:
                    return stop.value


async def _resume(rest: _Rest) -> Any:
    return await rest


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """A request's bounds: its head's bytes (request line and headers) and headers, and
    the seconds its head may take, then its body (from the end of the head)."""

    max_bytes: int = 32768
    max_headers: int = 100
    timeout_s: float = 10.0


class LimitedConfig(uvicorn.Config):
    """uvicorn's Config and the head limits (pickled with it to each worker)."""

    head_limits = HeadLimits()


class _Refused(Exception):
    """Raised in a parser callback after a refusal was answered: httptools stops there
    and uvicorn's data_received takes it for a parser error (and logs it so)."""


def _answer_and_close(transport: Any, status: bytes) -> None:
    transport.write(
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 0\r\nconnection: close\r\n\r\n"
    )
    transport.close()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`uvicorn.run(http=CoalescingHttpToolsProtocol)`; the head limits are the
    config's `head_limits` (a LimitedConfig), else HeadLimits()'s defaults."""

    _head_left = -1  # bytes a head may still take; -1: not reading a head
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control (pause/resume reading and writing) stays on the real transport.
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
        limits: HeadLimits = getattr(self.config, "head_limits", None) or HeadLimits()
        self._limits = limits
        self._head_left = limits.max_bytes
        # Until the first head is whole: a connection that sends nothing is closed too.
        self._head_timer = self.loop.call_later(limits.timeout_s, self._timed_out)

    def data_received(self, data: bytes) -> None:
        left = self._head_left
        if left < 0:  # a body, or a request being answered
            if self._chunk_open:  # perhaps the last chunk's trailers
                self._trailers_received(data)
            elif self._deferred is None:  # not after a refusal waiting its turn
                super().data_received(data)
            return
        if len(data) > left:
            # The head may end within its allowance (then the rest is a body or the
            # next request), or it is too large: its rest is never read.
            self._head_left = 0
            super().data_received(data[:left])
            if self.transport.is_closing():
                return
            if self._head_left == 0:  # still the same head, and more of it to come
                self._refuse(b"431 Request Header Fields Too Large")
                return
            self.data_received(data[left:])  # in a body (-1), or a next request began
        else:
            self._head_left = left - len(data)
            super().data_received(data)
        if (
            self._head_timer is None
            and self._waiting()
            and not self.transport.is_closing()
            and self._deferred is None
        ):
            # A head split over several reads, or a body still to come (a request
            # that came whole in one read never starts a timer).
            self._head_timer = self.loop.call_later(self._limits.timeout_s, self._timed_out)

    def _waiting(self) -> bool:
        """Some of a request came, not all of it: part of its head (the bytes of a
        pipelined request that came with the one before are not counted: its next
        read starts the timer), or its head and not all of its body (-1)."""
        return self._head_left < self._limits.max_bytes

    def _trailers_received(self, data: bytes) -> None:
        """A read after a chunk's size line: if no body byte of it came, the size was
        0 and the read is trailers, whose bytes are all counted (a trailer that never
        ends reaches no on_header: httptools keeps it whole)."""
        left = self._trailer_left
        self._body_came = False
        super().data_received(data)
        if self._chunk_open and not self._body_came and not self.transport.is_closing():
            self._trailer_left = left - len(data)
            if self._trailer_left < 0:
                self._refuse_trailers()

    # A chunked body's trailers (httptools calls on_header for them too, after the head).
    _in_body = False  # the head is whole, the message not: a header now is a trailer
    _chunk_open = False  # a chunk's size line came and none of its bytes yet
    _body_came = False  # some body came in the read being parsed
    _trailer_left = 0  # bytes the trailers may still take
    _trailer_count = 0
    _deferred: bytes | None = None  # a refusal written after the answers before it

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_body:  # the head's: uvicorn's own on_header, inlined (hot path)
            name = name.lower()
            if name == b"expect" and value.lower() == b"100-continue":
                self.expect_100_continue = True
            self.headers.append((name, value))
            return
        # Not kept: counted as a head's headers (and their ": " and CRLF).
        self._trailer_count += 1
        self._trailer_left -= len(name) + len(value) + 4
        if self._trailer_left < 0 or self._trailer_count > self._limits.max_headers:
            self._refuse_trailers()
            raise _Refused  # stops the parser: the rest of what came is not read

    def on_chunk_header(self) -> None:
        self._chunk_open = True

    def on_chunk_complete(self) -> None:
        self._chunk_open = False

    def on_body(self, body: bytes) -> None:
        self._chunk_open = False
        self._body_came = True
        super().on_body(body)

    def _refuse_trailers(self) -> None:
        self._chunk_open = False
        self._end_body(b"431 Request Header Fields Too Large")

    def on_headers_complete(self) -> None:
        self._head_left = -1
        if self._head_timer is not None:  # the head's; the body gets one of its own
            self._head_timer.cancel()
            self._head_timer = None
        if len(self.headers) > self._limits.max_headers:
            self._refuse(b"431 Request Header Fields Too Large")
            raise _Refused  # stops the parser: the rest of what came is not read
        self._in_body = True
        self._trailer_left = self._limits.max_bytes
        self._trailer_count = 0
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # Not after a refusal of ours (_Refused), answered or waiting its turn.
        if not self.transport.is_closing() and self._deferred is None:
            super().send_400_response(msg)

    def on_message_complete(self) -> None:
        self._in_body = self._chunk_open = False
        super().on_message_complete()
        self._head_left = self._limits.max_bytes  # what comes next is the next head
        if self._head_timer is not None:  # the body's
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _timed_out(self) -> None:
        """A head not whole, or a body not whole, within timeout_s: the connection is
        closed, with a 408 if some of a request came and nothing was answered yet (the
        app, waiting for the body, is told the client is gone)."""
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_left == -1 and self.cycle is not None:  # the body's
            self._end_body(b"408 Request Timeout")
        elif self._waiting():
            self._refuse(b"408 Request Timeout")
        else:  # nothing at all came
            self.transport.close()

    def _end_body(self, status: bytes) -> None:
        """The current request's body is refused: the app (if it waits for the body)
        is told the client is gone, and the connection closed, answered `status` if
        the app had not answered yet."""
        cycle = self.cycle
        if cycle is None or self.transport.is_closing():
            return
        answered = cycle.response_started
        cycle.disconnected = True
        cycle.message_event.set()
        if answered:
            self.transport.close()
        else:
            self._head_left = -1
            _answer_and_close(self.transport, status)

    def _refuse(self, status: bytes) -> None:
        """Refuse the request whose head is being read: at once, or, while requests
        pipelined before it are still being answered, after their answers."""
        self._head_left = -1
        cycle = self.cycle
        if self.pipeline or (cycle is not None and not cycle.response_complete):
            self._deferred = status  # nothing more is read (data_received)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self.flow.pause_reading()
            return
        _answer_and_close(self.transport, status)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        deferred = self._deferred
        if deferred is not None and not self.pipeline and not self.transport.is_closing():
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                _answer_and_close(self.transport, deferred)

    _eager = False  # an app running at once on this connection right now

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGIApp) -> None:
        if self._eager:
            # Started from within an answer (the next of pipelined requests): a task,
            # or a long pipeline would nest one app run in another, deeper and deeper.
            super()._start_asgi_task(cycle, app)
            return
        coro = cycle.run_asgi(app)  # it catches what the app raises and answers 500
        # What uvicorn's own task would have run it in (config.reset_contextvars: none
        # of the lifespan's or the server's context variables).
        context = (
            contextvars.Context() if self.config.reset_contextvars else contextvars.copy_context()
        )
        self._eager = True
        try:
            task = _start_eagerly(self.loop, coro, context)
        finally:
            self._eager = False
        if task is not None:
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)


if sys.version_info >= (3, 12):

    def _start_eagerly(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, None],
        context: contextvars.Context,
    ) -> asyncio.Task[None] | None:
        """An eager task (asyncio.eager_task_factory): the current task while it runs
        at once, as asyncio.timeout and wait_for need from 3.12 on. None when it never
        had to wait (done already)."""
        task: asyncio.Task[None] = asyncio.eager_task_factory(loop, coro, context=context)
        return None if task.done() else task

else:

    def _start_eagerly(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, None],
        context: contextvars.Context,
    ) -> asyncio.Task[None] | None:
        """Python 3.11 has no eager tasks: the coroutine runs at once outside any task,
        and the rest of it, from its first wait, in a task. Until that wait there is no
        current task: 3.11's wait_for needs none, but asyncio.timeout does."""
        try:
            waiting = context.run(coro.send, None)
        except StopIteration:
            return None  # answered without waiting: no task
        return loop.create_task(_resume(_Rest(coro, waiting)), context=context)

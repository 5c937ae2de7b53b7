"""The store's Redis wire, on standalone redis:// servers: commands packed by hiredis,
and bare pipelined connections for the write buffer and the hot path's reads.

- redis-py packs commands in Python: FastPackConnection, the connection class of the
  store's redis-py clients, packs them with hiredis (C), about 3 times faster.
- redis-py reads a pipeline's replies one coroutine chain per reply, which is most of
  what a buffered write costs in the /ibs profile. RawConnection (the write buffer's)
  and SharedReads (the reads of concurrent requests, pipelined together) write a whole
  batch at once and parse its replies with one hiredis.Reader in a loop. Replies come
  back as values; an error reply comes back as a ResponseError (a NoScriptError for
  NOSCRIPT) in its place, as redis-py's execute(raise_on_error=False) does. Cluster, TLS
  and unix-socket URLs keep redis-py's pipelines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.exceptions import NoScriptError, ResponseError

READ_CHUNK: Final = 65536
CONNECT_TIMEOUT_S: Final = 0.5
STALL_S: Final = 1.0  # reads waiting this long on a silent connection: it is dropped
MAX_WAITING: Final = 10_000  # reads waiting at most, on the shared connection


def supported(url: str) -> bool:
    return url.startswith("redis://")


class FastPackConnection(aioredis.Connection):
    """redis-py's connection, packing commands with hiredis: redis-py calls pack_command
    for every command it sends, alone or in a pipeline."""

    def pack_command(self, *args: Any) -> list[bytes]:
        head = args[0]
        if isinstance(head, str):
            head = head.encode()
        if b" " in head:  # redis-py's own multi-word commands, e.g. "CONFIG GET"
            args = (*head.split(), *args[1:])
        return [hiredis.pack_command(args)]


class PackedPipe:
    """Collects commands, packed, in the shape store/scripts.py's Scripts.queue expects."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[bytes] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(hiredis.pack_command(args))

    def __len__(self) -> int:
        return len(self.commands)


def _reply(value: Any) -> Any:
    if isinstance(value, ResponseError) and str(value).startswith("NOSCRIPT"):
        return NoScriptError(str(value))
    return value


class RawConnection:
    """One connection, used by one task at a time (the write buffer's loop). Any
    failure or cancellation mid-batch closes it: the next batch reconnects."""

    def __init__(self, url: str) -> None:
        self._params: dict[str, Any] = dict(parse_url(url))
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader(replyError=ResponseError)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        p = self._params
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(p.get("host", "localhost"), p.get("port", 6379)),
            CONNECT_TIMEOUT_S,
        )
        self._reader, self._writer = reader, writer
        self._parser = hiredis.Reader(replyError=ResponseError)
        handshake = PackedPipe()
        if p.get("password") is not None:
            auth = (p["username"], p["password"]) if p.get("username") else (p["password"],)
            handshake.execute_command("AUTH", *auth)
        if p.get("db"):
            handshake.execute_command("SELECT", p["db"])
        if handshake.commands:
            for reply in await self._exchange(handshake.commands):
                if isinstance(reply, Exception):
                    raise ConnectionError(f"redis handshake refused: {reply}")
        return reader, writer

    async def execute(self, pipe: PackedPipe) -> list[Any]:
        """Send the batch, answer one reply (or ResponseError) per command."""
        if not pipe.commands:
            return []
        try:
            if self._writer is None:
                await self._connect()
            return [_reply(r) for r in await self._exchange(pipe.commands)]
        except BaseException:
            self.close()  # mid-batch: the stream's state is unknown
            raise

    async def _exchange(self, commands: list[bytes]) -> list[Any]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join(commands))
        await self._writer.drain()
        replies: list[Any] = []
        gets, want = self._parser.gets, len(commands)
        while len(replies) < want:
            reply = gets()
            if reply is False:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    raise ConnectionError("redis closed the connection")
                self._parser.feed(data)
            else:
                replies.append(reply)
        return replies

    def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def aclose(self) -> None:
        writer = self._writer
        self.close()
        if writer is not None:
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


class SharedReads:
    """Reads of many concurrent requests over one connection, pipelined: what the
    requests of one event-loop turn ask goes out in one write, and the replies, which
    Redis sends in order, are handed back in order.

    A request that stops waiting (its timeout) leaves its replies to be read and
    dropped. A connection that answers nothing for STALL_S while reads wait (a hung
    server, a half-open socket) is dropped like a broken one: every read in flight
    fails, and the next read reconnects. At most MAX_WAITING reads wait at a time;
    beyond that a read fails at once."""

    def __init__(self, url: str) -> None:
        self._conn = RawConnection(url)  # for its connect and handshake
        self._queued: list[tuple[list[bytes], asyncio.Future[list[Any]]]] = []
        self._in_flight: deque[_InFlight] = deque()
        self._flush_soon = False
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None

    async def execute(self, pipe: PackedPipe, timeout: float) -> list[Any]:
        """The replies, or TimeoutError after `timeout` seconds (a timer of the loop's
        own: cheaper per request than asyncio.wait_for)."""
        if not pipe.commands:  # nothing to wait for: no reply would ever come
            return []
        if len(self._in_flight) + len(self._queued) >= MAX_WAITING:
            raise ConnectionError("too many redis reads waiting")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((pipe.commands, future))
        if not self._flush_soon:
            self._flush_soon = True
            loop.call_soon(self._flush)
        timer = loop.call_later(timeout, self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[list[Any]]) -> None:
        if not future.done():
            future.set_exception(TimeoutError("redis read timed out"))
        oldest = self._in_flight[0] if self._in_flight else None
        if oldest is not None and asyncio.get_running_loop().time() - oldest.sent > STALL_S:
            self._drop(ConnectionError("redis stopped answering"))

    def _flush(self) -> None:
        self._flush_soon = False
        if not self._queued:
            return
        if self._writer is None:
            if self._connecting is None:
                self._connecting = asyncio.create_task(self._connect())
            return  # _connect flushes once connected
        batch, self._queued = self._queued, []
        sent = asyncio.get_running_loop().time()
        for commands, future in batch:
            self._in_flight.append(_InFlight(len(commands), future, [], sent))
        self._writer.write(b"".join(c for commands, _ in batch for c in commands))

    async def _connect(self) -> None:
        try:
            # The handshake (AUTH, SELECT) included: a server that accepts and then
            # says nothing must not hold the reads forever.
            reader, writer = await asyncio.wait_for(self._conn._connect(), 2 * CONNECT_TIMEOUT_S)
        except Exception as exc:  # every queued read fails; the next one tries again
            self._conn.close()
            queued, self._queued = self._queued, []
            for _, future in queued:
                if not future.done():
                    future.set_exception(ConnectionError(f"redis unreachable: {exc!r}"))
            return
        finally:
            self._connecting = None
        self._conn._reader = self._conn._writer = None  # the connection is ours now
        self._writer = writer
        self._reading = asyncio.create_task(self._read(reader, writer))
        self._flush()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader(replyError=ResponseError)
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    raise ConnectionError("redis closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    waiting = self._in_flight[0]
                    waiting.replies.append(_reply(reply))
                    if len(waiting.replies) == waiting.n:
                        self._in_flight.popleft()
                        if not waiting.future.done():
                            waiting.future.set_result(waiting.replies)
        except Exception as exc:
            if self._writer is writer:
                self._drop(exc)

    def _drop(self, exc: BaseException) -> None:
        """Close the connection; every read in flight fails with `exc`."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        reading, self._reading = self._reading, None
        if reading is not None and reading is not asyncio.current_task():
            reading.cancel()
        in_flight, self._in_flight = self._in_flight, deque()
        for waiting in in_flight:
            if not waiting.future.done():
                waiting.future.set_exception(ConnectionError(f"redis connection lost: {exc!r}"))

    async def aclose(self) -> None:
        for task in (self._connecting, self._reading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@dataclass(slots=True)
class _InFlight:
    n: int  # replies expected
    future: asyncio.Future[list[Any]]
    replies: list[Any]
    sent: float  # loop time

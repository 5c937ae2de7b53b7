"""A bare pipelined connection for the write buffer, on standalone redis:// servers.

redis-py reads a pipeline's replies one coroutine chain per reply, which is most of
what a buffered write costs in the /ibs profile. Here a whole batch is packed by
hiredis (C), written at once, and its replies parsed by one hiredis.Reader in a loop.
Replies come back as values; an error reply comes back as a ResponseError (a
NoScriptError for NOSCRIPT) in its place, as redis-py's execute(raise_on_error=False)
does. Cluster, TLS and unix-socket URLs keep redis-py's pipelines.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import NoScriptError, ResponseError

READ_CHUNK: Final = 65536
CONNECT_TIMEOUT_S: Final = 0.5


def supported(url: str) -> bool:
    return url.startswith("redis://")


class PackedPipe:
    """Collects commands, packed, in the shape scripts.Scripts.queue expects."""

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

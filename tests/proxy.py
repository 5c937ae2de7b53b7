"""A TCP proxy in front of the real Redis/Valkey, for fault tests: it forwards, or
refuses new connections, or holds traffic back (a hung server), or cuts what is open.
It runs its own event loop in a thread, so a service in another process can use it.
In front of a unix:// server it listens on a unix socket of its own."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

MODES = ("pass", "refuse", "blackhole")


class FaultProxy:
    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        self.target_url = target_url
        self.target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.db = target.path
        self._unix: tuple[str, Path] | None = None  # (the target's socket, our own)
        if target.scheme == "unix":
            self._folder = tempfile.TemporaryDirectory(prefix="pixelsync-proxy-")
            self._unix = (target.path, Path(self._folder.name) / "proxy.sock")
            self.db = f"?{target.query}" if target.query else ""
        self.mode = "pass"
        self._writers: set[asyncio.StreamWriter] = set()
        self._dead: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")

    @property
    def url(self) -> str:
        if self._unix is not None:
            return f"unix://{self._unix[1]}{self.db}"
        return f"redis://127.0.0.1:{self.port}{self.db}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        if self._unix is not None:
            listening = asyncio.start_unix_server(self._client, self._unix[1])
        else:
            listening = asyncio.start_server(self._client, "127.0.0.1", 0)
        self._server = self._loop.run_until_complete(listening)
        self.port = 0 if self._unix else self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._unix is not None:
            return await asyncio.open_unix_connection(self._unix[0])
        return await asyncio.open_connection(*self.target)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        self._writers.add(writer)
        try:
            up_reader, up_writer = await self._upstream()
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward bytes in order. While the mode is "blackhole" they are held back (a
        paused server, a partition): sent, in order, once it passes again."""
        while data := await reader.read(65536):
            while self.mode == "blackhole":
                await asyncio.sleep(0.01)
            if writer in self._dead:
                continue  # a half-open connection: nothing ever arrives
            writer.write(data)
            await writer.drain()
        writer.close()

    def half_open(self) -> None:
        """Every connection open now goes silent for good, without closing (a peer gone
        without a reset, a NAT that forgot the flow); new connections work."""

        def kill() -> None:
            self._dead.update(self._writers)

        self._loop.call_soon_threadsafe(kill)

    def set(self, mode: str) -> None:
        assert mode in MODES
        self.mode = mode

    def cut(self) -> None:
        """Close every open connection (both sides), as a network failure would."""

        def close_all() -> None:
            for w in list(self._writers):
                w.close()
            self._writers.clear()

        self._loop.call_soon_threadsafe(close_all)

    def close(self) -> None:
        self.cut()

        async def stop() -> None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        if self._unix is not None:
            self._folder.cleanup()

"""A real-time data partner (SPEC §8) that answers every request 5 ms after it arrives:
`python -m bench.partner PORT [DELAY_MS]`. A bare asyncio protocol rather than an ASGI app: the
partner shares the machine's cores with the server under test, and an uvicorn partner
spent a good part of a core on the calls of one pixelsync worker, which then showed as
pixelsync's latency."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Final

DELAY_S: Final = 0.005
_ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n"
    b'{"segments": ["abc"]}'
)
_HEALTHY: Final = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class _Partner(asyncio.Protocol):
    def __init__(self, delay_s: float = DELAY_S) -> None:
        self.delay_s = delay_s
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        loop = asyncio.get_running_loop()
        while b"\r\n\r\n" in self.buffer:  # GET requests: a head and no body
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            if head.startswith(b"GET /healthz "):
                self._write(_HEALTHY)
            else:
                loop.call_later(self.delay_s, self._write, _ANSWER)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def _serve(port: int, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Partner(delay_s), "127.0.0.1", port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    port = int(sys.argv[1])
    delay_s = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else DELAY_S
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(port, delay_s))
    else:
        uvloop.run(_serve(port, delay_s))


if __name__ == "__main__":
    main()

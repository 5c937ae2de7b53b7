"""The store's Redis wire (service/replacements/redis_wire.py) against redis-py doing the
same work, in one process on a throw-away valkey-server: the client's CPU per command.

    python -m bench.wire

- pack: FastPackConnection.pack_command (hiredis) against redis-py's own, for one
  EVALSHA of 8 arguments (the shape of the write buffer's scripts);
- write batches: 500 HSETs a batch through RawConnection, against a redis-py pipeline
  (with FastPackConnection, as the store's) run with raise_on_error=False;
- shared reads: 50 concurrent requests of 2 HGETs each (visitor_state's), through one
  SharedReads, against a redis-py pipeline per request (the store's fallback).

A and B alternate, 3 runs each; the medians are printed. The server shares the machine's
cores: compare the two sides of one run, not runs on different days.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis

from bench.valkeys import Valkey, free_ports
from service.replacements.redis_wire import (
    FastPackConnection,
    PackedPipe,
    RawConnection,
    SharedReads,
)
from service.store import connect

RUNS: Final = 3
BATCH: Final = 500
BATCHES: Final = 40
CONCURRENT: Final = 50
ROUNDS: Final = 120
PACKS: Final = 200_000
EVALSHA: Final = ("EVALSHA", "a" * 40, 2, b"ps:v:{1}", b"ps:r:{1}", b"x" * 40, 20571, b"u-1")


def pack_us(connection: aioredis.Connection) -> float:
    started = time.process_time()
    for _ in range(PACKS):
        connection.pack_command(*EVALSHA)
    return (time.process_time() - started) / PACKS * 1e6


Work = tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]  # (one, close)


async def cpu_us(work: Work, times: int, ops_each: int) -> float:
    one, close = work
    try:
        await one()  # connected, warm
        started = time.process_time()
        for _ in range(times):
            await one()
        return (time.process_time() - started) / (times * ops_each) * 1e6
    finally:
        await close()


def write_batch(url: str, bare: bool) -> Work:
    commands = [("HSET", b"wire:%d" % (i % 997), b"f%d" % i, b"v" * 30) for i in range(BATCH)]
    conn = RawConnection(url)
    client = connect(url, cluster=False, socket_timeout=None)

    async def one() -> None:
        if bare:
            pipe = PackedPipe()
            for command in commands:
                pipe.execute_command(*command)
            await conn.execute(pipe)
        else:
            pipeline = client.pipeline(transaction=False)
            for command in commands:
                pipeline.execute_command(*command)
            await pipeline.execute(raise_on_error=False)

    async def close() -> None:
        await conn.aclose()
        await client.aclose()

    return one, close


def shared_reads(url: str, bare: bool) -> Work:
    reads = SharedReads(url)
    client = connect(url, cluster=False)

    async def request(i: int) -> Any:
        keys = (b"wire:%d" % (i % 997), b"wire:%d" % ((i + 1) % 997))
        if bare:
            pipe = PackedPipe()
            for key in keys:
                pipe.execute_command("HGET", key, b"f1")
            return await reads.execute(pipe, 1.0)
        pipeline = client.pipeline(transaction=False)
        for key in keys:
            pipeline.execute_command("HGET", key, b"f1")
        return await asyncio.wait_for(pipeline.execute(), 1.0)

    async def one() -> None:
        await asyncio.gather(*(request(i) for i in range(CONCURRENT)))

    async def close() -> None:
        await reads.aclose()
        await client.aclose()

    return one, close


async def measure(url: str) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    for _ in range(RUNS):
        for bare in (False, True):
            side = "wire" if bare else "redis-py"
            write = await cpu_us(write_batch(url, bare), BATCHES, BATCH)
            read = await cpu_us(shared_reads(url, bare), ROUNDS, CONCURRENT)
            results.setdefault(f"write batches, us a command, {side}", []).append(write)
            results.setdefault(f"shared reads, us a request, {side}", []).append(read)
    return results


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed, as `pixelsync serve` runs."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    figures = {
        "pack, us a command, redis-py": [pack_us(aioredis.Connection()) for _ in range(RUNS)],
        "pack, us a command, wire": [pack_us(FastPackConnection()) for _ in range(RUNS)],
    }
    with tempfile.TemporaryDirectory() as tmp:
        [port] = free_ports(1)
        server = Valkey(Path(tmp), port, durable=False)
        server.start()
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                figures.update(runner.run(measure(server.url)))
        finally:
            server.stop()
    for name, values in figures.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:40} {statistics.median(values):8.2f}   ({runs})")


if __name__ == "__main__":
    main()

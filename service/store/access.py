"""What every part of the store shares: the clients, the key schema and the write
buffer, and pipelined reads over them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final, cast

from ..replacements.redis_wire import PackedPipe, SharedReads
from .keys import KeySchema
from .scripts import Scripts
from .servers import Client
from .writes import WriteBuffer

SCAN_TIMEOUT_S: Final = 30.0  # one round of a bucket scan (sweep, export)


class Access:
    def __init__(
        self,
        client: Client,
        schema: KeySchema,
        writes: WriteBuffer,
        *,
        cluster: bool,
        reads: SharedReads | None,
        bulk: SharedReads | None,
    ) -> None:
        """`reads`: the hot path's bare connection, its reads pipelined across
        concurrent requests; `bulk`: the bucket scans' (sweep, export), whose big
        answers must not hold up, nor look like a stall to, the hot path's reads.
        None: through redis-py."""
        self.client = client
        self.cluster = cluster
        self.schema = schema
        self.writes = writes
        self.reads = reads
        self.bulk = bulk

    @property
    def scripts(self) -> Scripts:
        return self.writes.scripts

    async def run(
        self, commands: Sequence[tuple[Any, ...]], shared: SharedReads | None, timeout: float | None
    ) -> list[Any]:
        """Many commands in one pipeline: on a bare shared connection when there is one
        (an error reply raises), else through redis-py. TimeoutError after `timeout`."""
        if shared is not None:
            packed = PackedPipe()
            for command in commands:
                packed.execute_command(*command)
            replies = await shared.execute(packed, SCAN_TIMEOUT_S if timeout is None else timeout)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return cast(list[Any], await asyncio.wait_for(pipe.execute(), timeout))

    async def hgets(self, slots: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        """HGET of many (key, field): one pipeline, on the bulk connection if any."""
        return await self.run([("HGET", key, field) for key, field in slots], self.bulk, None)

    async def hgetall(self, keys: Sequence[bytes]) -> list[dict[bytes, bytes]]:
        """Many hashes in one pipeline: on the bare bulk connection when there is one
        (a scan of every bucket is mostly empty answers: redis-py's cost per answer
        would dominate). The bare connection answers flat lists, redis-py dicts."""
        replies = await self.run([("HGETALL", key) for key in keys], self.bulk, None)
        return [
            r if isinstance(r, dict) else dict(zip(r[::2], r[1::2], strict=True)) for r in replies
        ]

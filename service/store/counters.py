"""Counters and statistics: per-minute counter buckets (fed by the in-process tally),
tracked fires counted once, distinct visitors (hourly HyperLogLogs) and the size of
the match table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from ..tally import Tally
from .access import Access
from .codec import uuid16
from .keys import COUNTS_TTL_S, ONCE_TTL_S, SEEN_TTL_S, counts_key, once_key, seen_key
from .writes import Count, Once, Seen

MAX_SEEN: Final = 200_000  # distinct visitors held between two flushes (one second)


class Counters:
    def __init__(self, access: Access) -> None:
        self.access = access
        self.tally = Tally()  # flushed into the per-minute buckets by flush()
        self._seen: set[str] = set()  # visitors seen since the last flush()

    def count_once(self, nonce: bytes, first: Callable[[], None]) -> bool:
        return self.access.writes.push_once(Once(once_key(nonce), ONCE_TTL_S, first))

    def add(self, minute: int, counts: Mapping[str, int]) -> None:
        key = counts_key(minute)
        if not self.access.writes.push(
            *(Count(key, f, n, COUNTS_TTL_S) for f, n in counts.items())
        ):
            for field, n in counts.items():  # the queue is full: next time, not lost
                self.tally.add(field, n)

    def seen(self, uuid: str) -> None:
        if len(self._seen) < MAX_SEEN:
            self._seen.add(uuid)

    def flush(self, now: float) -> None:
        counts = self.tally.take()
        if counts:
            self.add(int(now) // 60, counts)
        if self._seen:
            visitors, self._seen = self._seen, set()
            seen = [uuid16(u) for u in visitors]  # off the hot path
            key = seen_key(int(now) // 3600)
            if not self.access.writes.push(
                *(Seen(key, seen[i : i + 1000], SEEN_TTL_S) for i in range(0, len(seen), 1000))
            ):  # the queue is full: next time, not lost (up to MAX_SEEN)
                self._seen = visitors

    async def distinct_visitors(self, hours: int, now: float) -> int:
        hour = int(now) // 3600
        keys = [seen_key(h) for h in range(hour - hours, hour + 1)]
        return int(await self.access.client.execute_command("PFCOUNT", *keys))

    async def mappings_stored(self, sample: int) -> tuple[int, bool]:
        """Every mapping has one reverse entry: the fields of the reverse buckets,
        counted in `sample` buckets spread over all of them and scaled up."""
        schema = self.access.schema
        buckets = schema.buckets
        step = max(1, buckets // sample)
        chosen = range(0, buckets, step)
        pipe = self.access.client.pipeline(transaction=False)
        for b in chosen:
            pipe.hlen(schema.reverse_key_of_bucket(b))
        total = sum(int(n) for n in await pipe.execute())
        return total * buckets // len(chosen), step == 1

    async def by_minute(self, minutes: range) -> list[dict[str, int]]:
        pipe = self.access.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(counts_key(minute))
        return [
            {field.decode(): int(n) for field, n in bucket.items()}
            for bucket in await pipe.execute()
        ]

    async def summed(self, minutes: range) -> dict[str, int]:
        total: dict[str, int] = {}
        for bucket in await self.by_minute(minutes):
            for name, n in bucket.items():
                total[name] = total.get(name, 0) + n
        return total

"""Counting on the hot path: a dict increment per event, handed to the store in
per-minute batches (SPEC §5 match rates; the same buckets serve loss accounting)."""

from __future__ import annotations

from collections import Counter


class Tally:
    """Counts since the last take(). Field names: "<kind>:<id>:<counter>", for example
    "p:1234:instructed" (partner 1234's syncs handed out)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, field: str, n: int = 1) -> None:
        self._counts[field] += n

    def take(self) -> dict[str, int]:
        counts, self._counts = self._counts, Counter()
        return dict(counts)


def partner_field(dpid: int, counter: str) -> str:
    return f"p:{dpid}:{counter}"


REQUESTS_FIELD = "t:requests"  # browser requests answered (pixels, syncs, fires)

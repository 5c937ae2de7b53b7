"""Counters and ids every raw-ASGI browser endpoint uses (the opening is pipeline.py's)."""

from __future__ import annotations

import secrets
import time
from bisect import bisect_left
from collections.abc import Iterable

from .. import metrics
from ..tally import Tally, partner_field


class Outcomes:
    """An endpoint's answers, counted by outcome, and their latency: in plain ints on
    the hot path, added to Prometheus by flush() (metrics.counted_locally)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.latency = metrics.LATENCY.labels(endpoint)
        self._bounds = [*metrics.LATENCY_BUCKETS, float("inf")]  # the histogram's, +Inf last
        self._counts: dict[str, int] = {}
        self._buckets = [0] * len(self._bounds)
        self._sum = 0.0
        metrics.counted_locally(self)

    def count(self, outcome: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        counts = self._counts
        counts[outcome] = counts.get(outcome, 0) + 1
        self._buckets[bisect_left(self._bounds, elapsed)] += 1  # observe()'s `<=` bound
        self._sum += elapsed

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        buckets, self._buckets = self._buckets, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        for outcome, n in counts.items():
            metrics.child(metrics.REQUESTS, self.endpoint, outcome).inc(n)
        if counts:
            metrics.add_observations(self.latency, buckets, total)


class SyncCounters:
    """Match rates per partner (SPEC §5): syncs handed out and completed, and mappings
    stored, in Prometheus and in the per-minute buckets."""

    def __init__(self, tally: Tally, dpids: Iterable[int]) -> None:
        self.tally = tally
        for dpid in dpids:  # at 0 from the start: a partner never synced shows as such
            for stage in ("instructed", "completed"):
                metrics.child(metrics.SYNCS, str(dpid), stage)

    def instructed(self, dpid: int) -> None:
        metrics.child(metrics.SYNCS, str(dpid), "instructed").inc()
        self.tally.add(partner_field(dpid, "instructed"))

    def completed(self, dpid: int) -> None:
        metrics.child(metrics.SYNCS, str(dpid), "completed").inc()
        self.tally.add(partner_field(dpid, "completed"))
        self.tally.add(partner_field(dpid, "mappings"))


def new_tid() -> str:
    """A 12-character transaction id for support, in JSON answers and in the logs."""
    return secrets.token_urlsafe(9)

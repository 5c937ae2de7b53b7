"""Prometheus metrics. With several workers, PROMETHEUS_MULTIPROC_DIR is set by
``pixelsync serve`` before the workers start, and /metrics aggregates them."""

from __future__ import annotations

import os
import weakref
from typing import Any, Final, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

REQUESTS: Final = Counter("pixelsync_requests_total", "Answered requests", ["endpoint", "outcome"])
# LATENCY's upper bounds (Prometheus adds +Inf), which web/common.Outcomes counts in too.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LATENCY: Final = Histogram(
    "pixelsync_request_seconds", "Time to answer a request", ["endpoint"], buckets=LATENCY_BUCKETS
)
REDIS_ERRORS: Final = Counter(
    "pixelsync_redis_errors_total", "Redis/Valkey commands that failed", ["op"]
)
BUFFERED: Final = Gauge(
    "pixelsync_write_buffer_ops",
    "Writes waiting in the in-process buffer",
    multiprocess_mode="livesum",
)
BUFFER_OVERFLOW: Final = Counter(
    "pixelsync_write_buffer_overflow_total",
    "Writes refused because the buffer was full (Redis unreachable too long)",
)
SYNCS: Final = Counter(
    "pixelsync_syncs_total", "ID syncs per partner (dpid) and stage", ["dpid", "stage"]
)
DESTINATIONS: Final = Counter(
    "pixelsync_destination_events_total",
    "Destination delivery per destination id and counter (instructed, loaded, confirmed, "
    "attempted, delivered, failed, retried, overflow)",
    ["destination", "counter"],
)
SEGMENTS: Final = Counter(
    "pixelsync_segment_changes_total", "Segment entries and exits", ["segment", "change"]
)
TRAITS: Final = Counter("pixelsync_trait_realizations_total", "Trait realizations", ["sid"])
REALTIME_BREAKER: Final = Gauge(
    "pixelsync_realtime_breaker_state",
    "Real-time partner circuit breaker per dpid: 0 closed, 1 open, 2 half-open",
    ["dpid"],
    multiprocess_mode="max",
)
REALTIME_LATENCY: Final = Histogram(
    "pixelsync_realtime_call_seconds",
    "Real-time partner call latency per dpid (failed and cut-off calls included)",
    ["dpid"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0),
)
REALTIME: Final = Counter(
    "pixelsync_realtime_events_total",
    "Real-time partner calls per dpid and counter (calls, timeouts, errors, "
    "breaker_opens, cache_hits)",
    ["dpid", "counter"],
)
WRITE_FAILURES: Final = Counter(
    "pixelsync_write_failures_total",
    "Writes Redis refused on their own (not an outage), dropped after retries",
)
WRITES: Final = Counter("pixelsync_store_writes_total", "Buffered writes applied", ["op"])
DISTINCT_VISITORS: Final = Gauge(
    "pixelsync_distinct_visitors",
    "Distinct visitors seen on /event per window (1h, 24h, 7d; HyperLogLog estimate)",
    ["window"],
    multiprocess_mode="max",
)
MAPPINGS_STORED: Final = Gauge(
    "pixelsync_mappings_stored",
    "Mappings in the match table (counted in a sample of the reverse buckets)",
    multiprocess_mode="max",
)
REDIS_UP: Final = Gauge(
    "pixelsync_redis_up", "1 when Redis answered the last flush", multiprocess_mode="min"
)

PRIVACY_DECISIONS: Final = Counter(
    "pixelsync_privacy_decisions",
    "Partner activities denied by privacy, per partner (dpid; 0: a destination of no "
    "partner), activity (sync, fire, s2s, export) and reason (gdpr_consent, us_privacy, "
    "gpc, gpp_us, rule)",
    ["partner", "activity", "reason"],
)

# Prebid Server's user-sync metrics (SPEC §15), under its names and labels.
COOKIE_SYNC_REQUESTS: Final = Counter(
    "pixelsync_cookie_sync_requests",
    "/cookie_sync requests by status (ok, bad_request, opt_out, gdpr_blocked_host_cookie)",
    ["status"],
)
SYNCER_REQUESTS: Final = Counter(
    "pixelsync_syncer_requests",
    "Bidders evaluated by /cookie_sync, by syncer (bidder code) and status (ok, "
    "privacy_blocked, already_synced, rejected_by_filter)",
    ["syncer", "status"],
)
SETUID_REQUESTS: Final = Counter(
    "pixelsync_setuid_requests",
    "/setuid requests by status (ok, bad_request, opt_out, gdpr_blocked_host_cookie, "
    "syncer_unknown, cookies_blocked)",
    ["status"],
)
SYNCER_SETS: Final = Counter(
    "pixelsync_syncer_sets",
    "Uids set (ok) or cleared (cleared) by /setuid, by syncer (bidder code)",
    ["syncer", "status"],
)

__all__ = [
    "BUFFERED",
    "BUFFER_OVERFLOW",
    "CONTENT_TYPE_LATEST",
    "COOKIE_SYNC_REQUESTS",
    "DESTINATIONS",
    "DISTINCT_VISITORS",
    "LATENCY",
    "LATENCY_BUCKETS",
    "MAPPINGS_STORED",
    "PRIVACY_DECISIONS",
    "REALTIME",
    "REALTIME_BREAKER",
    "REALTIME_LATENCY",
    "REDIS_ERRORS",
    "REDIS_UP",
    "REQUESTS",
    "SEGMENTS",
    "SETUID_REQUESTS",
    "SYNCER_REQUESTS",
    "SYNCER_SETS",
    "SYNCS",
    "TRAITS",
    "WRITES",
    "WRITE_FAILURES",
    "add_observations",
    "child",
    "counted_locally",
    "flush",
    "not_served",
    "render",
]


_CHILDREN: dict[tuple[Any, tuple[str, ...]], Any] = {}
_counting = True


class _Unused:
    """A child nobody reads: what child() answers in a process without /metrics."""

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_UNUSED: Final = _Unused()


def child(metric: Any, *labels: str) -> Any:
    """A metric's child for these label values, bound once: labels() on every request
    costs more than the inc() itself."""
    if not _counting:
        return _UNUSED
    key = (metric, labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found


def not_served() -> None:
    """This process serves no /metrics (a batch job): child() counts into nothing, which
    took 5 % of an import's CPU. What the service reports goes through the per-minute
    buckets in Redis, which batch jobs still feed."""
    global _counting
    _counting = False


class LocalCounts(Protocol):
    def flush(self) -> None: ...


_LOCAL: weakref.WeakSet[LocalCounts] = weakref.WeakSet()


def counted_locally(counts: LocalCounts) -> None:
    """Hot-path counts kept in plain Python between flushes: an inc() or observe()
    takes a lock, and with several workers writes a memory-mapped file, on every
    request. flush() adds them up once a second (the app's loop) and before a scrape."""
    _LOCAL.add(counts)


def flush() -> None:
    for counts in list(_LOCAL):
        counts.flush()


def add_observations(histogram: Any, buckets: list[int], total: float) -> None:
    """What observe() would have done for several observations: `buckets` counts them
    per bucket of the child's upper bounds, +Inf last (observe() stores them per bucket
    too, and adds them up at exposition).

    prometheus_client has no public call for this (observe() takes one value, and a lock
    each time), so this is the one place that reads a histogram child's private
    `_buckets` and `_sum`: pyproject.toml bounds the version, tests/test_metrics.py checks
    what /metrics then exports."""
    for value, n in zip(histogram._buckets, buckets, strict=True):
        if n:
            value.inc(n)
    histogram._sum.inc(total)


def render() -> bytes:
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()

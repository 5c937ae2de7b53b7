"""Hot-path Prometheus counts (service/metrics.py, web/common.Outcomes): kept in plain
ints per request, added to Prometheus by flush() exactly as inc() and observe() would."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from service import metrics
from service.web.common import Outcomes


def sample(name: str, endpoint: str, extra: str = "") -> float:
    text = generate_latest().decode()
    prefix = f'{name}{{endpoint="{endpoint}"{extra}}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def test_outcomes_reach_prometheus_at_the_flush() -> None:
    endpoint = f"unit-{time.monotonic_ns()}"
    outcomes = Outcomes(endpoint)
    now = time.perf_counter()
    for started, outcome in [(now, "ok"), (now - 0.003, "ok"), (now - 2.0, "error_311")]:
        outcomes.count(outcome, started)
    assert sample("pixelsync_request_seconds_count", endpoint) == 0  # not yet flushed

    metrics.flush()
    assert sample("pixelsync_requests_total", endpoint, ',outcome="ok"') == 2
    assert sample("pixelsync_requests_total", endpoint, ',outcome="error_311"') == 1
    assert sample("pixelsync_request_seconds_count", endpoint) == 3
    # Cumulative buckets, as observe() would have filled them.
    assert sample("pixelsync_request_seconds_bucket", endpoint, ',le="0.0025"') == 1
    assert sample("pixelsync_request_seconds_bucket", endpoint, ',le="0.005"') == 2
    assert sample("pixelsync_request_seconds_bucket", endpoint, ',le="1.0"') == 2
    assert sample("pixelsync_request_seconds_bucket", endpoint, ',le="+Inf"') == 3
    assert 2.003 <= sample("pixelsync_request_seconds_sum", endpoint) < 2.1

    metrics.flush()  # nothing new: nothing added twice
    assert sample("pixelsync_request_seconds_count", endpoint) == 3

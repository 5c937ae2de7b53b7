"""Hot-path Prometheus counts (service/metrics.py, web/common.Outcomes): kept in plain
ints per request, added to Prometheus by flush() exactly as inc() and observe() would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from bisect import bisect_left
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram, generate_latest

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


def exposition(registry: CollectorRegistry) -> list[str]:
    """The samples /metrics would show, without the _created timestamps."""
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_add_observations_exports_what_observe_would() -> None:
    """add_observations writes into a histogram child's private _buckets and _sum (there
    is no public call for counts made elsewhere): if prometheus_client renames them or
    changes what it exports from them, this fails."""
    values = [0.0001, 0.0005, 0.0007, 0.003, 0.003, 0.2, 0.9, 1.0, 1.5, 42.0]
    observed, added = CollectorRegistry(), CollectorRegistry()
    by_observe = Histogram("h", "h", ["e"], buckets=metrics.LATENCY_BUCKETS, registry=observed)
    by_counts = Histogram("h", "h", ["e"], buckets=metrics.LATENCY_BUCKETS, registry=added)
    for value in values:
        by_observe.labels("x").observe(value)
    bounds = [*metrics.LATENCY_BUCKETS, float("inf")]
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # what Outcomes.count does
    metrics.add_observations(by_counts.labels("x"), counts, sum(values))

    assert exposition(added) == exposition(observed)
    assert 'h_bucket{e="x",le="0.0005"} 2.0' in exposition(added)
    assert 'h_bucket{e="x",le="+Inf"} 10.0' in exposition(added)


def test_outcomes_count_in_the_latency_histograms_own_buckets() -> None:
    """Outcomes keeps the bounds as metrics.LATENCY_BUCKETS + [+Inf]: those the histogram
    exports (read through the public collect())."""
    outcomes = Outcomes("unit-bounds")
    exported = [
        float(sample.labels["le"])
        for sample in metrics.LATENCY.collect()[0].samples
        if sample.name.endswith("_bucket") and sample.labels["endpoint"] == "unit-bounds"
    ]
    assert outcomes._bounds == exported


MULTIPROCESS = """
from service import metrics
from service.web.common import Outcomes
outcomes = Outcomes("unit")
for started in (0.0, 0.003, 2.0):  # elapsed: about now - started, from perf_counter
    outcomes.count("ok", __import__("time").perf_counter() - started)
print(metrics.render().decode())
"""


def test_flushed_counts_reach_the_multiprocess_metrics(tmp_path: Path) -> None:
    """`pixelsync serve --workers N`: the counts go into prometheus_client's memory-mapped
    files through the same private values, and /metrics adds the workers' files up."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS], env=env, capture_output=True, text=True, check=True
    ).stdout
    lines = set(out.splitlines())
    assert 'pixelsync_requests_total{endpoint="unit",outcome="ok"} 3.0' in lines
    assert 'pixelsync_request_seconds_bucket{endpoint="unit",le="0.0025"} 1.0' in lines
    assert 'pixelsync_request_seconds_bucket{endpoint="unit",le="0.005"} 2.0' in lines
    assert 'pixelsync_request_seconds_bucket{endpoint="unit",le="+Inf"} 3.0' in lines
    assert 'pixelsync_request_seconds_count{endpoint="unit"} 3.0' in lines
    [total] = [line for line in lines if line.startswith("pixelsync_request_seconds_sum{")]
    assert 2.003 <= float(total.rsplit(" ", 1)[1]) < 2.1

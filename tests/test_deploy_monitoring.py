"""deploy/'s Grafana dashboard and Prometheus alert rules query only metrics that
pixelsync exposes (a renamed metric would leave a panel silently empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

import service.metrics  # noqa: F401  (registers the metrics)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "expr" and isinstance(v, str)] + [
            e for v in node.values() for e in _exprs(v)
        ]
    if isinstance(node, list):
        return [e for v in node for e in _exprs(v)]
    return []


def _families() -> set[str]:
    """Metric family names: counters without their _total, histograms without _bucket."""
    return {metric.name for metric in REGISTRY.collect()}


def test_grafana_and_alerts_query_exposed_metrics() -> None:
    grafana = _exprs(json.loads((DEPLOY / "grafana-dashboard.json").read_text()))
    rules = re.findall(
        r"expr:\s*(.+(?:\n\s{8,}.+)*)", (DEPLOY / "prometheus-rules.yml").read_text()
    )
    assert len(grafana) >= 15 and rules
    used = set(re.findall(r"pixelsync_[a-z_]+", " ".join(grafana + rules)))
    families = _families()
    missing = {n for n in used if re.sub(r"_(total|bucket)$", "", n) not in families}
    assert not missing, missing

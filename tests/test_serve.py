"""`pixelsync serve` as an operator runs it: several workers, embedded Valkey, SIGTERM."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx

from tests.conftest import start_service
from tests.test_persistence import embedded_url


def test_workers_share_metrics_and_stop_cleanly(tmp_path: Path) -> None:
    svc = start_service(tmp_path, "", redis_url=None, workers=2)
    try:
        port = int(embedded_url(svc).rsplit(":", 1)[1].split("/")[0])
        with httpx.Client(base_url=svc.url, timeout=10) as http:
            for _ in range(20):
                assert http.get("/event").status_code == 200
            text = http.get("/metrics").text
            assert http.get("/readyz").status_code == 200
        # Prometheus counters are summed over the worker processes.
        match = re.search(r'pixelsync_requests_total\{endpoint="event",outcome="ok"\} (\S+)', text)
        assert match and float(match.group(1)) == 20.0
    finally:
        assert svc.stop() == 0, svc.log()
    with socket.socket() as probe:  # the embedded Valkey stopped with the service
        assert probe.connect_ex(("127.0.0.1", port)) != 0

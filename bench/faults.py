"""Fault drills (issue 9): bounded load on a real `pixelsync serve` while Redis/Valkey or
the service fails, then what was answered, what was stored and what was lost.

    python -m bench.faults outage   [--seconds 10] [--rate 300]
    python -m bench.faults crash    [--rate 300]        # kill -9 Valkey, then the service
    python -m bench.faults shutdown [--rate 300]        # SIGTERM under load
    python -m bench.faults cluster  [--seconds 5]       # restart one node of 3
    python -m bench.faults soak     [--seconds 600]     # make soak

Each prints a JSON report and writes it to bench/results/faults-<drill>.json. The tests
(tests/test_reliability.py) run the same drills in a short form and assert on the report.

A request is one of: "event" (GIF /event of a returning visitor), "ibs" (an ID sync of a
new visitor: one new mapping, its partner uid unique in the run), "qualify" (JSON /event
that qualifies segments, d_dst=1), "dest5" (the sync iframe) and "lookup" (the /v1 bulk
lookup). Mappings are checked afterwards in Redis itself, by partner uid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any, Final
from urllib.request import Request

import httpx

from service.identity import CookieSigner, new_uuid, today
from service.store import KeySchema, Retention, Store, connect

from .load import ROOT, Server, free_port, live_processes, qualify_config, running
from .valkeys import Cluster, Valkey

HOST: Final = "127.0.0.1"
DPID: Final = 77  # the partner of the drills' ID syncs
RT_DPID: Final = 78  # a real-time partner (the shutdown drill's slow requests)
SECRET: Final = "faults-only-not-a-secret"
ADMIN: Final = "faults-admin-not-a-secret"
# The operator endpoints (/readyz, /metrics) answer an admin key (web/ops.py).
OPERATOR: Final = {"authorization": f"Bearer {ADMIN}"}
VISITORS: Final = 200  # returning visitors of the "event", "qualify" and "dest5" requests
LATENCY_TARGET_S: Final = 0.100  # SPEC §14: browser endpoints answer within 100 ms
EXPECTED: Final = {"event": 200, "ibs": 200, "qualify": 200, "dest5": 200, "lookup": 200}
RESULTS: Final = ROOT / "bench" / "results"

Log = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


class _NoCookies(DefaultCookiePolicy):
    """The load sends each request's cookie itself and keeps none it is given."""

    def set_ok(self, cookie: Cookie, request: Request) -> bool:
        return False


# --- the service under test ----------------------------------------------------------


def service_config(
    data_dir: Path,
    redis_url: str = "",
    *,
    cluster: bool = False,
    buffer_max: int | None = None,
    realtime_port: int | None = None,
    qualify: bool = False,
) -> str:
    text = (
        "[server]\n"
        f"data_dir = {json.dumps(str(data_dir))}\n"
        f"redis_url = {json.dumps(redis_url)}\n"
        f"redis_cluster = {'true' if cluster else 'false'}\n"
        f"secret_keys = [{json.dumps(SECRET)}]\n"
    )
    if buffer_max is not None:
        text += f"[store]\nbuffer_max_ops = {buffer_max}\n"
    if realtime_port is not None:
        text += "[realtime]\nbudget_ms = 300\ncache_s = 0\n"
    text += (
        "[[api_keys]]\n"
        'name = "faults"\n'
        f'sha256 = "{hashlib.sha256(ADMIN.encode()).hexdigest()}"\n'
        'scopes = ["admin"]\n'
        f'[[partners]]\ndpid = {DPID}\nname = "drill-partner"\n'
        f'sync_url = "http://{HOST}:9/sync?u=${{DD_UUID}}"\n'
    )
    if realtime_port is not None:
        text += (
            f'[[partners]]\ndpid = {RT_DPID}\nname = "drill-realtime"\n'
            f'realtime_url = "http://{HOST}:{realtime_port}/rt?u=${{DP_UUID}}"\n'
            'realtime_traits = { "abc" = 9001 }\n'
            '[[traits]]\nsid = 9001\nname = "real-time abc"\ntype = "onboarded"\n'
        )
    if qualify:
        text += qualify_config()
        text += (
            '[[destinations]]\nid = 1\nname = "drill pixel"\ntype = "url"\n'
            f'url = "http://{HOST}:9/px?s=%ALIAS%"\n'
            'mappings = { "5000" = "s0", "5001" = "s1", "5002" = "s2" }\n'
        )
    return text


def pixelsync(workdir: Path, name: str, config: str, workers: int = 1) -> Server:
    """A `pixelsync serve` (uvicorn) child process, not started."""
    path = workdir / f"{name}.toml"
    path.write_text(config)
    port = free_port()
    argv = [
        sys.executable, "-m", "service", "serve", "--config", str(path),
        "--host", HOST, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    return Server(name, argv, port, workdir / f"{name}.log")


def children(pid: int, name: str) -> list[int]:
    """The live child processes of `pid` called `name`."""
    return [p.pid for p in live_processes() if p.ppid == pid and p.name == name]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def ready(client: httpx.AsyncClient, url: str) -> tuple[int, int]:
    """/readyz: (status, writes still buffered); (0, -1) when nothing answered."""
    try:
        response = await client.get(url + "/readyz", headers=OPERATOR, timeout=2.0)
        return response.status_code, int(response.json().get("buffered_writes", -1))
    except (httpx.HTTPError, ValueError):
        return 0, -1


async def drained(url: str, timeout_s: float = 60.0) -> float | None:
    """Seconds until /readyz says ready with nothing buffered; None: not in time."""
    start = time.monotonic()
    async with httpx.AsyncClient() as client:
        while time.monotonic() - start < timeout_s:
            status, buffered = await ready(client, url)
            if status == 200 and buffered == 0:
                return time.monotonic() - start
            await asyncio.sleep(0.1)
    return None


async def metric(url: str, name: str) -> float:
    """The sum of a Prometheus series over its labels (0 when absent)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(url + "/metrics", headers=OPERATOR, timeout=5.0)).text
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"{re.escape(name)}(\{{|\s)", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def present(redis_url: str, uids: Sequence[str], *, cluster: bool = False) -> set[str]:
    """The partner uids of DPID that Redis maps to a visitor."""
    store = Store(
        connect(redis_url, cluster=cluster),
        KeySchema(65536),
        Retention(visitor_days=180, mapping_days={}, default_mapping_days=90),
    )
    await store.start()
    found: set[str] = set()
    try:
        for i in range(0, len(uids), 1000):
            found.update(await store.lookup(DPID, list(uids[i : i + 1000]), today()))
    finally:
        await store.close()
    return found


# --- the load ------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    kind: str
    uid: str  # "ibs": the partner uid it sent; else ""
    sent: float  # seconds since the load started
    latency: float  # seconds; to the failure when nothing was answered
    status: int  # 0: no answer
    error: str = ""


@dataclass
class Load:
    """Paced requests (at `rate` per second, at most `concurrency` in flight) from a mix
    of request kinds, until `stop` is set. Outcomes are kept unless `keep` is False,
    in which case only the counts (and the slowest answer) are."""

    url: str
    rate: float
    mix: Sequence[str] = ("event", "ibs")
    concurrency: int = 64
    keep: bool = True
    keepalive: bool = True
    timeout_s: float = 5.0
    outcomes: list[Outcome] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0
    _run: str = field(default_factory=lambda: secrets.token_hex(4))
    _n: int = 0

    def __post_init__(self) -> None:
        signer = CookieSigner([SECRET])
        self.visitors = [new_uuid() for _ in range(VISITORS)]
        self._cookies = [f"uuid={signer.sign(u)}" for u in self.visitors]
        self._signer = signer

    def now(self) -> float:
        return time.monotonic() - self.started

    def _request(self, kind: str) -> tuple[str, str, dict[str, str], bytes | None, str]:
        """(method, path, headers, body, partner uid) of one request of that kind."""
        cookie = {"cookie": random.choice(self._cookies)}
        match kind:
            case "event":
                return "GET", "/event?c_section=sports&c_price=12", cookie, None, ""
            case "qualify":
                path = "/event?d_rtbd=json&d_dst=1&c_a=1&c_b=2&c_c=3&c_d=4&c_e=5"
                return "GET", path, cookie, None, ""
            case "dest5":
                return "GET", "/dest5.html", cookie, None, ""
            case "lookup":
                body = json.dumps({"dpuuids": [f"{self._run}-{i}" for i in range(100)]})
                headers = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
                return "POST", f"/v1/partners/{DPID}/lookup", headers, body.encode(), ""
            case "ibs":
                self._n += 1
                uid = f"{self._run}-{self._n}"
                fresh = {"cookie": f"uuid={self._signer.sign(new_uuid())}"}
                return "GET", f"/ibs?dpid={DPID}&dpuuid={uid}", fresh, None, uid
        raise ValueError(kind)

    def _record(self, outcome: Outcome) -> None:
        ok = outcome.status == EXPECTED[outcome.kind]
        self.counts["requests"] += 1
        self.counts["answered" if outcome.status else "unanswered"] += 1
        if outcome.status >= 500:
            self.counts["server_errors"] += 1
        if not ok:
            self.counts["unexpected"] += 1
        if outcome.latency > LATENCY_TARGET_S and outcome.status:
            self.counts["over_100ms"] += 1
        self.slowest = max(self.slowest, outcome.latency if outcome.status else 0.0)
        if self.keep:
            self.outcomes.append(outcome)

    async def _one(self, client: httpx.AsyncClient, kind: str) -> None:
        method, path, headers, body, uid = self._request(kind)
        sent = self.now()
        try:
            response = await client.request(method, self.url + path, headers=headers, content=body)
            status, error = response.status_code, ""
        except httpx.HTTPError as exc:
            status, error = 0, type(exc).__name__
        self._record(Outcome(kind, uid, sent, self.now() - sent, status, error))

    async def run(self, seconds: float | None = None) -> None:
        limits = httpx.Limits(
            max_connections=self.concurrency,
            max_keepalive_connections=self.concurrency if self.keepalive else 0,
        )
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def one(client: httpx.AsyncClient, kind: str) -> None:
            try:
                await self._one(client, kind)
            finally:
                slots.release()

        async with httpx.AsyncClient(
            limits=limits, timeout=self.timeout_s, cookies=CookieJar(policy=_NoCookies())
        ) as client:
            self.started = time.monotonic()
            i = 0
            while not self.stop.is_set() and (seconds is None or self.now() < seconds):
                delay = i / self.rate - self.now()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), delay)
                    continue
                await slots.acquire()
                task = asyncio.create_task(one(client, self.mix[i % len(self.mix)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.wait(tasks)

    def acked(self) -> list[Outcome]:
        """The ID syncs answered as stored."""
        return [o for o in self.outcomes if o.kind == "ibs" and o.status == 200]

    def summary(self) -> dict[str, Any]:
        latencies = sorted(o.latency for o in self.outcomes if o.status)
        out: dict[str, Any] = {
            "requests": self.counts["requests"],
            "answered": self.counts["answered"],
            "unanswered": self.counts["unanswered"],
            "server_errors": self.counts["server_errors"],
            "unexpected_status": self.counts["unexpected"],
            "over_100ms": self.counts["over_100ms"],
            "max_ms": round(self.slowest * 1000, 1),
        }
        if latencies:
            out["p50_ms"] = round(latencies[len(latencies) // 2] * 1000, 1)
            out["p99_ms"] = round(latencies[int(len(latencies) * 0.99)] * 1000, 1)
        statuses = Counter(f"{o.kind} {o.status or o.error}" for o in self.outcomes)
        out["by_status"] = dict(sorted(statuses.items()))
        return out


@contextlib.asynccontextmanager
async def loading(load: Load) -> AsyncIterator[Load]:
    task = asyncio.create_task(load.run())
    await asyncio.sleep(0)
    try:
        yield load
    finally:
        load.stop.set()
        await task


# --- the drills ----------------------------------------------------------------------


async def outage(
    workdir: Path,
    seconds: float = 10.0,
    rate: float = 300.0,
    *,
    warm_s: float = 3.0,
    after_s: float = 5.0,
    buffer_max: int | None = None,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Redis stopped for `seconds` under load, then started again (SPEC §14)."""
    valkey = Valkey(workdir / "valkey", free_port())
    valkey.start()
    try:
        config = service_config(workdir / "data", valkey.url, buffer_max=buffer_max)
        with running(pixelsync(workdir, "outage", config), _quiet) as server:
            url = f"http://{HOST}:{server.port}"
            load = Load(url, rate)
            readyz: list[int] = []
            async with loading(load), httpx.AsyncClient() as probe:
                await asyncio.sleep(warm_s)
                log(f"stopping Valkey for {seconds:.0f} s")
                valkey.stop()
                down_at = load.now()
                while load.now() < down_at + seconds:
                    readyz.append((await ready(probe, url))[0])
                    await asyncio.sleep(0.5)
                valkey.start()
                up_at = load.now()
                log("Valkey started again")
                await asyncio.sleep(after_s)
            drain_s = await drained(url)
            overflow = await metric(url, "pixelsync_write_buffer_overflow_total")
            acked = load.acked()
            found = await present(valkey.url, [o.uid for o in acked])
            during = [o for o in acked if down_at <= o.sent < up_at]
            report = {
                "drill": "outage",
                "outage_s": round(up_at - down_at, 2),
                "rate": rate,
                **load.summary(),
                "outage_over_100ms": sum(
                    1 for o in load.outcomes if down_at <= o.sent < up_at and o.latency > 0.1
                ),
                "readyz_during_outage": dict(Counter(readyz)),
                "mappings_received": len(acked),
                "mappings_received_during_outage": len(during),
                "mappings_present": len(found),
                "mappings_missing": len(acked) - len(found),
                "overflow": overflow,
                "overflow_logged": "write buffer full" in server.log_path.read_text(),
                "drained_s": None if drain_s is None else round(drain_s, 2),
            }
    finally:
        valkey.stop()
    return report


def _missing_window(acked: list[Outcome], found: set[str], at: float) -> dict[str, Any]:
    missing = [o for o in acked if o.uid not in found]
    return {
        "mappings_acknowledged": len(acked),
        "mappings_missing": len(missing),
        # How long before the kill the oldest missing write was answered.
        "missing_window_ms": round((at - min(o.sent + o.latency for o in missing)) * 1000, 1)
        if missing
        else 0.0,
    }


async def crash_valkey(
    workdir: Path, rate: float = 300.0, *, before_s: float = 3.0, after_s: float = 4.0
) -> dict[str, Any]:
    """kill -9 the embedded Valkey of `pixelsync serve` under write load: it is started
    again on its append-only file, and the service's buffered writes are replayed."""
    with running(
        pixelsync(workdir, "crash-valkey", service_config(workdir / "data")), _quiet
    ) as server:
        url = f"http://{HOST}:{server.port}"
        assert server._process is not None
        pids = children(server._process.pid, "valkey-server")
        if len(pids) != 1:
            raise RuntimeError(f"expected one embedded valkey-server, found {pids}")
        load = Load(url, rate, mix=("ibs",))
        async with loading(load):
            await asyncio.sleep(before_s)
            os.kill(pids[0], signal.SIGKILL)
            killed_at = load.now()
            async with httpx.AsyncClient() as probe:
                while (await ready(probe, url))[0] != 200 and load.now() < killed_at + 30:
                    await asyncio.sleep(0.05)
            back_s = load.now() - killed_at
            await asyncio.sleep(after_s)
        drain_s = await drained(url)
        acked = load.acked()
        redis_url = (workdir / "data" / "valkey" / "url").read_text().strip()
        found = await present(redis_url, [o.uid for o in acked])
        restarted = children(server._process.pid, "valkey-server")
        return {
            "drill": "crash_valkey",
            "rate": rate,
            **load.summary(),
            "valkey_restarted": bool(restarted) and restarted != pids,
            "ready_again_s": round(back_s, 2),
            "drained_s": None if drain_s is None else round(drain_s, 2),
            **_missing_window(acked, found, killed_at),
        }


async def crash_service(
    workdir: Path, rate: float = 300.0, *, before_s: float = 3.0
) -> dict[str, Any]:
    """kill -9 the service under write load, then start it again (its Valkey lives on)."""
    valkey = Valkey(workdir / "valkey", free_port())
    valkey.start()
    try:
        config = service_config(workdir / "data", valkey.url)
        server = pixelsync(workdir, "crash-service", config)
        server.start()
        load = Load(f"http://{HOST}:{server.port}", rate, mix=("ibs",))
        try:
            async with loading(load):
                await asyncio.sleep(before_s)
                assert server._process is not None
                os.killpg(server._process.pid, signal.SIGKILL)
                killed_at = load.now()
                await asyncio.sleep(0.5)
        finally:
            server.stop()
        with running(pixelsync(workdir, "crash-service-again", config), _quiet):
            acked = load.acked()
            found = await present(valkey.url, [o.uid for o in acked])
    finally:
        valkey.stop()
    return {
        "drill": "crash_service",
        "rate": rate,
        **load.summary(),
        **_missing_window(acked, found, killed_at),
    }


async def shutdown(workdir: Path, rate: float = 300.0, *, before_s: float = 3.0) -> dict[str, Any]:
    """SIGTERM under load, with slow requests in flight (real-time calls of 50 ms): every
    request the service took is answered, every answered write is stored, exit code 0.
    A request it did not take (refused or reset once it stopped accepting) must have
    stored nothing."""
    partner = Server(
        "partner",
        [sys.executable, "-m", "bench.partner", str(port := free_port()), "50"],
        port,
        workdir / "partner.log",
    )
    valkey = Valkey(workdir / "valkey", free_port())
    valkey.start()
    try:
        with running(partner, _quiet):
            config = service_config(workdir / "data", valkey.url, realtime_port=partner.port)
            server = pixelsync(workdir, "shutdown", config)
            server.start()
            url = f"http://{HOST}:{server.port}"
            load = Load(url, rate, mix=("event", "ibs"), keepalive=False)
            await _map_to(url, load, RT_DPID)
            try:
                async with loading(load):
                    await asyncio.sleep(before_s)
                    assert server._process is not None
                    process = server._process
                    process.send_signal(signal.SIGTERM)
                    stopped_at = load.now()
                    while process.poll() is None and load.now() < stopped_at + 30:
                        await asyncio.sleep(0.05)
                    stop_s = load.now() - stopped_at
                    await asyncio.sleep(0.3)
                exit_code = process.returncode
            finally:
                server.stop()
        ibs = [o for o in load.outcomes if o.kind == "ibs"]
        found = await present(valkey.url, [o.uid for o in ibs])
    finally:
        valkey.stop()
    answered_lost = [o for o in ibs if o.status == 200 and o.uid not in found]
    failed_taken = [o for o in ibs if o.status != 200 and o.uid in found]
    before = [o for o in load.outcomes if o.sent + o.latency < stopped_at]
    return {
        "drill": "shutdown",
        "rate": rate,
        **load.summary(),
        "exit_code": exit_code,
        "stop_s": round(stop_s, 2),
        "answered_before_sigterm": len(before),
        "in_flight_at_sigterm": sum(
            1 for o in load.outcomes if o.sent < stopped_at < o.sent + o.latency
        ),
        "in_flight_failed": sum(
            1
            for o in load.outcomes
            if o.sent < stopped_at < o.sent + o.latency and o.status != EXPECTED[o.kind]
        ),
        "answered_writes_missing": len(answered_lost),
        "failed_requests_that_stored": len(failed_taken),
    }


async def _map_to(url: str, load: Load, dpid: int) -> None:
    """Map the load's returning visitors to a partner, as its ID syncs would."""
    async with httpx.AsyncClient() as client:
        for uuid, cookie in zip(load.visitors, load._cookies, strict=True):
            r = await client.get(
                f"{url}/ibs?dpid={dpid}&dpuuid=rt-{uuid[:16]}", headers={"cookie": cookie}
            )
            r.raise_for_status()
    if await drained(url) is None:
        raise RuntimeError("the mappings of the returning visitors were not written")


async def cluster_restart(
    workdir: Path,
    seconds: float = 5.0,
    rate: float = 300.0,
    *,
    warm_s: float = 3.0,
    node_timeout_ms: int = 2000,
    log: Log = _quiet,
) -> dict[str, Any]:
    """One of three Cluster nodes killed and started again under load."""
    cluster = Cluster.create(workdir / "cluster", durable=True, node_timeout_ms=node_timeout_ms)
    try:
        config = service_config(workdir / "data", cluster.url, cluster=True)
        with running(pixelsync(workdir, "cluster", config), _quiet) as server:
            url = f"http://{HOST}:{server.port}"
            load = Load(url, rate)
            async with loading(load), httpx.AsyncClient() as probe:
                await asyncio.sleep(warm_s)
                node = cluster.nodes[1]
                log(f"killing node {node.port} for {seconds:.0f} s")
                node.stop(signal.SIGKILL)
                down_at = load.now()
                await asyncio.sleep(seconds)
                node.start()
                up_at = load.now()
                while load.now() < up_at + 60:
                    status, buffered = await ready(probe, url)
                    if status == 200 and buffered == 0 and cluster.ok():
                        break
                    await asyncio.sleep(0.1)
                recovered_s = load.now() - up_at
                await asyncio.sleep(2.0)
            drain_s = await drained(url)
            acked = load.acked()
            found = await present(cluster.url, [o.uid for o in acked], cluster=True)
            errors_after = sum(
                1
                for o in load.outcomes
                if o.sent > up_at + recovered_s and o.status != EXPECTED[o.kind]
            )
            report = {
                "drill": "cluster_restart",
                "rate": rate,
                "node_down_s": round(up_at - down_at, 2),
                "cluster_node_timeout_ms": node_timeout_ms,
                **load.summary(),
                "recovered_s": round(recovered_s, 2),
                "errors_after_recovery": errors_after,
                "drained_s": None if drain_s is None else round(drain_s, 2),
                "mappings_received": len(acked),
                "mappings_present": len(found),
                "mappings_missing": len(acked) - len(found),
                "write_failures": await metric(url, "pixelsync_write_failures_total"),
                "overflow": await metric(url, "pixelsync_write_buffer_overflow_total"),
            }
    finally:
        cluster.stop()
    return report


async def soak(
    workdir: Path,
    seconds: float = 600.0,
    rate: float = 300.0,
    *,
    warmup: float = 0.2,
    sample_s: float = 1.0,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Mixed load on one worker with its embedded Valkey, as `make run` serves: RSS after
    warm-up against RSS at the end, and every answer checked."""
    config = service_config(workdir / "data", qualify=True)
    with running(pixelsync(workdir, "soak", config), _quiet) as server:
        url = f"http://{HOST}:{server.port}"
        assert server._process is not None
        pid = server._process.pid
        mix = ("event", "ibs", "qualify", "event", "dest5", "event", "ibs", "qualify", "lookup")
        load = Load(url, rate, mix=mix, keep=False)
        samples: list[tuple[float, int]] = []
        async with loading(load):
            while load.now() < seconds:
                samples.append((load.now(), rss_bytes(pid)))
                if len(samples) % 60 == 0:
                    log(f"{load.now():.0f} s: RSS {samples[-1][1] / 2**20:.1f} MiB, {load.counts}")
                await asyncio.sleep(sample_s)
        warm = [rss for t, rss in samples if t >= seconds * warmup]
        base, last = warm[0], samples[-1][1]
        return {
            "drill": "soak",
            "seconds": seconds,
            "rate": rate,
            **load.summary(),
            "rss_after_warmup_mib": round(base / 2**20, 1),
            "rss_end_mib": round(last / 2**20, 1),
            "rss_max_mib": round(max(rss for _, rss in samples) / 2**20, 1),
            "rss_growth": round(last / base - 1, 4),
        }


# --- command line --------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("drill", choices=("outage", "crash", "shutdown", "cluster", "soak"))
    parser.add_argument("--seconds", type=float, help="outage / node down / soak length")
    parser.add_argument("--rate", type=float, default=300.0, help="requests per second")
    return parser


async def _drill(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    match args.drill:
        case "outage":
            return [await outage(workdir, args.seconds or 10.0, args.rate, log=log)]
        case "crash":
            return [
                await crash_valkey(workdir / "valkey", args.rate),
                await crash_service(workdir / "service", args.rate),
            ]
        case "shutdown":
            return [await shutdown(workdir, args.rate)]
        case "cluster":
            return [await cluster_restart(workdir, args.seconds or 5.0, args.rate, log=log)]
        case _:
            return [await soak(workdir, args.seconds or 600.0, args.rate, log=log)]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pixelsync-faults-") as tmp:
        for sub in ("valkey", "service"):
            (Path(tmp) / sub).mkdir()
        reports = asyncio.run(_drill(args, Path(tmp)))
    text = json.dumps(reports if len(reports) > 1 else reports[0], indent=2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"faults-{args.drill}.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

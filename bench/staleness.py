"""Cross-process staleness (issue 17, SPEC §14): how long after a write's answer another
process sees it.

Two `pixelsync serve` processes (one worker each) share one embedded Valkey, the way two
workers or two hosts do. Process A takes the writes: a partner sync (`/ibs`) of a new uid
for a returning visitor. Process B answers the reads: `GET /v1/partners/{dpid}/users/
{dpuuid}`, asked back to back from the moment A answered until B knows the uid. The
delay is the staleness a partner sees when it syncs through one worker and looks up
through another; within A itself a read must never miss (the same lookup on A, asked
once right after the write, is counted).

Load: A serves the `ibs_cookie` request (a new mapping on every request) at half its
maximum rate, measured first, from wrk paced as in load.py, for the whole sampling.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

from .load import (
    BENCH_ADMIN,
    BENCH_DPID,
    HOST,
    PACED_CONNECTIONS,
    BenchError,
    HttpOptions,
    Progress,
    Server,
    WrkRun,
    free_port,
    qualify_config,
    run_wrk,
    running,
    visitor_cookie,
)
from .valkeys import embedded_valkey

SAMPLES: Final = 500
GIVE_UP_S: Final = 2.0  # a sample not visible by then counts as "not seen"
TARGET_P99_MS: Final = 100.0  # issue 17: visible in other processes within 100 ms at p99
_IBS_LUA: Final = (
    "counter = 0\n"
    "request = function()\n"
    "  counter = counter + 1\n"
    f'  return wrk.format(nil, string.format("/ibs:dpid={BENCH_DPID}&dpuuid=load%d-%d",'
    " math.random(1, 1000000000), counter))\n"
    "end\n"
)


def _config(workdir: Path, name: str, redis_url: str) -> Path:
    config = workdir / f"{name}.toml"
    config.write_text(
        "[server]\n"
        f"data_dir = {json.dumps(str(workdir / f'{name}-data'))}\n"
        f"redis_url = {json.dumps(redis_url)}\n"
        'secret_keys = ["bench-only-not-a-secret"]\n'
        "[[api_keys]]\n"
        'name = "bench"\n'
        f'sha256 = "{hashlib.sha256(BENCH_ADMIN.encode()).hexdigest()}"\n'
        'scopes = ["admin"]\n'
        f'[[partners]]\ndpid = {BENCH_DPID}\nname = "bench-partner"\n' + qualify_config()
    )
    return config


def _argv(config: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--config",
        str(config),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


class _Client:
    """One keep-alive connection: a sample's requests must not pay for a TCP handshake."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=5.0)

    def get(self, path: str, headers: dict[str, str]) -> int:
        self.conn.request("GET", path, headers=headers)
        response = self.conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.conn.close()


def _percentile(sorted_ms: list[float], percent: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(percent / 100 * len(sorted_ms)) - 1))
    return sorted_ms[index]


def _sample(
    writer: _Client, reader: _Client, same: _Client, cookie: str, tag: str
) -> dict[str, Any]:
    uid = f"stale-{tag}"
    if writer.get(f"/ibs:dpid={BENCH_DPID}&dpuuid={uid}", {"Cookie": cookie}) != 200:
        raise BenchError("the writer's /ibs did not answer 200")
    written = time.monotonic()
    lookup = f"/v1/partners/{BENCH_DPID}/users/{uid}"
    auth = {"Authorization": f"Bearer {BENCH_ADMIN}"}
    same_hit = same.get(lookup, auth) == 200  # the writer's own process, at once
    reads = 0
    while True:
        reads += 1
        status = reader.get(lookup, auth)
        waited = time.monotonic() - written
        if status == 200:
            return {"ms": waited * 1000, "reads": reads, "same_hit": same_hit}
        if status != 404:
            raise BenchError(f"the reader's lookup answered {status}")
        if waited > GIVE_UP_S:
            return {"ms": None, "reads": reads, "same_hit": same_hit}


def _paced_load(
    url: str, cookie: str, target_rps: float, duration_s: int, workdir: Path, result: list[WrkRun]
) -> threading.Thread:
    """wrk at `target_rps` in a thread, paced as load.py paces: a first short run
    measures the answer's share of each connection's cycle."""
    script = workdir / "stale-load.lua"
    headers = [f"Cookie: {cookie}"]
    cycle_ms = PACED_CONNECTIONS * 1000 / target_rps

    def pace(delay_ms: float) -> None:
        script.write_text(
            _IBS_LUA + f"\ndelay = function()\n  return {max(1, round(delay_ms))}\nend\n"
        )

    pace(cycle_ms)
    probe = run_wrk(url, headers, connections=PACED_CONNECTIONS, duration_s=2, script=script)
    pace(cycle_ms - max(0.0, PACED_CONNECTIONS * 1000 / max(probe.rps, 1.0) - cycle_ms))

    def run() -> None:
        result.append(
            run_wrk(
                url, headers, connections=PACED_CONNECTIONS, duration_s=duration_s, script=script
            )
        )

    thread = threading.Thread(target=run, name="stale-load", daemon=True)
    thread.start()
    return thread


def run_staleness(
    options: HttpOptions, progress: Progress, samples: int = SAMPLES
) -> dict[str, Any]:
    """The staleness distribution of `samples` writes on A read on B, under load on A."""
    workdir = Path(tempfile.mkdtemp(prefix="pixelsync-bench-stale-"))
    try:
        with embedded_valkey() as url, contextlib.ExitStack() as stack:
            ports = {"writer": free_port(), "reader": free_port()}
            for name, port in ports.items():
                server = Server(
                    name, _argv(_config(workdir, name, url), port), port, workdir / f"{name}.log"
                )
                stack.enter_context(running(server, progress))
            cookie = visitor_cookie(ports["writer"])  # the load's visitor
            # The samples' own: the load remaps its visitor thousands of times a second,
            # and a lookup only answers a uid that is still its visitor's.
            sampled = visitor_cookie(ports["writer"])
            ibs_url = f"http://{HOST}:{ports['writer']}/ibs:dpid={BENCH_DPID}&dpuuid=x"
            script = workdir / "stale-max.lua"
            script.write_text(_IBS_LUA)
            progress(f"staleness: the writer's maximum /ibs rate ({options.duration_s} s)")
            run_wrk(
                ibs_url,
                [f"Cookie: {cookie}"],
                connections=options.connections,
                duration_s=options.warmup_s,
                script=script,
            )
            peak = run_wrk(
                ibs_url,
                [f"Cookie: {cookie}"],
                connections=options.connections,
                duration_s=options.duration_s,
                script=script,
            )
            target = peak.rps / 2
            # Long enough for every sample: a sample takes a few ms; give it 10 each at most.
            load_s = max(options.duration_s, int(samples * 0.01) + 5)
            progress(f"staleness: {samples} samples under /ibs at {target:,.0f} rps (half)")
            loads: list[WrkRun] = []
            thread = _paced_load(ibs_url, cookie, target, load_s, workdir, loads)
            time.sleep(1.0)  # the load is up
            writer, reader, same = (
                _Client(ports["writer"]),
                _Client(ports["reader"]),
                _Client(ports["writer"]),
            )
            try:
                run_tag = secrets.token_hex(4)
                rows = []
                started = time.monotonic()
                for i in range(samples):
                    rows.append(_sample(writer, reader, same, sampled, f"{run_tag}-{i}"))
                    if time.monotonic() - started > load_s - 2:
                        break  # only samples taken under load count
                    time.sleep(0.005)
            finally:
                for client in (writer, reader, same):
                    client.close()
            thread.join(timeout=load_s + 40)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seen = sorted(r["ms"] for r in rows if r["ms"] is not None)
    if not seen:
        raise BenchError("staleness: no write became visible in the other process")
    load = loads[0] if loads else None
    return {
        "samples": len(rows),
        "not_seen_within_s": GIVE_UP_S,
        "not_seen": len(rows) - len(seen),
        "same_process_misses": sum(1 for r in rows if not r["same_hit"]),
        "peak_ibs_rps": round(peak.rps, 1),
        "load_target_rps": round(target, 1),
        "load_served_rps": round(load.rps, 1) if load else None,
        "load_non_2xx": load.non_2xx_3xx if load else None,
        "ms": {
            "min": round(seen[0], 3),
            "p50": round(statistics.median(seen), 3),
            "p90": round(_percentile(seen, 90), 3),
            "p99": round(_percentile(seen, 99), 3),
            "max": round(seen[-1], 3),
        },
        "reads_per_sample_max": max(r["reads"] for r in rows),
    }


def staleness_markdown(section: dict[str, Any]) -> list[str]:
    ms = section["ms"]
    met = (
        "met"
        if not section["not_seen"]
        and not section["same_process_misses"]
        and ms["p99"] <= TARGET_P99_MS
        else "NOT met"
    )
    return [
        "## Staleness — a write on one process, read on another (issue 17, SPEC §14)",
        "",
        f"{section['samples']} `/ibs` writes on process A, each looked up back to back on "
        f"process B until found, while A serves `/ibs` at {section['load_target_rps']:,.0f} "
        f"rps (half its maximum of {section['peak_ibs_rps']:,.0f}; served "
        f"{section['load_served_rps'] or 0:,.0f}).",
        "",
        "| min | p50 | p90 | p99 | max | not seen within "
        f"{section['not_seen_within_s']:.0f} s | same-process misses |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {ms['min']:.2f} ms | {ms['p50']:.2f} ms | {ms['p90']:.2f} ms | {ms['p99']:.2f} ms "
        f"| {ms['max']:.2f} ms | {section['not_seen']} | {section['same_process_misses']} |",
        "",
        f"- Target: visible in another process within {TARGET_P99_MS:.0f} ms at p99, and "
        f"never a miss in the writing process: {met}.",
    ]

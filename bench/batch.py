"""Batch jobs: `pixelsync import` lines/s against the raw pipelined HSET rate of the same
client in the same run, `pixelsync export` lines/s, and the peak RSS of each job for
two file sizes (it must not grow with the file).

Each job runs as the real command, in a child process that reports its own peak RSS,
against a dedicated embedded Valkey the harness starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from service.store import EmbeddedValkey, KeySchema, Retention, Store, connect

DPID: Final = 4242
DESTINATION: Final = 42
CHUNK: Final = 2000


def _config(data_dir: Path, url: str) -> str:
    return f"""
[server]
data_dir = "{data_dir}"
redis_url = "{url}"
secret_keys = ["bench-only"]

[[partners]]
dpid = {DPID}
name = "file partner"

[[traits]]
sid = 300
name = "bought"
type = "onboarded"
data_source = {DPID}

[[segments]]
sid = 800
name = "buyers"
rule = "300T"

[[destinations]]
id = {DESTINATION}
name = "daily"
type = "file"
partner = {DPID}
mappings = {{ "800" = "buyers" }}
"""


# Runs `python -m service ...` and, at exit, prints the process's own peak RSS (VmHWM,
# which starts afresh at exec). rusage's ru_maxrss would not do: Linux carries it over
# exec, so it shows the bench process's own size at fork, not the job's.
_WITH_PEAK: Final = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            print('PEAK_RSS_KIB', line.split()[1], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv = ['pixelsync', *sys.argv[1:]]\n"
    "runpy.run_module('service', run_name='__main__')\n"
)


def _child(args: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stdout) of `pixelsync <args>`."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _WITH_PEAK, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pixelsync {args[0]} failed: {done.stderr[-2000:]}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KIB ")]
    return elapsed, int(peak[-1].split()[1]) if peak else 0, done.stdout


async def _map_visitors(url: str, n: int) -> tuple[list[str], float]:
    """n visitors mapped to the partner; answers their uids and the raw HSET rate of the
    same client (pipelined, CHUNK per round trip), measured on the same data."""
    client = connect(url, cluster=False)
    await client.execute_command("FLUSHDB", "SYNC")
    store = Store(client, KeySchema(65536), Retention(180, {}, 90), write_url=url, buffer_max=10**7)
    await store.start()
    uids = [f"b{i}-{secrets.token_hex(6)}" for i in range(n)]
    day = int(time.time() // 86400)
    for uid in uids:
        store.put_mapping(f"{secrets.randbelow(10**38):038d}", DPID, uid, day)
        if store.buffered > 50_000:
            await store.drain()
    await store.drain()
    started = time.perf_counter()
    for start in range(0, n, CHUNK):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + CHUNK, n)):
            pipe.hset(b"bench:hset:{%d}" % (i % 1024), uids[i].encode(), b"x" * 20)
        await pipe.execute()
    hset_rate = n / (time.perf_counter() - started)
    for b in range(1024):
        await client.delete(b"bench:hset:{%d}" % b)
    await store.close()
    return uids, hset_rate


def run_batch(sizes: tuple[int, ...] = (100_000, 1_000_000)) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="pixelsync-bench-batch-") as tmp:
        work = Path(tmp)
        valkey = EmbeddedValkey(work / "valkey")
        url = valkey.start()
        try:
            config = work / "pixelsync.toml"
            config.write_text(_config(work / "data", url))
            env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELSYNC_")}
            env.pop("REDIS_URL", None)
            for n in sizes:
                print(f"batch: {n:,} lines", file=sys.stderr, flush=True)
                uids, hset_rate = asyncio.run(_map_visitors(url, n))
                inbound = work / f"ftp_dpm_{DPID}_{int(time.time()) + n}.sync"
                with inbound.open("w") as fh:
                    for uid in uids:
                        fh.write(f"{uid}\t300\n")
                del uids
                seconds, rss, out = _child(["import", "--config", str(config), str(inbound)], env)
                receipt = json.loads(out.strip().splitlines()[-1])
                if receipt["records_processed"] != n:
                    raise RuntimeError(f"import processed {receipt['records_processed']} of {n}")
                e_seconds, e_rss, e_out = _child(
                    ["export", "--config", str(config), "--destination", str(DESTINATION),
                     "--mode", "full", "--out", str(work / f"out-{n}")],
                    env,
                )  # fmt: skip
                exported = json.loads(e_out.strip().splitlines()[-1])
                if exported["lines"] != n:
                    raise RuntimeError(f"export wrote {exported['lines']} lines of {n}")
                rows.append(
                    {
                        "lines": n,
                        "import_lines_per_s": round(n / seconds),
                        "hset_per_s": round(hset_rate),
                        "import_ratio_to_hset": round(n / seconds / hset_rate, 3),
                        "import_peak_rss_mib": round(rss / 1024, 1),
                        "export_lines_per_s": round(n / e_seconds),
                        "export_peak_rss_mib": round(e_rss / 1024, 1),
                    }
                )
                inbound.unlink()
        finally:
            valkey.stop()
    return {"rows": rows}

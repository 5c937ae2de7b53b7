"""Requests per second and latency with wrk: pixelsync's /event against a bare GIF server.

For each worker count, a bare server (bench.bare) and a pixelsync server (fresh embedded
Valkey in a temporary data_dir) run side by side on free 127.0.0.1 ports. Every scenario
gets a short warm-up, then the repetitions are interleaved (rep 1 of every scenario, then
rep 2, ...) so that a slow drift of the machine hits every scenario alike. Only one server
is under load at a time; the idle one costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
HOST: Final = "127.0.0.1"
WRK_THREADS: Final = 1  # 2-core machines: wrk, the server and Valkey share the cores
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 20.0  # pixelsync serve allows 10 s of graceful shutdown
PROBE_TIMEOUT_S: Final = 5.0

Progress = Callable[[str], None]


class BenchError(Exception):
    """The benchmark could not run or measured something it should not have."""


WRK_MISSING: Final = (
    "wrk is not installed: install it with `apt-get install wrk` "
    "(`make bench` does that when it can)"
)


BENCH_DPID: Final = 1000
LOOKUP_UIDS: Final = 100
BENCH_ADMIN: Final = "bench-admin-not-a-secret"
NGINX: Final = shutil.which("nginx") or (
    "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
)


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # "bare" | "starlette" | "pixelsync" | "realtime" (with real-time partners)
    path: str
    cookie: bool  # send the returning visitor's Cookie header
    answer: str  # expected content type: "gif" | "json"
    lua: str = ""  # a wrk script that makes each request (e.g. a new partner uid each)
    visitors: int = 0  # >0: each request sends the cookie of one of this many visitors
    syncs: tuple[int, ...] = ()  # dpids each of those visitors is mapped to beforehand
    lookup: int = 0  # >0: POST the /v1 bulk lookup of the `visitors`' uids at this dpid


# /event with 100 rule traits and 50 segments configured; the signals match 5 traits
# (and make 20 more rules look at a present key that does not match).
QUALIFY_SIGNALS: Final = "c_a=1&c_b=2&c_c=3&c_d=4&c_e=5&c_section=news"
_RANDOM_VISITOR: Final = (
    "request = function()\n"
    "  local c = cookies[math.random(#cookies)]\n"
    '  return wrk.format(nil, "{path}", {{["Cookie"] = c}})\n'
    "end\n"
)


def _mapped_visitors(
    name: str, path: str, visitors: int, dpids: tuple[int, ...], server: str
) -> Scenario:
    """GIF requests from `visitors` returning visitors at random, each mapped to `dpids`."""
    lua = _RANDOM_VISITOR.format(path=path)
    return Scenario(name, server, path, True, "gif", lua=lua, visitors=visitors, syncs=dpids)


# The bare server gets the very request event_gif_cookie sends: the ratio then measures
# what pixelsync does with it, not a difference in what goes over the wire.
SCENARIOS: Final = (
    Scenario("bare_gif", "bare", "/event?c_section=sports&c_price=12", True, "gif"),
    # The same on uvicorn's own httptools protocol (two sends per answer), for reference.
    Scenario("bare_gif_stock", "bare_stock", "/event?c_section=sports&c_price=12", True, "gif"),
    Scenario("bare_starlette", "starlette", "/event?c_section=sports&c_price=12", True, "gif"),
    Scenario("event_gif_cookie", "pixelsync", "/event?c_section=sports&c_price=12", True, "gif"),
    Scenario("event_gif_new", "pixelsync", "/event?c_section=sports&c_price=12", False, "gif"),
    Scenario("event_json", "pixelsync", "/event?d_rtbd=json&c_section=sports", True, "json"),
    # A partner sync that stores a new mapping, both directions, on every request.
    Scenario(
        "ibs_cookie",
        "pixelsync",
        f"/ibs:dpid={BENCH_DPID}&dpuuid=bench-check",
        True,
        "gif",
        lua=(
            "counter = 0\n"
            "request = function()\n"
            "  counter = counter + 1\n"
            f'  return wrk.format(nil, string.format("/ibs:dpid={BENCH_DPID}&dpuuid=u%d-%d",'
            " math.random(1, 1000000000), counter))\n"
            "end\n"
        ),
    ),
    # The same /event for visitors mapped to two real-time partners that answer in 5 ms,
    # and for visitors mapped to two partners without real-time calls.
    _mapped_visitors("event_rt_off", "/event?c_page=home", 200, (2001, 2002), "pixelsync"),
    _mapped_visitors("event_realtime", "/event?c_page=home", 200, (2001, 2002), "realtime"),
    # nginx's empty_gif with its userid module: the issue 8 ceiling for a cookie-setting
    # pixel (the same request as bare_gif; nginx sets its own uid cookie).
    Scenario("nginx_userid", "nginx", "/event?c_section=sports&c_price=12", True, "gif"),
    # The sync iframe of a returning visitor (its due partner syncs, as images).
    Scenario("dest5_html", "pixelsync", "/dest5.html", True, "html"),
    # The match-table API: 100 partner uids per POST, all of mapped visitors.
    Scenario(
        "v1_lookup",
        "pixelsync",
        "/v1/partners/2001/lookup",
        False,
        "json",
        visitors=LOOKUP_UIDS,
        lookup=2001,
    ),
    Scenario(
        "event_qualify",
        "pixelsync",
        f"/event?{QUALIFY_SIGNALS}",
        True,
        "gif",
        lua=_RANDOM_VISITOR.format(path=f"/event?{QUALIFY_SIGNALS}"),
        visitors=1000,
    ),
)
QUALIFY_TRAITS: Final = 100
QUALIFY_SEGMENTS: Final = 50


def qualify_config() -> str:
    """The [[traits]] and [[segments]] of the event_qualify scenario."""
    rules = [f'c_{k} == "{v}"' for k, v in zip("abcde", "12345", strict=True)]  # the 5 hits
    rules += [f'c_{"abcde"[i % 5]} == "x{i}"' for i in range(20)]  # present key, no match
    rules += [f'c_k{i} == "v{i}" OR c_n{i} > {i}' for i in range(QUALIFY_TRAITS - len(rules))]
    text = "".join(
        f"[[traits]]\nsid = {1000 + i}\nname = \"t{i}\"\nrule = '{rule}'\n"
        for i, rule in enumerate(rules)
    )
    shapes = ("{a}T AND {b}T", "{a}T OR NOT {b}T", "FREQUENCY([{a}T, {b}T] <= 7D) >= 3",
              "RECENCY([{a}T]) <= 3D AND {b}T", "({a}T OR {b}T) AND NOT {c}T")  # fmt: skip
    for i in range(QUALIFY_SEGMENTS):
        a, b, c = 1000 + i % QUALIFY_TRAITS, 1000 + (i * 7 + 3) % QUALIFY_TRAITS, 1000 + i % 5
        rule = shapes[i % len(shapes)].format(a=a, b=b, c=c)
        text += f'[[segments]]\nsid = {5000 + i}\nname = "s{i}"\nrule = "{rule}"\n'
    return text


CEILING: Final = "bare_gif"  # raw ASGI on uvicorn: the strictest ceiling
STARLETTE_CEILING: Final = "bare_starlette"  # the ceiling the issues' ratios refer to
# Latency at a fixed, lower rate: each of these scenarios again at this fraction of
# its median rate (wrk cannot pace; each connection waits between its requests).
# name -> (fraction, the scenario whose median rate it is a fraction of)
PACED: Final = {
    "ibs_cookie": (0.5, "ibs_cookie"),
    # The real-time calls' added latency: both at the same rate, below saturation.
    "event_rt_off": (0.5, "event_realtime"),
    "event_realtime": (0.5, "event_realtime"),
}
PACED_CONNECTIONS: Final = 16


@dataclass(frozen=True)
class HttpOptions:
    workers: tuple[int, ...] = (1, 2)
    connections: int = 32
    duration_s: int = 10
    warmup_s: int = 2
    reps: int = 3
    only: frozenset[str] = frozenset()  # scenario names; empty: all
    servers: tuple[str, ...] = ("uvicorn",)  # pixelsync serve --server, and the ceilings'

    def chosen(self) -> list[Scenario]:
        """The scenarios to run: those asked for, the ceilings, and the scenarios whose
        rate a paced one asked for is a fraction of."""
        wanted = {s.name for s in SCENARIOS}
        if self.only:
            wanted = {CEILING, STARLETTE_CEILING, *self.only}
            wanted |= {PACED[name][1] for name in self.only if name in PACED}
        return [s for s in SCENARIOS if s.name in wanted and (s.server != "nginx" or NGINX)]


@dataclass(frozen=True)
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int


# --- wrk ---------------------------------------------------------------------------------

_UNIT_MS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_NUMBER: Final = r"([\d.]+)(us|ms|s|m|h)"


def _percentile_ms(text: str, percent: int) -> float:
    found = re.search(rf"^\s*{percent}%\s+{_NUMBER}\s*$", text, re.MULTILINE)
    if found is None:
        raise BenchError(f"no {percent}% latency in wrk output (was --latency given?)")
    return float(found[1]) * _UNIT_MS[found[2]]


def parse_wrk(text: str) -> WrkRun:
    """The figures of one `wrk --latency` report."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    requests = re.search(r"^\s*(\d+) requests in ", text, re.MULTILINE)
    if rps is None or requests is None:
        raise BenchError(f"unreadable wrk output:\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return WrkRun(
        rps=float(rps[1]),
        p50_ms=_percentile_ms(text, 50),
        p99_ms=_percentile_ms(text, 99),
        requests=int(requests[1]),
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )


def _run(argv: Sequence[str], timeout_s: float) -> str:
    """Run a command in its own session and return its output; the group dies on timeout."""
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{argv[0]} did not finish within {timeout_s:.0f} s") from exc
    finally:
        if process.poll() is None:
            _kill_group(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    if process.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with {process.returncode}:\n{output}")
    return output


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError(WRK_MISSING)
    return path


def wrk_version() -> str:
    # `wrk -v` prints its version and usage, and exits 1.
    result = subprocess.run(
        [require_wrk(), "-v"], capture_output=True, text=True, timeout=10, check=False
    )
    first = (result.stdout or result.stderr).splitlines()[0]
    return first.split(" Copyright", 1)[0].strip()


def run_wrk(
    url: str,
    headers: Sequence[str],
    *,
    connections: int,
    duration_s: int,
    script: Path | None = None,
) -> WrkRun:
    argv = [require_wrk(), f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration_s}s"]
    argv += ["--latency", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    return parse_wrk(_run(argv, timeout_s=duration_s + 30))


# --- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # nothing left in the group
        os.killpg(pgid, sig)


def _get(
    port: int, path: str, headers: dict[str, str], timeout_s: float, body: bytes | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    """GET, or POST when there is a body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("GET" if body is None else "POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


def _child_env() -> dict[str, str]:
    # Never let an inherited Redis URL or config point the bench at someone's data.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELSYNC_")}
    for key in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(key, None)
    return env


class Server:
    """A server child process in its own session; stop() ends its whole process group."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self.left_behind: list[str] = []  # still running in its group after it exited

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self._process.returncode}" + self.tail()
                )
            try:
                if _get(self.port, "/healthz", {}, timeout_s=1.0)[0].status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise BenchError(f"{self.name} not healthy within {START_TIMEOUT_S:.0f} s" + self.tail())

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n  " + "\n  ".join(text) if text else ""

    def stop(self) -> None:
        """SIGTERM the leader, wait for it, then end whatever it left in its group."""
        process, self._process = self._process, None
        if process is None:
            return
        pgid = process.pid  # start_new_session: the leader's pid is the group id
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    _kill_group(pgid, signal.SIGKILL)
                    process.wait(timeout=5)
        finally:
            # Helpers such as multiprocessing's resource tracker leave on their own, shortly.
            if not _wait_group_empty(pgid, 3.0):
                self.left_behind = _group_members(pgid)
                _kill_group(pgid, signal.SIGTERM)
                if not _wait_group_empty(pgid, 5.0):
                    _kill_group(pgid, signal.SIGKILL)


@dataclass(frozen=True)
class Proc:
    pid: int
    name: str
    ppid: int
    pgid: int


def live_processes() -> Iterator[Proc]:
    """The processes of this machine that are not zombies, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name, rest = stat[stat.find("(") + 1 : stat.rfind(")")], stat[stat.rfind(")") + 2 :]
        state, ppid, group = rest.split()[:3]
        if state != "Z":
            yield Proc(int(entry.name), name, int(ppid), int(group))


def _group_members(pgid: int) -> list[str]:
    """The live processes of a process group, by name."""
    return [p.name for p in live_processes() if p.pgid == pgid]


def _wait_group_empty(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _bare_argv(
    port: int, workers: int, app: str = "bench.bare:app", server: str = "uvicorn"
) -> list[str]:
    if server == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "asgi", "--host", HOST,
            "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--no-ws",
            "--log-level", "warning", app,
        ]  # fmt: skip
    stock = ["--stock"] if server == "uvicorn-stock" else []
    return [sys.executable, "-m", "bench.bare", str(port), str(workers), app, *stock]


def _nginx_argv(port: int, workers: int, workdir: Path) -> list[str]:
    """nginx serving empty_gif with userid on, its files in `workdir`/nginx."""
    root = workdir / "nginx"
    root.mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    temp = "".join(
        f"  {kind}_temp_path {root / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"worker_processes {workers};\ndaemon off;\npid {root / 'nginx.pid'};\n"
        "error_log stderr warn;\nevents { worker_connections 1024; }\n"
        "http {\n  access_log off;\n" + temp + "  server {\n"
        f"    listen {HOST}:{port};\n"
        "    location = /healthz { return 200; }\n"
        "    location / { userid on; userid_name uid; userid_expires 365d; "
        "userid_path /; empty_gif; }\n"
        "  }\n}\n"
    )
    return [str(NGINX), "-p", str(root), "-c", str(conf)]


def realtime_config(partner_port: int | None) -> str:
    """Partners 2001 and 2002; with a port, they are real-time partners answering at
    bench.partner (no cache: every /event calls them; no breaker: a
    partner slowed down by the full-rate runs on these shared cores must not be left
    out of the paced run that measures the added latency)."""
    text = "[realtime]\ncache_s = 0\nbreaker_failures = 1000000000\n"
    text += '[[traits]]\nsid = 9001\nname = "real-time abc"\ntype = "onboarded"\n'
    for dpid in (2001, 2002):
        text += f'[[partners]]\ndpid = {dpid}\nname = "p{dpid}"\n'
        if partner_port is not None:
            text += (
                f'realtime_url = "http://{HOST}:{partner_port}/rt?u=${{DP_UUID}}"\n'
                'realtime_traits = { "abc" = 9001 }\n'
            )
    return text


def _pixelsync_argv(
    port: int,
    workers: int,
    workdir: Path,
    partner_port: int | None,
    name: str = "pixelsync",
    server: str = "uvicorn",
) -> list[str]:
    """`partner_port`: a server whose partners 2001 and 2002 make real-time calls
    (configured on its own: every /event of a known visitor then reads its mappings)."""
    config = workdir / f"{name}-bench.toml"
    data_dir = workdir / f"{name}-data"
    config.write_text(
        "[server]\n"
        f"data_dir = {json.dumps(str(data_dir))}\n"
        'secret_keys = ["bench-only-not-a-secret"]\n'
        "[[api_keys]]\n"
        'name = "bench"\n'
        f'sha256 = "{hashlib.sha256(BENCH_ADMIN.encode()).hexdigest()}"\n'
        'scopes = ["admin"]\n'
        f'[[partners]]\ndpid = {BENCH_DPID}\nname = "bench-partner"\n'
        + realtime_config(partner_port)
        + qualify_config()
    )
    return [
        sys.executable, "-m", "service", "serve", "--config", str(config),
        "--host", HOST, "--port", str(port), "--workers", str(workers), "--server", server,
    ]  # fmt: skip


@contextlib.contextmanager
def running(server: Server, progress: Progress) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.left_behind:
            progress(
                f"note: {server.name} exited but left {', '.join(server.left_behind)} "
                "running in its process group; the harness ended it"
            )


# --- scenarios ---------------------------------------------------------------------------


def visitor_cookie(port: int) -> str:
    """A returning visitor's `name=value`, from the Set-Cookie of a first request."""
    response, _ = _get(port, "/event", {}, PROBE_TIMEOUT_S)
    set_cookie = response.getheader("set-cookie")
    if response.status != 200 or not set_cookie:
        raise BenchError(f"/event answered {response.status} without a visitor cookie")
    return set_cookie.split(";", 1)[0].strip()


def map_visitor(port: int, cookie: str, dpids: Sequence[int]) -> None:
    """Map the visitor to these partners, as their ID syncs would."""
    for dpid in dpids:
        path = f"/ibs:dpid={dpid}&dpuuid=bench-{dpid}-{_uuid_of(cookie)[:12]}"
        response, _ = _get(port, path, {"Cookie": cookie}, PROBE_TIMEOUT_S)
        if response.status != 200:
            raise BenchError(f"{path} answered {response.status}")


def _uuid_of(cookie: str) -> str:
    return cookie.split("=", 1)[1].split(".", 1)[0]


_LOOKUP_HEADERS: Final = {
    "Content-Type": "application/json",
    "Authorization": f"Bearer {BENCH_ADMIN}",
}


def _lookup_body(scenario: Scenario, port: int) -> bytes:
    """{"dpuuids": [...]}: the uids of `visitors` new visitors mapped to the partner."""
    uids = []
    for _ in range(scenario.visitors):
        cookie = visitor_cookie(port)
        map_visitor(port, cookie, (scenario.lookup,))
        uids.append(f"bench-{scenario.lookup}-{_uuid_of(cookie)[:12]}")
    return json.dumps({"dpuuids": uids}).encode()


def _check(
    scenario: Scenario, port: int, headers: dict[str, str], request_body: bytes | None = None
) -> None:
    """One request by hand: the load must be the request the scenario means to measure."""
    response, body = _get(port, scenario.path, headers, PROBE_TIMEOUT_S, request_body)
    problem = ""
    content_type = response.getheader("content-type", "")
    if response.status != 200:
        problem = f"status {response.status}"
    elif scenario.answer == "gif" and (content_type != "image/gif" or len(body) != 43):
        problem = f"not the 43-byte GIF ({content_type}, {len(body)} bytes)"
    elif scenario.answer == "json" and not content_type.startswith("application/json"):
        problem = f"not JSON ({content_type})"
    elif scenario.answer == "html" and not content_type.startswith("text/html"):
        problem = f"not HTML ({content_type})"
    elif scenario.lookup:
        found = len(json.loads(body).get("matches", {}))
        if found != scenario.visitors:
            problem = f"{found} of {scenario.visitors} uids matched"
    elif scenario.server == "nginx":
        if not response.getheader("set-cookie", "").startswith("uid="):
            problem = "no userid cookie"
    elif scenario.server in ("pixelsync", "realtime"):
        set_cookie = response.getheader("set-cookie", "")
        answered = _uuid_of(set_cookie.split(";", 1)[0]) if "=" in set_cookie else ""
        sent = _uuid_of(headers["Cookie"]) if "Cookie" in headers else None
        if sent is not None and answered != sent:
            problem = "the visitor cookie was not recognised (a new visitor was made)"
        elif sent is None and not answered:
            problem = "no visitor cookie set for a new visitor"
        elif scenario.answer == "json" and json.loads(body).get("uuid") != answered:
            problem = "the JSON uuid is not the visitor's"
    if problem:
        raise BenchError(f"{scenario.name}: {scenario.path} answered wrong: {problem}")


def _summary(scenario: Scenario, workers: int, runs: list[WrkRun]) -> dict[str, Any]:
    return {
        "scenario": scenario.name,
        "workers": workers,
        "path": scenario.path,
        "cookie": scenario.cookie,
        "rps_median": round(statistics.median(r.rps for r in runs), 1),
        "p50_ms_median": round(statistics.median(r.p50_ms for r in runs), 3),
        "p99_ms_median": round(statistics.median(r.p99_ms for r in runs), 3),
        "non_2xx_3xx": sum(r.non_2xx_3xx for r in runs),
        "socket_errors": sum(r.socket_errors for r in runs),
        "runs": [asdict(r) for r in runs],
    }


def run_workers(
    workers: int, options: HttpOptions, progress: Progress, server: str = "uvicorn"
) -> list[dict[str, Any]]:
    """Every scenario at one worker count; rows in SCENARIOS order, with ratios to bare."""
    with (
        tempfile.TemporaryDirectory(prefix="pixelsync-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        names = ("bare", "bare_stock", "starlette", "nginx", "rtpartner", "pixelsync", "realtime")
        ports = {name: free_port() for name in names}
        argvs = {
            "bare": _bare_argv(ports["bare"], workers, server=server),
            "bare_stock": _bare_argv(
                ports["bare_stock"],
                workers,
                server="uvicorn-stock" if server == "uvicorn" else server,
            ),
            "starlette": _bare_argv(
                ports["starlette"], workers, "bench.bare:starlette_app", server
            ),
            "rtpartner": [sys.executable, "-m", "bench.partner", str(ports["rtpartner"])],
            "pixelsync": _pixelsync_argv(ports["pixelsync"], workers, workdir, None, server=server),
            "realtime": _pixelsync_argv(
                ports["realtime"], workers, workdir, ports["rtpartner"], "realtime", server
            ),
        }
        if NGINX:
            argvs["nginx"] = _nginx_argv(ports["nginx"], workers, workdir)
        for name, argv in argvs.items():
            process = Server(name, argv, ports[name], workdir / f"{name}.log")
            stack.enter_context(running(process, progress))
        cookie = visitor_cookie(ports["pixelsync"])
        requests: dict[str, tuple[str, list[str], Path | None]] = {}
        scenarios = options.chosen()
        for scenario in scenarios:
            headers = {"Cookie": cookie} if scenario.cookie else {}
            if not scenario.lookup:  # checked with its body below
                _check(scenario, ports[scenario.server], headers)
            url = f"http://{HOST}:{ports[scenario.server]}{scenario.path}"
            script = None
            if scenario.lua:
                script = workdir / f"{scenario.name}.lua"
                port = ports[scenario.server]
                cookies = [visitor_cookie(port) for _ in range(scenario.visitors)]
                for cookie_ in cookies:
                    map_visitor(port, cookie_, scenario.syncs)
                table = ",\n".join(json.dumps(c) for c in cookies)
                script.write_text(f"cookies = {{\n{table}\n}}\n" + scenario.lua)
            elif scenario.lookup:
                script = workdir / f"{scenario.name}.lua"
                body = _lookup_body(scenario, ports[scenario.server])
                _check(scenario, ports[scenario.server], _LOOKUP_HEADERS, body)
                script.write_text(
                    'wrk.method = "POST"\n'
                    f"wrk.body = {json.dumps(body.decode())}\n"
                    + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in _LOOKUP_HEADERS.items())
                )
            requests[scenario.name] = (url, [f"{k}: {v}" for k, v in headers.items()], script)
        for scenario in scenarios:
            url, header_lines, script = requests[scenario.name]
            progress(f"  workers={workers} warm-up {scenario.name} ({options.warmup_s} s)")
            run_wrk(
                url,
                header_lines,
                connections=options.connections,
                duration_s=options.warmup_s,
                script=script,
            )
        runs: dict[str, list[WrkRun]] = {s.name: [] for s in scenarios}
        for rep in range(1, options.reps + 1):
            for scenario in scenarios:
                url, header_lines, script = requests[scenario.name]
                time.sleep(0.5)  # let the previous run's connections and writes settle
                run = run_wrk(
                    url,
                    header_lines,
                    connections=options.connections,
                    duration_s=options.duration_s,
                    script=script,
                )
                runs[scenario.name].append(run)
                progress(
                    f"  workers={workers} rep {rep}/{options.reps} {scenario.name:<17} "
                    f"{run.rps:>9.0f} rps  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms"
                )
        rows = [_summary(s, workers, runs[s.name]) for s in scenarios]
        for scenario in scenarios:
            if scenario.name in PACED:
                fraction, reference = PACED[scenario.name]
                full = next(r["rps_median"] for r in rows if r["scenario"] == reference)
                rows.append(
                    _paced(
                        scenario,
                        workers,
                        full * fraction,
                        requests[scenario.name],
                        options,
                        progress,
                    )
                )
    ceilings = {
        key: next(r["rps_median"] for r in rows if r["scenario"] == name)
        for key, name in (("ratio_to_bare", CEILING), ("ratio_to_starlette", STARLETTE_CEILING))
    }
    for row in rows:
        for key, ceiling in ceilings.items():
            row[key] = round(row["rps_median"] / ceiling, 3) if ceiling else None
    return rows


def _paced(
    scenario: Scenario,
    workers: int,
    target: float,
    request: tuple[str, list[str], Path | None],
    options: HttpOptions,
    progress: Progress,
) -> dict[str, Any]:
    """The scenario again at a target rate: PACED_CONNECTIONS connections, each waiting
    between requests so that together they aim at it."""
    url, header_lines, script = request
    paced = Path(tempfile.mkdtemp(prefix="pixelsync-bench-paced-")) / "paced.lua"
    base = script.read_text() if script is not None else ""
    cycle_ms = PACED_CONNECTIONS * 1000 / target  # per connection: wait + answer

    def pace(delay_ms: float) -> None:
        paced.write_text(base + f"\ndelay = function()\n  return {max(1, round(delay_ms))}\nend\n")

    runs = []
    try:
        # A connection waits, then waits for its answer: a first short run measures the
        # answer's share of the cycle, so that a slower scenario is not also run slower.
        pace(cycle_ms)
        probe = run_wrk(
            url, header_lines, connections=PACED_CONNECTIONS, duration_s=2, script=paced
        )
        answer_ms = max(0.0, PACED_CONNECTIONS * 1000 / max(probe.rps, 1.0) - cycle_ms)
        pace(cycle_ms - answer_ms)
        for rep in range(1, options.reps + 1):
            time.sleep(0.5)
            run = run_wrk(
                url,
                header_lines,
                connections=PACED_CONNECTIONS,
                duration_s=options.duration_s,
                script=paced,
            )
            runs.append(run)
            progress(
                f"  workers={workers} rep {rep}/{options.reps} {scenario.name} paced at "
                f"{target:.0f} rps: {run.rps:>7.0f} rps  p50 {run.p50_ms:6.2f} ms  "
                f"p99 {run.p99_ms:6.2f} ms"
            )
    finally:
        shutil.rmtree(paced.parent, ignore_errors=True)
    paced_scenario = Scenario(
        f"{scenario.name}_paced", scenario.server, scenario.path, scenario.cookie, scenario.answer
    )
    row = _summary(paced_scenario, workers, runs)
    row["target_rps"] = round(target, 1)
    row["fraction_of"] = list(PACED[scenario.name])
    return row


def run_http(options: HttpOptions, progress: Progress) -> dict[str, Any]:
    require_wrk()
    rows: list[dict[str, Any]] = []
    for server in options.servers:
        for workers in options.workers:
            progress(f"HTTP, {server}, {workers} worker(s)")
            rows += [
                {"server": "nginx" if row["scenario"] == "nginx_userid" else server, **row}
                for row in run_workers(workers, options, progress, server)
            ]
    return {
        "wrk": {
            "threads": WRK_THREADS,
            "connections": options.connections,
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "reps": options.reps,
        },
        "scenarios": rows,
    }

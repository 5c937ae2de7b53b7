"""Real `pixelsync serve` processes on real sockets, for the tests.

A test module gets its service from tests/conftest.py's fixtures: `svc` (started once
per module with the module's `service_config`) and `http` (a client of it); a test
that needs services of its own asks for `services` and starts each with a `Config`.
`start_service` is the step below, for tests about the process itself (restarts on the
same data, workers, exit codes)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import pytest

DEFAULT_KEYS = ("test-key-new", "test-key-old")  # `svc`'s, unless its module says otherwise

# Every service's admin API key for the operator endpoints (/metrics, /readyz,
# /openapi.json), which answer only to an admin key unless [server] admin_listen is
# set: `headers=OPS` on those requests.
OPS_TOKEN = "tests-operator-token"
OPS = {"authorization": f"Bearer {OPS_TOKEN}"}
OPS_KEY = (
    '\n[[api_keys]]\nname = "tests-operator"\n'
    f'sha256 = "{hashlib.sha256(OPS_TOKEN.encode()).hexdigest()}"\nscopes = ["admin"]\n'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A `pixelsync serve` child process. `url` is where the tests reach it; `origin`
    its public_url (the same port, on the host the Config named)."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    config: Path
    env: dict[str, str] = field(default_factory=dict)
    origin: str = ""

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            if sig == signal.SIGKILL:  # the whole group: workers and the embedded Valkey
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return int(self.process.returncode)


def start_service(
    tmp: Path,
    config_text: str = "",
    *,
    redis_url: str | None,
    workers: int = 1,
    extra_env: Mapping[str, str] | None = None,
    wait: bool = True,
    port: int | None = None,
    server: str | None = None,
) -> Service:
    """`pixelsync serve` in `tmp` (its data in tmp/data unless the TOML has a [server]
    table), with OPS_KEY added. redis_url None: the TOML's, else an embedded Valkey."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "pixelsync.toml"
    if "[server]" not in config_text:
        config_text = f'[server]\ndata_dir = "{tmp / "data"}"\n' + config_text
    config.write_text(config_text + OPS_KEY)
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIXELSYNC_", "REDIS_URL"))}
    if redis_url:
        env["PIXELSYNC_REDIS_URL"] = redis_url
    env.update(extra_env or {})
    log_path = tmp / f"service-{port}.log"
    cmd = [sys.executable, "-m", "service", "serve", "--config", str(config)]
    # PIXELSYNC_TEST_SERVER=granian runs the whole suite on the other server.
    server = server or os.environ.get("PIXELSYNC_TEST_SERVER", "uvicorn")
    cmd += ["--port", str(port), "--workers", str(workers), "--server", server]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    service = Service(
        f"http://127.0.0.1:{port}",
        process,
        log_path,
        config,
        env,
        env.get("PIXELSYNC_PUBLIC_URL", ""),
    )
    if wait:
        wait_healthy(service)
    return service


def wait_healthy(service: Service, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"service exited:\n{service.log()}")
        try:
            if httpx.get(service.url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    service.stop(signal.SIGKILL)
    raise RuntimeError(f"service did not become healthy:\n{service.log()}")


@dataclass(frozen=True)
class Config:
    """What a test's service runs with.

    toml: the configuration file (tests/configs.py has the pieces several modules use);
    without a [server] table its data goes to its own folder.
    keys: PIXELSYNC_SECRET_KEYS, newest first; none: the built-in development key.
    redis_url: None for the session's Redis/Valkey (a fault proxy's URL, a dead port...).
    host: the service's public_url is its own origin on this host ("localhost" makes it
    another site than pages served from 127.0.0.1), so the callbacks it builds lead back
    to it."""

    toml: str = ""
    keys: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    redis_url: str | None = None
    host: str = "127.0.0.1"


class Services:
    """Starts services, each on a port of its own, and stops all of them on close."""

    def __init__(self, tmp: pytest.TempPathFactory, redis_url: str) -> None:
        self._tmp = tmp
        self._redis_url = redis_url
        self._started: list[Service] = []

    def start(self, config: Config | None = None) -> Service:
        config = config or Config()
        port = free_port()
        env = {"PIXELSYNC_PUBLIC_URL": f"http://{config.host}:{port}", **config.env}
        if config.keys:
            env["PIXELSYNC_SECRET_KEYS"] = ",".join(config.keys)
        service = start_service(
            self._tmp.mktemp("svc"),
            config.toml,
            redis_url=config.redis_url or self._redis_url,
            extra_env=env,
            port=port,
        )
        self._started.append(service)
        return service

    def close(self) -> None:
        for service in self._started:
            service.stop()
        self._started.clear()

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

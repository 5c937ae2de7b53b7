"""Who reaches the operator endpoints (issue 18 class 7, web/ops.py): /metrics,
/readyz and /openapi.json answer an unscoped admin key only, or, with `[server]
admin_listen`, only on that listener, which serves nothing else; /healthz is public."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.configs import API, API_TOKENS, api_key
from tests.services import Config, Service, free_port, start_service

OPERATOR = ["/metrics", "/readyz", "/openapi.json"]
PARTNER_ADMIN = "partner-admin-token"


@pytest.fixture(scope="module")
def service_config() -> Config:
    return Config(API + api_key("partner-admin", PARTNER_ADMIN, "admin", partner=1234))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", OPERATOR)
async def test_operator_endpoints_need_an_unscoped_admin_key(
    http: httpx.AsyncClient, path: str
) -> None:
    nobody = await http.get(path)
    assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "unauthorized"
    assert (await http.get(path, headers=bearer("not-a-key"))).status_code == 401
    reader = await http.get(path, headers=bearer(API_TOKENS["reader"]))
    assert reader.status_code == 403 and reader.json()["error"]["code"] == "forbidden"
    # A partner's key, even an admin one, would see every partner's figures.
    assert (await http.get(path, headers=bearer(PARTNER_ADMIN))).status_code == 403
    admin = await http.get(path, headers=bearer(API_TOKENS["admin"]))
    assert admin.status_code == 200
    if path == "/metrics":
        assert "# TYPE pixelsync_redis_up gauge" in admin.text


async def test_healthz_and_the_browser_endpoints_stay_public(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/event")).status_code == 200


def admin_listener(
    tmp_path: Path,
    redis_url: str,
    *,
    workers: int = 1,
    server: str | None = None,
    wait: bool = True,
) -> tuple[Service, str]:
    admin = f"127.0.0.1:{free_port()}"
    toml = (
        f'[server]\ndata_dir = "{tmp_path / "data"}"\nadmin_listen = "{admin}"\n'
        # X-Forwarded-* believed: the listener is told by the socket, not the headers
        'trusted_proxies = ["127.0.0.1"]\n'
    ) + API
    svc = start_service(
        tmp_path, toml, redis_url=redis_url, workers=workers, server=server, wait=wait
    )
    return svc, f"http://{admin}"


def test_with_admin_listen_they_answer_there_only(tmp_path: Path, redis_url: str) -> None:
    """Two workers (uvicorn's supervisor, both sockets shared): the public listener
    answers 404 for the operator paths, even to an admin key; the admin listener
    answers them without a key, and 404 for anything else but /healthz."""
    svc, admin_url = admin_listener(tmp_path, redis_url, workers=2, server="uvicorn")
    forwarded = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}
    try:
        with (
            httpx.Client(base_url=svc.url, timeout=10, headers=forwarded) as public,
            httpx.Client(base_url=admin_url, timeout=10, headers=forwarded) as admin,
        ):
            for path in OPERATOR:
                assert public.get(path).status_code == 404
                assert public.get(path, headers=bearer(API_TOKENS["admin"])).status_code == 404
                assert admin.get(path).status_code == 200
            assert "# TYPE pixelsync_redis_up gauge" in admin.get("/metrics").text
            assert admin.get("/readyz").json()["status"] == "ready"
            for url in (svc.url, admin_url):
                assert httpx.get(url + "/healthz").status_code == 200
            assert public.get("/event").status_code == 200
            for path in ("/event", "/ibs?dpid=1234&dpuuid=x", "/dashboard", "/v1/taxonomy"):
                assert admin.get(path, headers=bearer(API_TOKENS["admin"])).status_code == 404
    finally:
        assert svc.stop() == 0, svc.log()


def test_granian_refuses_admin_listen(tmp_path: Path, redis_url: str) -> None:
    """granian binds one address: `serve --server granian` with admin_listen stops at
    once, naming the setting."""
    svc, _ = admin_listener(tmp_path, redis_url, server="granian", wait=False)
    try:
        assert svc.process.wait(60) == 2
    except subprocess.TimeoutExpired:
        svc.stop()
        raise
    assert "[server]: key 'admin_listen': granian serves one address" in svc.log()

"""The match-table API over real HTTP: auth, scopes, lookups, erasure."""

from __future__ import annotations

import httpx
import pytest

from service.app import create_app
from service.config import load_settings
from service.identity import new_uuid, today
from service.store import Store
from tests.configs import API, API_TOKENS
from tests.services import OPS, Config, Service


@pytest.fixture(scope="module")
def service_config() -> Config:
    return Config(API)


def auth(who: str) -> dict[str, str]:
    return {"authorization": f"Bearer {API_TOKENS[who]}"}


@pytest.fixture
async def mapped(store: Store) -> tuple[str, str, str]:
    uuid = new_uuid()
    a, b = f"acme/{uuid[:6]}/x", f"other-{uuid[:6]}"  # a uid with slashes
    store.put_mapping(uuid, 1234, a, today())
    store.put_mapping(uuid, 99, b, today())
    await store.drain()
    return uuid, a, b


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer nope"},
        {"authorization": "Basic YWRtaW4="},
        {"authorization": "Bearer"},
    ],
)
async def test_unauthenticated_is_401(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    resp = await http.get(f"/v1/users/{new_uuid()}", headers=headers)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "unauthorized"


async def test_get_user(http: httpx.AsyncClient, mapped: tuple[str, str, str]) -> None:
    uuid, a, b = mapped
    resp = await http.get(f"/v1/users/{uuid}", headers=auth("reader"))
    assert resp.status_code == 200
    assert resp.json() == {"uuid": uuid, "ids": {"99": b, "1234": a}, "traits": [], "segments": []}
    scoped = await http.get(f"/v1/users/{uuid}", headers=auth("acme"))
    assert scoped.json()["ids"] == {"1234": a}  # a partner key sees its own partner only
    for missing in (new_uuid(), "123", "x" * 38):
        assert (await http.get(f"/v1/users/{missing}", headers=auth("reader"))).status_code == 404


async def test_reverse_lookup(http: httpx.AsyncClient, mapped: tuple[str, str, str]) -> None:
    uuid, a, b = mapped
    encoded = a.replace("/", "%2F")
    resp = await http.get(f"/v1/partners/1234/users/{encoded}", headers=auth("acme"))
    assert resp.status_code == 200 and resp.json() == {"uuid": uuid}
    assert (
        await http.get("/v1/partners/1234/users/nobody", headers=auth("acme"))
    ).status_code == 404
    other = await http.get(f"/v1/partners/99/users/{b}", headers=auth("acme"))
    assert other.status_code == 403  # another partner's ids
    assert (await http.get(f"/v1/partners/99/users/{b}", headers=auth("reader"))).json() == {
        "uuid": uuid
    }
    assert (await http.get("/v1/partners/5/users/x", headers=auth("admin"))).status_code == 404


async def test_bulk_lookup(http: httpx.AsyncClient, mapped: tuple[str, str, str]) -> None:
    uuid, a, _ = mapped
    body = {"dpuuids": [a, "unknown", a, "bad uid with spaces"]}
    resp = await http.post("/v1/partners/1234/lookup", json=body, headers=auth("acme"))
    assert resp.status_code == 200 and resp.json() == {"matches": {a: uuid}}
    many = {"dpuuids": [f"u{i}" for i in range(10_000)] + [a]}
    assert (
        await http.post("/v1/partners/1234/lookup", json=many, headers=auth("acme"))
    ).status_code == 400
    full = {"dpuuids": [f"u{i}" for i in range(9_999)] + [a]}
    ok = await http.post("/v1/partners/1234/lookup", json=full, headers=auth("acme"))
    assert ok.status_code == 200 and ok.json()["matches"] == {a: uuid}
    nested = b'{"dpuuids": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # 200 KB, too deep
    for bad in (b"{", b"[]", b'{"dpuuids": "x"}', b'{"dpuuids": [1]}', nested):
        resp = await http.post("/v1/partners/1234/lookup", content=bad, headers=auth("acme"))
        assert resp.status_code == 400, bad[:40]
    # The longest list of the longest uids fits; much more is refused as it streams in.
    longest = {"dpuuids": ["x" * 256] * 10_000}
    ok = await http.post("/v1/partners/1234/lookup", json=longest, headers=auth("acme"))
    assert ok.status_code == 200 and ok.json() == {"matches": {}}
    huge = b'{"dpuuids": ["' + b"x" * (4 << 20) + b'"]}'
    resp = await http.post("/v1/partners/1234/lookup", content=huge, headers=auth("acme"))
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large"


async def test_erasure(http: httpx.AsyncClient, mapped: tuple[str, str, str], store: Store) -> None:
    uuid, a, b = mapped
    assert (await http.delete(f"/v1/users/{uuid}", headers=auth("reader"))).status_code == 403
    resp = await http.delete(f"/v1/users/{uuid}", headers=auth("admin"))
    assert resp.status_code == 204
    assert await store.mappings(uuid, today()) == {}
    assert (
        await store.lookup(1234, [a], today()) == {} and await store.lookup(99, [b], today()) == {}
    )
    assert (await http.get(f"/v1/users/{uuid}", headers=auth("admin"))).status_code == 404


async def test_scoped_erasure(
    http: httpx.AsyncClient, mapped: tuple[str, str, str], store: Store
) -> None:
    """A partner key's erasure removes its partner's mapping, both directions; the
    visitor and its other mappings stay. Again: the visitor is no longer its."""
    uuid, a, b = mapped
    assert (await http.delete(f"/v1/users/{uuid}", headers=auth("acme"))).status_code == 204
    assert set(await store.mappings(uuid, today())) == {99}
    assert await store.client.hget(*store.schema.reverse_slot(1234, a)) is None
    assert await store.lookup(1234, [a], today()) == {} and await store.lookup(
        99, [b], today()
    ) == {b: uuid}
    resp = await http.get(f"/v1/users/{uuid}", headers=auth("admin"))
    assert resp.json()["ids"] == {"99": b}
    assert (await http.delete(f"/v1/users/{uuid}", headers=auth("acme"))).status_code == 404
    assert (await http.get(f"/v1/users/{uuid}", headers=auth("acme"))).status_code == 404


async def test_openapi_describes_every_endpoint(http: httpx.AsyncClient, svc: Service) -> None:
    doc = (await http.get("/openapi.json", headers=OPS)).json()
    assert doc["openapi"].startswith("3.")
    settings = load_settings(svc.config, environ={"PIXELSYNC_REDIS_URL": "redis://127.0.0.1:1/0"})
    served = {p.replace("{dpuuid:path}", "{dpuuid}") for p in create_app(settings).paths}
    # Prefix routes are documented under their template: /fire/ as /fire/{token}.
    served = {p + "{token}" if p.endswith("/") else p for p in served} - {"/ibs:"}
    assert served <= set(doc["paths"]), served - set(doc["paths"])


async def test_retention_per_partner(http: httpx.AsyncClient, store: Store) -> None:
    """Mappings expire per partner, counted from last seen; the API stops answering
    them at once (the sweep deletes them later)."""
    uuid = new_uuid()
    store.put_mapping(uuid, 7, f"short-{uuid[:6]}", today() - 2)  # 1-day retention: expired
    store.put_mapping(uuid, 1234, f"long-{uuid[:6]}", today() - 2)  # default 90 days: alive
    await store.drain()
    resp = await http.get(f"/v1/users/{uuid}", headers=auth("admin"))
    assert resp.json()["ids"] == {"1234": f"long-{uuid[:6]}"}
    gone = await http.get(f"/v1/partners/7/users/short-{uuid[:6]}", headers=auth("admin"))
    assert gone.status_code == 404
    old = new_uuid()
    store.put_mapping(old, 1234, f"old-{old[:6]}", today() - 91)
    await store.drain()
    expired = await http.get(f"/v1/partners/1234/users/old-{old[:6]}", headers=auth("admin"))
    assert expired.status_code == 404


async def test_paths_no_route_matches_answer_api_errors(http: httpx.AsyncClient) -> None:
    """A uid with a newline matches no route, a method none: still the API's JSON error
    (schemathesis found the plain-text 404)."""
    resp = await http.get("/v1/partners/1234/users/a%0Ab", headers=auth("admin"))
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = await http.put("/v1/taxonomy", headers=auth("admin"))
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "refused"
    assert "GET" in resp.headers["allow"]
    assert (await http.get("/nowhere")).text == "Not Found"

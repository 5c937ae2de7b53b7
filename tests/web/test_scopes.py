"""API keys' reach (SPEC §10, §12; issue 18 class 4): the whole key-by-operation table
over real HTTP, one test per cell.

Keys: none, an unknown token, unscoped read / write / admin, and partner A's read /
write / admin. Operations: every /v1 endpoint, on a visitor mapped to partners A and B,
one mapped only to B and an unknown uuid, and /dashboard. Each cell asserts the status
and, for a 200 or 204, what it shows or what it did, read back by the next requests
(and, for erasures, in Redis itself). A partner key's 404 for a visitor of another
partner is byte for byte the 404 of an unknown uuid: the key cannot probe which uuids
exist."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.identity import new_uuid, today
from service.store import Store
from tests.configs import api_key, entry
from tests.services import Config

A, B = 1234, 99
TOKENS = {
    "read": "scope-read",
    "write": "scope-write",
    "admin": "scope-admin",
    "a_read": "scope-a-read",
    "a_write": "scope-a-write",
    "a_admin": "scope-a-admin",
}
KEYS = ("none", "unknown", *TOKENS)  # the table's columns


@pytest.fixture(scope="module")
def service_config() -> Config:
    toml = (
        entry("partners", dpid=A, name="acme")
        + entry("partners", dpid=B, name="other")
        + "".join(
            api_key(who, token, who.removeprefix("a_"), partner=A if who.startswith("a_") else None)
            for who, token in TOKENS.items()
        )
        # Onboarded traits of each partner and a rule trait; a segment of each; and a
        # destination feeding each partner, and one of no partner.
        + entry("traits", sid=300, name="a's", type="onboarded", data_source=A)
        + entry("traits", sid=301, name="b's", type="onboarded", data_source=B)
        + entry("traits", sid=100, name="sports", folder="Sports", rule='c_s == "sports"')
        + entry("segments", sid=500, name="a buyers", folder="Buyers", rule="300T")
        + entry("segments", sid=501, name="b buyers", folder="Buyers", rule="301T")
        + entry("segments", sid=502, name="sports fans", folder="Sports", rule="100T")
        + DESTINATIONS
    )
    return Config(toml)


DESTINATIONS = f"""
[[destinations]]
id = 9
name = "a pixel"
type = "url"
partner = {A}
url = "https://px.a.test/p?s=%ALIAS%"
mappings = {{ "500" = "buyer" }}

[[destinations]]
id = 10
name = "b pixel"
type = "url"
partner = {B}
url = "https://px.b.test/p?s=%ALIAS%"
mappings = {{ "501" = "buyer" }}

[[destinations]]
id = 11
name = "key-values"
type = "cookie"
cookie_name = "seg"
mappings = {{ "502" = "sports" }}
"""


def headers(key: str) -> dict[str, str]:
    if key == "none":
        return {}
    return {"authorization": f"Bearer {TOKENS.get(key, 'not-a-configured-key')}"}


ADMIN = headers("admin")


@dataclass
class World:
    """One cell's visitors: `both` mapped to A (uid_a) and B (uid_b), `only_b` mapped to B
    (uid_ob) only, `unknown` never stored."""

    both: str
    uid_a: str
    uid_b: str
    only_b: str
    uid_ob: str
    unknown: str


@pytest.fixture
async def world(store: Store) -> World:
    both, only_b = new_uuid(), new_uuid()
    w = World(both, f"a/{both[:8]}", f"b-{both[:8]}", only_b, f"ob-{only_b[:8]}", new_uuid())
    store.put_mapping(both, A, w.uid_a, today())
    store.put_mapping(both, B, w.uid_b, today())
    store.put_mapping(only_b, B, w.uid_ob, today())
    await store.drain()
    return w


Request = Callable[[httpx.AsyncClient, dict[str, str], World], Awaitable[httpx.Response]]
Effect = Callable[[httpx.AsyncClient, Store, World, httpx.Response], Awaitable[None]]


def get(path: Callable[[World], str]) -> Request:
    async def run(http: httpx.AsyncClient, h: dict[str, str], w: World) -> httpx.Response:
        return await http.get(path(w), headers=h)

    return run


def delete(uuid: Callable[[World], str]) -> Request:
    async def run(http: httpx.AsyncClient, h: dict[str, str], w: World) -> httpx.Response:
        return await http.delete(f"/v1/users/{uuid(w)}", headers=h)

    return run


def bulk(dpid: int, uid: Callable[[World], str]) -> Request:
    async def run(http: httpx.AsyncClient, h: dict[str, str], w: World) -> httpx.Response:
        body = {"dpuuids": [uid(w), "nobody"]}
        return await http.post(f"/v1/partners/{dpid}/lookup", json=body, headers=h)

    return run


def user_path(uuid: Callable[[World], str]) -> Callable[[World], str]:
    return lambda w: f"/v1/users/{uuid(w)}"


def reverse_path(dpid: int, uid: Callable[[World], str]) -> Callable[[World], str]:
    return lambda w: f"/v1/partners/{dpid}/users/{uid(w).replace('/', '%2F')}"


# --------------------------------------------------------------------------- effects


def shows(doc: Callable[[World], Any]) -> Effect:
    """The answer is this JSON document."""

    async def check(http: httpx.AsyncClient, store: Store, w: World, resp: httpx.Response) -> None:
        assert resp.json() == doc(w)

    return check


def user_doc(uuid: Callable[[World], str], *ids: tuple[int, Callable[[World], str]]) -> Effect:
    return shows(
        lambda w: {
            "uuid": uuid(w),
            "ids": {str(d): uid(w) for d, uid in ids},
            "traits": [],
            "segments": [],
        }
    )


async def as_unknown(http: httpx.AsyncClient, store: Store, w: World, resp: httpx.Response) -> None:
    """The 404 is the one an unknown uuid gets from the same key."""
    request = resp.request
    h = {"authorization": request.headers["authorization"]}
    unknown = await http.request(request.method, f"/v1/users/{w.unknown}", headers=h)
    assert (unknown.status_code, unknown.content) == (resp.status_code, resp.content)
    assert _shape(unknown) == _shape(resp)


def _shape(resp: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k != "date"}


async def _ids(http: httpx.AsyncClient, uuid: str) -> dict[str, str] | None:
    """The visitor's ids as the next request (an unscoped admin's) reads them."""
    resp = await http.get(f"/v1/users/{uuid}", headers=ADMIN)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200
    ids: dict[str, str] = resp.json()["ids"]
    return ids


async def _owner(http: httpx.AsyncClient, dpid: int, uid: str) -> str | None:
    resp = await http.get(f"/v1/partners/{dpid}/users/{uid.replace('/', '%2F')}", headers=ADMIN)
    return resp.json()["uuid"] if resp.status_code == 200 else None


async def _reverse_entry(store: Store, dpid: int, uid: str) -> bytes | None:
    found: bytes | None = await store.client.hget(*store.schema.reverse_slot(dpid, uid))
    return found


async def nothing_changed(
    http: httpx.AsyncClient, store: Store, w: World, resp: httpx.Response
) -> None:
    assert await _ids(http, w.both) == {str(A): w.uid_a, str(B): w.uid_b}
    assert await _ids(http, w.only_b) == {str(B): w.uid_ob}
    assert await _owner(http, A, w.uid_a) == w.both
    assert await _owner(http, B, w.uid_b) == w.both
    assert await _owner(http, B, w.uid_ob) == w.only_b
    assert await _ids(http, w.unknown) is None


def erased(uuid: Callable[[World], str], *uids: tuple[int, Callable[[World], str]]) -> Effect:
    """The visitor is gone (a full erasure): its record, its profile and the reverse
    entries of every uid it had; the other visitor is untouched."""

    async def check(http: httpx.AsyncClient, store: Store, w: World, resp: httpx.Response) -> None:
        assert await _ids(http, uuid(w)) is None  # the next request reads the erasure
        for dpid, uid in uids:
            assert await _owner(http, dpid, uid(w)) is None
            assert await _reverse_entry(store, dpid, uid(w)) is None
        assert await store.mappings(uuid(w), today()) == {}
        assert not (await store.visitor_state(uuid(w))).found
        other = w.only_b if uuid(w) == w.both else w.both
        assert await _ids(http, other)  # another visitor keeps its ids

    return check


async def a_removed(http: httpx.AsyncClient, store: Store, w: World, resp: httpx.Response) -> None:
    """A scoped erasure: partner A's mapping of the visitor is gone in both directions
    (the uid's reverse entry too); the visitor and its mapping to B stay."""
    assert await _ids(http, w.both) == {str(B): w.uid_b}  # the next request reads it
    assert await _owner(http, A, w.uid_a) is None
    assert await _owner(http, B, w.uid_b) == w.both
    assert await _reverse_entry(store, A, w.uid_a) is None
    assert await _reverse_entry(store, B, w.uid_b) is not None
    assert set(await store.mappings(w.both, today())) == {B}
    assert await _ids(http, w.only_b) == {str(B): w.uid_ob}


def loss(destinations: list[int], partners: list[int]) -> Effect:
    async def check(http: httpx.AsyncClient, store: Store, w: World, resp: httpx.Response) -> None:
        doc = resp.json()
        assert sorted(d["id"] for d in doc["destinations"]) == destinations
        assert sorted(p["dpid"] for p in doc["partners"]) == partners

    return check


def rates(partners: list[int]) -> Effect:
    async def check(http: httpx.AsyncClient, store: Store, w: World, resp: httpx.Response) -> None:
        assert sorted(p["dpid"] for p in resp.json()["partners"]) == partners

    return check


def taxonomy(traits: list[int], segments: list[int], folders: list[str]) -> Effect:
    async def check(http: httpx.AsyncClient, store: Store, w: World, resp: httpx.Response) -> None:
        doc = resp.json()
        assert sorted(t["sid"] for t in doc["traits"]) == traits
        assert sorted(s["sid"] for s in doc["segments"]) == segments
        assert [f["path"] for f in doc["folders"]] == folders
        listed = {sid for f in doc["folders"] for sid in f["traits"] + f["segments"]}
        assert listed == set(traits) | set(segments)

    return check


async def page(http: httpx.AsyncClient, store: Store, w: World, resp: httpx.Response) -> None:
    assert resp.headers["content-type"].startswith("text/html")
    assert "acme" in resp.text and "other" in resp.text


# --------------------------------------------------------------------------- the table

Expected = int | tuple[int, Effect]


def row(
    *,
    unauthenticated: Expected = 401,
    read: Expected,
    write: Expected,
    admin: Expected,
    a_read: Expected,
    a_write: Expected,
    a_admin: Expected,
) -> dict[str, Expected]:
    return {
        "none": unauthenticated,
        "unknown": unauthenticated,
        "read": read,
        "write": write,
        "admin": admin,
        "a_read": a_read,
        "a_write": a_write,
        "a_admin": a_admin,
    }


def both(w: World) -> str:
    return w.both


def only_b(w: World) -> str:
    return w.only_b


def unknown(w: World) -> str:
    return w.unknown


def uid_a(w: World) -> str:
    return w.uid_a


def uid_b(w: World) -> str:
    return w.uid_b


def uid_ob(w: World) -> str:
    return w.uid_ob


ALL_IDS = user_doc(both, (A, uid_a), (B, uid_b))
A_IDS = user_doc(both, (A, uid_a))
WHOLE_TAXONOMY = taxonomy([100, 300, 301], [500, 501, 502], ["", "Buyers", "Sports"])
A_TAXONOMY = taxonomy([300], [500], ["", "Buyers"])
A_LOSS = loss([9], [A])
ALL_LOSS = loss([9, 10, 11], [B, A])

TABLE: dict[str, tuple[Request, dict[str, Expected]]] = {
    "GET user mapped to A and B": (
        get(user_path(both)),
        row(
            read=(200, ALL_IDS),
            write=403,
            admin=(200, ALL_IDS),
            a_read=(200, A_IDS),  # its own partner's uid only, no traits or segments
            a_write=403,
            a_admin=(200, A_IDS),
        ),
    ),
    "GET user mapped only to B": (
        get(user_path(only_b)),
        row(
            read=(200, user_doc(only_b, (B, uid_ob))),
            write=403,
            admin=(200, user_doc(only_b, (B, uid_ob))),
            a_read=(404, as_unknown),
            a_write=403,
            a_admin=(404, as_unknown),
        ),
    ),
    "GET unknown user": (
        get(user_path(unknown)),
        row(read=404, write=403, admin=404, a_read=404, a_write=403, a_admin=404),
    ),
    "GET partner A's uid": (
        get(reverse_path(A, uid_a)),
        row(
            read=(200, shows(lambda w: {"uuid": w.both})),
            write=403,
            admin=(200, shows(lambda w: {"uuid": w.both})),
            a_read=(200, shows(lambda w: {"uuid": w.both})),
            a_write=403,
            a_admin=(200, shows(lambda w: {"uuid": w.both})),
        ),
    ),
    "GET partner B's uid": (
        get(reverse_path(B, uid_ob)),
        row(
            read=(200, shows(lambda w: {"uuid": w.only_b})),
            write=403,
            admin=(200, shows(lambda w: {"uuid": w.only_b})),
            a_read=403,
            a_write=403,
            a_admin=403,
        ),
    ),
    "GET an unconfigured partner's uid": (
        get(lambda w: "/v1/partners/4321/users/x"),
        # Scoped: 403 as for any other partner (which dpids exist is not probed).
        row(read=404, write=403, admin=404, a_read=403, a_write=403, a_admin=403),
    ),
    "POST bulk lookup at A": (
        bulk(A, uid_a),
        row(
            read=(200, shows(lambda w: {"matches": {w.uid_a: w.both}})),
            write=403,
            admin=(200, shows(lambda w: {"matches": {w.uid_a: w.both}})),
            a_read=(200, shows(lambda w: {"matches": {w.uid_a: w.both}})),
            a_write=403,
            a_admin=(200, shows(lambda w: {"matches": {w.uid_a: w.both}})),
        ),
    ),
    "POST bulk lookup at B": (
        bulk(B, uid_b),
        row(
            read=(200, shows(lambda w: {"matches": {w.uid_b: w.both}})),
            write=403,
            admin=(200, shows(lambda w: {"matches": {w.uid_b: w.both}})),
            a_read=403,
            a_write=403,
            a_admin=403,
        ),
    ),
    "DELETE user mapped to A and B": (
        delete(both),
        row(
            read=403,
            write=(204, erased(both, (A, uid_a), (B, uid_b))),
            admin=(204, erased(both, (A, uid_a), (B, uid_b))),
            a_read=403,
            a_write=(204, a_removed),
            a_admin=(204, a_removed),
        ),
    ),
    "DELETE user mapped only to B": (
        delete(only_b),
        row(
            read=403,
            write=(204, erased(only_b, (B, uid_ob))),
            admin=(204, erased(only_b, (B, uid_ob))),
            a_read=403,
            a_write=(404, as_unknown),
            a_admin=(404, as_unknown),
        ),
    ),
    "DELETE unknown user": (
        delete(unknown),
        # Unscoped: an erasure of nothing is done (idempotent); scoped: not its visitor.
        row(read=403, write=204, admin=204, a_read=403, a_write=404, a_admin=404),
    ),
    "GET loss": (
        get(lambda w: "/v1/loss?window=1h"),
        row(
            read=(200, ALL_LOSS),
            write=403,
            admin=(200, ALL_LOSS),
            a_read=(200, A_LOSS),
            a_write=403,
            a_admin=(200, A_LOSS),
        ),
    ),
    "GET match-rates": (
        get(lambda w: "/v1/match-rates"),
        row(
            read=(200, rates([B, A])),
            write=403,
            admin=(200, rates([B, A])),
            a_read=(200, rates([A])),
            a_write=403,
            a_admin=(200, rates([A])),
        ),
    ),
    "GET taxonomy": (
        get(lambda w: "/v1/taxonomy"),
        row(
            read=(200, WHOLE_TAXONOMY),
            write=403,
            admin=(200, WHOLE_TAXONOMY),
            a_read=(200, A_TAXONOMY),
            a_write=403,
            a_admin=(200, A_TAXONOMY),
        ),
    ),
    "GET /dashboard": (
        get(lambda w: "/dashboard"),
        # Every partner and the service's totals: an unscoped admin key only.
        row(read=401, write=401, admin=(200, page), a_read=401, a_write=401, a_admin=401),
    ),
}
CELLS = [(op, key) for op in TABLE for key in KEYS]


@pytest.mark.parametrize(("operation", "key"), CELLS, ids=[f"{op} / {k}" for op, k in CELLS])
async def test_scope_table(
    http: httpx.AsyncClient, store: Store, world: World, operation: str, key: str
) -> None:
    send, expected = TABLE[operation]
    want = expected[key]
    status, effect = want if isinstance(want, tuple) else (want, None)
    resp = await send(http, headers(key), world)
    assert resp.status_code == status, resp.text
    if status >= 400 and "dashboard" not in operation:  # the API's error shape
        assert set(resp.json()) == {"error"}
    if effect is not None:
        await effect(http, store, world, resp)
    if status != 204:
        await nothing_changed(http, store, world, resp)

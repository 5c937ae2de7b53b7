"""The store's Redis wire (service/replacements/redis_wire.py) against the real server:
the store really uses it, and what it relies on in redis-py and hiredis still holds —
redis-py packs every command through pack_command, parse_url's credentials and
database, hiredis's replies (errors in place, replies split across reads)."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from service.identity import new_uuid
from service.replacements.redis_wire import (
    READ_CHUNK,
    FastPackConnection,
    PackedPipe,
    RawConnection,
    SharedReads,
    supported,
)
from service.store import PartnerUid, Store, connect

DAY = int(time.time() // 86400)


def packed(*commands: tuple[Any, ...]) -> PackedPipe:
    pipe = PackedPipe()
    for command in commands:
        pipe.execute_command(*command)
    return pipe


@pytest.fixture
def standalone(redis_url: str) -> str:
    if not supported(redis_url):
        pytest.skip(f"the wire serves redis:// URLs only, not {redis_url}")
    return redis_url


@pytest.fixture
async def client(standalone: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(standalone, cluster=False)
    assert isinstance(c, aioredis.Redis)
    yield c
    await c.aclose()


async def test_the_store_uses_the_wire_on_a_standalone_server(
    store: Store, standalone: str
) -> None:
    """A Store given a redis:// URL writes through RawConnection, reads through its two
    SharedReads, and packs redis-py's own commands with FastPackConnection: none of it
    silently left to redis-py."""
    assert isinstance(store.writes.raw, RawConnection)
    reads, bulk = store._access.reads, store._access.bulk
    assert isinstance(reads, SharedReads) and isinstance(bulk, SharedReads)
    assert store.client.connection_pool.connection_class is FastPackConnection
    v, partner_uid = new_uuid(), secrets.token_hex(6)
    store.put_mapping(v, 4321, partner_uid, DAY)
    await store.drain()
    assert store.writes.raw._writer is not None  # the batch went over its connection
    state = await store.visitor_state(v)
    assert state.profile.empty and state.found
    assert reads._writer is not None
    assert await store.lookup(4321, [partner_uid], DAY) == {partner_uid: v}
    assert bulk._writer is not None
    assert await store.mappings(v, DAY) == {4321: PartnerUid(partner_uid, DAY)}


async def test_redis_py_packs_every_command_through_pack_command(standalone: str) -> None:
    """FastPackConnection overrides redis-py's Connection.pack_command: a single command,
    a pipeline and redis-py's multi-word commands all go through it."""
    sent: list[tuple[Any, ...]] = []

    class Recording(FastPackConnection):
        def pack_command(self, *args: Any) -> list[bytes]:
            sent.append(args)
            return super().pack_command(*args)

    key = f"wire:pack:{secrets.token_hex(4)}".encode()
    c = aioredis.Redis.from_url(standalone, connection_class=Recording)
    try:
        assert await c.set(key, b"\x00\r\n\xff", ex=60)
        pipe = c.pipeline(transaction=False)
        pipe.get(key)
        pipe.strlen(key)
        assert await pipe.execute() == [b"\x00\r\n\xff", 4]
        assert "maxmemory" in await c.config_get("maxmemory")  # sent as "CONFIG GET"
    finally:
        await c.aclose()
    heads = [args[0] for args in sent]
    assert heads[-4:] == ["SET", "GET", "STRLEN", "CONFIG GET"], heads


async def test_credentials_and_database_of_the_url_reach_the_server(
    standalone: str, client: aioredis.Redis
) -> None:
    """parse_url (redis-py's, undocumented) gives the username, the password, percent-
    decoded, and the database: the handshake sends AUTH and SELECT with them."""
    user, password = f"wire-{secrets.token_hex(4)}", "p@ss:w/rd%" + secrets.token_hex(4)
    await client.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all")
    host = urlsplit(standalone).netloc.rpartition("@")[2]
    url = f"redis://{quote(user)}:{quote(password, safe='')}@{host}/3"
    key = f"wire:db:{secrets.token_hex(4)}".encode()
    conn, reads = RawConnection(url), SharedReads(url)
    try:
        assert await conn.execute(packed(("SET", key, b"in-3", "EX", 60))) == [b"OK"]
        assert await reads.execute(packed(("ACL", "WHOAMI"), ("GET", key)), 2.0) == [
            user.encode(),
            b"in-3",
        ]
        assert await client.get(key) is None  # not in database 0
        await client.execute_command("SELECT", 3)
        assert await client.get(key) == b"in-3"
        await client.execute_command("SELECT", 0)

        wrong = RawConnection(url.replace(quote(password, safe=""), "nope"))
        with pytest.raises(ConnectionError, match="handshake refused"):
            await wrong.execute(packed(("PING",)))
    finally:
        await conn.aclose()
        await reads.aclose()
        await client.connection_pool.disconnect()  # drops the SELECTed connection
        await client.execute_command("ACL", "DELUSER", user)


@pytest.mark.parametrize("wire", ["raw", "shared"])
async def test_replies_come_back_in_place_as_redis_py_gives_them(
    wire: str, standalone: str, client: aioredis.Redis
) -> None:
    """hiredis's Reader: error replies are values in their place (NOSCRIPT as redis-py's
    NoScriptError, which the store's scripts reload on), binary values whole, and a reply
    longer than one read is assembled across reads."""
    key, text, absent = (f"wire:{secrets.token_hex(4)}:{n}".encode() for n in "bta")
    binary = b"\x00\xff\r\n$-1\r\n" * 3
    big = secrets.token_bytes(3 * READ_CHUNK + 17)
    commands: list[tuple[Any, ...]] = [
        ("SET", key, binary, "EX", 60),
        ("SET", text, "x", "EX", 60),
        ("EVALSHA", "0" * 40, 0),
        ("INCR", text),
        ("GET", key),
        ("ECHO", big),
        ("MGET", key, text, absent),
        ("INCRBYFLOAT", absent, 1.5),  # a float argument
        ("EXPIRE", absent, 60),
    ]
    if wire == "raw":
        conn = RawConnection(standalone)
        replies = await conn.execute(packed(*commands))
        await conn.aclose()
    else:
        reads = SharedReads(standalone)
        replies = await reads.execute(packed(*commands), 5.0)
        await reads.aclose()

    ok, _, noscript, not_int, got, echoed, many, incremented, expiring = replies
    assert ok == b"OK" and got == binary and echoed == big
    assert many == [binary, b"x", None]
    assert (incremented, expiring) == (b"1.5", 1)
    assert type(noscript) is NoScriptError and str(noscript).startswith("NOSCRIPT")
    assert type(not_int) is ResponseError and "not an integer" in str(not_int)

    pipe = client.pipeline(transaction=False)  # what redis-py answers for the same errors
    pipe.execute_command("EVALSHA", "0" * 40, 0)
    pipe.execute_command("INCR", text)
    theirs = await pipe.execute(raise_on_error=False)
    assert [type(r) for r in theirs] == [type(noscript), type(not_int)]

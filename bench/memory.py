"""Bytes per mapping and per visitor in Redis/Valkey, measured with INFO memory."""

from __future__ import annotations

import asyncio
import functools
import secrets
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from service.profiles import Profile
from service.store import EmbeddedValkey, KeySchema, Retention, Store, VisitorState, connect
from service.store.codec import pack_profile  # the size of a stored value


def _uid(kind: str) -> str:
    if kind == "uuid":
        return str(uuidlib.uuid4())
    # 36 printable characters that no codec can shorten.
    return secrets.token_urlsafe(27)[:36]


async def _used_memory(store: Store) -> int:
    info = await store.client.info("memory")
    return int(info["used_memory"])


async def measure_mappings(
    url: str,
    *,
    mappings: int = 1_000_000,
    partners: int = 5,
    uid_kind: str = "uuid",
    buckets: int = 65536,
) -> dict[str, Any]:
    """Store `mappings` mappings (visitors x partners) and measure the memory they take."""
    client = connect(url, cluster=False)
    await client.execute_command("FLUSHDB", "SYNC")
    store = Store(
        client,
        KeySchema(buckets),
        Retention(180, {}, 90),
        buffer_max=10_000_000,
        write_url=url,
    )
    await store.start()
    before = await _used_memory(store)
    day = int(time.time() // 86400)
    started = time.perf_counter()
    visitors = mappings // partners
    for _ in range(visitors):
        visitor = f"{secrets.randbelow(10**38):038d}"
        for dpid in range(1, partners + 1):
            store.put_mapping(visitor, 1000 + dpid, _uid(uid_kind), day)
        if store.buffered > 50_000:
            await store.drain()
    await store.drain()
    elapsed = time.perf_counter() - started
    after = await _used_memory(store)
    await client.execute_command("FLUSHDB", "SYNC")
    await store.close()
    return {
        "mappings": visitors * partners,
        "visitors": visitors,
        "uid_kind": uid_kind,
        "buckets": buckets,
        "bytes_per_mapping": round((after - before) / (visitors * partners), 1),
        "writes_per_s": round(visitors * partners / elapsed),
    }


def sample_profile(traits: int, segments: int, day: int) -> Profile:
    """A visitor of a few weeks: each trait realized on one to three of the last 30 days,
    sids as a DMP numbers them (5-6 digits)."""
    profile = Profile()
    for i in range(traits):
        for back in sorted({secrets.randbelow(30) for _ in range(1 + secrets.randbelow(3))}):
            profile.realize(100_000 + i * 37, day - back, 1 + secrets.randbelow(4))
    profile.segments = {500_000 + i * 11 for i in range(segments)}
    return profile


def _same(profile: Profile, current: VisitorState) -> Profile:
    return profile


async def measure_profiles(
    url: str, *, visitors: int = 100_000, traits: int = 20, segments: int = 10
) -> dict[str, Any]:
    """Store profiles of `traits` traits and `segments` segments; bytes per visitor."""
    client = connect(url, cluster=False)
    await client.execute_command("FLUSHDB", "SYNC")
    store = Store(client, KeySchema(65536), Retention(180, {}, 90), write_url=url)
    await store.start()
    before = await _used_memory(store)
    day = int(time.time() // 86400)
    sizes = 0
    for _ in range(visitors):
        profile = sample_profile(traits, segments, day)
        sizes += len(pack_profile(profile))
        uuid = f"{secrets.randbelow(10**38):038d}"
        store.save_profile(uuid, VisitorState(profile), functools.partial(_same, profile))
        if store.buffered > 50_000:
            await store.drain()
    await store.drain()
    after = await _used_memory(store)
    await client.execute_command("FLUSHDB", "SYNC")
    await store.close()
    return {
        "visitors": visitors,
        "traits": traits,
        "segments": segments,
        "value_bytes": round(sizes / visitors, 1),
        "bytes_per_visitor": round((after - before) / visitors, 1),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        valkey = EmbeddedValkey(Path(tmp))
        url = valkey.start()
        try:
            for kind in ("uuid", "random36"):
                for buckets in (16384, 65536):
                    print(asyncio.run(measure_mappings(url, uid_kind=kind, buckets=buckets)))
        finally:
            valkey.stop()


if __name__ == "__main__":
    main()

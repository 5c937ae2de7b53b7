"""What a served pixelsync has written, whoever it was for: the applied-writes counters
of its /metrics (`pixelsync_store_writes_total{op=...}`, counted by the one writer
task of each process, service/store/writes.py), read across a barrier so that "nothing
was written" is proven, not "not applied yet".

The barrier is an erasure of a visitor nobody knows (/demoptout.jpg with its cookie):
one `erase` queued behind everything the service accepted before it. The writer
applies its queue in order and counts each batch once it is applied, so once that
erasure shows in the counters, every write queued before it shows too. It assumes the
service erases nothing else meanwhile; if it did, the counts would show more, and a
check of "nothing" would fail rather than pass.

    before = await settled(http, KEY)
    ...  # the requests under test
    assert await written_since(http, KEY, before) == NOTHING"""

from __future__ import annotations

import re
from typing import Final

import httpx

from service.identity import CookieSigner, new_uuid
from tests.conftest import wait_for
from tests.services import OPS

KINDS: Final = ("touch", "mapping", "profile", "erase")
NOTHING: Final = dict.fromkeys(KINDS, 0)
_SAMPLE: Final = re.compile(
    r'^pixelsync_store_writes_total\{op="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE
)


async def applied(http: httpx.AsyncClient) -> dict[str, int]:
    """The service's applied writes so far, per kind (one process: its own counters)."""
    resp = await http.get("/metrics", headers=OPS)
    assert resp.status_code == 200
    found = {kind: int(float(n)) for kind, n in _SAMPLE.findall(resp.text)}
    assert set(KINDS) <= set(found), f"no applied-writes counters on /metrics: {found}"
    return {kind: found[kind] for kind in KINDS}


async def settled(http: httpx.AsyncClient, key: str) -> dict[str, int]:
    """The counts once every write the service accepted before this call is applied
    (the barrier's own erasure included)."""
    before = await applied(http)
    cookie = {"cookie": f"uuid={CookieSigner([key]).sign(new_uuid())}"}
    resp = await http.get("/demoptout.jpg", headers=cookie)
    assert resp.status_code == 200

    async def counted() -> dict[str, int] | None:
        now = await applied(http)
        return now if now["erase"] > before["erase"] else None

    found = await wait_for(counted)
    assert found is not None, "the barrier's erasure was never applied"
    return dict(found)


async def written_since(
    http: httpx.AsyncClient, key: str, before: dict[str, int]
) -> dict[str, int]:
    """What the service wrote between `before` (from settled()) and now, per kind,
    without the barriers' erasure: NOTHING when it wrote nothing at all."""
    after = await settled(http, key)
    written = {kind: after[kind] - before[kind] for kind in KINDS}
    written["erase"] -= 1
    return written

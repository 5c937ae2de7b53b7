"""`pixelsync export` (SPEC §9): files read back line by line, split, gzip, the .info
control file, iter marks, and no partial file after a failure."""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.batch.exporter import Exporter
from service.batch.run import running
from service.config import Destination, parse_settings
from service.profiles import Profile
from service.store import Store
from service.wiring import Domain
from tests.configs import file_config

DAY = int(time.time() // 86400)


class Case:
    def __init__(self, store: Store, domain: Domain, destination: Destination) -> None:
        self.store = store
        self.domain = domain
        self.destination = destination
        self.dpid = destination.partner or 0
        self.exporter = Exporter(store, domain.qualifier)

    async def visitor(self, *traits: int, dpid: int | None = None) -> tuple[str, str]:
        uuid, uid = f"{secrets.randbelow(10**38):038d}", f"x-{secrets.token_hex(5)}"
        self.store.put_mapping(uuid, dpid or self.dpid, uid, DAY)
        if traits:
            await self.set_traits(uuid, *traits)
        await self.store.drain()
        return uuid, uid

    async def set_traits(self, uuid: str, *traits: int) -> None:
        state = await self.store.visitor_state(uuid)
        state.profile = Profile()
        self.domain.qualifier.qualify(state.profile, list(traits), DAY)
        self.store.save_profile(uuid, state, lambda current: current.profile)
        await self.store.drain()


@pytest.fixture
async def case(redis_url: str) -> AsyncIterator[Case]:
    dpid, dest = 7000 + secrets.randbelow(10**6), 1 + secrets.randbelow(10**6)
    settings = parse_settings(tomllib.loads(file_config(dpid, dest, destination="split_lines = 2")))
    async with running(settings, redis_url) as (store, domain):
        yield Case(store, domain, settings.destinations[0])


def read_back(out: Path, info_name: str) -> list[str]:
    """Every line of the export, checking each file against the .info file."""
    info = json.loads((out / info_name).read_text())
    lines: list[str] = []
    for i, f in enumerate(info["Files"]):
        path = out / f["FileName"]
        body = path.read_bytes()
        assert f["FileSequenceNumber"] == i + 1
        assert f["FileByteSize"] == len(body)
        assert f["md5"] == hashlib.md5(body, usedforsecurity=False).hexdigest()
        got = gzip.decompress(body).decode().splitlines()
        assert f["FileLineCount"] == len(got) <= 2  # split every 2 lines
        lines += got
    totals = info["Totals"]
    assert totals["TotalNumberFiles"] == len(info["Files"])
    assert totals["TotalNumberLines"] == len(lines)
    assert totals["TotalByteSize"] == sum(f["FileByteSize"] for f in info["Files"])
    return lines


async def test_full_then_iter(case: Case, tmp_path: Path) -> None:
    _, u1 = await case.visitor(300)
    _, u2 = await case.visitor(300, 301)
    v3, u3 = await case.visitor(301)
    await case.visitor()  # mapped, in no segment: no line
    await case.visitor(300, dpid=case.dpid + 1)  # not mapped to this partner: counted

    full = await case.exporter.run(case.destination, "full", tmp_path / "full")
    assert sorted(read_back(tmp_path / "full", full.info)) == sorted(
        [f"{u1} buyers ", f"{u2} buyers,browsers ", f"{u3} browsers "]
    )
    assert full.lines == 3 and len(full.files) == 2 and full.unmapped >= 1
    stem = f"{case.destination.id}_{case.dpid}_full_"
    assert all(name.startswith(stem) and name.endswith(".sync.gz") for name in full.files)
    assert full.files[0].endswith("_001.sync.gz") and full.info.startswith(stem)

    nothing = await case.exporter.run(case.destination, "iter", tmp_path / "iter0")
    assert nothing.lines == 0 and read_back(tmp_path / "iter0", nothing.info) == []

    v1 = await case.visitor(300)  # a new visitor
    await case.set_traits(v3, 300)  # left browsers, joined buyers
    changed = await case.exporter.run(case.destination, "iter", tmp_path / "iter1")
    assert sorted(read_back(tmp_path / "iter1", changed.info)) == sorted(
        [f"{v1[1]} buyers ", f"{u3} buyers browsers"]
    )
    assert changed.unchanged >= 2


async def test_a_failed_export_leaves_no_file_and_no_mark(case: Case, tmp_path: Path) -> None:
    _, u1 = await case.visitor(300)
    _, u2 = await case.visitor(301)
    _, u3 = await case.visitor(300, 301)

    def fail_after_two(lines: int) -> None:
        if lines >= 2:
            raise RuntimeError("injected failure")

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected"):
        await case.exporter.run(case.destination, "iter", out, failure=fail_after_two)
    assert [p.name for p in out.iterdir()] == []  # nothing visible, nothing aside
    # The mark did not move: the next iter export still has all three.
    again = await case.exporter.run(case.destination, "iter", out)
    assert len(read_back(out, again.info)) == 3
    assert {line.split(" ")[0] for line in read_back(out, again.info)} == {u1, u2, u3}


async def test_an_erased_visitor_is_removed_at_the_next_iter_export(
    case: Case, tmp_path: Path
) -> None:
    v1, u1 = await case.visitor(300, 301)
    _, u2 = await case.visitor(300)
    first = await case.exporter.run(case.destination, "iter", tmp_path / "1")
    assert {line.split(" ")[0] for line in read_back(tmp_path / "1", first.info)} >= {u1, u2}

    assert case.store.erase_visitor(v1)
    await case.store.drain()
    removal = await case.exporter.run(case.destination, "iter", tmp_path / "2")
    assert read_back(tmp_path / "2", removal.info) == [f"{u1}  buyers,browsers"]
    assert removal.removed == 1 and removal.lines == 1

    after = await case.exporter.run(case.destination, "iter", tmp_path / "3")
    assert read_back(tmp_path / "3", after.info) == [] and after.removed == 0


async def test_a_failed_export_keeps_the_tombstones(case: Case, tmp_path: Path) -> None:
    v1, u1 = await case.visitor(300)
    v2, _ = await case.visitor(301)
    await case.exporter.run(case.destination, "iter", tmp_path / "1")
    for v in (v1, v2):
        case.store.erase_visitor(v)
    await case.store.drain()

    def fail(lines: int) -> None:
        raise RuntimeError("injected failure")

    with pytest.raises(RuntimeError, match="injected"):
        await case.exporter.run(case.destination, "iter", tmp_path / "2", failure=fail)
    # Both tombstones are still there; meanwhile the destination stopped mapping 801
    # ("browsers"): a removal names only the segments that still have aliases.
    narrowed = parse_settings(
        tomllib.loads(
            file_config(
                case.dpid,
                case.destination.id,
                destination="split_lines = 2",
                mappings='{ "800" = "buyers" }',
            )
        )
    ).destinations[0]
    again = await case.exporter.run(narrowed, "iter", tmp_path / "3")
    assert read_back(tmp_path / "3", again.info) == [f"{u1}  buyers"] and again.removed == 1
    assert (await case.store.export_state(case.destination.id))["state"] == "done"
    after = await case.exporter.run(case.destination, "iter", tmp_path / "4")
    assert read_back(tmp_path / "4", after.info) == []  # v2's was sent as nothing: gone too


async def test_a_full_export_leaves_the_tombstones_for_the_next_iter(
    case: Case, tmp_path: Path
) -> None:
    v1, u1 = await case.visitor(300)
    _, u2 = await case.visitor(301)
    await case.exporter.run(case.destination, "iter", tmp_path / "1")
    case.store.erase_visitor(v1)
    await case.store.drain()

    full = await case.exporter.run(case.destination, "full", tmp_path / "full")
    assert read_back(tmp_path / "full", full.info) == [f"{u2} browsers "]
    assert full.removed == 0
    after = await case.exporter.run(case.destination, "iter", tmp_path / "2")
    assert read_back(tmp_path / "2", after.info) == [f"{u1}  buyers"] and after.removed == 1

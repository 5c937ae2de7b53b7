"""`pixelsync import` (SPEC §9) on real files and a real Redis/Valkey."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.batch.files import Receipt, parse_line, parse_name
from service.batch.importer import CHUNK, Importer
from service.batch.run import Bar, running
from service.config import Settings, parse_settings
from service.store import Store
from service.wiring import Domain

DAY = int(time.time() // 86400)
SOURCE = 55
CONFIG = f"""
[server]
secret_keys = ["import-test"]

[[partners]]
dpid = {SOURCE}
name = "data source"

[[partners]]
dpid = 99
name = "another source"

[[traits]]
sid = 300
name = "bought"
type = "onboarded"
data_source = {SOURCE}

[[traits]]
sid = 301
name = "browsed"
type = "onboarded"
data_source = {SOURCE}

[[traits]]
sid = 302
name = "someone else's"
type = "onboarded"
data_source = 99

[[traits]]
sid = 310
name = "k is v"
rule = 'k == "v"'

[[segments]]
sid = 800
name = "buyers"
rule = "300T"
"""


@pytest.fixture
async def job(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Domain, Settings]]:
    settings = parse_settings(tomllib.loads(CONFIG))
    async with running(settings, redis_url) as (store, domain):
        yield store, domain, settings


def uid() -> str:
    return f"imp-{secrets.token_hex(6)}"


async def mapped(store: Store, n: int) -> list[tuple[str, str]]:
    """n visitors mapped to the data source: (uuid, partner uid)."""
    pairs = [(f"{secrets.randbelow(10**38):038d}", uid()) for _ in range(n)]
    for uuid, u in pairs:
        store.put_mapping(uuid, SOURCE, u, DAY)
    await store.drain()
    return pairs


async def traits_of(store: Store, uuid: str) -> dict[int, int]:
    profile = (await store.visitor_state(uuid)).profile
    return {sid: sum(n for _, n in e) for sid, e in profile.traits.items()}


def write(path: Path, lines: list[bytes], *, gz: bool = False) -> Path:
    body = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(body) if gz else body)
    return path


async def test_a_file_with_every_kind_of_line(
    job: tuple[Store, Domain, Settings], tmp_path: Path
) -> None:
    store, domain, _ = job
    (v1, u1), (v2, u2), (v3, u3), (v4, u4) = await mapped(store, 4)
    lines = [
        f"{u1}\t300,301".encode(),  # 1 good: two traits
        b"nobody-knows-me\t300",  # 2 unmatched
        f"{u2} 300".encode(),  # 3 malformed: no tab
        f"{u2}\td_sid=300,d_unsid=301".encode(),  # 4 realize one, remove one it lacks
        f'{u3}\t"k"="v"'.encode(),  # 5 key-value against the rule trait
        f"{u4}\t302".encode(),  # 6 another source's trait: nothing realized
        f"{u1}\t".encode() + b"3" * (101 * 1024),  # 7 over-long
        f"{u1}\t".encode() + b"\xff\xfe",  # 8 not UTF-8
        f"{u1}\t301:0".encode(),  # 9 removal
        b"",  # an empty trailing line
    ]
    path = write(tmp_path / f"ftp_dpm_{SOURCE}_1764460800.sync", lines)
    receipt = await Importer(store, domain.qualifier, domain.profiles).run(path)
    doc = receipt.doc()
    assert doc["records_received"] == 9
    assert doc["format_errors"] == {
        "count": 3,
        "first": [
            {"line": 3, "reason": "no tab between the partner uid and the traits"},
            {"line": 7, "reason": "line longer than 100 KiB"},
            {"line": 8, "reason": "not UTF-8"},
        ],
    }
    assert (doc["no_matching_id"], doc["no_trait_realized"]) == (1, 1)
    assert (doc["records_processed"], doc["stored_records"]) == (4, 4)
    assert (doc["realized_traits"], doc["removed_traits"]) == (4, 1)
    assert doc["started_at"] <= doc["finished_at"]
    assert json.loads((tmp_path / (path.name + ".receipt.json")).read_text()) == doc
    assert await traits_of(store, v1) == {300: 1}
    assert await traits_of(store, v2) == {300: 1}
    assert await traits_of(store, v3) == {310: 1}
    assert await traits_of(store, v4) == {}
    assert (await store.visitor_state(v1)).profile.segments == {800}


async def test_gzip_overwrite_and_idempotency(
    job: tuple[Store, Domain, Settings], tmp_path: Path
) -> None:
    store, domain, _ = job
    [(v, u)] = await mapped(store, 1)
    importer = Importer(store, domain.qualifier, domain.profiles)
    first = write(
        tmp_path / f"ftp_dpm_{SOURCE}_1764460800.sync.gz", [f"{u}\t300,301".encode()], gz=True
    )
    assert (await importer.run(first)).records_processed == 1
    assert await traits_of(store, v) == {300: 1, 301: 1}
    # .overwrite: the visitor's traits from this source are what the line says.
    over = write(tmp_path / f"ftp_dpm_{SOURCE}_1764460900.overwrite", [f"{u}\t301".encode()])
    receipt = await importer.run(over)
    assert (receipt.realized_traits, receipt.removed_traits) == (1, 1)
    assert await traits_of(store, v) == {301: 2}
    # The same file again: skipped; --force imports it again.
    again = await importer.run(first)
    assert again.skipped and again.records_received == 0
    assert await traits_of(store, v) == {301: 2}
    assert (await importer.run(first, force=True)).records_processed == 1
    assert await traits_of(store, v) == {300: 1, 301: 3}


async def test_uids_of_a_target_data_source(
    job: tuple[Store, Domain, Settings], tmp_path: Path
) -> None:
    """ftp_dpm_<DPID>_<TARGET>: the lines carry the target's uids, the traits are DPID's."""
    store, domain, _ = job
    v, u = f"{secrets.randbelow(10**38):038d}", uid()
    store.put_mapping(v, 99, u, DAY)
    await store.drain()
    path = write(tmp_path / f"ftp_dpm_{SOURCE}_99_1764460800.sync", [f"{u}\t300".encode()])
    assert (
        await Importer(store, domain.qualifier, domain.profiles).run(path)
    ).records_processed == 1
    assert await traits_of(store, v) == {300: 1}


async def test_one_visitor_in_consecutive_chunks(
    job: tuple[Store, Domain, Settings], tmp_path: Path
) -> None:
    """A chunk is read while the one before it is applied: a visitor whose lines fall
    in chunks in a row gets every line's realizations (the next chunk's read may
    predate this chunk's writes)."""
    store, domain, _ = job
    (v, u1), (w, u2) = await mapped(store, 2)
    filler = [f"{u2}\t301".encode()] * (CHUNK - 1)
    lines = [f"{u1}\t300".encode(), *filler, f"{u1}\t301".encode(), f"{u1}\t300".encode()]
    lines += [*filler, f"{u1}\t301".encode()]  # and in the third chunk
    path = write(tmp_path / f"ftp_dpm_{SOURCE}_1764461000.sync", lines)
    receipt = await Importer(store, domain.qualifier, domain.profiles).run(path)
    assert receipt.records_processed == len(lines) and receipt.stored_records == len(lines)
    assert await traits_of(store, v) == {300: 2, 301: 2}
    assert await traits_of(store, w) == {301: 2 * (CHUNK - 1)}
    assert (await store.visitor_state(v)).profile.segments == {800}


def test_names() -> None:
    name = parse_name("ftp_dpm_55_99_1764460800.overwrite.3.gz")
    assert name is not None
    assert (name.dpid, name.target, name.overwrite, name.split, name.gzip) == (
        55,
        99,
        True,
        3,
        True,
    )
    assert parse_name("ftp_dpm_55_1764460800.sync") is not None
    for bad in ("ftp_dpm_55.sync", "dpm_55_1.sync", "ftp_dpm_55_1764460800.csv", "x"):
        assert parse_name(bad) is None


@pytest.mark.parametrize(
    ("raw", "realize", "remove", "signals"),
    [
        (b"u\t1,2", [1, 2], [], {}),
        (b"u\td_sid=1,d_unsid=2,3:0,4:-1", [1], [2, 3, 4], {}),
        (b'u\t"a"="x,y",5', [5], [], {"a": ["x,y"]}),
        (b"u\t1,,2,", [1, 2], [], {}),
        (b"u\r", None, None, None),
    ],
)
def test_lines(
    raw: bytes,
    realize: list[int] | None,
    remove: list[int] | None,
    signals: dict[str, list[str]] | None,
) -> None:
    if realize is None:
        with pytest.raises(ValueError):
            parse_line(raw)
        return
    line = parse_line(raw)
    assert line is not None
    assert (line.realize, line.remove, line.signals) == (realize, remove, signals)


def test_the_command(redis_url: str, tmp_path: Path) -> None:
    """`pixelsync import` prints each receipt as a JSON line (stdout not a terminal)."""
    config = tmp_path / "pixelsync.toml"
    config.write_text(CONFIG.replace("[server]\n", f'[server]\ndata_dir = "{tmp_path}"\n'))
    path = write(tmp_path / f"ftp_dpm_{SOURCE}_1764461000.sync", [b"unknown-uid\t300", b"bad"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELSYNC_")}
    env["PIXELSYNC_REDIS_URL"] = redis_url
    done = subprocess.run(
        [sys.executable, "-m", "service", "import", "--config", str(config), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    assert (doc["records_received"], doc["no_matching_id"], doc["format_errors"]["count"]) == (
        2,
        1,
        1,
    )
    bad = subprocess.run(
        [sys.executable, "-m", "service", "import", "--config", str(config), str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and "not an inbound file name" in bad.stderr


def test_the_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    receipt = Receipt("f", records_received=1000, format_errors=100, no_matching_id=90)
    Bar("f.sync", 2000, time.monotonic() - 2)(receipt, 500)
    out = capsys.readouterr().out
    assert out.startswith("\rf.sync:  25.0%  1,000 lines")
    assert " lines/s  matched 90.0%" in out and "\n" not in out


async def test_an_import_that_stopped_resumes_after_what_it_applied(
    job: tuple[Store, Domain, Settings], tmp_path: Path
) -> None:
    """A run that fails midway (here: its progress callback raises after the third
    chunk) records how far its writes got; the next import of the same file starts
    after that line, so no line's realization is counted twice."""
    store, domain, _ = job
    pairs = await mapped(store, 5 * CHUNK)
    path = write(
        tmp_path / f"ftp_dpm_{SOURCE}_1764462000.sync", [f"{u}\t300".encode() for _, u in pairs]
    )
    importer = Importer(store, domain.qualifier, domain.profiles)
    importer.checkpoint_lines = CHUNK
    calls = 0

    def crash(receipt: Receipt, done: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await importer.run(path, progress=crash)
    assert await store.import_progress(path.name) is not None
    applied = [await traits_of(store, v) for v, _ in pairs]
    assert applied.count({300: 1}) == 2 * CHUNK  # chunks 1 and 2; chunk 3 was only read
    assert applied.count({}) == 3 * CHUNK

    receipt = await Importer(store, domain.qualifier, domain.profiles).run(path)
    assert receipt.doc()["resumed_after_line"] == 2 * CHUNK
    assert receipt.records_received == receipt.records_processed == 3 * CHUNK
    assert [await traits_of(store, v) for v, _ in pairs] == [{300: 1}] * (5 * CHUNK)
    assert await store.import_progress(path.name) is None  # done: imported, no progress
    assert (await importer.run(path)).skipped

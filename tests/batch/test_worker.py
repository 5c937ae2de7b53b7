"""`pixelsync worker` (SPEC §9): the schedule with an injected clock, one run per job
across two workers on one Redis, the inbound folder, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.batch.exporter import Exporter
from service.batch.importer import Importer
from service.batch.run import running
from service.batch.worker import Worker
from service.config import Settings, parse_settings
from service.store import Store
from service.wiring import Domain
from tests.batch.configs import file_config
from tests.conftest import wait_for
from tests.proxy import FaultProxy

DAY = 20_800  # an injected day
AT_14 = DAY * 86400 + 14 * 3600


def config(dpid: int, dest: int, data_dir: Path) -> str:
    return file_config(
        dpid,
        dest,
        server=f'data_dir = "{data_dir}"',
        destination='schedule = "14:00"\nmode = "full"',
        mappings='{ "800" = "buyers" }',
    )


@pytest.fixture
async def setup(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Domain, Settings]]:
    dpid, dest = 7000 + secrets.randbelow(10**6), 1 + secrets.randbelow(10**6)
    settings = parse_settings(tomllib.loads(config(dpid, dest, tmp_path)))
    async with running(settings, redis_url) as (store, domain):
        yield store, domain, settings


def worker(store: Store, domain: Domain, settings: Settings, now: list[float]) -> Worker:
    return Worker(
        store,
        Exporter(store, domain.qualifier),
        Importer(store, domain.qualifier, domain.profiles),
        [d for d in settings.destinations if d.type == "file"],
        settings.data_dir,
        clock=lambda: now[0],
    )


def test_due() -> None:
    destination = parse_settings(tomllib.loads(config(7, 9, Path("/tmp")))).destinations[0]
    w = Worker(None, None, None, [destination], Path("/tmp"))  # type: ignore[arg-type]
    assert not w.due(destination, None, AT_14 - 1)
    assert w.due(destination, None, AT_14)
    assert w.due(destination, DAY - 1, AT_14 + 3600)
    assert not w.due(destination, DAY, AT_14 + 3600)  # ran today already
    assert w.due(destination, DAY, AT_14 + 86400)  # tomorrow


async def test_the_export_runs_once_a_day_across_two_workers(
    setup: tuple[Store, Domain, Settings],
) -> None:
    store, domain, settings = setup
    now = [AT_14 - 60.0]
    first, second = worker(store, domain, settings, now), worker(store, domain, settings, now)
    assert await first.tick() == []  # before the schedule
    now[0] = AT_14 + 5
    ran = await asyncio.gather(first.tick(), second.tick())
    assert sorted(len(r) for r in ran) == [0, 1]  # one of them ran it
    out = first.out_dir(settings.destinations[0])
    assert len(list(out.glob("*.info"))) == 1
    assert await first.tick() == [] and await second.tick() == []  # not again today
    now[0] += 86400
    assert len(await second.tick()) == 1  # the next day


async def test_inbound_files_are_imported_and_moved(
    setup: tuple[Store, Domain, Settings],
) -> None:
    store, domain, settings = setup
    w = worker(store, domain, settings, [AT_14 - 3600])  # no export due
    w.inbound.mkdir(parents=True)
    good = w.inbound / "ftp_dpm_55_1764460800.sync"
    good.write_bytes(b"nobody\t300\n")
    broken = w.inbound / "ftp_dpm_55_1764460801.sync"
    broken.mkdir()  # cannot be read as a file
    (w.inbound / "notes.txt").write_text("not an inbound file")
    ran = await w.tick()
    assert sorted(ran) == sorted([f"import:{broken.name}", f"import:{good.name}"])
    assert (w.inbound / "done" / good.name).exists()
    assert (w.inbound / "done" / (good.name + ".receipt.json")).exists()
    assert (w.inbound / "failed" / broken.name).exists()
    assert (w.inbound / "notes.txt").exists() and not good.exists()


def test_sigterm_stops_the_worker_cleanly(redis_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "pixelsync.toml"
    cfg.write_text(config(7, 9, tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELSYNC_")}
    env["PIXELSYNC_REDIS_URL"] = redis_url
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:

        async def started() -> bool:
            return b"worker started" in log.read_bytes()

        assert asyncio.run(wait_for(started, timeout=30)), log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert b"worker stopped" in log.read_bytes()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


async def test_an_import_stopped_by_a_redis_outage_stays_for_the_next_round(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    settings = parse_settings(tomllib.loads(config(7001, 1, tmp_path)))
    async with running(settings, proxy.url) as (store, domain):
        w = worker(store, domain, settings, [AT_14 - 3600])
        w.inbound.mkdir(parents=True)
        path = w.inbound / "ftp_dpm_55_1764460900.sync"
        path.write_bytes(b"nobody\t300\n")
        proxy.cut()
        proxy.set("refuse")
        try:  # Redis goes away once the worker has taken the file
            await w._import(path)
            assert path.exists() and not (w.inbound / "failed").exists()
        finally:
            proxy.set("pass")
        assert await w.tick() == [f"import:{path.name}"]  # Redis is back: imported
        assert (w.inbound / "done" / path.name).exists()

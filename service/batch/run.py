"""The batch commands: which Redis they use, and import, export and worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import FileDestinationConfig, Settings
from ..store import EmbeddedValkey, Store, StoreError, server_answers
from ..wiring import Domain, build_store
from .exporter import Exporter
from .files import Receipt
from .importer import Importer
from .worker import Worker, out_dir


def url_file(settings: Settings) -> Path:
    """Where `pixelsync serve` notes the URL of the embedded Valkey it runs."""
    return settings.data_dir / "valkey" / "url"


@contextlib.contextmanager
def batch_redis(settings: Settings) -> Iterator[str]:
    """The configured Redis; else the embedded Valkey a running `pixelsync serve` owns;
    else an embedded Valkey of our own on data_dir, for the duration of the job."""
    if settings.redis_url:
        yield settings.redis_url
        return
    noted = url_file(settings)
    if noted.exists() and server_answers(url := noted.read_text().strip()):
        yield url
        return
    embedded = EmbeddedValkey(settings.data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@dataclass
class Bar:
    """A one-line progress bar on a terminal: lines/s and the share of lines matched."""

    name: str
    size: int
    started: float

    def __call__(self, receipt: Receipt, done: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        lines = receipt.records_received
        considered = lines - receipt.format_errors
        matched = 100.0 * (considered - receipt.no_matching_id) / considered if considered else 0
        share = 100.0 * done / self.size if self.size else 100.0
        print(
            f"\r{self.name}: {share:5.1f}%  {lines:,} lines  {lines / elapsed:,.0f} lines/s  "
            f"matched {matched:.1f}%",
            end="",
            flush=True,
        )


@contextlib.asynccontextmanager
async def running(settings: Settings, url: str) -> AsyncIterator[tuple[Store, Domain]]:
    """A started store and the domain wired to it; counters and writes flushed at the
    end (the same objects the web app uses, so that a job acts like a request)."""

    # A job keeps each visitor's state itself while it works on it: reading profiles
    # back from memory would only make its memory grow with the file.
    store = build_store(settings, url, read_back=False)
    await store.start()
    domain = Domain.build(settings, store)
    if domain.sender is not None:
        domain.sender.start()
    try:
        yield store, domain
    finally:
        await domain.close()
        store.flush_counts(time.time())
        await store.close()


async def import_files(settings: Settings, url: str, paths: Sequence[Path], *, force: bool) -> int:
    """Import each file; print each receipt as a JSON line. 1 if any file failed."""
    status = 0
    async with running(settings, url) as (store, domain):
        importer = Importer(store, domain.qualifier, domain.profiles)
        for path in paths:
            bar = None
            if sys.stdout.isatty():
                bar = Bar(path.name, path.stat().st_size, time.monotonic())
            try:
                receipt = await importer.run(path, force=force, progress=bar)
            except (OSError, ValueError, StoreError) as exc:
                # Redis lost mid-file: the file is not marked imported; importing it
                # again resumes after the last line its writes got to (the checkpoint).
                print(f"{path}: {exc}", file=sys.stderr)
                status = 1
                continue
            if bar is not None:
                print()
            print(json.dumps(receipt.doc()), flush=True)
    return status


async def export_command(
    settings: Settings, url: str, destination_id: int, mode: str, out: Path | None
) -> int:
    """Run one file destination's export now; print the result as a JSON line."""
    found = [d for d in settings.destinations if d.id == destination_id]
    if not found or not isinstance(found[0], FileDestinationConfig):
        print(f"no file destination with id {destination_id}", file=sys.stderr)
        return 2
    async with running(settings, url) as (store, domain):
        folder = out or out_dir(found[0], settings.data_dir)
        result = await Exporter(store, domain.qualifier, domain.export_allowed).run(
            found[0], mode, folder
        )
        print(json.dumps(result.doc()), flush=True)
    return 0


async def worker_command(settings: Settings, url: str, stop: asyncio.Event) -> int:
    async with running(settings, url) as (store, domain):
        worker = Worker(
            store,
            Exporter(store, domain.qualifier, domain.export_allowed),
            Importer(store, domain.qualifier, domain.profiles),
            [d for d in settings.destinations if isinstance(d, FileDestinationConfig)],
            settings.data_dir,
        )
        worker.inbound.mkdir(parents=True, exist_ok=True)
        await worker.run(stop)
    return 0

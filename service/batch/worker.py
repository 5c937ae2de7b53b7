"""`pixelsync worker` (SPEC §9): each file destination's export daily at its schedule
(UTC), and the import of files dropped into <data_dir>/inbound/.

Several workers (one per host) may run against one Redis: each job takes a Redis lock
with an expiry, renewed while the job runs, so it runs once; a crashed worker's lock
expires. An export also records the day it ran, so that no other worker runs it again
that day once the lock is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..config import FileDestinationConfig
from ..store import Store, StoreError
from .exporter import Exporter
from .files import parse_name
from .importer import Importer

log = logging.getLogger("pixelsync.worker")

LOCK_TTL_MS: Final = 60_000  # renewed every third of it while the job runs
POLL_S: Final = 10.0


def out_dir(destination: FileDestinationConfig, data_dir: Path) -> Path:
    """Where a file destination's exports go: its out_dir, or data_dir/outbound/<id>."""
    configured = destination.out_dir
    return Path(configured) if configured else data_dir / "outbound" / str(destination.id)


@dataclass
class Worker:
    store: Store
    exporter: Exporter
    importer: Importer
    destinations: list[FileDestinationConfig]
    data_dir: Path
    clock: Callable[[], float] = time.time

    @property
    def inbound(self) -> Path:
        return self.data_dir / "inbound"

    def out_dir(self, destination: FileDestinationConfig) -> Path:
        return out_dir(destination, self.data_dir)

    # ------------------------------------------------------------------ schedule

    def due(self, destination: FileDestinationConfig, last_day: int | None, now: float) -> bool:
        """Whether the export should run now: today's schedule time has passed and it
        has not run today."""
        day = int(now // 86400)
        hour, minute = (int(x) for x in destination.schedule.split(":"))
        return (
            last_day is None or last_day < day
        ) and now >= day * 86400 + hour * 3600 + minute * 60

    async def tick(self) -> list[str]:
        """Run whatever is due now; answers what ran (for the log and the tests)."""
        ran: list[str] = []
        for destination in self.destinations:
            state = await self.store.export_state(destination.id)
            last = int(state["last_day"]) if state.get("last_day") else None
            now = self.clock()
            if self.due(destination, last, now):
                job = f"export:{destination.id}:{int(now // 86400)}"
                async with self.locked(job) as mine:
                    if mine and self.due(destination, await self._last_day(destination), now):
                        await self._export(destination, now)
                        ran.append(job)
        for path in sorted(self.inbound.glob("ftp_dpm_*")) if self.inbound.is_dir() else []:
            if parse_name(path.name) is None:
                continue
            async with self.locked(f"import:{path.name}") as mine:
                if mine and path.exists():  # another worker may have taken it meanwhile
                    await self._import(path)
                    ran.append(f"import:{path.name}")
        return ran

    async def _last_day(self, destination: FileDestinationConfig) -> int | None:
        state = await self.store.export_state(destination.id)
        return int(state["last_day"]) if state.get("last_day") else None

    async def run(self, stop: asyncio.Event, poll_s: float = POLL_S) -> None:
        """Until `stop` is set; a job under way is finished first."""
        log.info("worker started", extra={"destinations": [d.id for d in self.destinations]})
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as exc:  # a failed job is logged; the worker goes on
                log.error("worker job failed", extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)
        log.info("worker stopped")

    # ------------------------------------------------------------------ jobs

    async def _export(self, destination: FileDestinationConfig, now: float) -> None:
        mode = destination.mode
        log.info("export started", extra={"destination": destination.id, "mode": mode})
        result = await self.exporter.run(destination, mode, self.out_dir(destination), now=now)
        log.info("export done", extra=result.doc())

    async def _import(self, path: Path) -> None:
        log.info("import started", extra={"file": path.name})
        receipt_path = path.with_name(path.name + ".receipt.json")
        try:
            receipt = await self.importer.run(path)
        except StoreError as exc:
            # Redis is away: the file stays, and the next round resumes it where its
            # writes got (the importer's checkpoint).
            log.error(
                "import stopped, retried later", extra={"file": path.name, "error": repr(exc)}
            )
            return
        except Exception as exc:
            log.error("import failed", extra={"file": path.name, "error": repr(exc)})
            self._move(path, receipt_path, "failed")
            return
        log.info("import done", extra=receipt.doc())
        self._move(path, receipt_path, "done")

    def _move(self, path: Path, receipt: Path, folder: str) -> None:
        target = self.inbound / folder
        target.mkdir(exist_ok=True)
        for p in (path, receipt):
            if p.exists():
                shutil.move(p, target / p.name)

    @contextlib.asynccontextmanager
    async def locked(self, job: str) -> AsyncIterator[bool]:
        """Hold the job's lock while the block runs (renewed in the background); the
        block gets False, and should do nothing, when another worker holds it."""
        token = await self.store.acquire_lock(job, LOCK_TTL_MS)
        if token is None:
            yield False
            return
        renewing = asyncio.create_task(self._renew(job, token))
        try:
            yield True
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await self.store.release_lock(job, token)

    async def _renew(self, job: str, token: str) -> None:
        while True:
            await asyncio.sleep(LOCK_TTL_MS / 3000)
            if not await self.store.renew_lock(job, token, LOCK_TTL_MS):
                log.error("job lock lost", extra={"job": job})
                return

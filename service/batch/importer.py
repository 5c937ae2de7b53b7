"""`pixelsync import` (SPEC §9): inbound files into visitors' profiles.

The file is read as a stream, in chunks of CHUNK lines: each chunk's partner uids are
translated through the match table (two pipelined round trips), the matched visitors'
profiles read (one), changed as a request of theirs would change them (realizations,
removals, `.overwrite`, key-value signals against rule traits, segments worked out,
destinations acted on), and written through the write buffer, which is drained when
it fills: memory stays bounded whatever the file size.

Every CHECKPOINT_LINES, once the writes so far are applied, the import records how far
it got (ps:imports:progress): a run that fails is resumed after that line by the next
import of the same file, so no line's realizations are applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

from ..consent import Privacy
from ..identity import Visitor, VisitorKind
from ..qualification import Qualifier
from ..store import Store
from ..visits import Profiles, State
from .files import MAX_LINE_BYTES, InboundName, Line, LineError, Receipt, parse_line, parse_name

log = logging.getLogger("pixelsync.batch")

CHUNK: Final = 2000  # lines per round of lookups and writes
YIELD_EVERY: Final = 250  # lines applied between two turns of the event loop
# Buffered writes: past HIGH_WATER, wait until LOW_WATER are left before applying more
# (memory stays bounded, and Redis is never left idle by waiting for all of them).
HIGH_WATER: Final = 20_000
LOW_WATER: Final = 5_000
CHECKPOINT_LINES: Final = 250_000  # lines between two records of an import's progress: each
# waits for the buffered writes (about 0.2 s), a failure records its exact line anyway
STOP_DRAIN_S: Final = 10.0  # a failed import waits this long to record its progress
# Server-to-server data carries no browser's privacy signals: the partner's contract
# with the customer covers it.
BATCH_PRIVACY: Final = Privacy(gdpr_applies=False, tcf=None)

Progress = Callable[[Receipt, int], None]  # (receipt so far, bytes read)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def _lines(fh: LineReader) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line without its ending) or (n, None) for a line too long to read:
    such a line is skipped to its end without holding it in memory."""
    number = 0
    while raw := fh.readline(MAX_LINE_BYTES + 2):
        number += 1
        if not raw.endswith(b"\n") and len(raw) > MAX_LINE_BYTES:
            while (rest := fh.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass
            yield number, None
            continue
        yield number, raw.rstrip(b"\r\n")


def _readable_lines(fh: LineReader, receipt: Receipt) -> Iterator[tuple[int, bytes | None]]:
    """_lines, ending with an error in the receipt where the file cannot be read further
    (a truncated or corrupt gzip). Only reading errors: what the loop over the lines
    raises (Redis unreachable) stops the import."""
    try:
        yield from _lines(fh)
    except (OSError, EOFError, zlib.error) as exc:
        receipt.error(receipt.records_received + 1, f"file unreadable: {exc}")


class Importer:
    def __init__(self, store: Store, qualifier: Qualifier, profiles: Profiles) -> None:
        self.store = store
        self.qualifier = qualifier
        self.profiles = profiles
        self._last: dict[str, State] = {}  # the visitors of the chunk applied last
        self.applied_through = 0  # the last line of the file whose writes are queued
        self.checkpoint_lines = CHECKPOINT_LINES

    async def run(
        self,
        path: Path,
        *,
        force: bool = False,
        progress: Progress | None = None,
        now: float | None = None,
    ) -> Receipt:
        """Import one file; the receipt is also written beside it (<name>.receipt.json)."""
        receipt = Receipt(path.name)
        name = parse_name(path.name)
        if name is None:
            raise ValueError(
                f"{path.name}: not an inbound file name "
                "(ftp_dpm_<DPID>[_<TARGET_DPID>]_<unix seconds>.sync|overwrite[.<n>][.gz])"
            )
        sha = file_sha256(path)
        if not force and await self.store.imported(path.name) == sha:
            receipt.skipped = "imported before (same name and sha256); --force re-imports"
            return receipt
        resume_after = 0
        if not force:
            stopped = await self.store.import_progress(path.name)
            if stopped is not None and stopped[0] == sha:  # an earlier run stopped
                resume_after = receipt.resumed_after_line = stopped[1]
        receipt.started_at = _now()
        now = time.time() if now is None else now
        overflowed = self.store.overflowed
        self._last = {}  # what an earlier file left is no newer than a fresh read
        self.applied_through = checkpointed = resume_after
        ahead = _ReadAhead(self, name, int(now // 86400))
        try:
            with path.open("rb") as raw_fh:
                # raw_fh.tell(): the bytes of the file read so far, for the progress bar
                fh: LineReader = gzip.GzipFile(fileobj=raw_fh) if name.gzip else raw_fh
                chunk: list[tuple[int, Line]] = []
                for number, raw in _readable_lines(fh, receipt):
                    if number <= resume_after:
                        continue  # applied by the run that stopped
                    if raw is None:
                        receipt.records_received += 1
                        receipt.error(number, f"line longer than {MAX_LINE_BYTES // 1024} KiB")
                        continue
                    try:
                        line = parse_line(raw)
                    except LineError as exc:
                        receipt.records_received += 1
                        receipt.error(number, str(exc))
                        continue
                    if line is None:
                        continue  # an empty line (a trailing newline, say)
                    receipt.records_received += 1
                    chunk.append((number, line))
                    if len(chunk) >= CHUNK:
                        full, chunk = chunk, []
                        await ahead.push(full, receipt, now)
                        if self.applied_through - checkpointed >= self.checkpoint_lines:
                            await self._checkpoint(path.name, sha)
                            checkpointed = self.applied_through
                        if progress is not None:
                            progress(receipt, raw_fh.tell())
                if chunk:
                    await ahead.push(chunk, receipt, now)
                await ahead.finish(receipt, now)
        except BaseException:
            await ahead.cancel()  # no read left running
            await self._stopped(path.name, sha)
            raise
        await self.store.drain()
        receipt.stored_records = receipt.records_processed - (self.store.overflowed - overflowed)
        await self.store.mark_imported(path.name, sha)
        receipt.finished_at = _now()
        if progress is not None:
            progress(receipt, path.stat().st_size)
        beside = path.with_name(path.name + ".receipt.json")
        beside.write_text(json.dumps(receipt.doc(), indent=2) + "\n")
        return receipt

    async def _checkpoint(self, name: str, sha: str) -> None:
        """Every line up to applied_through is in Redis: a re-import after a failure
        starts after it (re-applying lines would count their realizations twice)."""
        await self.store.drain()
        await self.store.set_import_progress(name, sha, self.applied_through)

    async def _stopped(self, name: str, sha: str) -> None:
        """A failure: checkpoint what was applied, or, when Redis cannot take it, drop
        the writes after the last checkpoint (a re-import applies those lines again)."""
        try:
            await asyncio.wait_for(self._checkpoint(name, sha), STOP_DRAIN_S)
            log.error("import stopped", extra={"file": name, "resume_after": self.applied_through})
        except Exception:
            dropped = await self.store.abandon_writes()
            log.error(
                "import stopped, its writes since the last checkpoint dropped",
                extra={"file": name, "dropped": dropped},
            )

    async def read(self, chunk: list[tuple[int, Line]], name: InboundName, day: int) -> Read:
        """The visitors of a chunk's partner uids, and their stored state."""
        uids = list(dict.fromkeys(line.uid for _, line in chunk))
        owners, found = await self.store.lookup_states(name.target, uids, day)
        return owners, {uuid: State(read, stored=True) for uuid, read in found.items()}

    async def apply(
        self,
        chunk: list[tuple[int, Line]],
        read: Read,
        name: InboundName,
        receipt: Receipt,
        now: float,
    ) -> None:
        """Change the profiles as the chunk's lines say. `read` may predate the writes
        of the chunk before: its visitors are taken as that chunk left them (from a
        stale read, every save of theirs would lose its compare-and-set). A save that
        still finds the profile changed (another process wrote it) is applied again to
        what is stored, as for two requests of one visitor."""
        owners, states = read
        states.update((u, self._last[u]) for u in states.keys() & self._last.keys())
        self._last = states
        matched = [(line, owners[line.uid]) for _, line in chunk if line.uid in owners]
        receipt.no_matching_id += len(chunk) - len(matched)
        q = self.qualifier
        for i, (line, uuid) in enumerate(matched):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # the next chunk's read goes on meanwhile
            state = states[uuid]
            realize = q.importable(name.dpid, line.realize)
            if line.signals:
                realize += [s for s in q.realize(line.signals, {}) if s not in realize]
            remove = q.importable(name.dpid, line.remove)
            if name.overwrite:  # the data source's traits are what this line says
                remove += [s for s in q.owned_by(name.dpid, state.profile) if s not in realize]
            gone = [s for s in remove if s in state.profile.traits and s not in realize]
            if not realize and not gone:
                receipt.no_trait_realized += 1
                continue
            visitor = Visitor(VisitorKind.KNOWN, uuid)
            self.profiles.qualify(
                visitor, state, realize, BATCH_PRIVACY, {}, hand_out=False, now=now, removed=gone
            )
            receipt.records_processed += 1
            receipt.realized_traits += len(realize)
            receipt.removed_traits += len(gone)
        self.applied_through = chunk[-1][0]
        if self.store.buffered > HIGH_WATER:
            while self.store.buffered > LOW_WATER:
                await asyncio.sleep(0.002)


Read = tuple[dict[str, str], dict[str, State]]  # partner uid -> visitor, visitor -> state


class _ReadAhead:
    """Chunks applied one behind their reads: while a chunk's lines are applied (CPU
    in this process), the next chunk's lookups run in Redis."""

    def __init__(self, importer: Importer, name: InboundName, day: int) -> None:
        self.importer = importer
        self.name = name
        self.day = day
        self.waiting: tuple[list[tuple[int, Line]], asyncio.Task[Read]] | None = None

    async def push(self, chunk: list[tuple[int, Line]], receipt: Receipt, now: float) -> None:
        """Start reading `chunk`, and apply the one read before it."""
        task = asyncio.create_task(self.importer.read(chunk, self.name, self.day))
        before, self.waiting = self.waiting, (chunk, task)
        await self._apply(before, receipt, now)

    async def finish(self, receipt: Receipt, now: float) -> None:
        """Apply the chunk read last."""
        before, self.waiting = self.waiting, None
        await self._apply(before, receipt, now)

    async def _apply(
        self,
        read: tuple[list[tuple[int, Line]], asyncio.Task[Read]] | None,
        receipt: Receipt,
        now: float,
    ) -> None:
        if read is not None:
            chunk, task = read
            await self.importer.apply(chunk, await task, self.name, receipt, now)

    async def cancel(self) -> None:
        if self.waiting is not None:
            task = self.waiting[1]
            self.waiting = None
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

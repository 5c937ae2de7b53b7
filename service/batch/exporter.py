"""`pixelsync export` (SPEC §9): a file destination's segments, as files for its partner.

One line per visitor mapped to the destination's partner:
`<DP_UUID> <alias,…> <removed alias,…>`. `full`: every such visitor in a mapped
segment. `iter`: the visitors whose mapped segments changed since the destination's
last successful export, with the aliases they left.

Atomicity: the gzip files are written into a hidden folder beside the output and
renamed into place only when all are complete, the `.info` control file last. What an
export sends is staged in Redis (xs: keys) and becomes the destination's mark (x: keys)
only after its files are in place, so a failed export leaves the mark where the last
successful one put it. A crash while the mark moves is finished by the next export.

Erasures (SPEC §12): erasing a visitor turns its marks, committed and staged, into
tombstones (keys.py ``xr:``) holding the partner uid and the segments sent. An `iter`
export writes one removal line per tombstone, `<DP_UUID>  <alias,…>` (no current
segments, the aliases the destination still maps), and deletes the tombstones it wrote
with the marks, once its files are in place: a failed export keeps them, and one
written during the export waits for the next. A `full` export leaves tombstones for
the next `iter` one. An erasure may land at any point of an export: a visitor's line
that changes its mark is written only once the mark is staged, which happens only while
the visitor has a record, and an erasure deletes the staged mark after counting it in
the tombstone; so the partner is told each removal once, in this export or the next.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..config import Destination, FileDestinationConfig
from ..qualification import Qualifier
from ..store import ExportRow, Removal, Store

BUCKETS_PER_ROUND: Final = 256
log = logging.getLogger("pixelsync.export")


@dataclass
class _File:
    name: str
    lines: int = 0
    size: int = 0
    md5: str = ""


@dataclass
class SplitWriter:
    """gzip files of at most `split_lines` lines, named <stem>_<NNN>.sync.gz, written in
    `aside` until publish() renames them into `out`."""

    out: Path
    aside: Path
    stem: str
    split_lines: int
    files: list[_File] = field(default_factory=list)
    _fh: Any = None

    def write(self, line: str) -> None:
        if self._fh is None or self.files[-1].lines >= self.split_lines:
            self._close()
            self.files.append(_File(f"{self.stem}_{len(self.files) + 1:03d}.sync.gz"))
            # closed by _close(), when the file is full or the export ends
            self._fh = gzip.open(self.aside / self.files[-1].name, "wb")  # noqa: SIM115
        self._fh.write(line.encode() + b"\n")
        self.files[-1].lines += 1

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            done = self.files[-1]
            path = self.aside / done.name
            done.size = path.stat().st_size
            done.md5 = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()

    def info(self) -> dict[str, Any]:
        return {
            "Files": [
                {
                    "FileName": f.name,
                    "FileSequenceNumber": i + 1,
                    "FileLineCount": f.lines,
                    "FileByteSize": f.size,
                    "md5": f.md5,
                }
                for i, f in enumerate(self.files)
            ],
            "Totals": {
                "TotalNumberFiles": len(self.files),
                "TotalNumberLines": sum(f.lines for f in self.files),
                "TotalByteSize": sum(f.size for f in self.files),
            },
        }

    def publish(self) -> Path:
        """Rename the files into `out`, then write the .info file (aside, then renamed)."""
        self._close()
        for f in self.files:
            (self.aside / f.name).replace(self.out / f.name)
        info = self.aside / f"{self.stem}.info"
        info.write_text(json.dumps(self.info(), indent=2) + "\n")
        return info.replace(self.out / info.name)


@dataclass
class ExportResult:
    destination: int
    mode: str
    files: list[str]
    info: str
    lines: int
    unmapped: int  # visitors without a mapping to the destination's partner
    unchanged: int  # iter: visitors in the same segments as last time
    seconds: float
    skipped: str = ""  # why nothing was exported (a privacy rule), or ""
    removed: int = 0  # iter: erased visitors written as removals

    def doc(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Exporter:
    def __init__(
        self,
        store: Store,
        qualifier: Qualifier,
        allowed: Callable[[int], bool] | None = None,
    ) -> None:
        """`allowed(dpid)`: whether the partner's privacy rules let it be exported to
        (activities.PrivacyGate.export_permits); None: always."""
        self.store = store
        self.qualifier = qualifier
        self.allowed = allowed

    async def run(
        self,
        destination: Destination,
        mode: str,
        out: Path,
        *,
        now: float | None = None,
        failure: Callable[[int], None] | None = None,
    ) -> ExportResult:
        """`failure(lines)`, a test hook, may raise to fail the export mid-way."""
        if not isinstance(destination, FileDestinationConfig) or destination.partner is None:
            raise ValueError(f"destination {destination.id} is not a file destination")
        if mode not in ("iter", "full"):
            raise ValueError("mode must be iter or full")
        started = time.monotonic()
        now = time.time() if now is None else now
        day = int(now // 86400)
        dest, dpid = destination.id, destination.partner
        if self.allowed is not None and not self.allowed(dpid):
            # Done for the day (the worker does not retry); the mark stays, so the next
            # allowed iter export sends every change since the last one sent.
            why = f"partner {dpid}'s [[partners.privacy]] rules deny export"
            log.warning("export skipped", extra={"destination": dest, "reason": why})
            await self.store.set_export_state(dest, state="skipped", last_day=str(day))
            return ExportResult(dest, mode, [], "", 0, 0, 0, 0.0, skipped=why)
        aliases = {int(sid): alias for sid, alias in destination.mappings.items()}
        await self._recover(dest)
        await self.store.set_export_state(dest, state="staging")
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{dest}_{dpid}_{mode}_{int(now * 1000)}"
        aside = out / f".pixelsync-{stem}"
        aside.mkdir()
        writer = SplitWriter(out, aside, stem, destination.split_lines)
        unmapped = unchanged = erased = 0
        try:
            buckets = self.store.buckets
            for start in range(0, buckets, BUCKETS_PER_ROUND):
                removals: list[Removal] | None = [] if mode == "iter" else None
                rows = await self.store.scan_for_export(
                    dest,
                    range(start, min(start + BUCKETS_PER_ROUND, buckets)),
                    partner=dpid,
                    today=day,
                    removals=removals,
                )
                # A visitor erased and back with the same uuid and uid since the last
                # export: its tombstone's segments count as sent, in its own line.
                back = self._back(rows, removals) if removals else {}
                folded = {r.uuid: r for r in removals or () if back.get(r.uuid) == r.uid}
                sent = [r for r in removals or () if r.uuid not in folded]
                for removal in sent:
                    sids = [s for s in removal.sids if s in aliases]
                    if sids:
                        writer.write(f"{removal.uid}  {','.join(aliases[s] for s in sids)}")
                        erased += 1
                        if failure is not None:
                            failure(sum(f.lines for f in writer.files))
                staged: dict[str, list[int]] = {}
                lines: dict[str, str] = {}
                for row in rows:
                    uid = row.uid
                    if uid is None:
                        unmapped += 1
                        continue
                    profile = row.profile
                    profile.prune(day, self.qualifier.ttl_days, self.qualifier.keep_days)
                    current = sorted(
                        s for s in self.qualifier.evaluate(profile, day) if s in aliases
                    )
                    fold = folded.get(row.uuid)
                    before = row.exported
                    if fold is not None:
                        before = sorted({*before, *(s for s in fold.sids if s in aliases)})
                        staged[row.uuid] = current  # the partner holds them: a mark
                    elif current != before:
                        staged[row.uuid] = current
                    if mode == "iter" and current == before:
                        unchanged += 1
                        continue
                    removed = [s for s in before if s not in current] if mode == "iter" else []
                    if current or removed:
                        lines[row.uuid] = (
                            f"{uid.uid} {','.join(aliases[s] for s in current)} "
                            f"{','.join(aliases[s] for s in removed)}"
                        )
                # A line whose mark changes is written only once the mark is staged: a
                # visitor erased since the scan gets neither (its erasure made the
                # tombstone from the mark the partner holds, for the next export).
                done = await self.store.stage_marks(dest, staged, sent, folded)
                for uuid, line in lines.items():
                    if uuid in done or uuid not in staged:
                        writer.write(line)
                        if failure is not None:
                            failure(sum(f.lines for f in writer.files))
            info = writer.publish()
        except BaseException:
            with contextlib.suppress(Exception):
                writer._close()
            shutil.rmtree(aside, ignore_errors=True)
            with contextlib.suppress(Exception):
                await self.store.drop_staged_marks(dest)
                await self.store.set_export_state(dest, state="failed")
            raise
        shutil.rmtree(aside, ignore_errors=True)
        await self.store.set_export_state(dest, state="committing")
        await self.store.commit_marks(dest)
        await self.store.set_export_state(
            dest, state="done", last_day=str(day), last_ms=str(int(now * 1000))
        )
        return ExportResult(
            dest,
            mode,
            [f.name for f in writer.files],
            info.name,
            sum(f.lines for f in writer.files),
            unmapped,
            unchanged,
            round(time.monotonic() - started, 3),
            removed=erased,
        )

    @staticmethod
    def _back(rows: list[ExportRow], removals: list[Removal]) -> dict[str, str]:
        """The erased visitors that have a record again: uuid -> their uid now."""
        erased = {r.uuid for r in removals}
        return {row.uuid: row.uid.uid for row in rows if row.uid is not None and row.uuid in erased}

    async def _recover(self, dest: int) -> None:
        """Finish what an interrupted export left: a mark half moved is moved, what a
        failed one staged is dropped."""
        state = (await self.store.export_state(dest)).get("state")
        if state == "committing":
            await self.store.commit_marks(dest)
            await self.store.set_export_state(dest, state="done")
        elif state in ("staging", "failed"):
            await self.store.drop_staged_marks(dest)

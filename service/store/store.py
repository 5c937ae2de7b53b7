"""The Store: the one object the rest of pixelsync talks to Redis/Valkey through. It
speaks the domain (profiles, partner uids, segment ids) and delegates each concern
to a private module: mappings.py (the match table), profiles.py, counters.py (and
statistics), jobs.py (locks, import checkpoints, export marks) and sweep.py
(retention); they share access.py's connections and writes.py's write buffer."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ..replacements.redis_wire import RawConnection, SharedReads
from ..replacements.redis_wire import supported as raw_supported
from .access import Access
from .counters import Counters
from .jobs import ExportRow, Jobs, Removal
from .keys import META_KEY, KeySchema
from .mappings import MatchTable, PartnerUid, Retention
from .profiles import ProfileStore, Redo, VisitorState
from .servers import Client
from .sweep import Prune, Sweeper
from .writes import OVERLAY_MAX, ErasedHook, WriteBuffer

log = logging.getLogger("pixelsync.store")

P = ParamSpec("P")
T = TypeVar("T")


class StoreError(Exception):
    """The store cannot do what was asked: Redis is unreachable, too slow, refusing,
    or holds a data set written with another bucket count."""


def _surfaced(method: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """What redis-py and the network raise, raised as StoreError (a try: a context
    manager costs three times as much)."""

    @functools.wraps(method)
    async def surfaced(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:  # OSError: TimeoutError, ConnectionError
            raise StoreError(repr(exc)) from exc

    return surfaced


class Store:
    """The only code that talks to Redis/Valkey. Writes are buffered and return at
    once; whatever is awaited raises StoreError when Redis fails it."""

    def __init__(
        self,
        client: Client,
        schema: KeySchema,
        retention: Retention,
        *,
        buffer_max: int = 100_000,
        write_client: Client | None = None,
        write_url: str | None = None,
        read_back: bool = True,
        exports: Sequence[tuple[int, int]] = (),
    ) -> None:
        """`write_client`: a client for the write buffer, ideally without a timeout per
        answer (the buffer bounds each pipeline as a whole); default: `client`.
        `write_url`: the server's URL; a standalone redis:// one lets the write buffer
        and the reads use bare pipelined connections (replacements/redis_wire.py).
        `read_back`: whether this process's reads see the profiles it saved before
        they reach Redis; a batch job keeps each visitor's state itself, and would
        only make its memory grow with the file.
        `exports`: the file destinations, (id, partner dpid): an erasure turns the
        visitor's marks there into tombstones for their next iter export, and the
        sweeper keeps the tombstones of these only."""
        self.client = client
        self.schema = schema
        self.retention = retention
        cluster = isinstance(client, RedisCluster)
        bare = write_url if write_url and raw_supported(write_url) and not cluster else None
        self.writes = WriteBuffer(
            write_client or client,
            schema,
            capacity=buffer_max,
            before_first_write=self._check_meta,
            raw=RawConnection(bare) if bare else None,
            overlay_max=OVERLAY_MAX if read_back else 0,
            exports=exports,
        )
        self._access = access = Access(
            client,
            schema,
            self.writes,
            cluster=cluster,
            reads=SharedReads(bare) if bare else None,
            bulk=SharedReads(bare) if bare else None,
        )
        self._matches = MatchTable(access, retention)
        self._profiles = ProfileStore(access, retention)
        self._counters = Counters(access)
        self._jobs = Jobs(access, retention)
        self._sweeper = Sweeper(access, retention)
        self.tally = self._counters.tally  # counters, flushed each second (flush_counts)
        # A visitor was seen (distinct visitors: an hourly HyperLogLog). On every /event
        # of a returning visitor: bound once, not a call through the facade.
        self.seen: Callable[[str], None] = self._counters.seen
        # How it talks to the server: "bare", its own pipelined connections (standalone
        # redis://, replacements/redis_wire.py), or redis-py's (Cluster, rediss://, unix://).
        self.wire = "bare" if bare else "redis-py"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check the bucket count against the data set (StoreError when it differs),
        then start writing. When Redis is unreachable the check runs again before the
        first write."""
        try:
            await self._check_meta()
            await self._check_server_config()
        except RedisError as exc:
            log.warning("redis not reachable at start", extra={"error": str(exc)})
        self.writes.start()

    async def _check_meta(self) -> None:
        want = str(self.schema.buckets).encode()
        await self.client.hsetnx(META_KEY, b"buckets", want)
        have = await self.client.hget(META_KEY, b"buckets")
        if have != want:
            have_text = have.decode() if isinstance(have, bytes) else "?"
            message = (
                f"[store] match_buckets is {want.decode()} but the data set was written with "
                f"{have_text}; the bucket count cannot change once data is stored"
            )
            log.critical(message)
            raise StoreError(message)

    async def _check_server_config(self) -> None:
        """Warn when the server would store buckets as hashtables (several times the
        memory of listpacks). Managed services may refuse CONFIG: then say nothing."""
        try:
            got = cast(dict[str, Any], await self.client.config_get("hash-max-listpack-*"))
        except RedisError:
            return
        wanted = {"hash-max-listpack-entries": 256, "hash-max-listpack-value": 512}
        low = {k: v for k, v in wanted.items() if int(got.get(k, v)) < v}
        if low:
            log.warning(
                "redis keeps small hashes compact only up to limits too low for the "
                "match table; memory per mapping will be several times higher",
                extra={"have": {k: got.get(k) for k in low}, "recommended": low},
            )

    async def close(self, timeout: float = 10.0) -> None:
        """Flush what is buffered (within timeout), then stop."""
        try:
            await asyncio.wait_for(self.writes.drain(), timeout)
        except TimeoutError:
            log.error("shutdown with unflushed writes", extra={"ops": len(self.writes)})
        await self.writes.stop()
        if self.writes.raw is not None:
            await self.writes.raw.aclose()
        for shared in (self._access.reads, self._access.bulk):
            if shared is not None:
                await shared.aclose()
        if self.writes.client is not self.client:
            await self.writes.client.aclose()
        await self.client.aclose()

    async def ping(self, timeout: float = 0.25) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), timeout))
        except (RedisError, OSError):
            return False

    async def drain(self) -> None:
        """Wait until every write buffered so far has reached Redis."""
        await self.writes.drain()

    async def abandon_writes(self) -> int:
        """Stop applying buffered writes and drop them (a batch job that failed and
        will be resumed from its last checkpoint); answers how many were dropped. A
        pipeline already sent may have been applied."""
        await self.writes.stop()
        return self.writes.clear()

    @property
    def buffered(self) -> int:
        return len(self.writes)

    @property
    def overflowed(self) -> int:
        return self.writes.overflowed

    @property
    def healthy(self) -> bool:
        return self.writes.healthy

    @property
    def buckets(self) -> int:
        """How many buckets the visitors are spread over (scans go bucket by bucket)."""
        return self.schema.buckets

    # ------------------------------------------------------------------ the match table

    def touch_visitor(self, uuid: str, day: int) -> bool:
        """Refresh the visitor's last-seen day if it has a record (never creates one:
        a visitor with nothing stored costs no memory)."""
        return self._matches.touch(uuid, day)

    def put_mapping(self, uuid: str, dpid: int, uid: str, day: int) -> bool:
        """Store visitor <-> (dpid, uid); the latest mapping wins in both directions."""
        return self._matches.put(uuid, dpid, uid, day)

    def delete_mapping(self, uuid: str, dpid: int, uid: str) -> bool:
        """Remove the visitor's mapping to (dpid, uid), in both directions; each side
        only if it still names the other (a newer mapping wins)."""
        return self._matches.delete(uuid, dpid, uid)

    def clear_mapping(self, uuid: str, dpid: int) -> bool:
        """Remove the visitor's mapping at a partner, whatever uid it holds, in both
        directions (a /setuid clear): ordered with the visitor's other writes, so a
        uid set after it stays. Needs no read; bounded like every buffered write."""
        return self._matches.clear(uuid, dpid)

    def erase_visitor(self, uuid: str, source: str = "api") -> bool:
        """Erase everything about the visitor (profile, mappings in both directions,
        export marks; file destinations that were sent its segments get tombstones for
        their next iter export). One queued erasure per visitor however often it is
        asked; False (counted and logged) when the write buffer is full. `source`
        ("api", "optout") goes into the erasure log (`erasures`)."""
        return self.writes.erase(uuid, source)

    def on_erased(self, hook: ErasedHook | None) -> None:
        """Call hook(uuid, partner uid by dpid, segments of its profile) whenever an
        erasure of a visitor with mappings is applied (once per erasure, from the write
        task: it must not block). The web app sends the s2s exits with it."""
        self.writes.on_erased = hook

    @_surfaced
    async def erasures(self, since_ms: int, limit: int) -> tuple[list[tuple[int, str]], int, bool]:
        """The erasures applied since `since_ms` (unix ms): (the first `limit` as (unix
        ms, source), how many in all, whether older ones since then may have been
        dropped by the log's bound). Never who."""
        return await self._jobs.erasures(since_ms, limit)

    @_surfaced
    async def mappings(
        self, uuid: str, today: int, timeout: float | None = None
    ) -> dict[int, PartnerUid]:
        """Every live mapping of the visitor: dpid -> partner uid. One HGET."""
        if timeout is None:
            return await self._matches.mappings(uuid, today)
        return await asyncio.wait_for(self._matches.mappings(uuid, today), timeout)

    @_surfaced
    async def visitor_last_seen(self, uuid: str) -> int | None:
        """The day the visitor was last seen (None: no record), this process's queued
        touches included."""
        return await self._matches.last_seen(uuid)

    @_surfaced
    async def lookup(self, dpid: int, uids: Sequence[str], today: int) -> dict[str, str]:
        """Partner uids -> the visitor that last claimed each (unmatched left out)."""
        return await self._matches.lookup(dpid, uids, today)

    # ------------------------------------------------------------------ profiles

    async def visitor_state(self, uuid: str, timeout: float = 1.0) -> VisitorState:
        """The visitor's profile and mappings: one round trip, shared with the reads of
        concurrent requests; the profiles this process saved and has not written yet
        are read back. StoreError after `timeout` seconds."""
        try:  # not @_surfaced: the hot path's read, one coroutine less
            return await self._profiles.state(uuid, timeout)
        except (RedisError, OSError) as exc:
            raise StoreError(repr(exc)) from exc

    @_surfaced
    async def lookup_states(
        self, dpid: int, uids: Sequence[str], today: int
    ) -> tuple[dict[str, str], dict[str, VisitorState]]:
        """(partner uid -> the visitor that last claimed it, visitor -> its state): a
        lookup, then the matched visitors' profiles (three pipelined round trips). The
        states are Redis's alone: the batch job that asks keeps no read-back."""
        records: dict[str, bytes] = {}
        owners = await self._matches.lookup(dpid, uids, today, records)
        return owners, await self._profiles.states(records)

    def save_profile(self, uuid: str, state: VisitorState, redo: Redo) -> bool:
        """Store state.profile if nobody changed the stored one since `state` was read
        (or last saved); otherwise `redo` applies the change again to what is stored
        then (always, when the read failed). `state` then stands for what was saved,
        so a later change of it saves on top. Bounded like every buffered write: False
        (and counted) when the buffer is full."""
        return self._profiles.save(uuid, state, redo)

    # ------------------------------------------------------------------ counters, statistics

    def count_once(self, nonce: bytes, first: Callable[[], None]) -> bool:
        """Run `first` (count something) only the first time this nonce is seen within
        a day, across all processes."""
        return self._counters.count_once(nonce, first)

    def add_counts(self, minute: int, counts: Mapping[str, int]) -> None:
        """Add to the counters of a per-minute bucket (kept 8 days)."""
        self._counters.add(minute, counts)

    def flush_counts(self, now: float) -> None:
        """The tally's counts and the visitors seen, into the buckets of `now`."""
        self._counters.flush(now)

    @_surfaced
    async def distinct_visitors(self, hours: int, now: float) -> int:
        """Visitors seen in this clock hour and the `hours` before it: at least the last
        `hours` hours, at most one more (HyperLogLog: about 0.8 % off)."""
        return await self._counters.distinct_visitors(hours, now)

    @_surfaced
    async def mappings_stored(self, sample: int = 1024) -> tuple[int, bool]:
        """How many mappings the match table holds, from `sample` buckets scaled up:
        (count, exact)."""
        return await self._counters.mappings_stored(sample)

    @_surfaced
    async def counts_by_minute(self, minutes: range) -> list[dict[str, int]]:
        """The counters of each minute's bucket, in order (one pipeline)."""
        return await self._counters.by_minute(minutes)

    @_surfaced
    async def counts(self, minutes: range) -> dict[str, int]:
        """The counters summed over these minutes."""
        return await self._counters.summed(minutes)

    # ------------------------------------------------------------------ jobs

    @_surfaced
    async def acquire_lock(self, job: str, ttl_ms: int) -> str | None:
        """A token holding the job's lock for ttl_ms, or None when another holds it."""
        return await self._jobs.acquire_lock(job, ttl_ms)

    @_surfaced
    async def renew_lock(self, job: str, token: str, ttl_ms: int) -> bool:
        """Extend a lock this token holds; False when it was lost (expired, taken)."""
        return await self._jobs.renew_lock(job, token, ttl_ms)

    @_surfaced
    async def release_lock(self, job: str, token: str) -> None:
        await self._jobs.release_lock(job, token)

    @_surfaced
    async def imported(self, name: str) -> str | None:
        """The sha256 an inbound file of this name was imported with, if it was."""
        return await self._jobs.imported(name)

    @_surfaced
    async def mark_imported(self, name: str, sha256: str) -> None:
        await self._jobs.mark_imported(name, sha256)

    @_surfaced
    async def import_progress(self, name: str) -> tuple[str, int] | None:
        """(sha256, line): an earlier import of this file applied every line up to
        `line` and stopped."""
        return await self._jobs.import_progress(name)

    @_surfaced
    async def set_import_progress(self, name: str, sha256: str, line: int) -> None:
        await self._jobs.set_import_progress(name, sha256, line)

    @_surfaced
    async def scan_for_export(
        self,
        destination: int,
        buckets: range,
        *,
        partner: int,
        today: int,
        removals: list[Removal] | None = None,
    ) -> list[ExportRow]:
        """Every visitor with a record in these buckets, with its live uid at
        `partner`, its profile and its mark at `destination`: one pipeline. With
        `removals`, the destination's tombstones in these buckets are added to it."""
        return await self._jobs.scan_for_export(destination, buckets, partner, today, removals)

    @_surfaced
    async def stage_marks(
        self,
        destination: int,
        marks: Mapping[str, Sequence[int]],
        removals: Sequence[Removal] = (),
        folded: Mapping[str, Removal] | None = None,
    ) -> set[str]:
        """Stage export marks (visitor -> segments exported, [] to delete) and the
        tombstones sent (removals) for commit_marks: one pipeline. A mark is staged
        only if its visitor still has a record (an erasure may have come first), with
        its visitor's tombstone in `folded` (one whose segments the export counted in
        the visitor's line instead of a removal line), if any. Answers the visitors
        whose marks were staged: an export writes a visitor's line only then."""
        return await self._jobs.stage_marks(destination, marks, removals, folded)

    @_surfaced
    async def drop_staged_marks(self, destination: int, *, per_round: int = 256) -> None:
        """Forget what a failed export staged: the marks and tombstones stay as the last
        success left them."""
        await self._jobs.drop_staged_marks(destination, per_round)

    @_surfaced
    async def commit_marks(self, destination: int, *, per_round: int = 256) -> None:
        """Move the staged marks into the marks and delete the tombstones sent (each
        only if unchanged since), bucket by bucket (each atomically)."""
        await self._jobs.commit_marks(destination, per_round)

    @_surfaced
    async def export_state(self, destination: int) -> dict[str, str]:
        return await self._jobs.export_state(destination)

    @_surfaced
    async def set_export_state(self, destination: int, **values: str) -> None:
        await self._jobs.set_export_state(destination, **values)

    # ------------------------------------------------------------------ retention

    @_surfaced
    async def sweep(
        self,
        today: int,
        *,
        profiles: Prune | None = None,
        buckets_per_round: int = 16,
        duty: float = 0.1,
    ) -> dict[str, int]:
        """Delete visitors and mappings past their retention, and reverse entries whose
        forward entry is gone; with `profiles`, prune every profile (Prune: None
        deletes it). Answers the counts.

        Paced so that serving goes on: at the default duty of 10 %, a sweep costs the
        process a tenth of a core while it runs."""
        return await self._sweeper.sweep(today, profiles, buckets_per_round, duty)

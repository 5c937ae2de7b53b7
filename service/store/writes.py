"""Buffered writes: requests enqueue and return at once; one task per process applies
the queue in pipelines, so concurrent requests share round trips.

Each buffered op is one Redis command, so a pipeline's answers say per op whether it
was applied. A visitor <-> uid mapping is one script over both keys on a standalone
server (Map), and two ops on a Cluster, where the keys live in different slots
(Forward and Reverse); what they replaced may call for conditional clean-ups, queued
as ops of their own.

Failures:
- Redis unreachable or refusing writes for now (connection, timeout, OOM, READONLY,
  MISCONF, LOADING, CLUSTERDOWN, ...): the ops stay queued, in order, and are retried
  with backoff. The queue is bounded (`capacity`, [limits] buffer_max_ops): beyond it
  new writes are refused and counted, erasures included (the caller says so). The
  bound holds for every op, the writer's clean-ups included: a queued Map, the only
  op whose answer may call for two clean-ups, reserves a second slot, so requests
  are refused a little before the queue itself is full, and the queue never holds
  more than `capacity` ops. An erasure of a visitor whose erasure is queued already
  is that one (600 opt-outs of one cookie during an outage are one op).
- NOSCRIPT (the server lost its script cache): retried at once with EVAL.
- An error that belongs to the op itself (WRONGTYPE, a script error): that op is
  dropped, logged and counted (pixelsync_write_failures_total); the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, cast

from redis.exceptions import NoScriptError, ResponseError

from .. import metrics
from ..replacements.redis_wire import PackedPipe, RawConnection
from . import overlay, scripts
from .codec import (
    decode_uid,
    encode_uid,
    pack_day,
    pack_tombstone,
    parse_profile,
    parse_record,
    unpack_sids,
    unpack_tombstone,
    uuid16,
    uuid_from16,
    varint,
)
from .keys import ERASURES_KEY, ERASURES_MAX, TOMBSTONED_KEY, KeySchema
from .servers import Client

log = logging.getLogger("pixelsync.store")

_BATCH: Final = 512
PIPELINE_TIMEOUT_S: Final = 5.0  # a whole batch; a hung server is then "unreachable"
MAX_REDO: Final = 5  # concurrent profile writers: re-applied this often, then given up
OVERLAY_MAX: Final = 100_000  # profiles kept for reading back before they are written
NONCES_MAX: Final = 10_000  # Once keys remembered, to skip reloads of the same URL
ERASED_MAX: Final = 100_000  # erased visitors remembered...
ERASED_S: Final = 600.0  # ...this long


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Touch:
    """Refresh the last-seen day of a visitor that has a record."""

    uuid: str
    day: int


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Forward:
    """The visitor's entry for a partner: (dpid, uid) as of `day`."""

    effect: ClassVar = overlay.PUT  # as a pending entry of the read-back overlay

    uuid: str
    dpid: int
    enc: bytes
    day: int


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Map:
    """Forward and Reverse in one command (standalone servers only)."""

    effect: ClassVar = overlay.PUT

    uuid: str
    dpid: int
    enc: bytes
    day: int


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Reverse:
    """The uid's owner: this visitor."""

    uuid: str
    dpid: int
    enc: bytes


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Unlink:
    """Delete a reverse entry if it still names this visitor."""

    key: bytes
    field: bytes
    owner: bytes
    # (dpid, uid codec, uuid) when the writer queued it because the visitor's entry
    # moved off that uid: a later op of the same batch that claims the uid for the
    # visitor again makes it stale (_superseded).
    why: tuple[int, bytes, str] | None = None


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Disown:
    """Remove a visitor's entry for a partner if it still holds this uid."""

    effect: ClassVar = overlay.DROP_IF

    uuid: str
    dpid: int
    enc: bytes


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Clear:
    """Remove the visitor's entry for a partner, whatever uid it holds (a /setuid
    clear); the uid's reverse entry goes as a clean-up. Ordered with the visitor's
    other writes, so it never removes a uid set after it."""

    effect: ClassVar = overlay.DROP

    uuid: str
    dpid: int


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Erase:
    """Erase a visitor (its record, profile and export marks; tombstones for the file
    destinations that were sent its segments). `source`: what asked for it ("api",
    "optout"), for the ps:erasures log."""

    uuid: str
    source: str = "api"
    # What earlier tries found, for the hook and the log once the erasure applies
    # (a try that lost to another writer has already removed some of it).
    uids: dict[int, str] | None = None
    segments: frozenset[int] = frozenset()
    logged: bool = False


# (uuid, partner uid by dpid, the segments its profile held): called by the writer
# once an erasure of a visitor with mappings is applied (Store.on_erased).
ErasedHook = Callable[[str, dict[int, str], frozenset[int]], None]


# Given the profile and the visitor record as they now are in Redis (b"" / None for
# none), the profile value to store instead (profiles.py runs the caller's redo on it).
PackedRedo = Callable[[bytes, bytes | None], bytes]
UNREAD: Final = b"\x00"  # SaveProfile.expected of a request that could not read: never
# matches a stored value, so the write goes through a Reread and the request's redo


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class SaveProfile:
    """Replace the visitor's profile if it is still `expected` (b"": absent); `new`
    b"" deletes it. When another request changed it meanwhile, `redo` applies this
    request's change again to what is there now."""

    uuid: str
    expected: bytes
    new: bytes
    redo: PackedRedo
    attempt: int = 0


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Reread:
    """A SaveProfile that lost its compare-and-set: read what is there now (profile and
    visitor record, one script) and apply `redo` to it, as a new SaveProfile."""

    save: SaveProfile


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Once:
    """SET key NX with an expiry; `first` runs when this op was the one that set it
    (a tracked fire or ack counted once however often its URL is loaded)."""

    key: bytes
    ttl_s: int
    first: Callable[[], None]


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Count:
    """Add to a counter of a per-minute bucket (HINCRBY), which expires on its own."""

    key: bytes
    field: str
    n: int
    ttl_s: int


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 3x on the hot path
class Seen:
    """Add visitors (uuid16) to an hourly HyperLogLog, which expires on its own."""

    key: bytes
    members: list[bytes]
    ttl_s: int


Op = (
    Touch
    | Map
    | Forward
    | Reverse
    | Unlink
    | Disown
    | Clear
    | Erase
    | Count
    | Seen
    | SaveProfile
    | Reread
    | Once
)


def _transient(exc: BaseException) -> bool:
    """Whether an op's error says "not now" rather than "never"."""
    if not isinstance(exc, ResponseError):
        return True
    text = str(exc)
    return not (text.startswith("WRONGTYPE") or "script" in text.lower())


class WriteBuffer:
    def __init__(
        self,
        client: Client,
        schema: KeySchema,
        *,
        capacity: int,
        before_first_write: Callable[[], Any],
        raw: RawConnection | None = None,
        overlay_max: int = OVERLAY_MAX,
        exports: Sequence[tuple[int, int]] = (),
    ) -> None:
        """`exports`: the file destinations, (id, partner dpid): an erasure removes the
        visitor's marks there and leaves tombstones for their next iter export."""
        self.client = client
        self.exports = tuple(exports)
        self.on_erased: ErasedHook | None = None
        self.raw = raw  # batches go here when set (standalone redis://), else redis-py
        self.schema = schema
        self.scripts = scripts.Scripts()
        self._queue: deque[Op] = deque()
        self._capacity = capacity
        self._maps = 0  # Maps queued: each reserves a slot for its second clean-up
        # Room only erasures may take: an erasure (a visitor's opt-out) still fits
        # when other writes filled the queue during an outage.
        self._erase_room = capacity // 10
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._before_first_write = before_first_write
        self._ready = False
        self._task: asyncio.Task[None] | None = None
        self._written = {
            k: metrics.child(metrics.WRITES, k) for k in ("touch", "mapping", "erase", "profile")
        }
        self._applied = dict.fromkeys(self._written, 0)  # this batch's, by kind
        # Read your writes (overlay.py): what this process queued and Redis has not
        # acknowledged yet, as reads merge it over what Redis answers.
        # uuid -> the newest profile value queued and not yet written.
        self.unwritten_profiles: dict[str, bytes] = {}
        self.overlay_max = overlay_max  # 0: no read-back (batch jobs keep their own state)
        self._track = overlay_max > 0
        # uuid -> dpid -> the pending effect on that entry (dicts copied on write)
        self.pending: dict[str, dict[int, overlay.Effect]] = {}
        # (dpid, uid codec) -> the queued Map or Reverse naming its new owner
        self.claims: dict[tuple[int, bytes], Map | Reverse] = {}
        self.touched: dict[str, Touch] = {}  # uuid -> its newest queued Touch
        self.erasing: dict[str, Erase] = {}  # uuid -> its queued erasure
        # Visitors erased lately (uuid -> when): writes for them queued or redone after
        # the erasure are dropped, so that an erasure is not undone by a write in flight.
        self._erased: OrderedDict[str, float] = OrderedDict()
        self._nonces: OrderedDict[bytes, None] = OrderedDict()  # Once keys pushed lately
        self.overflowed = 0
        self.dropped_erasures = 0
        self.failed = 0
        self.healthy = True

    # ------------------------------------------------------------------ producer side

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, *ops: Op) -> bool:
        """Queue ops, in order; False (and counted) when the queue has no room for
        them all. Ops of a visitor being erased are dropped (answered True)."""
        if self._erased or self.erasing:
            ops = tuple(op for op in ops if not self._moot(op))
        if not ops:
            return True
        maps = 0
        for op in ops:
            if type(op) is Map:
                maps += 1
        limit = self._capacity if type(ops[0]) is Erase else self._capacity - self._erase_room
        if len(self._queue) + self._maps + len(ops) + maps > limit:
            self.overflowed += len(ops)
            metrics.BUFFER_OVERFLOW.inc(len(ops))
            if self.overflowed <= len(ops) or self.overflowed % 1000 < len(ops):
                log.error("write buffer full, write dropped", extra={"dropped": self.overflowed})
            return False
        self._maps += maps
        track = self._track
        for op in ops:
            kind = type(op)
            if kind is Map:  # inline: the one write of every /ibs
                if track:
                    put = cast(Map, op)
                    if put.uuid in self.pending:
                        self._register(op)
                    else:
                        self.claims[(put.dpid, put.enc)] = put
                        self.pending[put.uuid] = {put.dpid: put}
            elif kind is Erase:
                self._forget(cast(Erase, op))
            elif kind is SaveProfile:
                save = cast(SaveProfile, op)
                if (
                    save.expected != UNREAD  # built on nothing read: no value to read back
                    and len(self.unwritten_profiles) < self.overlay_max
                ):
                    self.unwritten_profiles[save.uuid] = save.new
            elif track:
                self._register(op)
        self._queue.extend(ops)
        self._idle.clear()
        self._wakeup.set()
        return True

    def _register(self, op: Op) -> None:
        """Enter a mapping op into the read-back overlay: the op stands for its effect."""
        kind = type(op)
        if kind is Map or kind is Forward or kind is Disown or kind is Clear:
            one = cast(Map | Forward | Disown | Clear, op)
            if kind is Map:
                self.claims[(one.dpid, cast(Map, op).enc)] = cast(Map, op)
            entries = self.pending.get(one.uuid)
            if entries is None:
                self.pending[one.uuid] = {one.dpid: op}
            else:  # copied: a reader's snapshot is never changed under it
                entries = dict(entries)
                entries[one.dpid] = overlay.compose(entries.get(one.dpid), op)
                self.pending[one.uuid] = entries
        elif kind is Touch:
            touch = cast(Touch, op)
            self.touched[touch.uuid] = touch
        elif kind is Reverse:
            reverse = cast(Reverse, op)
            self.claims[(reverse.dpid, reverse.enc)] = reverse

    def _retire(self, op: Op) -> None:
        """An op left the queue (applied, failed or skipped): its overlay entries go,
        unless a newer op's stand there."""
        kind = type(op)
        if kind is Touch:
            touch = cast(Touch, op)
            if self.touched.get(touch.uuid) is touch:
                del self.touched[touch.uuid]
            return
        if kind is Erase:
            erase = cast(Erase, op)
            if self.erasing.get(erase.uuid) is erase:
                del self.erasing[erase.uuid]
            return
        if kind is Map or kind is Reverse:
            claim = cast(Map | Reverse, op)
            slot = (claim.dpid, claim.enc)
            if self.claims.get(slot) is claim:
                del self.claims[slot]
            if kind is Reverse:
                return
        elif not (kind is Forward or kind is Disown or kind is Clear):
            return
        one = cast(Map | Forward | Disown | Clear, op)
        entries = self.pending.get(one.uuid)
        if entries is None:
            return
        effect = entries.get(one.dpid)
        if effect is None or not overlay.retires(effect, op):
            return
        if len(entries) == 1:
            del self.pending[one.uuid]
        else:
            entries = dict(entries)
            del entries[one.dpid]
            self.pending[one.uuid] = entries

    def push_once(self, op: Once) -> bool:
        """Push a Once unless this process pushed the same key lately (a reloaded
        tracking URL costs nothing then)."""
        if op.key in self._nonces:
            return True
        self._nonces[op.key] = None
        while len(self._nonces) > NONCES_MAX:
            self._nonces.popitem(last=False)
        return self.push(op)

    def erase(self, uuid: str, source: str = "api") -> bool:
        """Queue the visitor's erasure (one per visitor while queued); False when the
        queue is full (counted and logged)."""
        if self.push(Erase(uuid, source)):
            return True
        self.dropped_erasures += 1
        log.error("write buffer full, erasure dropped", extra={"uuid": uuid})
        return False

    def _forget(self, op: Erase) -> None:
        """An erasure: forget the visitor's read-back, and refuse its writes while the
        erasure is queued and for a while after (a request or a redo in flight would
        bring data back). Its ops queued before are skipped when a batch is built:
        constant time here, whatever the queue holds."""
        uuid = op.uuid
        self.erasing[uuid] = op
        now = time.monotonic()
        self._erased[uuid] = now
        self._erased.move_to_end(uuid)
        while self._erased and (
            len(self._erased) > ERASED_MAX or next(iter(self._erased.values())) < now - ERASED_S
        ):
            self._erased.popitem(last=False)
        self.unwritten_profiles.pop(uuid, None)
        for effect in (self.pending.pop(uuid, None) or {}).values():
            # Its claims of uids go too: those Maps are skipped, the previous owners
            # keep their uids.
            if effect.effect == overlay.PUT:
                slot = (effect.dpid, effect.enc)
                if self.claims.get(slot) is effect:
                    del self.claims[slot]
        self.touched.pop(uuid, None)

    def _moot(self, op: Op) -> bool:
        """Whether a pushed op changes nothing: an erasure already queued, or a write
        for a visitor being (or lately) erased."""
        if isinstance(op, Erase):
            return op.uuid in self.erasing
        return self._for_erased(op)

    def _for_erased(self, op: Op) -> bool:
        uuid = _visitor_of(op)
        if uuid is None:
            return False
        if uuid in self.erasing:
            return True
        when = self._erased.get(uuid)
        return when is not None and when > time.monotonic() - ERASED_S

    async def drain(self) -> None:
        """Wait until every op queued so far has been applied (or dropped as failed)."""
        while self._queue or not self._idle.is_set():
            await self._idle.wait()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="pixelsync-writes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def clear(self) -> int:
        """Drop every queued op (the writer stopped); answers how many."""
        dropped = len(self._queue)
        self._queue.clear()
        self._maps = 0
        self.unwritten_profiles.clear()
        self.pending.clear()
        self.claims.clear()
        self.touched.clear()
        self.erasing.clear()
        metrics.BUFFERED.set(0)
        self._idle.set()
        return dropped

    # ------------------------------------------------------------------ consumer side

    async def _loop(self) -> None:
        backoff = 0.05
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                taken = [self._queue[i] for i in range(min(_BATCH, len(self._queue)))]
                batch = self._skip_erased(taken) if self.erasing else taken
                try:
                    if not self._ready:
                        await self._before_first_write()
                        self._ready = True
                    again, trouble = await self._apply(batch)
                except Exception as exc:  # the writer must never die
                    again, trouble = list(batch), exc
                self._count_applied()
                for _ in taken:
                    self._queue.popleft()
                self._queue.extendleft(reversed(again))
                self._maps += _maps_in(again) - _maps_in(taken)
                metrics.BUFFERED.set(len(self._queue))
                if trouble is None:
                    if not self.healthy:
                        log.info("redis writes resumed", extra={"buffered": len(self._queue)})
                    self.healthy, backoff = True, 0.05
                    metrics.REDIS_UP.set(1)
                    continue
                metrics.REDIS_ERRORS.labels("flush").inc()
                if isinstance(trouble, NoScriptError):
                    continue  # scripts.forget() was called: EVAL from now on
                metrics.REDIS_UP.set(0)
                if self.healthy:
                    log.error("redis write failed, buffering", extra={"error": repr(trouble)})
                self.healthy = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            self._idle.set()

    def _skip_erased(self, taken: list[Op]) -> list[Op]:
        """The ops to apply, without those of visitors whose erasure is queued (all
        queued before it: the visitor's writes are refused meanwhile)."""
        batch: list[Op] = []
        for op in taken:
            uuid = _visitor_of(op)
            if uuid is not None and uuid in self.erasing:
                self._retire(op)
            else:
                batch.append(op)
        return batch

    def _count_applied(self) -> None:
        """Into Prometheus once a batch: an inc() per op showed in the /ibs profile."""
        for kind, n in self._applied.items():
            if n:
                self._written[kind].inc(n)
                self._applied[kind] = 0

    async def _apply(self, batch: Sequence[Op]) -> tuple[list[Op], BaseException | None]:
        """Apply ops in order. Answers the ops to put back in front of the queue (the
        ones not applied, then clean-ups) and the error that stopped some, if any."""
        if not self.scripts.loaded:
            with contextlib.suppress(ResponseError):  # EVAL with the text works as well
                await asyncio.wait_for(self.scripts.load(self.client), PIPELINE_TIMEOUT_S)
        again: list[Op] = []
        run: list[Op] = []
        for i, op in enumerate(batch):
            if not isinstance(op, Erase):
                run.append(op)
                continue
            try:
                back, trouble = await self._pipeline(run, batch[i + 1 :])
            except Exception as exc:  # not known to be applied: they go again, with the rest
                return again + run + list(batch[i:]), exc
            again += back
            run = []
            if trouble is not None:
                return again + list(batch[i:]), trouble
            try:
                if await self._erase(op):
                    self._retire(op)
                else:
                    again.append(op)  # another writer changed the record: erase it again
            except Exception as exc:  # the ops before it are done: only it and the rest
                if isinstance(exc, NoScriptError):
                    self.scripts.forget()  # EVAL from now on
                return again + list(batch[i:]), exc
        try:
            back, trouble = await self._pipeline(run)
        except Exception as exc:  # the clean-ups of the runs before are kept
            return again + run, exc
        return again + back, trouble

    async def _pipeline(
        self, ops: Sequence[Op], after: Sequence[Op] = ()
    ) -> tuple[list[Op], BaseException | None]:
        """Apply ops in one pipeline. `after`: the ops of the batch that follow them
        (they are applied before the clean-ups, which go to the front of the queue)."""
        if not ops:
            return [], None
        if self.raw is not None:
            packed = PackedPipe()
            for op in ops:
                self._queue_command(packed, op)
            results = await asyncio.wait_for(self.raw.execute(packed), PIPELINE_TIMEOUT_S)
        else:
            pipe = self.client.pipeline(transaction=False)
            for op in ops:
                self._queue_command(pipe, op)
            results = await asyncio.wait_for(pipe.execute(raise_on_error=False), PIPELINE_TIMEOUT_S)
        not_applied: list[Op] = []
        cleanups: list[Op] = []
        trouble: BaseException | None = None
        redone: dict[str, int] = {}  # visitor -> its redone SaveProfile in cleanups
        claimed: dict[tuple[Any, ...], int] | None = None  # built when first needed
        for position, (op, result) in enumerate(zip(ops, results, strict=True)):
            if not isinstance(result, BaseException):
                follow: list[Op] = []
                if isinstance(op, Reread):
                    chained = redone.get(op.save.uuid)
                    if chained is not None and self._chain(cleanups, chained, op.save, result):
                        continue
                    follow = self._after(op, result)
                    if follow:  # its SaveProfile
                        redone[op.save.uuid] = len(cleanups)
                else:
                    follow = self._after(op, result)
                if follow and (position + 1 < len(ops) or after):
                    if claimed is None:
                        claimed = _claimed_last(ops, after)
                    follow = [c for c in follow if not _superseded(c, position, claimed)]
                if self._track:
                    for cleanup in follow:
                        self._register(cleanup)  # before the op's entries go
                    self._retire(op)
                cleanups += follow
            elif isinstance(result, NoScriptError):
                self.scripts.forget()
                not_applied.append(op)
                trouble = result
            elif _transient(result):
                not_applied.append(op)
                trouble = result
            else:
                self._retire(op)
                if isinstance(op, SaveProfile):
                    self._unsaved(op.uuid, op.new)
                self.failed += 1
                metrics.WRITE_FAILURES.inc()
                log.error(
                    "write refused on its own, dropped",
                    extra={"op": type(op).__name__, "error": repr(result)},
                )
        return not_applied + cleanups, trouble

    def _queue_command(self, pipe: Any, op: Op) -> None:
        s, run = self.schema, self.scripts.queue
        if isinstance(op, Touch):
            run(pipe, scripts.UPSERT, s.visitor_key(op.uuid), uuid16(op.uuid),
                pack_day(op.day), b"", b"", b"")  # fmt: skip
        elif isinstance(op, Forward):
            day = pack_day(op.day)
            run(pipe, scripts.UPSERT, s.visitor_key(op.uuid), uuid16(op.uuid),
                day, varint(op.dpid), day + op.enc, b"")  # fmt: skip
        elif isinstance(op, Map):
            day, owner = pack_day(op.day), uuid16(op.uuid)
            key, field = s.reverse_slot(op.dpid, decode_uid(op.enc))
            self.scripts.queue_keys(pipe, scripts.MAP, 2, s.visitor_key(op.uuid), key,
                owner, day, varint(op.dpid), day + op.enc, b"", field, owner)  # fmt: skip
        elif isinstance(op, Reverse):
            key, field = s.reverse_slot(op.dpid, decode_uid(op.enc))
            run(pipe, scripts.SWAP, key, field, uuid16(op.uuid))
        elif isinstance(op, Unlink):
            run(pipe, scripts.CAS, op.key, op.field, op.owner, b"")
        elif isinstance(op, Disown):
            run(pipe, scripts.UPSERT, s.visitor_key(op.uuid), uuid16(op.uuid),
                b"", varint(op.dpid), b"", op.enc)  # fmt: skip
        elif isinstance(op, Clear):
            run(pipe, scripts.UPSERT, s.visitor_key(op.uuid), uuid16(op.uuid),
                b"", varint(op.dpid), b"", b"")  # fmt: skip
        elif isinstance(op, Count):
            run(pipe, scripts.COUNT, op.key, op.field.encode(), op.n, op.ttl_s)
        elif isinstance(op, Seen):
            run(pipe, scripts.SEEN, op.key, op.ttl_s, *op.members)
        elif isinstance(op, SaveProfile):
            run(pipe, scripts.REPLACE, s.profile_key(op.uuid), uuid16(op.uuid),
                op.expected, op.new)  # fmt: skip
        elif isinstance(op, Reread):
            uuid = op.save.uuid
            self.scripts.queue_keys(pipe, scripts.REREAD, 2, s.profile_key(uuid),
                s.visitor_key(uuid), uuid16(uuid))  # fmt: skip
        elif isinstance(op, Once):
            pipe.execute_command("SET", op.key, b"1", "NX", "EX", op.ttl_s)
        else:
            raise AssertionError(op)

    def _after(self, op: Op, result: Any) -> list[Op]:
        """Count an applied op; answer the clean-ups what it replaced calls for."""
        if isinstance(op, Touch):
            self._applied["touch"] += 1
        elif isinstance(op, Map):
            old, owner = cast(list[bytes | None], result)
            return self._replaced(op, old) + self._taken(op, owner)
        elif isinstance(op, Forward | Clear):
            return self._replaced(op, cast(bytes | None, result))
        elif isinstance(op, Reverse):
            return self._taken(op, cast(bytes | None, result))
        elif isinstance(op, SaveProfile):
            if result != 0:
                self._saved(op.uuid, op.new)
            elif op.attempt >= MAX_REDO:
                self._saved(op.uuid, op.new)
                self.failed += 1
                metrics.WRITE_FAILURES.inc()
                log.error("profile write lost to concurrent writers", extra={"uuid": op.uuid})
            else:
                return [Reread(op)]  # someone else wrote meanwhile: read it, redo on it
        elif isinstance(op, Reread):
            return self._redo(op.save, *cast(list[bytes | None], result))
        elif isinstance(op, Once) and result is not None:
            op.first()
        return []

    def _saved(self, uuid: str, value: bytes) -> None:
        self._applied["profile"] += 1
        self._unsaved(uuid, value)

    def _unsaved(self, uuid: str, value: bytes) -> None:
        """The save of `value` left the queue: it is no longer read back (unless a
        newer save of the visitor stands there)."""
        if self.unwritten_profiles.get(uuid) is value:
            del self.unwritten_profiles[uuid]

    def _redo(self, save: SaveProfile, profile: bytes | None, record: bytes | None) -> list[Op]:
        current = profile or b""
        if self._for_erased(save):
            return []
        if current == save.new:  # applied already (a retried batch whose answer was lost)
            self._saved(save.uuid, save.new)
            return []
        try:
            new = save.redo(current, record)
        except Exception as exc:  # a domain bug must not stop the writer
            self._unsaved(save.uuid, save.new)
            self.failed += 1
            metrics.WRITE_FAILURES.inc()
            log.error("profile redo failed", extra={"uuid": save.uuid, "error": repr(exc)})
            return []
        if save.uuid in self.unwritten_profiles:
            self.unwritten_profiles[save.uuid] = new
        return [SaveProfile(save.uuid, current, new, save.redo, save.attempt + 1)]

    def _chain(self, cleanups: list[Op], at: int, later: SaveProfile, read: Any) -> bool:
        """A second change of one visitor redone in the same batch as a first (a burst
        of its requests lost their compare-and-set together): applied on top of the
        first, in one save. Redone apart, each round would let only one of them win and
        the rest would run out of attempts. False: redo it on its own."""
        earlier = cleanups[at]
        profile, record = cast(list[bytes | None], read)
        if not isinstance(earlier, SaveProfile) or earlier.expected != (profile or b""):
            return False  # not redone, or read around another write
        if self._for_erased(later):
            return True
        try:
            new = later.redo(earlier.new, record)
        except Exception as exc:  # a domain bug must not stop the writer
            self._unsaved(later.uuid, later.new)
            self.failed += 1
            metrics.WRITE_FAILURES.inc()
            log.error("profile redo failed", extra={"uuid": later.uuid, "error": repr(exc)})
            return True
        first, second = earlier.redo, later.redo

        def both(current: bytes, record: bytes | None) -> bytes:
            return second(first(current, record), record)

        attempt = max(earlier.attempt, later.attempt + 1)
        cleanups[at] = SaveProfile(earlier.uuid, earlier.expected, new, both, attempt)
        if earlier.uuid in self.unwritten_profiles:
            self.unwritten_profiles[earlier.uuid] = new
        return True

    def _replaced(self, op: Forward | Map | Clear, old: bytes | None) -> list[Op]:
        self._applied["mapping"] += 1
        if old is not None and (isinstance(op, Clear) or old[2:] != op.enc):
            # The visitor had another uid at this partner: unlink that uid.
            key, field = self.schema.reverse_slot(op.dpid, decode_uid(old[2:]))
            return [Unlink(key, field, uuid16(op.uuid), (op.dpid, old[2:], op.uuid))]
        return []

    def _taken(self, op: Reverse | Map, owner: bytes | None) -> list[Op]:
        if owner is not None and owner != uuid16(op.uuid):
            # The uid belonged to another visitor: take it away from that one.
            return [Disown(uuid_from16(owner), op.dpid, op.enc)]
        return []

    async def _erase(self, op: Erase) -> bool:
        """Two round trips: read the visitor's record, profile, and its marks, staged
        marks and tombstones; then one script (scripts.ERASE) deletes record, profile,
        marks and staged marks and writes the tombstones, if all are still as read,
        beside the record's reverse entries and the ps:erasures entry. A tombstone holds
        the segments of the mark and of the staged mark: an export under way may have
        sent either. No clean-ups queued: an erasure takes one slot of the queue,
        whatever the visitor's number of partners. False: another writer (or an export)
        changed them meanwhile, erase again (its reverse entries removed already were
        being erased anyway; one left behind is swept, reads verify them)."""
        s, exports = self.schema, self.exports
        field = uuid16(op.uuid)
        bucket = s.bucket_of(field)
        key, profile_key = s.visitor_key_of_bucket(bucket), s.profile_key_of_bucket(bucket)
        pipe = self.client.pipeline(transaction=False)
        keys = [key, profile_key]
        for dest, _ in exports:
            keys += [
                s.export_key_of_bucket(dest, bucket, staged=False),
                s.tombstone_key_of_bucket(dest, bucket, staged=False),
                s.export_key_of_bucket(dest, bucket, staged=True),
            ]
        for k in keys:
            pipe.hget(k, field)
        found = await asyncio.wait_for(pipe.execute(), PIPELINE_TIMEOUT_S)
        record, profile = cast(list[bytes | None], found[:2])
        entries = parse_record(record)[1] if record is not None else {}
        uids = {dpid: decode_uid(rest[2:]) for dpid, rest in entries.items()}
        marks = cast(list[bytes | None], found[2:])
        args: list[bytes] = []
        for (_, partner), mark, old, staged in zip(
            exports, marks[0::3], marks[1::3], marks[2::3], strict=True
        ):
            entry = entries.get(partner)
            sent = {*unpack_sids(mark), *unpack_sids(staged)}
            tombstone = b"" if not sent or entry is None else _tombstone(entry[2:], sent, old)
            args += [_as_read(mark), _as_read(old), _as_read(staged), tombstone]
        tombstones = args[3::4]
        held = marks[0::3] + marks[2::3]  # marks and staged marks
        if record is None and profile is None and all(m is None for m in held):
            return self._erased_now(op)  # nothing stored (or erased by a try before)
        if op.uids is None:
            op.uids = {}
        op.uids.update(uids)
        if profile is not None and self.on_erased is not None:
            op.segments |= parse_profile(profile).segments
        pipe = self.client.pipeline(transaction=False)
        self.scripts.queue_keys(pipe, scripts.ERASE, len(keys), *keys, field, record or b"",
                                *args)  # fmt: skip
        for unlink in unlinks(s, field, entries):
            self.scripts.queue(pipe, scripts.CAS, unlink.key, unlink.field, unlink.owner, b"")
        for (dest, _), tombstone in zip(exports, tombstones, strict=True):
            if tombstone:
                pipe.sadd(TOMBSTONED_KEY, dest)
        if not op.logged:
            pipe.xadd(ERASURES_KEY, {b"source": op.source.encode()},
                      maxlen=ERASURES_MAX, approximate=True)  # fmt: skip
        done = await asyncio.wait_for(pipe.execute(), PIPELINE_TIMEOUT_S)
        op.logged = True
        if not done[0]:
            return False
        return self._erased_now(op)

    def _erased_now(self, op: Erase) -> bool:
        self._applied["erase"] += 1
        hook = self.on_erased
        if hook is not None and op.uids:
            try:
                hook(op.uuid, op.uids, op.segments)
            except Exception as exc:  # the writer must never die
                log.error("erasure hook failed", extra={"error": repr(exc)})
        return True


def _tombstone(uid: bytes, sent: set[int], old: bytes | None) -> bytes:
    """The tombstone of a visitor whose partner was sent the segments `sent` and knows
    it as `uid` (codec), merged with one left by an earlier erasure of the same uid (a
    visitor erased, back with the same uuid, erased again before an export)."""
    if old is not None:
        known, before = unpack_tombstone(old)
        if encode_uid(known) == uid:
            sent = {*before, *sent}
    return pack_tombstone(uid, sorted(sent))


def _as_read(value: bytes | None) -> bytes:
    """A hash field's value as scripts.ERASE compares it: b"" when absent."""
    return b"" if value is None else b"=" + value


def unlinks(schema: KeySchema, owner: bytes, entries: dict[int, bytes]) -> Iterable[Unlink]:
    """The reverse entries of these forward entries, as conditional deletions."""
    for dpid, rest in entries.items():
        yield Unlink(*schema.reverse_slot(dpid, decode_uid(rest[2:])), owner)


def _claimed_last(ops: Sequence[Op], after: Sequence[Op]) -> dict[tuple[Any, ...], int]:
    """Where each (partner, uid, visitor) claim of a batch's ops last is: ("r", dpid,
    uid codec, uuid) for a reverse entry set (Map, Reverse), ("f", uuid, dpid, uid
    codec) for a forward entry set (Map, Forward); positions past `ops` are `after`'s."""
    last: dict[tuple[Any, ...], int] = {}
    for at, op in enumerate((*ops, *after)):
        if isinstance(op, Map | Reverse):
            last[("r", op.dpid, op.enc, op.uuid)] = at
        if isinstance(op, Map | Forward):
            last[("f", op.uuid, op.dpid, op.enc)] = at
    return last


def _superseded(cleanup: Op, at: int, claimed: dict[tuple[Any, ...], int]) -> bool:
    """Whether an op of the batch after position `at` set again what the clean-up
    would remove: a visitor that gave up a uid and took it back (a /setuid clear then
    the same uid), or a uid taken from a visitor that claimed it back. Clean-ups go to
    the front of the queue, after the whole batch: run, it would undo that op."""
    if isinstance(cleanup, Unlink) and cleanup.why is not None:
        return claimed.get(("r", *cleanup.why), -1) > at
    if isinstance(cleanup, Disown):
        return claimed.get(("f", cleanup.uuid, cleanup.dpid, cleanup.enc), -1) > at
    return False


def _visitor_of(op: Op) -> str | None:
    """The visitor whose data an op writes (None: an op of no one visitor)."""
    if isinstance(op, Touch | Map | Forward | Reverse | Disown | Clear | SaveProfile):
        return op.uuid
    if isinstance(op, Reread):
        return op.save.uuid
    return None


def _maps_in(ops: Iterable[Op]) -> int:
    n = 0
    for op in ops:
        if type(op) is Map:
            n += 1
    return n

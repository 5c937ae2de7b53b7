"""The Store: buffered, pipelined writes and verified reads over the schema of keys.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import metrics
from .codec import (
    build_record,
    decode_uid,
    encode_uid,
    pack_day,
    parse_record,
    unpack_day,
    uuid16,
    uuid_from16,
    varint,
)
from .connect import Client
from .keys import META_KEY, KeySchema, lock_key

log = logging.getLogger("pixelsync.store")

# Set a hash field, answer its previous value (reverse entries: uid hash -> uuid16).
_SWAP: Final = b"""
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"""
# Delete a hash field only if its value is still ARGV[2].
_DEL_IF: Final = b"""
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
# Replace a hash field's value only if it is still ARGV[2] ('' as ARGV[3] deletes it).
_CAS: Final = b"""
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then return redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
# Edit one visitor record (codec.parse_record's layout) in place:
# ARGV[1] field (uuid16), ARGV[2] visitor day2 or '' (keep), ARGV[3] dpid varint or ''
# (touch only), ARGV[4] new entry body (day2 + uid codec) or '' (remove the entry),
# ARGV[5] '' or the uid codec the current entry must have for anything to change.
# Answers the entry body it replaced or removed (false if none).
_UPSERT: Final = b"""
local v = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '' then
  if v then v = string.sub(v, 3) else v = '' end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. v)
  return false
end
local out = {}
local old = false
if v then
  local pos, n = 3, #v
  while pos <= n do
    local s = pos
    while string.byte(v, pos) >= 128 do pos = pos + 1 end
    local dp = string.sub(v, s, pos)
    pos = pos + 1
    local len, mul = 0, 1
    while true do
      local b = string.byte(v, pos)
      pos = pos + 1
      len = len + (b % 128) * mul
      mul = mul * 128
      if b < 128 then break end
    end
    if dp == ARGV[3] then old = string.sub(v, pos, pos + len - 1)
    else out[#out + 1] = string.sub(v, s, pos + len - 1) end
    pos = pos + len
  end
end
if ARGV[5] ~= '' and (not old or string.sub(old, 3) ~= ARGV[5]) then return false end
if ARGV[4] ~= '' then
  local n, len = #ARGV[4], ''
  while n >= 128 do len = len .. string.char(n % 128 + 128); n = math.floor(n / 128) end
  out[#out + 1] = ARGV[3] .. len .. string.char(n) .. ARGV[4]
elseif not v then
  return false
end
local day = ARGV[2]
if day == '' then
  if v then day = string.sub(v, 1, 2) else day = string.sub(ARGV[4], 1, 2) end
end
redis.call('HSET', KEYS[1], ARGV[1], day .. table.concat(out))
return old
"""
_SCRIPTS: Final = (_SWAP, _DEL_IF, _CAS, _UPSERT)
_BATCH: Final = 512
_POISON_AFTER: Final = 5  # failed flushes of one batch before it is split


class StoreError(Exception):
    """The store cannot serve a read (Redis unreachable or misconfigured)."""


@dataclass(frozen=True, slots=True)
class PartnerUid:
    uid: str
    day: int


@dataclass(frozen=True, slots=True)
class _Touch:
    uuid: str
    day: int


@dataclass(frozen=True, slots=True)
class _Map:
    uuid: str
    dpid: int
    enc: bytes
    day: int


@dataclass(frozen=True, slots=True)
class _Erase:
    uuid: str


_Op = _Touch | _Map | _Erase


@dataclass(frozen=True)
class Retention:
    """How long entries live without being seen, in days."""

    visitor_days: int
    mapping_days: Mapping[int, int]  # per dpid
    default_mapping_days: int

    def mapping_alive(self, dpid: int, day: int, today: int) -> bool:
        return today - day <= self.mapping_days.get(dpid, self.default_mapping_days)


class Store:
    """The only code that talks to Redis/Valkey."""

    def __init__(
        self,
        client: Client,
        schema: KeySchema,
        retention: Retention,
        *,
        buffer_max: int = 100_000,
    ) -> None:
        self.client = client
        self.schema = schema
        self.retention = retention
        self._buffer: deque[_Op] = deque()
        self._buffer_max = buffer_max
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._flusher: asyncio.Task[None] | None = None
        self._sha: dict[bytes, str] = {}
        self.overflowed = 0
        self.healthy = True

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check the bucket count against the data set, then start the flusher."""
        try:
            await self._check_meta()
            await self._check_server_config()
        except RedisError as exc:
            # Serving goes on: writes are buffered until Redis is back.
            log.warning("redis not reachable at start", extra={"error": str(exc)})
        self._flusher = asyncio.create_task(self._flush_loop(), name="pixelsync-flusher")

    async def _check_meta(self) -> None:
        want = str(self.schema.buckets).encode()
        await self.client.hsetnx(META_KEY, b"buckets", want)
        have = await self.client.hget(META_KEY, b"buckets")
        if have != want:
            have_text = have.decode() if isinstance(have, bytes) else "?"
            raise StoreError(
                f"[store] match_buckets is {want.decode()} but the data set was written with "
                f"{have_text}; the bucket count cannot change once data is stored"
            )

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
            await asyncio.wait_for(self.drain(), timeout)
        except TimeoutError:
            log.error("shutdown with unflushed writes", extra={"ops": len(self._buffer)})
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.client.aclose()

    async def ping(self, timeout: float = 0.25) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), timeout))
        except (RedisError, OSError, TimeoutError):
            return False

    # ------------------------------------------------------------------ buffered writes

    def _enqueue(self, op: _Op) -> bool:
        if len(self._buffer) >= self._buffer_max:
            self.overflowed += 1
            metrics.BUFFER_OVERFLOW.inc()
            if self.overflowed == 1 or self.overflowed % 1000 == 0:
                log.error("write buffer full, write dropped", extra={"dropped": self.overflowed})
            return False
        self._buffer.append(op)
        self._idle.clear()
        self._wakeup.set()
        return True

    def touch_visitor(self, uuid: str, day: int) -> bool:
        return self._enqueue(_Touch(uuid, day))

    def put_mapping(self, uuid: str, dpid: int, uid: str, day: int) -> bool:
        """Store visitor <-> (dpid, uid); the latest mapping wins in both directions."""
        return self._enqueue(_Map(uuid, dpid, encode_uid(uid), day))

    def erase_visitor(self, uuid: str) -> bool:
        return self._enqueue(_Erase(uuid))

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def drain(self) -> None:
        """Wait until every write buffered so far has reached Redis."""
        while self._buffer or not self._idle.is_set():
            await self._idle.wait()

    async def _flush_loop(self) -> None:
        backoff = 0.05
        failures = 0
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._buffer:
                batch = [self._buffer[i] for i in range(min(_BATCH, len(self._buffer)))]
                try:
                    if failures >= _POISON_AFTER and await self.ping():
                        # Redis answers, yet this batch keeps failing: apply it op by op
                        # and give up on the ops that fail on their own.
                        await self._apply_one_by_one(batch)
                    else:
                        await self._apply(batch)
                except Exception as exc:  # the flusher must never die
                    failures += 1
                    metrics.REDIS_ERRORS.labels("flush").inc()
                    metrics.REDIS_UP.set(0)
                    if self.healthy:
                        log.error("redis write failed, buffering", extra={"error": repr(exc)})
                    self.healthy = False
                    metrics.BUFFERED.set(len(self._buffer))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                for _ in batch:
                    self._buffer.popleft()
                if not self.healthy:
                    log.info("redis writes resumed", extra={"buffered": len(self._buffer)})
                self.healthy = True
                backoff, failures = 0.05, 0
                metrics.REDIS_UP.set(1)
                metrics.BUFFERED.set(len(self._buffer))
            self._idle.set()

    async def _apply_one_by_one(self, batch: Sequence[_Op]) -> None:
        for op in batch:
            try:
                await self._apply([op])
            except (RedisConnectionError, RedisTimeoutError, OSError):
                raise  # Redis went away after all: keep the rest buffered
            except Exception as exc:
                metrics.WRITE_FAILURES.inc()
                log.error(
                    "write failed on its own, dropped",
                    extra={"op": type(op).__name__.strip("_"), "error": repr(exc)},
                )

    async def _apply(self, batch: Sequence[_Op]) -> None:
        run: list[_Touch | _Map] = []
        for op in batch:
            if isinstance(op, _Erase):
                await self._write_run(run)
                run = []
                await self._erase(op.uuid)
            else:
                run.append(op)
        await self._write_run(run)

    def _eval(self, pipe: Any, script: bytes, key: bytes, *args: bytes | int) -> None:
        # execute_command, not pipe.evalsha(): redis-py refuses the latter on a Cluster
        # pipeline, though the command itself routes by its key like any other.
        sha = self._sha.get(script)
        if sha is None:
            pipe.execute_command("EVAL", script, 1, key, *args)
        else:
            pipe.execute_command("EVALSHA", sha, 1, key, *args)

    async def _load_scripts(self) -> None:
        for script in _SCRIPTS:
            self._sha[script] = await self.client.script_load(script)

    async def _execute(self, pipe: Any) -> list[Any]:
        try:
            return list(await pipe.execute())
        except NoScriptError:
            self._sha.clear()  # the server restarted without its script cache
            raise

    async def _write_run(self, run: Sequence[_Touch | _Map]) -> None:
        if not run:
            return
        if not self._sha:
            try:
                await self._load_scripts()
            except RedisError:
                self._sha.clear()  # EVAL with the script text works as well
        s = self.schema
        pipe = self.client.pipeline(transaction=False)
        for op in run:
            vkey, u16, day = s.visitor_key(op.uuid), uuid16(op.uuid), pack_day(op.day)
            if isinstance(op, _Touch):
                self._eval(pipe, _UPSERT, vkey, u16, day, b"", b"", b"")
                continue
            self._eval(pipe, _UPSERT, vkey, u16, day, varint(op.dpid), day + op.enc, b"")
            self._eval(pipe, _SWAP, *s.reverse_slot(op.dpid, decode_uid(op.enc)), u16)
        results = await self._execute(pipe)

        cleanup = self.client.pipeline(transaction=False)
        pending = 0
        pos = 0
        for op in run:
            if isinstance(op, _Touch):
                pos += 1
                metrics.WRITES.labels("touch").inc()
                continue
            old_fwd, old_rev = results[pos], results[pos + 1]
            pos += 2
            metrics.WRITES.labels("mapping").inc()
            if old_fwd is not None and old_fwd[2:] != op.enc:
                # The visitor had another uid at this partner: unlink that uid.
                rkey, rfield = s.reverse_slot(op.dpid, decode_uid(old_fwd[2:]))
                self._eval(cleanup, _DEL_IF, rkey, rfield, uuid16(op.uuid))
                pending += 1
            if old_rev is not None and old_rev != uuid16(op.uuid):
                # The uid belonged to another visitor: remove it from that visitor.
                other = uuid_from16(old_rev)
                args = (b"", varint(op.dpid), b"", op.enc)
                self._eval(cleanup, _UPSERT, s.visitor_key(other), old_rev, *args)
                pending += 1
        if pending:
            await self._execute(cleanup)

    async def _record(self, uuid: str) -> bytes | None:
        s = self.schema
        return cast(bytes | None, await self.client.hget(s.visitor_key(uuid), uuid16(uuid)))

    def _unlink(self, pipe: Any, uuid16_: bytes, entries: Mapping[int, bytes]) -> int:
        """Queue the removal of the reverse entries that point at this visitor."""
        for dpid, rest in entries.items():
            self._eval(
                pipe, _DEL_IF, *self.schema.reverse_slot(dpid, decode_uid(rest[2:])), uuid16_
            )
        return len(entries)

    async def _erase(self, uuid: str) -> None:
        record = await self._record(uuid)
        if record is None:
            return
        pipe = self.client.pipeline(transaction=False)
        self._unlink(pipe, uuid16(uuid), parse_record(record)[1])
        pipe.hdel(self.schema.visitor_key(uuid), uuid16(uuid))
        await self._execute(pipe)
        metrics.WRITES.labels("erase").inc()

    # ------------------------------------------------------------------ reads

    async def visitor_last_seen(self, uuid: str) -> int | None:
        record = await self._record(uuid)
        return None if record is None else unpack_day(record)

    def _live(self, entries: Mapping[int, bytes], today: int) -> dict[int, PartnerUid]:
        live: dict[int, PartnerUid] = {}
        for dpid, rest in entries.items():
            day = unpack_day(rest)
            if self.retention.mapping_alive(dpid, day, today):
                live[dpid] = PartnerUid(decode_uid(rest[2:]), day)
        return live

    async def mappings(self, uuid: str, today: int) -> dict[int, PartnerUid]:
        """Every live mapping of the visitor: dpid -> partner uid. One HGET."""
        record = await self._record(uuid)
        return {} if record is None else self._live(parse_record(record)[1], today)

    async def lookup(self, dpid: int, uids: Sequence[str], today: int) -> dict[str, str]:
        """Partner uids -> the visitor that last claimed each (unmatched left out)."""
        s = self.schema
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            pipe.hget(*s.reverse_slot(dpid, uid))
        owners = await pipe.execute()
        claimed = [(uid, o) for uid, o in zip(uids, owners, strict=True) if o]
        if not claimed:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for _, owner in claimed:
            pipe.hget(s.visitor_key(uuid_from16(owner)), owner)
        records = await pipe.execute()
        matches: dict[str, str] = {}
        for (uid, owner), record in zip(claimed, records, strict=True):
            # Verify against the forward entry: guards against hash collisions and
            # against entries that expired but were not swept yet.
            live = self._live(parse_record(record)[1], today) if record else {}
            if dpid in live and live[dpid].uid == uid:
                matches[uid] = uuid_from16(owner)
        return matches

    # ------------------------------------------------------------------ retention

    async def acquire_lock(self, job: str, ttl_ms: int) -> str | None:
        token = secrets.token_hex(8)
        ok = await self.client.set(lock_key(job), token, nx=True, px=ttl_ms)
        return token if ok else None

    async def sweep(self, today: int, *, buckets_per_round: int = 64) -> dict[str, int]:
        """Delete visitors and mappings past their retention. Answers the counts."""
        s = self.schema
        counts = {"visitors": 0, "records": 0, "mappings": 0}
        for start in range(0, s.buckets, buckets_per_round):
            keys = [s.visitor_key_of_bucket(b) for b in range(start, start + buckets_per_round)]
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            contents = await pipe.execute()
            plans = [
                plan
                for key, fields in zip(keys, contents, strict=True)
                for field, record in fields.items()
                if (plan := self._sweep_plan(key, field, record, today)) is not None
            ]
            if not plans:
                continue
            pipe = self.client.pipeline(transaction=False)
            for key, field, record, new, _ in plans:
                self._eval(pipe, _CAS, key, field, record, new)
            done = await self._execute(pipe)
            # Unlink reverse entries only where the record changed as planned.
            pipe = self.client.pipeline(transaction=False)
            for (_, field, _, new, gone), ok in zip(plans, done, strict=True):
                if ok:
                    counts["visitors" if not new else "records"] += 1
                    counts["mappings"] += self._unlink(pipe, field, gone)
            await self._execute(pipe)
        return counts

    def _sweep_plan(
        self, key: bytes, field: bytes, record: bytes, today: int
    ) -> tuple[bytes, bytes, bytes, bytes, dict[int, bytes]] | None:
        """(key, field, current record, new record or b"" to delete, removed entries)."""
        seen, entries = parse_record(record)
        if today - seen > self.retention.visitor_days:
            return key, field, record, b"", entries
        live = self._live(entries, today)
        if len(live) == len(entries):
            return None
        kept = {d: r for d, r in entries.items() if d in live}
        gone = {d: r for d, r in entries.items() if d not in live}
        return key, field, record, build_record(seen, kept), gone

"""The Store: buffered, pipelined writes and verified reads over the schema of keys.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from redis.exceptions import NoScriptError, RedisError

from .. import metrics
from .codec import decode_uid, encode_uid, pack_day, read_varint, unpack_day, uuid16, uuid_from16
from .connect import Client
from .keys import META_KEY, KeySchema, lock_key

log = logging.getLogger("pixelsync.store")

# Set a hash field, answer its previous value.
_SWAP: Final = b"""
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
"""
# Delete a hash field only if its value (after skipping ARGV[3] bytes) is ARGV[2].
_DEL_IF: Final = b"""
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, tonumber(ARGV[3]) + 1) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
_SCRIPTS: Final = (_SWAP, _DEL_IF)
_BATCH: Final = 512


class StoreError(Exception):
    """The store cannot serve a read (Redis unreachable or misconfigured)."""


@dataclass(frozen=True, slots=True)
class PartnerUid:
    uid: str
    day: int


@dataclass(frozen=True, slots=True)
class _Touch:
    key: bytes
    field: bytes
    value: bytes


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
        s = self.schema
        return self._enqueue(_Touch(s.visitor_key(uuid), s.visitor_field(uuid), pack_day(day)))

    def put_mapping(self, uuid: str, dpid: int, uid: str, day: int) -> bool:
        """Store visitor ↔ (dpid, uid); the latest mapping wins in both directions."""
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
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._buffer:
                batch = [self._buffer[i] for i in range(min(_BATCH, len(self._buffer)))]
                try:
                    await self._apply(batch)
                except (RedisError, OSError) as exc:
                    metrics.REDIS_ERRORS.labels("flush").inc()
                    metrics.REDIS_UP.set(0)
                    if self.healthy:
                        log.error("redis write failed, buffering", extra={"error": str(exc)})
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
                backoff = 0.05
                metrics.REDIS_UP.set(1)
                metrics.BUFFERED.set(len(self._buffer))
            self._idle.set()

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
        sha = self._sha.get(script)
        if sha is None:
            pipe.eval(script, 1, key, *args)
        else:
            pipe.evalsha(sha, 1, key, *args)

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
            if isinstance(op, _Touch):
                pipe.hset(op.key, op.field, op.value)
                continue
            vkey = s.visitor_key(op.uuid)
            u16 = uuid16(op.uuid)
            day = pack_day(op.day)
            pipe.hset(vkey, u16, day)
            self._eval(pipe, _SWAP, vkey, s.mapping_field(op.uuid, op.dpid), day + op.enc)
            rkey, rfield = s.reverse_slot(op.dpid, decode_uid(op.enc))
            self._eval(pipe, _SWAP, rkey, rfield, u16)
        results = await self._execute(pipe)

        cleanup = self.client.pipeline(transaction=False)
        pending = 0
        pos = 0
        for op in run:
            if isinstance(op, _Touch):
                pos += 1
                metrics.WRITES.labels("touch").inc()
                continue
            old_fwd, old_rev = results[pos + 1], results[pos + 2]
            pos += 3
            metrics.WRITES.labels("mapping").inc()
            if old_fwd is not None and old_fwd[2:] != op.enc:
                # The visitor had another uid at this partner: unlink that uid.
                rkey, rfield = s.reverse_slot(op.dpid, decode_uid(old_fwd[2:]))
                self._eval(cleanup, _DEL_IF, rkey, rfield, uuid16(op.uuid), 0)
                pending += 1
            if old_rev is not None and old_rev != uuid16(op.uuid):
                # The uid belonged to another visitor: drop that visitor's forward entry.
                other = uuid_from16(old_rev)
                key = s.visitor_key(other)
                self._eval(cleanup, _DEL_IF, key, s.mapping_field(other, op.dpid), op.enc, 2)
                pending += 1
        if pending:
            await self._execute(cleanup)

    async def _visitor_fields(self, uuid: str) -> dict[bytes, bytes]:
        """Every field of one visitor (its record and its mappings)."""
        prefix = uuid16(uuid)
        raw = cast(dict[bytes, bytes], await self.client.hgetall(self.schema.visitor_key(uuid)))
        return {f: v for f, v in raw.items() if f.startswith(prefix)}

    async def _erase(self, uuid: str) -> None:
        fields = await self._visitor_fields(uuid)
        if not fields:
            return
        pipe = self.client.pipeline(transaction=False)
        for unlink in self._unlink_reverse(uuid, fields):
            self._eval(pipe, _DEL_IF, *unlink)
        pipe.hdel(self.schema.visitor_key(uuid), *fields)
        await self._execute(pipe)
        metrics.WRITES.labels("erase").inc()

    def _unlink_reverse(
        self, uuid: str, fields: Mapping[bytes, bytes]
    ) -> Iterable[tuple[bytes, bytes, bytes, int]]:
        u16 = uuid16(uuid)
        for field, value in fields.items():
            if len(field) > 16:
                dpid, _ = read_varint(field, 16)
                rkey, rfield = self.schema.reverse_slot(dpid, decode_uid(value[2:]))
                yield rkey, rfield, u16, 0

    # ------------------------------------------------------------------ reads

    async def visitor_last_seen(self, uuid: str) -> int | None:
        s = self.schema
        raw = cast(bytes | None, await self.client.hget(s.visitor_key(uuid), s.visitor_field(uuid)))
        return None if raw is None else unpack_day(raw)

    async def mappings(self, uuid: str, dpids: Sequence[int], today: int) -> dict[int, PartnerUid]:
        """The visitor's live uid at each of the given partners."""
        if not dpids:
            return {}
        s = self.schema
        fields = [s.mapping_field(uuid, d) for d in dpids]
        values = cast(list[bytes | None], await self.client.hmget(s.visitor_key(uuid), fields))
        found: dict[int, PartnerUid] = {}
        for dpid, value in zip(dpids, values, strict=True):
            if value is not None:
                day = unpack_day(value)
                if self.retention.mapping_alive(dpid, day, today):
                    found[dpid] = PartnerUid(decode_uid(value[2:]), day)
        return found

    async def all_mappings(self, uuid: str, today: int) -> dict[int, PartnerUid]:
        """Every live mapping of the visitor, configured partner or not."""
        found: dict[int, PartnerUid] = {}
        for field, value in (await self._visitor_fields(uuid)).items():
            if len(field) > 16:
                dpid, _ = read_varint(field, 16)
                day = unpack_day(value)
                if self.retention.mapping_alive(dpid, day, today):
                    found[dpid] = PartnerUid(decode_uid(value[2:]), day)
        return found

    async def lookup(self, dpid: int, uids: Sequence[str], today: int) -> dict[str, str]:
        """Partner uids → the visitor that last claimed each (unmatched left out)."""
        s = self.schema
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            pipe.hget(*s.reverse_slot(dpid, uid))
        owners = await pipe.execute()
        claimed = [(uid, uuid_from16(o)) for uid, o in zip(uids, owners, strict=True) if o]
        if not claimed:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for _, uuid in claimed:
            pipe.hget(s.visitor_key(uuid), s.mapping_field(uuid, dpid))
        forwards = await pipe.execute()
        matches: dict[str, str] = {}
        for (uid, uuid), fwd in zip(claimed, forwards, strict=True):
            # Verify: guards against hash collisions and entries not yet swept.
            if (
                fwd is not None
                and fwd[2:] == encode_uid(uid)
                and self.retention.mapping_alive(dpid, unpack_day(fwd), today)
            ):
                matches[uid] = uuid
        return matches

    # ------------------------------------------------------------------ retention

    async def acquire_lock(self, job: str, ttl_ms: int) -> str | None:
        token = secrets.token_hex(8)
        ok = await self.client.set(lock_key(job), token, nx=True, px=ttl_ms)
        return token if ok else None

    async def sweep(self, today: int, *, buckets_per_round: int = 64) -> dict[str, int]:
        """Delete visitors and mappings past their retention. Answers the counts."""
        s = self.schema
        counts = {"visitors": 0, "mappings": 0}
        for start in range(0, s.buckets, buckets_per_round):
            keys = [s.visitor_key_of_bucket(b) for b in range(start, start + buckets_per_round)]
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            contents = await pipe.execute()
            cleanup = self.client.pipeline(transaction=False)
            pending = 0
            for key, fields in zip(keys, contents, strict=True):
                for field in self._expired_fields(fields, today, counts):
                    if len(field) > 16:
                        dpid, _ = read_varint(field, 16)
                        rkey, rfield = s.reverse_slot(dpid, decode_uid(fields[field][2:]))
                        self._eval(cleanup, _DEL_IF, rkey, rfield, field[:16], 0)
                    cleanup.hdel(key, field)
                    pending += 1
            if pending:
                await self._execute(cleanup)
        return counts

    def _expired_fields(
        self, fields: Mapping[bytes, bytes], today: int, counts: dict[str, int]
    ) -> Iterable[bytes]:
        silent: set[bytes] = set()
        for field, value in fields.items():
            if len(field) == 16 and today - unpack_day(value) > self.retention.visitor_days:
                silent.add(field)
                counts["visitors"] += 1
        for field, value in fields.items():
            if field[:16] in silent:
                yield field
            elif len(field) > 16:
                dpid, _ = read_varint(field, 16)
                if not self.retention.mapping_alive(dpid, unpack_day(value), today):
                    counts["mappings"] += 1
                    yield field

"""The Store: buffered, pipelined writes and verified reads over the schema of keys.py."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ..replacements.redis_wire import PackedPipe, RawConnection, SharedReads
from ..replacements.redis_wire import supported as raw_supported
from ..tally import Tally
from . import scripts
from .codec import (
    build_record,
    decode_uid,
    encode_uid,
    parse_record,
    unpack_day,
    uuid16,
    uuid_from16,
)
from .connect import Client
from .keys import (
    COUNTS_TTL_S,
    IMPORT_PROGRESS_KEY,
    IMPORTS_KEY,
    META_KEY,
    ONCE_TTL_S,
    SEEN_TTL_S,
    KeySchema,
    counts_key,
    export_key,
    lock_key,
    once_key,
    seen_key,
)
from .writes import (
    Count,
    Disown,
    Erase,
    Forward,
    Map,
    Once,
    Redo,
    Reverse,
    SaveProfile,
    Seen,
    Touch,
    Unlink,
    WriteBuffer,
    unlinks,
)

log = logging.getLogger("pixelsync.store")

SCAN_TIMEOUT_S = 30.0  # one round of a bucket scan (sweep, export)
MAX_SEEN = 200_000  # distinct visitors held between two flushes (one second)


class StoreError(Exception):
    """The store cannot serve a read (Redis unreachable or misconfigured)."""


@dataclass(frozen=True, slots=True)
class PartnerUid:
    uid: str
    day: int


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
        write_client: Client | None = None,
        write_url: str | None = None,
    ) -> None:
        """`write_client`: a client for the write buffer, ideally without a timeout per
        answer (the buffer bounds each pipeline as a whole); default: `client`.
        `write_url`: the server's URL; a standalone redis:// one lets the write buffer
        use its own bare pipelined connection (replacements/redis_wire.py)."""
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.schema = schema
        self.retention = retention
        self.tally = Tally()  # counters, flushed into per-minute buckets by flush_counts()
        self._seen: set[str] = set()  # visitors seen since the last flush_counts()
        bare = bool(write_url and raw_supported(write_url) and not self.cluster)
        self.writes = WriteBuffer(
            write_client or client,
            schema,
            capacity=buffer_max,
            before_first_write=self._check_meta,
            raw=RawConnection(write_url) if bare and write_url else None,
        )
        # The hot path's reads, pipelined across concurrent requests (else redis-py).
        self.reads = SharedReads(write_url) if bare and write_url else None
        # Bucket scans (sweep, export) on a connection of their own: their big answers
        # must not hold up, nor look like a stall to, the hot path's reads.
        self.bulk = SharedReads(write_url) if bare and write_url else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check the bucket count against the data set, then start writing. When Redis
        is unreachable the check runs again before the first write."""
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
        for shared in (self.reads, self.bulk):
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

    # ------------------------------------------------------------------ buffered writes

    def touch_visitor(self, uuid: str, day: int) -> bool:
        """Refresh the visitor's last-seen day if it has a record (never creates one:
        a visitor with nothing stored costs no memory)."""
        return self.writes.push(Touch(uuid, day))

    def put_mapping(self, uuid: str, dpid: int, uid: str, day: int) -> bool:
        """Store visitor <-> (dpid, uid); the latest mapping wins in both directions."""
        enc = encode_uid(uid)
        if self.cluster:  # the two keys live in different slots: one command each
            return self.writes.push(Forward(uuid, dpid, enc, day), Reverse(uuid, dpid, enc))
        return self.writes.push(Map(uuid, dpid, enc, day))

    def delete_mapping(self, uuid: str, dpid: int, uid: str) -> bool:
        """Remove the visitor's mapping to (dpid, uid), in both directions; each side
        only if it still names the other (a newer mapping wins)."""
        enc = encode_uid(uid)
        key, field = self.schema.reverse_slot(dpid, uid)
        return self.writes.push(Disown(uuid, dpid, enc), Unlink(key, field, uuid16(uuid)))

    def save_profile(self, uuid: str, expected: bytes, new: bytes, redo: Redo) -> bool:
        """Store the visitor's profile if nobody changed it since it was read as
        `expected` (b"": none; UNREAD: the read failed); otherwise `redo` re-applies
        the change to what is there. Bounded like every buffered write: False (and
        counted) when the buffer is full."""
        if expected == new:
            return True
        return self.writes.push(SaveProfile(uuid, expected, new, redo))

    def count_once(self, nonce: bytes, first: Callable[[], None]) -> bool:
        """Run `first` (count something) only the first time this nonce is seen within
        a day, across all processes."""
        return self.writes.push_once(Once(once_key(nonce), ONCE_TTL_S, first))

    def erase_visitor(self, uuid: str) -> None:
        """Erase everything about the visitor, in both directions. Never refused."""
        self.writes.push(Erase(uuid), bounded=False)

    def add_counts(self, minute: int, counts: Mapping[str, int]) -> None:
        """Add to the counters of a per-minute bucket (kept 8 days)."""
        key = counts_key(minute)
        self.writes.push(
            *(Count(key, f, n, COUNTS_TTL_S) for f, n in counts.items()), bounded=False
        )

    def seen(self, uuid: str) -> None:
        """A visitor was seen (distinct visitors: an hourly HyperLogLog)."""
        if len(self._seen) < MAX_SEEN:
            self._seen.add(uuid)

    def flush_counts(self, now: float) -> None:
        counts = self.tally.take()
        if counts:
            self.add_counts(int(now) // 60, counts)
        if self._seen:
            seen, self._seen = [uuid16(u) for u in self._seen], set()  # off the hot path
            key = seen_key(int(now) // 3600)
            self.writes.push(
                *(Seen(key, seen[i : i + 1000], SEEN_TTL_S) for i in range(0, len(seen), 1000)),
                bounded=False,
            )

    async def distinct_visitors(self, hours: int, now: float) -> int:
        """Visitors seen in this clock hour and the `hours` before it: at least the last
        `hours` hours, at most one more (HyperLogLog: about 0.8 % off)."""
        hour = int(now) // 3600
        keys = [seen_key(h) for h in range(hour - hours, hour + 1)]
        return int(await self.client.execute_command("PFCOUNT", *keys))

    async def mappings_stored(self, sample: int = 1024) -> tuple[int, bool]:
        """How many mappings the match table holds: every mapping has one reverse
        entry, so the fields of the reverse buckets, counted in `sample` buckets
        spread over all of them and scaled up. (count, exact)."""
        buckets = self.schema.buckets
        step = max(1, buckets // sample)
        chosen = range(0, buckets, step)
        pipe = self.client.pipeline(transaction=False)
        for b in chosen:
            pipe.hlen(self.schema.reverse_key_of_bucket(b))
        total = sum(int(n) for n in await pipe.execute())
        return total * buckets // len(chosen), step == 1

    async def counts_by_minute(self, minutes: range) -> list[dict[str, int]]:
        """The counters of each minute's bucket, in order (one pipeline)."""
        pipe = self.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(counts_key(minute))
        return [
            {field.decode(): int(n) for field, n in bucket.items()}
            for bucket in await pipe.execute()
        ]

    async def counts(self, minutes: range) -> dict[str, int]:
        """The counters summed over these minutes."""
        pipe = self.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(counts_key(minute))
        total: dict[str, int] = {}
        for bucket in await pipe.execute():
            for field, n in bucket.items():
                name = field.decode()
                total[name] = total.get(name, 0) + int(n)
        return total

    @property
    def buffered(self) -> int:
        return len(self.writes)

    @property
    def overflowed(self) -> int:
        return self.writes.overflowed

    @property
    def healthy(self) -> bool:
        return self.writes.healthy

    async def drain(self) -> None:
        """Wait until every write buffered so far has reached Redis."""
        await self.writes.drain()

    async def _record(self, uuid: str) -> bytes | None:
        s = self.schema
        return cast(bytes | None, await self.client.hget(s.visitor_key(uuid), uuid16(uuid)))

    # ------------------------------------------------------------------ reads

    async def visitor_state(self, uuid: str, timeout: float = 1.0) -> tuple[bytes, bytes | None]:
        """(stored profile or b"", visitor record or None): one round trip, shared
        with the reads of concurrent requests. TimeoutError after `timeout` seconds."""
        s, field = self.schema, uuid16(uuid)
        profile, record = await self._run(
            [("HGET", s.profile_key(uuid), field), ("HGET", s.visitor_key(uuid), field)],
            self.reads,
            timeout,
        )
        unwritten = self.writes.unwritten_profiles.get(uuid)
        if unwritten is not None:  # read your own writes: ours are not in Redis yet
            return unwritten, cast(bytes | None, record)
        return cast(bytes | None, profile) or b"", cast(bytes | None, record)

    async def profiles(self, uuids: Sequence[str]) -> list[bytes]:
        """The stored profiles of many visitors (b"": none): one pipeline (batch jobs,
        which have their records from lookup already)."""
        s = self.schema
        replies = await self._hgets([(s.profile_key(uuid), uuid16(uuid)) for uuid in uuids])
        return [reply or b"" for reply in replies]

    async def imported(self, name: str) -> str | None:
        """The sha256 an inbound file of this name was imported with, if it was."""
        sha = cast(bytes | None, await self.client.hget(IMPORTS_KEY, name.encode()))
        return None if sha is None else sha.decode()

    async def mark_imported(self, name: str, sha256: str) -> None:
        pipe = self.client.pipeline(transaction=False)  # IMPORTS_KEY: another slot
        pipe.hset(IMPORTS_KEY, name.encode(), sha256.encode())
        pipe.hdel(IMPORT_PROGRESS_KEY, name.encode())
        await pipe.execute()

    async def import_progress(self, name: str) -> tuple[str, int] | None:
        """(sha256, line): an earlier import of this file applied every line up to
        `line` and stopped."""
        value = cast(bytes | None, await self.client.hget(IMPORT_PROGRESS_KEY, name.encode()))
        if value is None:
            return None
        sha, _, line = value.decode().partition(":")
        return sha, int(line)

    async def set_import_progress(self, name: str, sha256: str, line: int) -> None:
        value = f"{sha256}:{line}".encode()
        await self.client.hset(IMPORT_PROGRESS_KEY, name.encode(), value)

    async def abandon_writes(self) -> int:
        """Stop applying buffered writes and drop them (a batch job that failed and
        will be resumed from its last checkpoint); answers how many were dropped. A
        pipeline already sent may have been applied."""
        await self.writes.stop()
        return self.writes.clear()

    def live_mappings(self, record: bytes | None, today: int) -> dict[int, PartnerUid]:
        return {} if record is None else self._live(parse_record(record)[1], today)

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

    async def _run(
        self, commands: Sequence[tuple[Any, ...]], shared: SharedReads | None, timeout: float | None
    ) -> list[Any]:
        """Many commands in one pipeline: on a bare shared connection when there is one
        (an error reply raises), else through redis-py. TimeoutError after `timeout`."""
        if shared is not None:
            packed = PackedPipe()
            for command in commands:
                packed.execute_command(*command)
            replies = await shared.execute(packed, SCAN_TIMEOUT_S if timeout is None else timeout)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return cast(list[Any], await asyncio.wait_for(pipe.execute(), timeout))

    async def _hgets(self, slots: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        """HGET of many (key, field): one pipeline, on the bulk connection if any."""
        return await self._run([("HGET", key, field) for key, field in slots], self.bulk, None)

    async def lookup(
        self,
        dpid: int,
        uids: Sequence[str],
        today: int,
        records: dict[str, bytes] | None = None,
    ) -> dict[str, str]:
        """Partner uids -> the visitor that last claimed each (unmatched left out).
        `records` gets the match table records read on the way, by visitor."""
        s = self.schema
        owners = await self._hgets([s.reverse_slot(dpid, uid) for uid in uids])
        claimed = [(uid, o) for uid, o in zip(uids, owners, strict=True) if o]
        if not claimed:
            return {}
        read = await self._hgets(
            [(s.visitor_key(uuid_from16(owner)), owner) for _, owner in claimed]
        )
        matches: dict[str, str] = {}
        for (uid, owner), record in zip(claimed, read, strict=True):
            # Verify against the forward entry: guards against hash collisions and
            # against entries that expired but were not swept yet.
            live = self._live(parse_record(record)[1], today) if record else {}
            if dpid in live and live[dpid].uid == uid:
                uuid = matches[uid] = uuid_from16(owner)
                if records is not None and record:
                    records[uuid] = record
        return matches

    # ------------------------------------------------------------------ retention

    # ------------------------------------------------------------------ exports

    async def scan_for_export(
        self, destination: int, buckets: range
    ) -> list[tuple[bytes, bytes, bytes | None, bytes | None]]:
        """(field, visitor record, profile or None, last exported mark or None) of
        every visitor with a record in these buckets: one pipeline."""
        s = self.schema
        keys: list[bytes] = []
        for b in buckets:
            keys += [
                s.visitor_key_of_bucket(b),
                s.profile_key_of_bucket(b),
                s.export_key_of_bucket(destination, b, staged=False),
            ]
        found = await self._hgetall(keys)
        rows = []
        for i in range(0, len(found), 3):
            records, profiles, marks = found[i : i + 3]
            for field, record in records.items():
                rows.append((field, record, profiles.get(field), marks.get(field)))
        return rows

    async def stage_marks(self, destination: int, marks: Mapping[bytes, bytes]) -> None:
        """Stage export marks (field -> packed sids, b"" to delete) for commit_marks."""
        if not marks:
            return
        s = self.schema
        pipe = self.client.pipeline(transaction=False)
        for field, value in marks.items():
            bucket = int.from_bytes(field, "big") & (s.buckets - 1)
            pipe.hset(s.export_key_of_bucket(destination, bucket, staged=True), field, value)
        await pipe.execute()

    async def export_state(self, destination: int) -> dict[str, str]:
        state = await self.client.hgetall(export_key(destination))
        return {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], state).items()}

    async def set_export_state(self, destination: int, **values: str) -> None:
        await self.client.hset(export_key(destination), mapping=values)  # type: ignore[arg-type]

    async def drop_staged_marks(self, destination: int, *, per_round: int = 256) -> None:
        """Forget what a failed export staged: the marks stay as the last success left."""
        s = self.schema
        for start in range(0, s.buckets, per_round):
            keys = [
                s.export_key_of_bucket(destination, b, staged=True)
                for b in range(start, min(start + per_round, s.buckets))
            ]
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.delete(key)
            await pipe.execute()

    async def commit_marks(self, destination: int, *, per_round: int = 256) -> None:
        """Move the staged marks into the marks, bucket by bucket (each atomically)."""
        s = self.schema
        for start in range(0, s.buckets, per_round):
            pipe = self.client.pipeline(transaction=False)
            for b in range(start, min(start + per_round, s.buckets)):
                self.writes.scripts.queue_keys(
                    pipe,
                    scripts.COMMIT,
                    2,
                    s.export_key_of_bucket(destination, b, staged=True),
                    s.export_key_of_bucket(destination, b, staged=False),
                )
            await pipe.execute()

    async def acquire_lock(self, job: str, ttl_ms: int) -> str | None:
        token = secrets.token_hex(8)
        ok = await self.client.set(lock_key(job), token, nx=True, px=ttl_ms)
        return token if ok else None

    async def renew_lock(self, job: str, token: str, ttl_ms: int) -> bool:
        """Extend a lock this token holds; False when it was lost (expired, taken)."""
        pipe = self.client.pipeline(transaction=False)
        self.writes.scripts.queue(pipe, scripts.LOCK, lock_key(job), token.encode(), ttl_ms)
        return bool((await pipe.execute())[0])

    async def release_lock(self, job: str, token: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        self.writes.scripts.queue(pipe, scripts.LOCK, lock_key(job), token.encode(), 0)
        await pipe.execute()

    async def sweep(
        self,
        today: int,
        *,
        profiles: Callable[[bytes, int, int | None], bytes] | None = None,
        buckets_per_round: int = 16,
        duty: float = 0.1,
    ) -> dict[str, int]:
        """Delete visitors and mappings past their retention, and reverse entries whose
        forward entry is gone. Answers the counts.

        Paced so that serving goes on: after each round of buckets it rests for as long
        as the round took, times (1 - duty) / duty; at the default duty of 10 %, a
        sweep costs the process a tenth of a core while it runs."""
        s = self.schema
        counts = {"visitors": 0, "records": 0, "mappings": 0, "orphans": 0}
        rounds = [
            range(start, min(start + buckets_per_round, s.buckets))
            for start in range(0, s.buckets, buckets_per_round)
        ]
        rest = (1 - duty) / duty
        for buckets in rounds:
            began = time.perf_counter()
            await self._sweep_forward([s.visitor_key_of_bucket(b) for b in buckets], today, counts)
            await asyncio.sleep((time.perf_counter() - began) * rest)
        await self.drain()  # the unlinks of what expired, before looking for orphans
        for buckets in rounds:
            began = time.perf_counter()
            await self._sweep_reverse([s.reverse_key_of_bucket(b) for b in buckets], counts)
            await asyncio.sleep((time.perf_counter() - began) * rest)
        await self.drain()
        if profiles is not None:
            counts["profiles"] = counts["profiles_pruned"] = 0
            for buckets in rounds:
                began = time.perf_counter()
                await self._sweep_profiles(buckets, today, profiles, counts)
                await asyncio.sleep((time.perf_counter() - began) * rest)
            await self.drain()
        return counts

    async def _sweep_profiles(
        self,
        buckets: range,
        today: int,
        prune: Callable[[bytes, int, int | None], bytes],
        counts: dict[str, int],
    ) -> None:
        """Expire realizations and silent visitors' profiles: `prune(value, today,
        last seen by the match table or None)` gives the value to keep (b"": delete);
        replaced only if unchanged meanwhile."""
        keys = [self.schema.profile_key_of_bucket(b) for b in buckets]
        records = await self._hgetall([self.schema.visitor_key_of_bucket(b) for b in buckets])
        pipe = self.client.pipeline(transaction=False)
        for key, fields, seen in zip(keys, await self._hgetall(keys), records, strict=True):
            for field, value in fields.items():
                record = seen.get(field)
                new = prune(value, today, unpack_day(record) if record else None)
                if new != value:
                    self.writes.scripts.queue(pipe, scripts.REPLACE, key, field, value, new)
                    counts["profiles" if not new else "profiles_pruned"] += 1
        if len(pipe):
            await pipe.execute()

    async def _hgetall(self, keys: Sequence[bytes]) -> list[dict[bytes, bytes]]:
        """Many hashes in one pipeline: on the bare bulk connection when there is one
        (a scan of every bucket is mostly empty answers: redis-py's cost per answer
        would dominate). The bare connection answers flat lists, redis-py dicts."""
        replies = await self._run([("HGETALL", key) for key in keys], self.bulk, None)
        return [
            r if isinstance(r, dict) else dict(zip(r[::2], r[1::2], strict=True)) for r in replies
        ]

    async def _sweep_forward(
        self, keys: Sequence[bytes], today: int, counts: dict[str, int]
    ) -> None:
        plans = [
            plan
            for key, fields in zip(keys, await self._hgetall(keys), strict=True)
            for field, record in fields.items()
            if (plan := self._sweep_plan(key, field, record, today)) is not None
        ]
        if not plans:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, field, record, new, _ in plans:
            self.writes.scripts.queue(pipe, scripts.CAS, key, field, record, new)
        done = await pipe.execute()
        # Unlink reverse entries only where the record changed as planned.
        for (_, field, _, new, gone), ok in zip(plans, done, strict=True):
            if ok:
                counts["visitors" if not new else "records"] += 1
                counts["mappings"] += len(gone)
                self.writes.push(*unlinks(self.schema, field, gone), bounded=False)

    async def _sweep_reverse(self, keys: Sequence[bytes], counts: dict[str, int]) -> None:
        entries = [
            (key, field, owner)
            for key, fields in zip(keys, await self._hgetall(keys), strict=True)
            for field, owner in fields.items()
        ]
        owners = list({owner for _, _, owner in entries})
        if not owners:
            return
        pipe = self.client.pipeline(transaction=False)
        for owner in owners:
            pipe.hget(self.schema.visitor_key(uuid_from16(owner)), owner)
        claimed: set[tuple[bytes, bytes]] = set()
        for owner, record in zip(owners, await pipe.execute(), strict=True):
            if record is not None:
                claimed.update(
                    (u.key, u.field) for u in unlinks(self.schema, owner, parse_record(record)[1])
                )
        orphans = [Unlink(k, f, o) for k, f, o in entries if (k, f) not in claimed]
        counts["orphans"] += len(orphans)
        self.writes.push(*orphans, bounded=False)

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

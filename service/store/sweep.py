"""Retention (SPEC §12): deletes visitors and mappings past their retention, reverse
entries whose forward entry is gone, and expired parts of profiles; file destinations'
export marks whose visitor record is gone (erased before erasures left tombstones, or
expired), and the tombstones of destinations no longer configured. A configured
destination's tombstones wait for its next iter export, and so does a mark beside one
(the export sends it with the tombstone)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from ..profiles import Profile
from . import scripts
from .access import Access
from .codec import build_record, pack_profile, parse_profile, parse_record, unpack_day, uuid_from16
from .keys import TOMBSTONED_KEY
from .mappings import Retention, live_entries
from .writes import Unlink, unlinks

# (profile, today, last seen by the match table or None) -> the profile to keep, or
# None to delete it. It may change the profile it is given and answer it.
Prune = Callable[[Profile, int, int | None], Profile | None]


class Sweeper:
    def __init__(self, access: Access, retention: Retention) -> None:
        self.access = access
        self.retention = retention

    async def sweep(
        self, today: int, profiles: Prune | None, buckets_per_round: int, duty: float
    ) -> dict[str, int]:
        """Paced so that serving goes on: after each round of buckets it rests for as long
        as the round took, times (1 - duty) / duty."""
        s, writes = self.access.schema, self.access.writes
        counts = {
            "visitors": 0,
            "records": 0,
            "mappings": 0,
            "orphans": 0,
            "marks": 0,
            "tombstones": 0,
        }
        rounds = [
            range(start, min(start + buckets_per_round, s.buckets))
            for start in range(0, s.buckets, buckets_per_round)
        ]
        rest = (1 - duty) / duty
        for buckets in rounds:
            began = time.perf_counter()
            await self._forward([s.visitor_key_of_bucket(b) for b in buckets], today, counts)
            await asyncio.sleep((time.perf_counter() - began) * rest)
        await writes.drain()  # the unlinks of what expired, before looking for orphans
        for buckets in rounds:
            began = time.perf_counter()
            await self._reverse([s.reverse_key_of_bucket(b) for b in buckets], counts)
            await asyncio.sleep((time.perf_counter() - began) * rest)
        await writes.drain()
        if writes.exports:
            for buckets in rounds:
                began = time.perf_counter()
                await self._marks(buckets, counts)
                await asyncio.sleep((time.perf_counter() - began) * rest)
        await self._tombstones(rounds, counts)
        if profiles is not None:
            counts["profiles"] = counts["profiles_pruned"] = 0
            for buckets in rounds:
                began = time.perf_counter()
                await self._profiles(buckets, today, profiles, counts)
                await asyncio.sleep((time.perf_counter() - began) * rest)
            await writes.drain()
        return counts

    async def _marks(self, buckets: range, counts: dict[str, int]) -> None:
        """Delete the export marks of visitors without a record (and without a tombstone
        at that destination)."""
        s, exports = self.access.schema, self.access.writes.exports
        keys: list[bytes] = []
        for b in buckets:
            keys.append(s.visitor_key_of_bucket(b))
            for dest, _ in exports:
                keys.append(s.export_key_of_bucket(dest, b, staged=False))
                keys.append(s.tombstone_key_of_bucket(dest, b, staged=False))
        found = await self.access.hgetall(keys)
        step = 1 + 2 * len(exports)
        doomed: list[tuple[bytes, list[bytes]]] = []
        for i in range(0, len(found), step):
            records = found[i]
            for j in range(i + 1, i + step, 2):
                marks, tombstones = found[j], found[j + 1]
                gone = [f for f in marks if f not in records and f not in tombstones]
                if gone:
                    doomed.append((keys[j], gone))
        if doomed:
            pipe = self.access.client.pipeline(transaction=False)
            for key, fields in doomed:
                pipe.hdel(key, *fields)
            counts["marks"] += sum(await pipe.execute())

    async def _tombstones(self, rounds: Sequence[range], counts: dict[str, int]) -> None:
        """Delete the tombstones of destinations no longer configured. The id leaves the
        set first: one that an erasure adds back meanwhile is swept next time."""
        s, client = self.access.schema, self.access.client
        configured = {dest for dest, _ in self.access.writes.exports}
        ids = {int(d) for d in await client.smembers(TOMBSTONED_KEY)} - configured
        for dest in sorted(ids):
            await client.srem(TOMBSTONED_KEY, dest)
            for buckets in rounds:
                pipe = client.pipeline(transaction=False)
                for b in buckets:
                    key = s.tombstone_key_of_bucket(dest, b, staged=False)
                    pipe.hlen(key)
                    pipe.delete(key)
                counts["tombstones"] += sum((await pipe.execute())[::2])

    async def _profiles(
        self, buckets: range, today: int, prune: Prune, counts: dict[str, int]
    ) -> None:
        """Expire realizations and silent visitors' profiles; a profile is replaced
        only if unchanged meanwhile."""
        s = self.access.schema
        keys = [s.profile_key_of_bucket(b) for b in buckets]
        records = await self.access.hgetall([s.visitor_key_of_bucket(b) for b in buckets])
        pipe = self.access.client.pipeline(transaction=False)
        for key, fields, seen in zip(keys, await self.access.hgetall(keys), records, strict=True):
            for field, value in fields.items():
                record = seen.get(field)
                kept = prune(parse_profile(value), today, unpack_day(record) if record else None)
                new = b"" if kept is None else pack_profile(kept)
                if new != value:
                    self.access.scripts.queue(pipe, scripts.REPLACE, key, field, value, new)
                    counts["profiles" if not new else "profiles_pruned"] += 1
        if len(pipe):
            await pipe.execute()

    async def _forward(self, keys: Sequence[bytes], today: int, counts: dict[str, int]) -> None:
        plans = [
            plan
            for key, fields in zip(keys, await self.access.hgetall(keys), strict=True)
            for field, record in fields.items()
            if (plan := self._plan(key, field, record, today)) is not None
        ]
        if not plans:
            return
        pipe = self.access.client.pipeline(transaction=False)
        for key, field, record, new, _ in plans:
            self.access.scripts.queue(pipe, scripts.CAS, key, field, record, new)
        done = await pipe.execute()
        # Unlink reverse entries only where the record changed as planned.
        for (_, field, _, new, gone), ok in zip(plans, done, strict=True):
            if ok:
                counts["visitors" if not new else "records"] += 1
                counts["mappings"] += len(gone)
                self.access.writes.push(
                    *unlinks(self.access.schema, field, gone)
                )  # refused: swept as orphans later

    async def _reverse(self, keys: Sequence[bytes], counts: dict[str, int]) -> None:
        entries = [
            (key, field, owner)
            for key, fields in zip(keys, await self.access.hgetall(keys), strict=True)
            for field, owner in fields.items()
        ]
        owners = list({owner for _, _, owner in entries})
        if not owners:
            return
        s = self.access.schema
        pipe = self.access.client.pipeline(transaction=False)
        for owner in owners:
            pipe.hget(s.visitor_key(uuid_from16(owner)), owner)
        claimed: set[tuple[bytes, bytes]] = set()
        for owner, record in zip(owners, await pipe.execute(), strict=True):
            if record is not None:
                claimed.update((u.key, u.field) for u in unlinks(s, owner, parse_record(record)[1]))
        orphans = [Unlink(k, f, o) for k, f, o in entries if (k, f) not in claimed]
        counts["orphans"] += len(orphans)
        self.access.writes.push(*orphans)  # refused: swept as orphans later

    def _plan(
        self, key: bytes, field: bytes, record: bytes, today: int
    ) -> tuple[bytes, bytes, bytes, bytes, dict[int, bytes]] | None:
        """(key, field, current record, new record or b"" to delete, removed entries)."""
        seen, entries = parse_record(record)
        if today - seen > self.retention.visitor_days:
            return key, field, record, b"", entries
        alive = live_entries(entries, today, self.retention)
        if len(alive) == len(entries):
            return None
        kept = {d: r for d, r in entries.items() if d in alive}
        gone = {d: r for d, r in entries.items() if d not in alive}
        return key, field, record, build_record(seen, kept), gone

"""What batch jobs keep in Redis: locks, import checkpoints, file destinations'
export marks (the segments each visitor was last exported with) and tombstones (what
erased visitors had been sent), and the erasure log."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Final, cast

from ..profiles import Profile
from . import scripts
from .access import Access
from .codec import pack_sids, parse_profile, unpack_sids, unpack_tombstone, uuid16, uuid_from16
from .keys import ERASURES_KEY, ERASURES_MAX, IMPORT_PROGRESS_KEY, IMPORTS_KEY, export_key, lock_key
from .mappings import PartnerUid, Retention, live

# Erasure log entries read per round trip: a page's decoding holds the event loop (a
# few ms for 2,000); the whole log (~100,000) is 50 loopback round trips.
ERASURES_PAGE: Final = 2_000


class ExportRow:
    """A visitor found by an export scan; its profile and mark are parsed when asked
    (visitors unknown to the destination's partner need neither)."""

    __slots__ = ("_field", "_mark", "_profile", "uid")

    def __init__(
        self, field: bytes, uid: PartnerUid | None, profile: bytes | None, mark: bytes | None
    ) -> None:
        self._field = field
        self.uid = uid  # the visitor's live uid at the destination's partner, if any
        self._profile = profile
        self._mark = mark

    @property
    def uuid(self) -> str:
        return uuid_from16(self._field)

    @property
    def profile(self) -> Profile:
        return parse_profile(self._profile)

    @property
    def exported(self) -> list[int]:
        """The segments the destination's last successful export sent for the visitor."""
        return unpack_sids(self._mark)


class Removal:
    """A tombstone found by an export scan: an erased visitor the destination had been
    sent segments for (keys.py ``xr:``)."""

    __slots__ = ("_field", "mark", "raw", "sids", "uid")

    def __init__(self, field: bytes, raw: bytes, orphan_mark: bytes | None) -> None:
        self._field = field
        self.raw = raw  # as read: the export deletes it only if still the same
        self.uid, sids = unpack_tombstone(raw)  # the uid the partner knew
        # A mark committed after the erasure counts too: the partner was sent those
        # segments as well. (Exports stage a mark only while the visitor has a record
        # and erasures delete staged marks; this is for marks left by older versions.)
        self.mark = orphan_mark is not None
        self.sids = sorted({*sids, *unpack_sids(orphan_mark)})

    @property
    def uuid(self) -> str:
        return uuid_from16(self._field)


class Jobs:
    def __init__(self, access: Access, retention: Retention) -> None:
        self.access = access
        self.retention = retention

    # ------------------------------------------------------------------ locks

    async def acquire_lock(self, job: str, ttl_ms: int) -> str | None:
        token = secrets.token_hex(8)
        ok = await self.access.client.set(lock_key(job), token, nx=True, px=ttl_ms)
        return token if ok else None

    async def renew_lock(self, job: str, token: str, ttl_ms: int) -> bool:
        pipe = self.access.client.pipeline(transaction=False)
        self.access.scripts.queue(pipe, scripts.LOCK, lock_key(job), token.encode(), ttl_ms)
        return bool((await pipe.execute())[0])

    async def release_lock(self, job: str, token: str) -> None:
        await self.renew_lock(job, token, 0)  # LOCK with 0 ms releases

    # ------------------------------------------------------------------ imports

    async def imported(self, name: str) -> str | None:
        sha = cast(bytes | None, await self.access.client.hget(IMPORTS_KEY, name.encode()))
        return None if sha is None else sha.decode()

    async def mark_imported(self, name: str, sha256: str) -> None:
        pipe = self.access.client.pipeline(transaction=False)  # IMPORTS_KEY: another slot
        pipe.hset(IMPORTS_KEY, name.encode(), sha256.encode())
        pipe.hdel(IMPORT_PROGRESS_KEY, name.encode())
        await pipe.execute()

    async def import_progress(self, name: str) -> tuple[str, int] | None:
        client = self.access.client
        value = cast(bytes | None, await client.hget(IMPORT_PROGRESS_KEY, name.encode()))
        if value is None:
            return None
        sha, _, line = value.decode().partition(":")
        return sha, int(line)

    async def set_import_progress(self, name: str, sha256: str, line: int) -> None:
        value = f"{sha256}:{line}".encode()
        await self.access.client.hset(IMPORT_PROGRESS_KEY, name.encode(), value)

    # ------------------------------------------------------------------ exports

    async def scan_for_export(
        self,
        destination: int,
        buckets: range,
        partner: int,
        today: int,
        removals: list[Removal] | None = None,
    ) -> list[ExportRow]:
        s = self.access.schema
        keys: list[bytes] = []
        for b in buckets:
            keys += [
                s.visitor_key_of_bucket(b),
                s.profile_key_of_bucket(b),
                s.export_key_of_bucket(destination, b, staged=False),
            ]
            if removals is not None:
                keys.append(s.tombstone_key_of_bucket(destination, b, staged=False))
        found = await self.access.hgetall(keys)
        step = 3 if removals is None else 4
        rows = []
        for i in range(0, len(found), step):
            records, profiles, marks = found[i : i + 3]
            for field, record in records.items():
                uid = live(record, today, self.retention).get(partner)
                rows.append(ExportRow(field, uid, profiles.get(field), marks.get(field)))
            if removals is not None:
                for field, raw in found[i + 3].items():
                    orphan = None if field in records else marks.get(field)
                    removals.append(Removal(field, raw, orphan))
        return rows

    async def stage_marks(
        self,
        destination: int,
        marks: Mapping[str, Sequence[int]],
        removals: Sequence[Removal] = (),
        folded: Mapping[str, Removal] | None = None,
    ) -> set[str]:
        if not marks and not removals:
            return set()
        s, folded = self.access.schema, folded or {}
        by_bucket: dict[int, list[bytes]] = {}
        order: list[tuple[int, str]] = []
        for uuid, sids in marks.items():
            field = uuid16(uuid)
            bucket = s.bucket_of(field)
            fold = folded.get(uuid)
            # b"": COMMIT deletes the mark
            by_bucket.setdefault(bucket, []).extend(
                (field, pack_sids(sids), b"" if fold is None else fold.raw)
            )
            order.append((bucket, uuid))
        pipe = self.access.client.pipeline(transaction=False)
        for bucket, args in by_bucket.items():
            self.access.scripts.queue_keys(
                pipe,
                scripts.STAGE,
                3,
                s.visitor_key_of_bucket(bucket),
                s.export_key_of_bucket(destination, bucket, staged=True),
                s.tombstone_key_of_bucket(destination, bucket, staged=True),
                *args,
            )
        for removal in removals:
            field = uuid16(removal.uuid)
            bucket = s.bucket_of(field)
            if removal.mark:
                pipe.hset(s.export_key_of_bucket(destination, bucket, staged=True), field, b"")
            key = s.tombstone_key_of_bucket(destination, bucket, staged=True)
            pipe.hset(key, field, removal.raw)
        answers = await pipe.execute()
        done = {b: iter(cast(list[int], a)) for b, a in zip(by_bucket, answers, strict=False)}
        return {uuid for bucket, uuid in order if next(done[bucket])}

    async def export_state(self, destination: int) -> dict[str, str]:
        state = await self.access.client.hgetall(export_key(destination))
        return {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], state).items()}

    async def set_export_state(self, destination: int, **values: str) -> None:
        await self.access.client.hset(export_key(destination), mapping=values)  # type: ignore[arg-type]

    async def drop_staged_marks(self, destination: int, per_round: int) -> None:
        s = self.access.schema
        for start in range(0, s.buckets, per_round):
            pipe = self.access.client.pipeline(transaction=False)
            for b in range(start, min(start + per_round, s.buckets)):
                pipe.delete(s.export_key_of_bucket(destination, b, staged=True))
                pipe.delete(s.tombstone_key_of_bucket(destination, b, staged=True))
            await pipe.execute()

    async def commit_marks(self, destination: int, per_round: int) -> None:
        s = self.access.schema
        for start in range(0, s.buckets, per_round):
            pipe = self.access.client.pipeline(transaction=False)
            for b in range(start, min(start + per_round, s.buckets)):
                self.access.scripts.queue_keys(
                    pipe,
                    scripts.COMMIT,
                    4,
                    s.export_key_of_bucket(destination, b, staged=True),
                    s.export_key_of_bucket(destination, b, staged=False),
                    s.tombstone_key_of_bucket(destination, b, staged=True),
                    s.tombstone_key_of_bucket(destination, b, staged=False),
                )
            await pipe.execute()

    # ------------------------------------------------------------------ erasure log

    async def erasures(self, since_ms: int, limit: int) -> tuple[list[tuple[int, str]], int, bool]:
        """Paged through XRANGE (Redis 7.0 has no count of a range), ERASURES_PAGE at a
        time: the log holds at most ~ERASURES_MAX entries."""
        client = self.access.client
        first: list[tuple[int, str]] = []
        count = 0
        start = b"%d" % since_ms
        while True:
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await client.xrange(ERASURES_KEY, min=start, max=b"+", count=ERASURES_PAGE),
            )
            for entry_id, fields in page:
                if len(first) < limit:
                    ms = int(entry_id.split(b"-", 1)[0])
                    first.append((ms, fields.get(b"source", b"").decode()))
            count += len(page)
            if len(page) < ERASURES_PAGE:
                break
            start = b"(" + page[-1][0]
        # Trimmed: the log is at its bound and its oldest entry is newer than `since`.
        pipe = client.pipeline(transaction=False)
        pipe.xlen(ERASURES_KEY)
        pipe.xrange(ERASURES_KEY, min=b"-", max=b"+", count=1)
        length, oldest = await pipe.execute()
        trimmed = (
            length >= ERASURES_MAX
            and bool(oldest)
            and int(oldest[0][0].split(b"-", 1)[0]) > since_ms
        )
        return first, count, trimmed

"""What batch jobs keep in Redis: locks, import checkpoints, and file destinations'
export marks (the segments each visitor was last exported with)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import cast

from ..profiles import Profile
from . import scripts
from .access import Access
from .codec import pack_sids, parse_profile, unpack_sids, uuid16, uuid_from16
from .keys import IMPORT_PROGRESS_KEY, IMPORTS_KEY, export_key, lock_key
from .mappings import PartnerUid, Retention, live


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
        self, destination: int, buckets: range, partner: int, today: int
    ) -> list[ExportRow]:
        s = self.access.schema
        keys: list[bytes] = []
        for b in buckets:
            keys += [
                s.visitor_key_of_bucket(b),
                s.profile_key_of_bucket(b),
                s.export_key_of_bucket(destination, b, staged=False),
            ]
        found = await self.access.hgetall(keys)
        rows = []
        for i in range(0, len(found), 3):
            records, profiles, marks = found[i : i + 3]
            for field, record in records.items():
                uid = live(record, today, self.retention).get(partner)
                rows.append(ExportRow(field, uid, profiles.get(field), marks.get(field)))
        return rows

    async def stage_marks(self, destination: int, marks: Mapping[str, Sequence[int]]) -> None:
        if not marks:
            return
        s = self.access.schema
        pipe = self.access.client.pipeline(transaction=False)
        for uuid, sids in marks.items():
            field = uuid16(uuid)
            bucket = int.from_bytes(field, "big") & (s.buckets - 1)
            key = s.export_key_of_bucket(destination, bucket, staged=True)
            pipe.hset(key, field, pack_sids(sids))  # b"": COMMIT deletes the mark
        await pipe.execute()

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
            await pipe.execute()

    async def commit_marks(self, destination: int, per_round: int) -> None:
        s = self.access.schema
        for start in range(0, s.buckets, per_round):
            pipe = self.access.client.pipeline(transaction=False)
            for b in range(start, min(start + per_round, s.buckets)):
                self.access.scripts.queue_keys(
                    pipe,
                    scripts.COMMIT,
                    2,
                    s.export_key_of_bucket(destination, b, staged=True),
                    s.export_key_of_bucket(destination, b, staged=False),
                )
            await pipe.execute()

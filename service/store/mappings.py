"""The match table: each visitor's record of partner uids, one hash field per visitor,
and the reverse entries from a partner uid to its visitor (keys.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from .access import Access
from .codec import decode_uid, encode_uid, parse_record, unpack_day, uuid16, uuid_from16
from .writes import Disown, Forward, Map, Reverse, Touch, Unlink


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


def live(record: bytes | None, today: int, retention: Retention) -> dict[int, PartnerUid]:
    """The mappings of a visitor record (None: none) that retention keeps today."""
    return {} if record is None else live_entries(parse_record(record)[1], today, retention)


def live_entries(
    entries: Mapping[int, bytes], today: int, retention: Retention
) -> dict[int, PartnerUid]:
    found: dict[int, PartnerUid] = {}
    for dpid, rest in entries.items():
        day = unpack_day(rest)
        if retention.mapping_alive(dpid, day, today):
            found[dpid] = PartnerUid(decode_uid(rest[2:]), day)
    return found


class MatchTable:
    def __init__(self, access: Access, retention: Retention) -> None:
        self.access = access
        self.retention = retention

    def touch(self, uuid: str, day: int) -> bool:
        return self.access.writes.push(Touch(uuid, day))

    def put(self, uuid: str, dpid: int, uid: str, day: int) -> bool:
        enc, writes = encode_uid(uid), self.access.writes
        if self.access.cluster:  # the two keys live in different slots: one command each
            return writes.push(Forward(uuid, dpid, enc, day), Reverse(uuid, dpid, enc))
        return writes.push(Map(uuid, dpid, enc, day))

    def delete(self, uuid: str, dpid: int, uid: str) -> bool:
        key, field = self.access.schema.reverse_slot(dpid, uid)
        return self.access.writes.push(
            Disown(uuid, dpid, encode_uid(uid)), Unlink(key, field, uuid16(uuid))
        )

    async def record(self, uuid: str) -> bytes | None:
        s = self.access.schema
        return cast(bytes | None, await self.access.client.hget(s.visitor_key(uuid), uuid16(uuid)))

    async def mappings(self, uuid: str, today: int) -> dict[int, PartnerUid]:
        return live(await self.record(uuid), today, self.retention)

    async def last_seen(self, uuid: str) -> int | None:
        record = await self.record(uuid)
        return None if record is None else unpack_day(record)

    async def lookup(
        self, dpid: int, uids: Sequence[str], today: int, records: dict[str, bytes] | None = None
    ) -> dict[str, str]:
        """Partner uids -> the visitor that last claimed each (unmatched left out).
        `records` gets the match table records read on the way, by visitor."""
        s = self.access.schema
        owners = await self.access.hgets([s.reverse_slot(dpid, uid) for uid in uids])
        claimed = [(uid, o) for uid, o in zip(uids, owners, strict=True) if o]
        if not claimed:
            return {}
        read = await self.access.hgets(
            [(s.visitor_key(uuid_from16(owner)), owner) for _, owner in claimed]
        )
        matches: dict[str, str] = {}
        for (uid, owner), record in zip(claimed, read, strict=True):
            # Verify against the forward entry: guards against hash collisions and
            # against entries that expired but were not swept yet.
            found = live(record, today, self.retention).get(dpid)
            if found is not None and found.uid == uid:
                uuid = matches[uid] = uuid_from16(owner)
                if records is not None and record:
                    records[uuid] = record
        return matches

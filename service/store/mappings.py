"""The match table: each visitor's record of partner uids, one hash field per visitor,
and the reverse entries from a partner uid to its visitor (keys.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from . import overlay
from .access import Access
from .codec import decode_uid, encode_uid, parse_record, unpack_day, uuid16, uuid_from16
from .writes import Clear, Disown, Forward, Map, Reverse, Touch, Unlink


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

    def clear(self, uuid: str, dpid: int) -> bool:
        return self.access.writes.push(Clear(uuid, dpid))

    async def record(self, uuid: str) -> bytes | None:
        s = self.access.schema
        return cast(bytes | None, await self.access.client.hget(s.visitor_key(uuid), uuid16(uuid)))

    async def entries(self, uuid: str) -> tuple[int | None, dict[int, bytes]]:
        """(last-seen day or None: no record, dpid -> entry) as Redis has them with this
        process's queued writes applied (overlay.py): a read sees every write made
        before it, whether Redis applied it yet or not."""
        w = self.access.writes
        pre, touched = w.pending.get(uuid), w.touched.get(uuid)
        erasing = uuid in w.erasing
        record = await self.record(uuid)
        if erasing or uuid in w.erasing:
            return None, {}
        post = w.pending.get(uuid)
        day, entries = (None, {}) if record is None else parse_record(record)
        overlay.merged(entries, uuid, pre, post, w.claims)
        touch = w.touched.get(uuid) or touched
        if day is not None and touch is not None:  # a touch never creates a record
            day = max(day, touch.day)
        put = overlay.put_day(pre, post)  # a put does
        if put is not None:
            day = put if day is None else max(day, put)
        return day, entries

    async def mappings(self, uuid: str, today: int) -> dict[int, PartnerUid]:
        return live_entries((await self.entries(uuid))[1], today, self.retention)

    async def last_seen(self, uuid: str) -> int | None:
        return (await self.entries(uuid))[0]

    async def lookup(
        self, dpid: int, uids: Sequence[str], today: int, records: dict[str, bytes] | None = None
    ) -> dict[str, str]:
        """Partner uids -> the visitor that last claimed each (unmatched left out), this
        process's queued writes included. `records` gets the match table records read
        on the way, by visitor (as Redis has them)."""
        s, w = self.access.schema, self.access.writes
        encs = [encode_uid(uid) for uid in uids] if w.claims else []
        pre = _claims(w.claims, dpid, encs)
        owners: list[bytes | None] = list(
            await self.access.hgets([s.reverse_slot(dpid, uid) for uid in uids])
        )
        post = _claims(w.claims, dpid, encs)
        for i, claim in {**pre, **post}.items():  # a pending claim is newer than Redis
            owners[i] = uuid16(claim.uuid)
        claimed = [(uid, o) for uid, o in zip(uids, owners, strict=True) if o]
        if not claimed:
            return {}
        visitors = [uuid_from16(owner) for _, owner in claimed]
        before = [(w.pending.get(v), v in w.erasing) for v in visitors]
        read = await self.access.hgets(
            [(s.visitor_key(v), owner) for v, (_, owner) in zip(visitors, claimed, strict=True)]
        )
        matches: dict[str, str] = {}
        for (uid, _), uuid, (earlier, erasing), record in zip(
            claimed, visitors, before, read, strict=True
        ):
            if erasing or uuid in w.erasing:
                continue
            entries = {} if record is None else parse_record(record)[1]
            overlay.merged(entries, uuid, earlier, w.pending.get(uuid), w.claims)
            # Verify against the forward entry: guards against hash collisions and
            # against entries that expired but were not swept yet.
            found = live_entries(entries, today, self.retention).get(dpid)
            if found is not None and found.uid == uid:
                matches[uid] = uuid
                if records is not None and record:
                    records[uuid] = record
        return matches


def _claims(
    claims: Mapping[tuple[int, bytes], Map | Reverse], dpid: int, encs: Sequence[bytes]
) -> dict[int, Map | Reverse]:
    """The pending claims of these uids (by index)."""
    if not claims:
        return {}
    return {i: c for i, enc in enumerate(encs) if (c := claims.get((dpid, enc))) is not None}

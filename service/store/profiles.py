"""Visitors' profiles: read together with the visitor's match-table record (one round
trip), written back by compare-and-set through the write buffer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from ..profiles import Profile
from . import overlay
from .access import Access
from .codec import pack_profile, parse_profile, parse_record, uuid16
from .mappings import PartnerUid, Retention, live, live_entries
from .writes import UNREAD, SaveProfile

# What a read found queued for the visitor's entries: (uuid, the pending effects before
# the read, after it, the pending claims of uids).
Pending = tuple[
    str, overlay.Entries | None, overlay.Entries | None, Mapping[tuple[int, bytes], object]
]


class VisitorState:
    """A visitor's stored data as one read found it: the profile (the caller may change
    it, then save it), the live mappings on demand, and what a compare-and-set of the
    profile expects to find (what was read, then what this state was last saved as).

    The store builds them from what it reads. A caller builds only the state of a
    visitor with nothing stored (`VisitorState()`, or with the profile to save) and
    that of a failed read (`VisitorState.unread()`)."""

    __slots__ = ("_packed", "_pending", "_record", "_retention", "profile")

    def __init__(
        self,
        profile: Profile | None = None,
        packed: bytes = b"",
        record: bytes | None = None,
        retention: Retention | None = None,
        pending: Pending | None = None,
    ) -> None:
        self.profile = Profile() if profile is None else profile
        self._packed = packed  # the stored value as read (b"": none; UNREAD: unknown)
        self._record = record  # the match-table record as read (not parsed until asked)
        self._retention = retention
        self._pending = pending  # this process's queued mapping writes (overlay.py)

    @classmethod
    def unread(cls) -> VisitorState:
        """The state of a visitor whose read failed: nothing known; a save of it is a
        change to be applied to whatever is stored (the redo)."""
        return cls(packed=UNREAD)

    @property
    def read_failed(self) -> bool:
        return self._packed is UNREAD

    @property
    def found(self) -> bool:
        """Whether anything is stored for the visitor (a profile or mappings)."""
        if self._record is not None or bool(self._packed and self._packed is not UNREAD):
            return True
        pending = self._pending
        return pending is not None and overlay.put_day(pending[1], pending[2]) is not None

    def mappings(self, today: int) -> dict[int, PartnerUid]:
        """The visitor's live partner uids, dpid -> uid (none when the read failed),
        this process's queued writes included."""
        pending = self._pending
        if pending is None:
            if self._record is None:
                return {}
            assert self._retention is not None
            return live(self._record, today, self._retention)
        assert self._retention is not None
        entries = {} if self._record is None else parse_record(self._record)[1]
        return live_entries(overlay.merged(entries, *pending), today, self._retention)


# Given the visitor's state as stored now, the profile to store instead: the change of
# a save, applied again to what another writer stored meanwhile (or to what is stored,
# when the save's read failed). It may change state.profile and answer it.
Redo = Callable[[VisitorState], Profile]


class _Repack:
    """A Redo as the write buffer runs it: on the stored bytes."""

    __slots__ = ("redo", "retention")

    def __init__(self, redo: Redo, retention: Retention) -> None:
        self.redo = redo
        self.retention = retention

    def __call__(self, current: bytes, record: bytes | None) -> bytes:
        state = VisitorState(parse_profile(current), current, record, self.retention)
        return pack_profile(self.redo(state))


class ProfileStore:
    def __init__(self, access: Access, retention: Retention) -> None:
        self.access = access
        self.retention = retention

    async def state(self, uuid: str, timeout: float) -> VisitorState:
        profile_key, visitor_key, field = self.access.schema.visitor_slots(uuid)
        # Read your own writes: this process's are not all in Redis yet. What is queued
        # is looked at before the read (an op acknowledged meanwhile may have been
        # applied after Redis answered) and after it (newer).
        w = self.access.writes
        unwritten, pre = w.unwritten_profiles.get(uuid), w.pending.get(uuid)
        erasing = uuid in w.erasing
        profile, record = await self.access.run(
            [("HGET", profile_key, field), ("HGET", visitor_key, field)],
            self.access.reads,
            timeout,
        )
        if erasing or uuid in w.erasing:
            return VisitorState(retention=self.retention)
        packed = w.unwritten_profiles.get(uuid)
        if packed is None:
            packed = unwritten
        if packed is None:
            packed = cast(bytes | None, profile) or b""
        post, claims = w.pending.get(uuid), w.claims
        pending = (uuid, pre, post, claims) if pre or post or claims else None
        return VisitorState(parse_profile(packed), packed, record, self.retention, pending)

    async def states(self, records: Mapping[str, bytes]) -> dict[str, VisitorState]:
        """The states of visitors whose records were read already (a lookup's): their
        profiles in one pipeline, on the bulk connection if any."""
        uuids = list(records)
        s = self.access.schema
        found = await self.access.hgets([(s.profile_key(u), uuid16(u)) for u in uuids])
        return {
            uuid: VisitorState(parse_profile(packed), packed or b"", records[uuid], self.retention)
            for uuid, packed in zip(uuids, found, strict=True)
        }

    def save(self, uuid: str, state: VisitorState, redo: Redo) -> bool:
        new, expected = pack_profile(state.profile), state._packed
        if expected is not UNREAD:  # a later save of this state builds on this one
            state._packed = new
        if expected == new:
            return True
        repack = _Repack(redo, self.retention)
        return self.access.writes.push(SaveProfile(uuid, expected, new, repack))

"""Read your writes: what this process has queued and Redis has not acknowledged yet,
as the reads merge it over what Redis answered.

The write buffer registers an entry when an op is pushed (or when the writer queues a
clean-up) and retires it when that op's answer comes back; a newer entry is never
retired by an older op (identity check). Per visitor and partner, an entry is the
composed effect of every queued op on that entry (a function of the stored value):

- `Put(body)`: the entry is `body` (day2 + uid codec), whatever it was;
- `Drop()`: the entry is gone, whatever it was (a /setuid clear, Map then Disown);
- `DropIf(encs)`: the entry is gone if it holds one of these uids (a Disown).

Effects compose (a newer one over an older one), and applying one twice changes
nothing, so a reader may apply the entries it saw before its Redis read was sent
(`pre`: one retired while the read was in flight may not be in what Redis answered)
and then those there after it (`post`: newer, or writes accepted meanwhile).

A pending claim of a uid, (dpid, uid codec) -> the Map or Reverse op naming its new
owner, answers reverse lookups, and takes the uid away from a previous owner until
the writer has queued (and registered) that owner's Disown.

Per-visitor dicts are copied on write: a reader's snapshot is never changed under it.
Everything here is bounded by the write queue: an entry only stands for queued ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Put:
    __slots__ = ("body", "op")

    def __init__(self, body: bytes, op: Any) -> None:
        self.body = body
        self.op = op  # the op whose acknowledgement retires this entry


class Drop:
    __slots__ = ("op",)

    def __init__(self, op: Any) -> None:
        self.op = op


class DropIf:
    __slots__ = ("encs", "op")

    def __init__(self, encs: tuple[bytes, ...], op: Any) -> None:
        self.encs = encs
        self.op = op


Effect = Put | Drop | DropIf
Entries = Mapping[int, Effect]  # dpid -> the pending effect on the visitor's entry


def compose(old: Effect | None, new: Effect) -> Effect:
    """The effect of `old` then `new` on one entry."""
    if old is None or isinstance(new, Put | Drop):
        return new
    if isinstance(old, Put):
        # A Disown of the uid just put removes it; of another uid, changes nothing.
        return Drop(new.op) if old.body[2:] in new.encs else old
    if isinstance(old, Drop):
        return old
    if set(new.encs) <= set(old.encs):
        return DropIf(old.encs, new.op)
    return DropIf(old.encs + new.encs, new.op)


def apply(entries: dict[int, bytes], pending: Entries) -> None:
    """Apply pending effects to a visitor's entries (dpid -> day2 + uid codec)."""
    for dpid, effect in pending.items():
        if isinstance(effect, Put):
            entries[dpid] = effect.body
        elif isinstance(effect, Drop):
            entries.pop(dpid, None)
        else:
            body = entries.get(dpid)
            if body is not None and body[2:] in effect.encs:
                del entries[dpid]


def unclaimed(
    entries: dict[int, bytes], uuid: str, claims: Mapping[tuple[int, bytes], Any]
) -> None:
    """Drop the entries whose uid another visitor claimed since (its Map is queued)."""
    taken = [
        dpid
        for dpid, body in entries.items()
        if (claim := claims.get((dpid, body[2:]))) is not None and claim.uuid != uuid
    ]
    for dpid in taken:
        del entries[dpid]


def merged(
    entries: dict[int, bytes],
    uuid: str,
    pre: Entries | None,
    post: Entries | None,
    claims: Mapping[tuple[int, bytes], Any],
) -> dict[int, bytes]:
    """A visitor's entries as Redis answered them, with this process's pending writes."""
    if pre:
        apply(entries, pre)
    if post and post is not pre:
        apply(entries, post)
    if claims and entries:
        unclaimed(entries, uuid, claims)
    return entries


def put_day(pre: Entries | None, post: Entries | None) -> int | None:
    """The latest visitor day a pending Put sets (None: no Put pending)."""
    days = [
        int.from_bytes(e.body[:2], "big")
        for pending in (pre, post)
        if pending
        for e in pending.values()
        if isinstance(e, Put)
    ]
    return max(days) if days else None

"""Read your writes: what this process has queued and Redis has not acknowledged yet,
as the reads merge it over what Redis answered.

The write buffer registers an entry when an op is pushed (or when the writer queues a
clean-up) and retires it when that op's answer comes back; a newer entry is never
retired by an older op (identity check). Per visitor and partner, an entry is the
composed effect of every queued op on that entry (a function of the stored value):

- a put (a Map or Forward op itself): the entry is its uid as of its day;
- a drop (a Clear op, or `Drop`): the entry is gone, whatever it was (Map then Disown);
- a drop-if (a Disown op, or `DropIf`): the entry is gone if it holds one of these uids.

Ops stand for their own effect (nothing to build on the hot path); `Drop` and `DropIf`
are what composing builds, with the op whose acknowledgement retires them.
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
from typing import Any, Final

from .codec import pack_day

PUT: Final = 1
DROP: Final = 2
DROP_IF: Final = 3


class Drop:
    __slots__ = ("op",)
    effect = DROP

    def __init__(self, op: Any) -> None:
        self.op = op  # the op whose acknowledgement retires this entry


class DropIf:
    __slots__ = ("encs", "op")
    effect = DROP_IF

    def __init__(self, encs: tuple[bytes, ...], op: Any) -> None:
        self.encs = encs
        self.op = op


# An effect: an op (Map, Forward: PUT with .day and .enc; Disown: DROP_IF with .enc;
# Clear: DROP) or a Drop or DropIf; each has `effect`, one of the three.
Effect = Any
Entries = Mapping[int, Effect]  # dpid -> the pending effect on the visitor's entry


def retires(effect: Effect, op: Any) -> bool:
    """Whether acknowledging `op` retires this entry."""
    return effect is op or (isinstance(effect, Drop | DropIf) and effect.op is op)


def _encs(effect: Effect) -> tuple[bytes, ...]:
    return effect.encs if isinstance(effect, DropIf) else (effect.enc,)


def _op(effect: Effect) -> Any:
    return effect.op if isinstance(effect, Drop | DropIf) else effect


def compose(old: Effect | None, new: Effect) -> Effect:
    """The effect of `old` then `new` on one entry."""
    if old is None or new.effect != DROP_IF:
        return new
    if old.effect == PUT:
        # A Disown of the uid just put removes it; of another uid, changes nothing.
        return Drop(_op(new)) if old.enc in _encs(new) else old
    if old.effect == DROP:
        return old
    return DropIf(tuple(dict.fromkeys(_encs(old) + _encs(new))), _op(new))


def apply(entries: dict[int, bytes], pending: Entries) -> None:
    """Apply pending effects to a visitor's entries (dpid -> day2 + uid codec)."""
    for dpid, effect in pending.items():
        kind = effect.effect
        if kind == PUT:
            entries[dpid] = pack_day(effect.day) + effect.enc
        elif kind == DROP:
            entries.pop(dpid, None)
        else:
            body = entries.get(dpid)
            if body is not None and body[2:] in _encs(effect):
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
    """The latest visitor day a pending put sets (None: no put pending)."""
    days = [
        e.day for pending in (pre, post) if pending for e in pending.values() if e.effect == PUT
    ]
    return max(days) if days else None

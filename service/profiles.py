"""A visitor's profile (SPEC §6, §7): time-stamped trait realizations, segment
membership, and the URL destination fires waiting for a browser. Pure data and
arithmetic on days; the byte layout lives in store/codec.py.

Realizations are kept per trait as (day, count) pairs, oldest first. Days are UTC day
numbers (identity.today()). A realization expires when its age in days reaches the
trait's ttl_days: a trait keeps at most ttl_days pairs. A trait that never expires
(ttl_days 0) keeps its newest `keep_days` days one by one (enough for every
FREQUENCY/RECENCY window configured) and merges older ones into one pair, which still
counts for `100T` and for FREQUENCY without a window.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

PENDING_DAYS: Final = 1  # a URL fire waits this long for a browser (SPEC §7)


@dataclass(slots=True)
class Pending:
    """A URL destination fire waiting for the visitor's next JSON /event or dest5.html."""

    destination: int
    segment: int
    day: int


@dataclass(slots=True)
class Profile:
    traits: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    segments: set[int] = field(default_factory=set)
    pending: list[Pending] = field(default_factory=list)
    # The day `segments` was last worked out on in full (0: never), and with which
    # rules (Qualifier.fingerprint). Rules change their answer only with a realization
    # or with the day, so on the same day, with the same rules, only the segments of
    # the traits realized need evaluating again.
    evaluated: int = 0
    rules: int = 0

    @property
    def empty(self) -> bool:
        return not (self.traits or self.segments or self.pending)

    def realize(self, sid: int, day: int, times: int = 1) -> None:
        entries = self.traits.setdefault(sid, [])
        if not entries or entries[-1][0] < day:
            entries.append((day, times))
            return
        # Today again, or a late realization (another process wrote a later day).
        at = bisect.bisect_left(entries, (day, 0))
        if at < len(entries) and entries[at][0] == day:
            entries[at] = (day, entries[at][1] + times)
        else:
            entries.insert(at, (day, times))

    def prune(self, today: int, ttl_days: dict[int, int], keep_days: int) -> None:
        """Drop expired realizations (and traits no longer configured), merge the ones
        older than keep_days, drop pending fires older than PENDING_DAYS."""
        for sid in list(self.traits):
            ttl = ttl_days.get(sid)
            entries = self.traits[sid]
            if ttl is None:
                del self.traits[sid]
                continue
            if ttl > 0:
                entries = [(d, n) for d, n in entries if today - d < ttl]
            else:  # never expires: days no window looks at can be one entry
                old = [(d, n) for d, n in entries if today - d >= keep_days]
                if len(old) > 1:
                    entries = [(old[-1][0], sum(n for _, n in old)), *entries[len(old) :]]
            if entries:
                self.traits[sid] = entries
            else:
                del self.traits[sid]
        # Kept one full day at least, whatever the time of day it was queued.
        self.pending = [p for p in self.pending if today - p.day <= PENDING_DAYS]

    def realized_traits(self) -> list[int]:
        return sorted(self.traits)


@dataclass(slots=True)  # not frozen: one per evaluation, and a frozen __init__ costs 3x
class History:
    """rules.History over a profile as of `today`."""

    profile: Profile
    today: int

    def count(self, sids: Sequence[int], within_days: int | None) -> int:
        traits = self.profile.traits
        total = 0
        for sid in sids:
            for day, n in traits.get(sid, ()):
                if within_days is None or self.today - day < within_days:
                    total += n
        return total


def merge_pending(current: Iterable[Pending], new: Iterable[Pending]) -> list[Pending]:
    """Pending fires without duplicates (one per destination and segment, newest day)."""
    seen: dict[tuple[int, int], Pending] = {}
    for p in (*current, *new):
        key = (p.destination, p.segment)
        if key not in seen or seen[key].day < p.day:
            seen[key] = p
    return list(seen.values())

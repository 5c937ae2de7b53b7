"""Qualification (SPEC §6): which traits a request realizes, and which segments the
visitor is in, entered and left as a result. Rules are compiled once (rules.py);
profiles are plain data (profiles.py). No HTTP, no Redis."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .config import Segment, Trait
from .profiles import History, Profile
from .rules import SegmentRule, TraitIndex, compile_segment_rule, compile_trait_rule

MIN_KEEP_DAYS: Final = 7  # days kept one by one even when no rule has a window
IMPORTABLE_CACHE: Final = 10_000  # distinct (data source, trait list) answers kept


@dataclass(slots=True)  # not frozen: one per request, and a frozen __init__ costs 3x
class Qualification:
    realized: list[int]  # traits this request realized
    segments: frozenset[int]  # the visitor's segments after it
    entered: list[int]
    exited: list[int]


class Qualifier:
    def __init__(self, traits: Sequence[Trait], segments: Sequence[Segment]) -> None:
        self.index = TraitIndex(
            (t.sid, compile_trait_rule(t.rule)) for t in traits if t.type == "rule"
        )
        self.ttl_days = {t.sid: t.ttl_days for t in traits}
        # d_sid comes from the browser: rule traits, and onboarded ones no partner owns.
        self.direct = frozenset(t.sid for t in traits if t.type == "rule" or t.data_source is None)
        self.sources = {t.sid: t.data_source for t in traits if t.type == "onboarded"}
        self._importable: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        self.segments: list[tuple[int, SegmentRule]] = [
            (s.sid, compile_segment_rule(s.rule)) for s in segments
        ]
        self._by_trait: dict[int, list[tuple[int, SegmentRule]]] = {}
        for sid, rule in self.segments:
            for trait in rule.traits:
                self._by_trait.setdefault(trait, []).append((sid, rule))
        self.keep_days = max([MIN_KEEP_DAYS, *(w for _, r in self.segments for w in r.windows)])
        # Which rules a stored segment set was worked out with (16 bits, in profiles).
        text = "\n".join(
            [f"t{t.sid}:{t.ttl_days}:{t.rule}" for t in traits]
            + [f"s{s.sid}:{s.rule}" for s in segments]
        )
        self.fingerprint = zlib.crc32(text.encode()) & 0xFFFF or 1

    @property
    def active(self) -> bool:
        return bool(self.ttl_days or self.segments)

    def realize(
        self,
        signals: Mapping[str, Sequence[str]],
        private: Mapping[str, Sequence[str]],
        direct: Iterable[int] = (),
    ) -> list[int]:
        """Rule traits the signals satisfy, then the d_sid ones allowed, once each."""
        merged = {**signals, **private} if private else signals
        realized = self.index.realized(merged)
        for sid in direct:
            if sid in self.direct and sid not in realized:
                realized.append(sid)
        return realized

    def onboarded(self, source: int, sids: Iterable[int]) -> list[int]:
        """The traits a partner (dpid) may realize: its onboarded ones."""
        return [sid for sid in sids if self.sources.get(sid) == source]

    def importable(self, source: int, sids: Iterable[int]) -> list[int]:
        """The traits a batch file of this data source may realize or remove: the
        onboarded ones that are its own or nobody's."""
        key = (source, tuple(sids))
        found = self._importable.get(key)
        if found is None:
            found = [
                sid
                for sid in dict.fromkeys(key[1])
                if sid in self.sources and self.sources[sid] in (None, source)
            ]
            if len(self._importable) < IMPORTABLE_CACHE:  # a file repeats its trait lists
                self._importable[key] = found
        return list(found)

    def owned_by(self, source: int, profile: Profile) -> list[int]:
        """The visitor's traits that this data source realized (what .overwrite replaces)."""
        return [sid for sid in profile.traits if self.sources.get(sid) == source]

    def evaluate(self, profile: Profile, today: int) -> frozenset[int]:
        history = History(profile, today)
        return frozenset(sid for sid, rule in self.segments if rule(history))

    def _reevaluate(self, profile: Profile, realized: Sequence[int], today: int) -> frozenset[int]:
        """The segments after `realized`, from those evaluated earlier today."""
        rules = {sid: rule for t in realized for sid, rule in self._by_trait.get(t, ())}
        if not rules:
            return frozenset(profile.segments)
        history = History(profile, today)
        now = set(profile.segments)
        for sid, rule in rules.items():
            if rule(history):
                now.add(sid)
            else:
                now.discard(sid)
        return frozenset(now)

    def qualify(
        self,
        profile: Profile,
        realized: Sequence[int],
        today: int,
        removed: Sequence[int] = (),
    ) -> Qualification:
        """Remove traits, record the realizations, expire what is due, and work out the
        segments. Changes `profile` in place."""
        for sid in removed:
            profile.traits.pop(sid, None)
        for sid in realized:
            profile.realize(sid, today)
        touched = [*realized, *removed]  # the segments of both need evaluating again
        before = profile.segments
        if profile.evaluated == today and profile.rules == self.fingerprint:
            now = self._reevaluate(profile, touched, today)
        else:  # a new day (expiry and windows move by days) or new rules: everything
            profile.prune(today, self.ttl_days, self.keep_days)
            now = self.evaluate(profile, today)
            profile.evaluated, profile.rules = today, self.fingerprint
        entered = sorted(now - before)
        exited = sorted(before - now)
        profile.segments = set(now)
        return Qualification(list(realized), now, entered, exited)

    def retain(
        self, profile: Profile, today: int, visitor_days: int, seen: int | None = None
    ) -> Profile | None:
        """Retention (SPEC §12) for the sweeper: None when the visitor has been silent
        for visitor_days (last seen by the match table, `seen`, or by its newest
        realization), else the profile without expired realizations and fires.
        Segments are left for the next request to work out in full, so that it sees
        (and acts on) the entries and exits that expiry causes."""
        days = [d for entries in profile.traits.values() for d, _ in entries]
        days += [p.day for p in profile.pending]
        if seen is not None:
            days.append(seen)
        if not days or today - max(days) >= visitor_days:
            return None
        before = (len(profile.pending), {sid: list(e) for sid, e in profile.traits.items()})
        profile.prune(today, self.ttl_days, self.keep_days)
        if (len(profile.pending), profile.traits) != before:
            profile.evaluated = 0
        return None if profile.empty else profile

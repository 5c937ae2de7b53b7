"""A visitor's profile through one request: read it (with the visitor's mappings, one
round trip), qualify, hand out or queue destination fires, send s2s changes, and
write it back (buffered, compare-and-set). Shared by /event, dest5.html and the
batch import."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from . import metrics
from .activities import Activity, PrivacyGate
from .consent import Privacy
from .destinations import CookieDestination, DestinationRules, Fire, Tokens, dest_field
from .identity import Visitor, VisitorKind
from .macros import consent_values
from .outbound.s2s import S2SSender, SegmentChange, UserUpdate
from .profiles import Pending, Profile, merge_pending
from .qualification import Qualification, Qualifier
from .store import PartnerUid, Redo, Store, StoreError, VisitorState
from .tally import Tally, partner_field

STATE_READ_TIMEOUT_S: Final = 0.05  # an unreachable Redis must not hold the answer up


class TallyCounters:
    """Counters of a kind: into the per-minute buckets (via the tally, under
    `field(id, counter)`) and into Prometheus (`metric`, labelled id and counter)."""

    def __init__(self, tally: Tally, field: Callable[[int, str], str], metric: Any) -> None:
        self.tally = tally
        self.field = field
        self.metric = metric

    def count(self, ident: int, counter: str, n: int = 1) -> None:
        self.tally.add(self.field(ident, counter), n)
        metrics.child(self.metric, str(ident), counter).inc(n)


def loss_counters(tally: Tally) -> TallyCounters:
    """Destination delivery: d:<id>:<counter>, read by /v1/loss."""
    return TallyCounters(tally, dest_field, metrics.DESTINATIONS)


def realtime_counters(tally: Tally) -> TallyCounters:
    """Real-time calls: p:<dpid>:rt_<counter>, read by /v1/match-rates."""
    return TallyCounters(
        tally, lambda dpid, counter: partner_field(dpid, "rt_" + counter), metrics.REALTIME
    )


class State:
    """A visitor's stored data as one request sees it."""

    __slots__ = ("degraded", "read", "stored")

    def __init__(self, read: VisitorState | None = None, *, stored: bool = False) -> None:
        self.read = VisitorState() if read is None else read
        self.stored = stored  # a KNOWN visitor whose state was read: writes go back
        self.degraded = self.read.read_failed  # no entries or exits can be trusted

    @property
    def profile(self) -> Profile:
        """The profile a save writes back: the read's own, never a stale copy."""
        return self.read.profile


class Profiles:
    def __init__(
        self,
        store: Store,
        qualifier: Qualifier,
        rules: DestinationRules,
        tokens: Tokens,
        loss: TallyCounters,
        *,
        s2s: S2SSender | None,
        gate: PrivacyGate,
        region: int,
    ) -> None:
        self.store = store
        self.qualifier = qualifier
        self.rules = rules
        self.tokens = tokens
        self.loss = loss
        self.s2s = s2s
        self.gate = gate
        self.region = region

    async def read(self, visitor: Visitor, *, store_new: bool = False) -> State:
        """A KNOWN visitor's profile and mappings; an empty state for anyone else, as
        nothing is stored for a fresh uuid. A NEW visitor's state is saved only with
        `store_new` (its first request stored at once: no cookie bounce); otherwise
        nothing is stored for a browser that has not kept our cookie yet."""
        if visitor.kind is not VisitorKind.KNOWN or visitor.uuid is None:
            return State(stored=store_new and visitor.kind is VisitorKind.NEW)
        try:
            read = await self.store.visitor_state(visitor.uuid, STATE_READ_TIMEOUT_S)
        except StoreError:
            metrics.REDIS_ERRORS.labels("read").inc()
            return State(VisitorState.unread(), stored=True)
        return State(read, stored=True)

    def mapped(self, state: State, day: int) -> dict[int, PartnerUid]:
        """The visitor's live partner uids, by dpid. Empty when the read failed (a second
        read would only wait as long again)."""
        return state.read.mappings(day)

    def allowed(
        self, privacy: Privacy, partner: int | None, activity: Activity = Activity.FIRE
    ) -> bool:
        """May a destination of this partner be fed, for this request (a denial is
        counted)? One without a partner is fed unless GDPR applies (it has no vendor
        id to consent to)."""
        return self.gate.permits(partner, activity, privacy)

    def macro_values(
        self, visitor: Visitor, state: State, privacy: Privacy, consent: Mapping[str, str], day: int
    ) -> Callable[[int | None], dict[str, str] | None]:
        base = {
            "DD_UUID": visitor.uuid or "",
            **consent_values(consent, gdpr=int(privacy.gdpr_applies)),
        }
        mapped: dict[int, PartnerUid] | None = None

        def values(partner: int | None) -> dict[str, str] | None:
            nonlocal mapped
            if not self.allowed(privacy, partner):
                return None
            if partner is None:
                return base
            if mapped is None:
                mapped = self.mapped(state, day)
            found = mapped.get(partner)
            return {**base, "DP_UUID": found.uid if found else ""}

        return values

    def qualify(
        self,
        visitor: Visitor,
        state: State,
        realized: Sequence[int],
        privacy: Privacy,
        consent: Mapping[str, str],
        *,
        hand_out: bool,
        now: float | None = None,
        removed: Sequence[int] = (),
    ) -> tuple[Qualification, list[Fire]]:
        """Qualify; fire or queue the URL destinations of the segments entered; send the
        s2s changes; write the profile back. Answers the fires handed out now.

        Only a stored visitor (one that kept our cookie) gets fires and s2s changes: a
        browser refusing cookies would get them again on every page view. When the
        read failed, nothing is acted on here: the write's redo works out the entries
        against the stored profile and acts on them then."""
        now = time.time() if now is None else now
        day = int(now // 86400)
        profile = state.profile
        result = self.qualifier.qualify(profile, realized, day, removed)
        for sid in realized:
            metrics.child(metrics.TRAITS, str(sid)).inc()
        if not state.stored:
            return result, []
        fires: list[Fire] = []
        due: list[Pending] = []
        handed: set[tuple[int, int]] = set()
        if not state.degraded:
            due = self._act(visitor, state.read, result, privacy, now, day)
            if hand_out:
                pending = merge_pending(profile.pending, due)
                fires = self._fire(visitor, state, pending, privacy, consent, day)
                handed = {(p.destination, p.segment) for p in pending}
                profile.pending, due = [], []
            else:
                profile.pending = merge_pending(profile.pending, due)
        redo = self._redo(
            visitor, realized, day, now, privacy, due, handed, act=state.degraded, removed=removed
        )
        self._save(visitor, state, redo)
        return result, fires

    def drain(
        self, visitor: Visitor, state: State, privacy: Privacy, consent: Mapping[str, str]
    ) -> list[Fire]:
        """Hand out the visitor's pending URL fires (dest5.html)."""
        profile = state.profile
        if not state.stored or state.degraded or not profile.pending:
            return []
        now = time.time()
        day = int(now // 86400)
        fires = self._fire(visitor, state, profile.pending, privacy, consent, day)
        handed = {(p.destination, p.segment) for p in profile.pending}
        profile.pending = []
        self._save(visitor, state, self._redo(visitor, (), day, now, privacy, [], handed))
        return fires

    def erased(self, uuid: str, uids: Mapping[int, str], segments: frozenset[int]) -> None:
        """An erasure was applied (Store.on_erased): each s2s destination whose partner
        knew the visitor gets the exits of the mapped segments its profile held. No
        consent check: a removal only takes data away from the partner."""
        if self.s2s is None:
            return
        now = time.time()
        for d in self.rules.s2s:
            uid = uids.get(d.partner or 0)
            if uid is None:
                continue  # the partner did not know the visitor
            exits = tuple(
                SegmentChange(alias, False, now) for alias, _ in d.changes((), sorted(segments))
            )
            if exits:
                self.s2s.submit(d.id, UserUpdate(uuid, uid, self.region, exits))

    def pruned(
        self, profile: Profile, day: int, visitor_days: int, seen: int | None
    ) -> Profile | None:
        """A stored profile after retention (None: delete it)."""
        return self.qualifier.retain(profile, day, visitor_days, seen)

    def stuff(
        self, segments: Sequence[int] | frozenset[int], privacy: Privacy
    ) -> list[tuple[CookieDestination, str]]:
        return self.rules.stuff(segments, lambda partner: self._stuff_allowed(privacy, partner))

    def _stuff_allowed(self, privacy: Privacy, partner: int | None) -> bool:
        # Key-values for the page's own ad server are first-party: only a destination
        # of a partner needs that partner's consent.
        return partner is None or self.allowed(privacy, partner)

    # ------------------------------------------------------------------ internals

    def _fire(
        self,
        visitor: Visitor,
        state: State,
        pending: Sequence[Pending],
        privacy: Privacy,
        consent: Mapping[str, str],
        day: int,
    ) -> list[Fire]:
        if not pending:
            return []
        values = self.macro_values(visitor, state, privacy, consent, day)
        fires = self.rules.fires(pending, state.profile.segments, self.tokens, values)
        for fire in fires:
            self.loss.count(fire.destination, "instructed")
        return fires

    def _act(
        self,
        visitor: Visitor,
        read: VisitorState,
        result: Qualification,
        privacy: Privacy,
        now: float,
        day: int,
    ) -> list[Pending]:
        """Count the entries and exits, send the s2s changes; answer the URL fires due."""
        for sid in result.entered:
            metrics.child(metrics.SEGMENTS, str(sid), "entered").inc()
        for sid in result.exited:
            metrics.child(metrics.SEGMENTS, str(sid), "exited").inc()
        self._send_s2s(visitor, read, result, privacy, now, day)
        return self.rules.pending_for(
            result.entered, day, lambda partner: self.allowed(privacy, partner)
        )

    def _send_s2s(
        self,
        visitor: Visitor,
        read: VisitorState,
        result: Qualification,
        privacy: Privacy,
        now: float,
        day: int,
    ) -> None:
        if self.s2s is None or visitor.uuid is None or not (result.entered or result.exited):
            return
        mapped: dict[int, PartnerUid] | None = None
        for d in self.rules.s2s:
            changes = d.changes(result.entered, result.exited)
            if not changes or not self.allowed(privacy, d.partner, Activity.S2S):
                continue
            if mapped is None:
                mapped = read.mappings(day)
            uid = mapped.get(d.partner or 0)
            if uid is None:
                continue  # the partner does not know this visitor: nothing to send
            update = UserUpdate(
                visitor.uuid,
                uid.uid,
                self.region,
                tuple(SegmentChange(alias, entered, now) for alias, entered in changes),
            )
            self.s2s.submit(d.id, update)

    def _redo(
        self,
        visitor: Visitor,
        realized: Sequence[int],
        day: int,
        now: float,
        privacy: Privacy,
        due: list[Pending],
        handed: set[tuple[int, int]],
        *,
        act: bool = False,
        removed: Sequence[int] = (),
    ) -> Redo:
        """This request's change, applied again to the profile as stored now (another
        request wrote it meanwhile, or this one could not read it). The fires it handed
        out leave the queue; with `act` (nothing was acted on), the entries found now
        are acted on: counted, sent to s2s, and their URL fires queued."""

        acted: set[tuple[int, bool]] = set()  # (segment, entered) acted on by a run
        found: list[Pending] = due

        def redo(current: VisitorState) -> Profile:
            nonlocal found
            profile = current.profile
            result = self.qualifier.qualify(profile, realized, day, removed)
            pending = [p for p in profile.pending if (p.destination, p.segment) not in handed]
            if act:  # a redo may run again (a writer got in between): act on news only
                entered = [s for s in result.entered if (s, True) not in acted]
                exited = [s for s in result.exited if (s, False) not in acted]
                acted.update((s, True) for s in entered)
                acted.update((s, False) for s in exited)
                news = Qualification(result.realized, result.segments, entered, exited)
                found = merge_pending(found, self._act(visitor, current, news, privacy, now, day))
            profile.pending = merge_pending(pending, found)
            return profile

        return redo

    def _save(self, visitor: Visitor, state: State, redo: Redo) -> None:
        assert visitor.uuid is not None
        # state.read then stands for what was saved: batch jobs apply several lines of
        # one visitor in a row, each saving on top of the one before.
        if not self.store.save_profile(visitor.uuid, state.read, redo):
            metrics.REDIS_ERRORS.labels("profile_dropped").inc()

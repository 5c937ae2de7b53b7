"""Per-partner privacy policy (activity controls, modelled on Prebid Server's): which
of a partner's activities a request's privacy signals allow, and why not. No HTTP,
no Redis.

Activities, each about one configured partner:
  sync    outbound ID syncs: dest5.html and JSON /event `ibs` syncs, /sync/chain hops,
          /cookie_sync syncs, and /ibs (a denied partner's /ibs stores nothing and
          its redirect gets ${DD_UUID} empty, as SPEC §12 does for an opt-out)
  fire    browser destinations of the partner: url destinations (dests, dest5.html)
          and cookie destinations (`stuff`: its segments handed to the page for it)
  s2s     s2s destinations of the partner (segment changes posted to it)
  export  file destinations of the partner (`pixelsync export`, the worker)

A decision takes, in order: the request's opt-out (us_privacy, Sec-GPC, a GPP US
section), then GDPR consent for the partner's gvl_id, then the partner's
[[partners.privacy]] rules. Of the rules naming the activity, the first whose
conditions hold decides (deny or allow); none: allowed. An `allow` rule overrides only
the partner's later rules, never the opt-out or consent refusals before them.

Every denial has a Reason, the `reason` label of pixelsync_privacy_decisions_total and
the suffix of its per-minute counter (`p:<dpid>:deny_<activity>_<reason>`), which
the dashboard sums over its windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from . import metrics
from .config import Partner, PrivacyRule
from .consent import OptOut, Privacy
from .tally import Tally, partner_field


class Activity(StrEnum):
    SYNC = "sync"
    FIRE = "fire"
    S2S = "s2s"
    EXPORT = "export"


class Reason(StrEnum):
    """Why an activity is denied (ALLOWED: it is not)."""

    ALLOWED = "allowed"
    GDPR_CONSENT = "gdpr_consent"  # GDPR applies and the partner's gvl_id is not consented
    US_PRIVACY = "us_privacy"  # the values of consent.OptOut
    GPC = "gpc"
    GPP_US = "gpp_us"
    RULE = "rule"  # a [[partners.privacy]] rule


DENIAL_REASONS: Final = tuple(r for r in Reason if r is not Reason.ALLOWED)
Decision = tuple[bool, Reason]
ALLOW: Final[Decision] = (True, Reason.ALLOWED)
# Each opt-out's denial: its reason has the same value (an OptOut without one fails here).
_OPT_OUT: Final[dict[OptOut, Decision]] = {o: (False, Reason(o.value)) for o in OptOut}
_NO_CONSENT: Final[Decision] = (False, Reason.GDPR_CONSENT)
_RULE: Final[Decision] = (False, Reason.RULE)


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule for one activity: its verdict when its conditions hold."""

    allow: bool
    sections: frozenset[int] | None  # any of these named by gpp_sid; None: any request
    gdpr: bool | None  # GDPR applies (True) or does not (False); None: either

    @classmethod
    def of(cls, rule: PrivacyRule) -> Rule:
        sections = frozenset(rule.gpp_sid) if rule.gpp_sid is not None else None
        return cls(rule.allows, sections, rule.gdpr)

    def matches(self, privacy: Privacy) -> bool:
        if self.gdpr is not None and privacy.gdpr_applies is not self.gdpr:
            return False
        return self.sections is None or not self.sections.isdisjoint(privacy.sections)


def compile_rules(rules: Iterable[PrivacyRule]) -> dict[Activity, tuple[Rule, ...]]:
    """A partner's rules, by the activity they name, in their order."""
    by_activity: dict[Activity, list[Rule]] = {}
    for rule in rules:
        for name in dict.fromkeys(rule.activities):
            by_activity.setdefault(Activity(name), []).append(Rule.of(rule))
    return {a: tuple(rs) for a, rs in by_activity.items()}


class Policies:
    """Every partner's policy, compiled once at start-up. With no rules configured, a
    decision costs what the opt-out and consent checks cost and a dict's truth test."""

    def __init__(self, partners: Iterable[Partner]) -> None:
        partners = list(partners)
        self.gvl_ids: dict[int, int] = {p.dpid: p.gvl_id for p in partners}
        self._rules: dict[tuple[int, Activity], tuple[Rule, ...]] = {
            (p.dpid, activity): rules
            for p in partners
            for activity, rules in compile_rules(p.privacy).items()
        }

    @property
    def has_rules(self) -> bool:
        return bool(self._rules)

    def allowed(self, partner: int | None, activity: Activity, privacy: Privacy) -> Decision:
        """May `partner` (None: a destination of no partner) take part in `activity` for
        this request, and if not, why."""
        if privacy.opt_out is not None:
            return _OPT_OUT[privacy.opt_out]
        if privacy.gdpr_applies and not privacy.partner_allowed(
            self.gvl_ids.get(partner, 0) if partner else 0
        ):
            return _NO_CONSENT
        if self._rules and partner and not self.ruled_allowed(partner, activity, privacy):
            return _RULE
        return ALLOW

    def ruled_allowed(self, partner: int, activity: Activity, privacy: Privacy) -> bool:
        """What the partner's own rules say alone (the first that matches; none: yes)."""
        for rule in self._rules.get((partner, activity), ()):
            if rule.matches(privacy):
                return rule.allow
        return True

    def export_allowed(self, partner: int, gdpr_default: int) -> bool:
        """An export has no request: its rules are unconditional or about GDPR, which
        applies as [privacy] gdpr_default says (the config refuses gpp_sid on them)."""
        batch = Privacy(gdpr_applies=gdpr_default == 1, tcf=None)
        return self.ruled_allowed(partner, Activity.EXPORT, batch)


def denial_field(dpid: int, activity: Activity, reason: Reason) -> str:
    """The per-minute counter of one kind of denial (tally.py's field names)."""
    return partner_field(dpid, f"deny_{activity}_{reason}")


class PrivacyGate:
    """Policies, with every denial counted: in the per-minute buckets (the tally) and in
    pixelsync_privacy_decisions_total, whose counts wait in plain ints between flushes
    (metrics.counted_locally). Labels are configured dpids, activities and reasons:
    bounded. A destination of no partner counts under dpid 0."""

    def __init__(self, policies: Policies, tally: Tally) -> None:
        self.policies = policies
        self.tally = tally
        self._counts: dict[tuple[int, Activity, Reason], int] = {}
        # The per-minute field of each kind of denial, made once: an opted-out request
        # counts one per partner (dest5.html), so this runs thousands of times a second.
        self._fields: dict[tuple[int, Activity, Reason], str] = {}
        metrics.counted_locally(self)

    def permits(self, partner: int | None, activity: Activity, privacy: Privacy) -> bool:
        return self.decide(partner, activity, privacy)[0]

    def decide(self, partner: int | None, activity: Activity, privacy: Privacy) -> Decision:
        """Policies.allowed, a denial counted."""
        decision = self.policies.allowed(partner, activity, privacy)
        if not decision[0]:
            self.deny(partner or 0, activity, decision[1])
        return decision

    def ruled(self, partner: int, activity: Activity, privacy: Privacy) -> bool:
        """The partner's rules alone, a denial counted (reason rule)."""
        if self.policies.ruled_allowed(partner, activity, privacy):
            return True
        self.deny(partner, activity, Reason.RULE)
        return False

    def export_permits(self, partner: int, gdpr_default: int) -> bool:
        """Policies.export_allowed, a denial counted (reason rule)."""
        if self.policies.export_allowed(partner, gdpr_default):
            return True
        self.deny(partner, Activity.EXPORT, Reason.RULE)
        return False

    def deny(self, dpid: int, activity: Activity, reason: Reason) -> None:
        key = (dpid, activity, reason)
        self._counts[key] = self._counts.get(key, 0) + 1
        field = self._fields.get(key)
        if field is None:
            field = self._fields[key] = denial_field(dpid, activity, reason)
        self.tally.add(field)

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for (dpid, activity, reason), n in counts.items():
            metrics.child(metrics.PRIVACY_DECISIONS, str(dpid), activity, reason).inc(n)


def denials(totals: Mapping[str, int], partners: Mapping[int, str]) -> list[dict[str, object]]:
    """Per partner (dpid -> name) with any denial in `totals` (counters summed over a
    window): the denials by reason and by activity."""
    rows: list[dict[str, object]] = []
    for dpid, name in partners.items():
        by_reason = dict.fromkeys(DENIAL_REASONS, 0)
        by_activity = dict.fromkeys(Activity, 0)
        for activity in Activity:
            for reason in DENIAL_REASONS:
                n = totals.get(denial_field(dpid, activity, reason), 0)
                by_reason[reason] += n
                by_activity[activity] += n
        total = sum(by_reason.values())
        if total:
            rows.append(
                {
                    "dpid": dpid,
                    "name": name,
                    "total": total,
                    "reasons": {str(r): n for r, n in by_reason.items()},
                    "activities": {str(a): n for a, n in by_activity.items() if n},
                }
            )
    return rows

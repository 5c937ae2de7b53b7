"""Loss accounting (SPEC §7, §10 /v1/loss): per-minute counters summed over a window
into loss rates and a time series. Pure arithmetic over what the store counted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from .destinations import dest_field
from .tally import partner_field

# window -> (minutes, minutes per series point)
WINDOWS: Final = {"15m": (15, 1), "1h": (60, 5), "24h": (1440, 60), "7d": (10080, 360)}
DEST_COUNTERS: Final = (
    "instructed", "loaded", "confirmed", "attempted", "delivered", "failed", "retried",
)  # fmt: skip
SYNC_COUNTERS: Final = ("instructed", "completed")


@dataclass(frozen=True)
class Target:
    """A destination (kind "d") or a partner's ID sync (kind "p")."""

    kind: str
    id: int
    name: str
    type: str = ""  # destinations: url | cookie | s2s | file
    tracked: bool = True  # url destinations with track = "none": loads are not seen


def minutes(window: str, now_minute: int) -> range:
    span, _ = WINDOWS[window]
    return range(now_minute - span + 1, now_minute + 1)


def _ratio_loss(num: int, den: int) -> float | None:
    """1 - num/den, never below 0: pixels handed out before a window and loaded in it
    would otherwise make a negative loss."""
    return None if den == 0 else round(max(0.0, 1 - num / den), 6)


def loss_rate(kind: str, type_: str, c: Mapping[str, int], tracked: bool = True) -> float | None:
    """url 1 - loaded/instructed, s2s failed/attempted, file and cookie 0, partners
    1 - completed/instructed; None when the denominator is 0, or when loads are not
    seen (an untracked url destination)."""
    if kind == "p":
        return _ratio_loss(c["completed"], c["instructed"])
    if type_ == "url":
        return _ratio_loss(c["loaded"], c["instructed"]) if tracked else None
    if type_ == "s2s":
        return None if c["attempted"] == 0 else round(c["failed"] / c["attempted"], 6)
    return 0.0


def _iso(minute: int) -> str:
    return datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%MZ")


def report(
    window: str,
    now_minute: int,
    buckets: Sequence[Mapping[str, int]],
    targets: Sequence[Target],
) -> dict[str, Any]:
    """The /v1/loss document. `buckets[i]` holds the counters of minute
    `minutes(window, now_minute)[i]`."""
    span = minutes(window, now_minute)
    step = WINDOWS[window][1]
    destinations: list[dict[str, Any]] = []
    partners: list[dict[str, Any]] = []
    for t in targets:
        names = SYNC_COUNTERS if t.kind == "p" else DEST_COUNTERS
        fields = {
            n: partner_field(t.id, n) if t.kind == "p" else dest_field(t.id, n) for n in names
        }
        totals = dict.fromkeys(names, 0)
        series: list[dict[str, Any]] = []
        for i, minute in enumerate(span):
            if i % step == 0:
                series.append({"t": _iso(minute), **dict.fromkeys(names, 0)})
            for n, f in fields.items():
                v = buckets[i].get(f, 0)
                if v:
                    totals[n] += v
                    series[-1][n] += v
        for point in series:
            point["loss_rate"] = loss_rate(t.kind, t.type, point, t.tracked)
        rate = loss_rate(t.kind, t.type, totals, t.tracked)
        row: dict[str, Any] = {"loss_rate": rate, "series": series}
        if t.kind == "p":
            partners.append({"dpid": t.id, "name": t.name, **totals, **row})
        else:
            extra = {}
            if t.type == "url":
                extra["ack_loss_rate"] = (
                    _ratio_loss(totals["confirmed"], totals["loaded"]) if t.tracked else None
                )
            destinations.append(
                {"id": t.id, "name": t.name, "type": t.type, **totals, **row, **extra}
            )
    return {"window": window, "destinations": destinations, "partners": partners}


RATE_COUNTERS: Final = ("instructed", "completed", "mappings", "lookups_hit", "lookups_miss")


def match_rates(
    totals: Mapping[str, int], partners: Mapping[int, str], realtime: Sequence[str]
) -> dict[str, Any]:
    """The /v1/match-rates document from counters summed over its window: per
    partner (dpid -> name), the sync and lookup counters, completed / instructed, and
    the real-time call counters (`realtime`, stored as rt_<counter>)."""
    rows = []
    for dpid, name in partners.items():
        c = {k: totals.get(partner_field(dpid, k), 0) for k in RATE_COUNTERS}
        rate = c["completed"] / c["instructed"] if c["instructed"] else None
        rt = {k: totals.get(partner_field(dpid, "rt_" + k), 0) for k in realtime}
        rows.append({"dpid": dpid, "name": name, **c, "match_rate": rate, "realtime": rt})
    return {"partners": rows}

"""Loss accounting (SPEC §7, §10 /v1/loss): per-minute buckets summed into totals,
loss rates and a time series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.destinations import dest_field
from service.loss import DEST_COUNTERS, WINDOWS, Target, loss_rate, minutes, report
from service.tally import partner_field

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
NOW_MINUTE = int(NOW.timestamp()) // 60
SPANS = {"15m": 15, "1h": 60, "24h": 1440, "7d": 10080}


def empty(window: str) -> list[dict[str, int]]:
    return [{} for _ in range(SPANS[window])]


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%MZ")


def row(doc: dict[str, Any], id: int) -> dict[str, Any]:
    (found,) = [d for d in doc["destinations"] if d["id"] == id]
    return found


# --- windows and series ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "points", "step", "first", "last"),
    [
        pytest.param("15m", 15, 1, "2025-01-01T11:46Z", "2025-01-01T12:00Z", id="15m"),
        pytest.param("1h", 12, 5, "2025-01-01T11:01Z", "2025-01-01T11:56Z", id="1h"),
        pytest.param("24h", 24, 60, "2024-12-31T12:01Z", "2025-01-01T11:01Z", id="24h"),
        pytest.param("7d", 28, 360, "2024-12-25T12:01Z", "2025-01-01T06:01Z", id="7d"),
    ],
)
def test_series_points(window: str, points: int, step: int, first: str, last: str) -> None:
    span = minutes(window, NOW_MINUTE)
    assert len(span) == SPANS[window] == WINDOWS[window][0]
    assert span[-1] == NOW_MINUTE  # the current minute is the last one
    assert WINDOWS[window][1] == step
    doc = report(window, NOW_MINUTE, empty(window), [Target("d", 9, "px", "url")])
    series = row(doc, 9)["series"]
    assert len(series) == points
    start = NOW - timedelta(minutes=SPANS[window] - 1)
    assert [p["t"] for p in series] == [
        iso(start + timedelta(minutes=k * step)) for k in range(points)
    ]
    assert (series[0]["t"], series[-1]["t"]) == (first, last)
    assert all(p[c] == 0 for p in series for c in DEST_COUNTERS)


@pytest.mark.parametrize(
    ("window", "hits", "expected"),
    [
        pytest.param("15m", {0: 1, 7: 2, 14: 4}, {0: 1, 7: 2, 14: 4}, id="15m per minute"),
        pytest.param("1h", {0: 1, 4: 2, 5: 4, 59: 8}, {0: 3, 1: 4, 11: 8}, id="1h boundaries"),
        pytest.param(
            "24h", {0: 1, 59: 2, 60: 4, 1439: 8}, {0: 3, 1: 4, 23: 8}, id="24h boundaries"
        ),
        pytest.param(
            "7d", {0: 1, 359: 2, 360: 4, 10079: 8}, {0: 3, 1: 4, 27: 8}, id="7d boundaries"
        ),
    ],
)
def test_series_buckets(window: str, hits: dict[int, int], expected: dict[int, int]) -> None:
    buckets = empty(window)
    for index, n in hits.items():
        buckets[index] = {dest_field(9, "instructed"): n}
    doc = report(window, NOW_MINUTE, buckets, [Target("d", 9, "px", "url")])
    r = row(doc, 9)
    got = {k: p["instructed"] for k, p in enumerate(r["series"]) if p["instructed"]}
    assert got == expected
    assert r["instructed"] == sum(hits.values())


# --- totals and loss rates -------------------------------------------------------------------


def spread(window: str, target: str, kind_id: int, counts: dict[str, int]) -> list[dict[str, int]]:
    """Put each counter's count one at a time into different minutes of the window."""
    buckets = empty(window)
    field = partner_field if target == "p" else dest_field
    i = 0
    for name, n in counts.items():
        for _ in range(n):
            b = buckets[(i * 7) % len(buckets)]
            b[field(kind_id, name)] = b.get(field(kind_id, name), 0) + 1
            i += 1
    return buckets


@pytest.mark.parametrize(
    ("type_", "counts", "rate", "ack_rate"),
    [
        pytest.param("url", {"instructed": 4, "loaded": 3, "confirmed": 1}, 0.25, 2 / 3, id="url"),
        pytest.param("url", {"instructed": 3, "loaded": 3, "confirmed": 3}, 0.0, 0.0, id="url ok"),
        pytest.param("url", {"instructed": 5}, 1.0, None, id="url nothing loaded"),
        pytest.param("url", {}, None, None, id="url nothing instructed"),
        pytest.param("url", {"loaded": 2}, None, 1.0, id="url loads only"),
        pytest.param(
            "s2s",
            {"attempted": 8, "delivered": 6, "failed": 2, "retried": 3},
            0.25,
            "absent",
            id="s2s",
        ),
        pytest.param("s2s", {"attempted": 3, "delivered": 3}, 0.0, "absent", id="s2s ok"),
        pytest.param("s2s", {}, None, "absent", id="s2s nothing attempted"),
        pytest.param("cookie", {}, 0.0, "absent", id="cookie"),
        pytest.param("file", {}, 0.0, "absent", id="file"),
    ],
)
def test_destination_totals_and_rates(
    type_: str, counts: dict[str, int], rate: float | None, ack_rate: float | str | None
) -> None:
    doc = report("1h", NOW_MINUTE, spread("1h", "d", 9, counts), [Target("d", 9, "px", type_)])
    assert doc["window"] == "1h"
    assert doc["partners"] == []
    r = row(doc, 9)
    assert (r["name"], r["type"]) == ("px", type_)
    assert {c: r[c] for c in DEST_COUNTERS} == {c: counts.get(c, 0) for c in DEST_COUNTERS}
    assert r["loss_rate"] == (None if rate is None else pytest.approx(rate, abs=1e-6))
    if ack_rate == "absent":
        assert "ack_loss_rate" not in r
    else:
        assert r["ack_loss_rate"] == (
            None if ack_rate is None else pytest.approx(ack_rate, abs=1e-6)
        )
    # The series adds up to the totals.
    for c in DEST_COUNTERS:
        assert sum(p[c] for p in r["series"]) == r[c]


@pytest.mark.parametrize(
    ("counts", "rate"),
    [
        pytest.param({"instructed": 10, "completed": 7}, 0.3, id="some lost"),
        pytest.param({"instructed": 2, "completed": 2}, 0.0, id="none lost"),
        pytest.param({"instructed": 2}, 1.0, id="all lost"),
        pytest.param({}, None, id="nothing instructed"),
    ],
)
def test_partner_totals_and_rates(counts: dict[str, int], rate: float | None) -> None:
    doc = report("24h", NOW_MINUTE, spread("24h", "p", 1234, counts), [Target("p", 1234, "acme")])
    assert doc["destinations"] == []
    (p,) = doc["partners"]
    assert (p["dpid"], p["name"]) == (1234, "acme")
    assert (p["instructed"], p["completed"]) == (
        counts.get("instructed", 0),
        counts.get("completed", 0),
    )
    assert p["loss_rate"] == (None if rate is None else pytest.approx(rate, abs=1e-6))
    assert len(p["series"]) == 24
    assert set(p["series"][0]) == {"t", "instructed", "completed", "loss_rate"}
    assert sum(s["instructed"] for s in p["series"]) == p["instructed"]
    for point in p["series"]:  # each point's rate, worked out as the window's
        assert point["loss_rate"] == loss_rate("p", "", point)


@pytest.mark.parametrize(
    ("kind", "type_", "counts", "rate"),
    [
        pytest.param("d", "url", {"instructed": 3, "loaded": 1}, 1 - 1 / 3, id="url"),
        pytest.param("d", "s2s", {"attempted": 3, "failed": 1}, 1 / 3, id="s2s"),
        pytest.param("d", "cookie", {"instructed": 3}, 0.0, id="cookie"),
        pytest.param("d", "file", {}, 0.0, id="file"),
        pytest.param("p", "", {"instructed": 4, "completed": 1}, 0.75, id="partner"),
        pytest.param("p", "", {"instructed": 0, "completed": 0}, None, id="partner zero"),
    ],
)
def test_loss_rate(kind: str, type_: str, counts: dict[str, int], rate: float | None) -> None:
    full = {c: 0 for c in (*DEST_COUNTERS, "completed")} | counts
    got = loss_rate(kind, type_, full)
    assert got == (None if rate is None else pytest.approx(rate, abs=1e-6))


def test_other_counters_are_not_mixed_in() -> None:
    buckets = empty("15m")
    buckets[3] = {
        dest_field(9, "instructed"): 2,
        dest_field(9, "loaded"): 1,
        dest_field(10, "instructed"): 100,
        dest_field(10, "loaded"): 100,
        dest_field(99, "instructed"): 1000,  # not a target
        partner_field(9, "instructed"): 50,  # the partner with the same number
        partner_field(9, "completed"): 5,
        "d:9:bogus": 7,
    }
    buckets[14] = {dest_field(19, "instructed"): 3, dest_field(1, "failed"): 4}
    targets = [
        Target("d", 9, "nine", "url"),
        Target("d", 10, "ten", "url"),
        Target("p", 9, "partner nine"),
        Target("d", 11, "idle", "s2s"),
    ]
    doc = report("15m", NOW_MINUTE, buckets, targets)
    assert [d["id"] for d in doc["destinations"]] == [9, 10, 11]
    nine, ten, idle = doc["destinations"]
    assert {c: nine[c] for c in DEST_COUNTERS} == {
        **dict.fromkeys(DEST_COUNTERS, 0),
        "instructed": 2,
        "loaded": 1,
    }
    assert nine["loss_rate"] == 0.5
    assert "bogus" not in nine
    assert nine["series"][3]["instructed"] == 2
    assert (ten["instructed"], ten["loaded"], ten["loss_rate"]) == (100, 100, 0.0)
    assert {c: idle[c] for c in DEST_COUNTERS} == dict.fromkeys(DEST_COUNTERS, 0)
    assert idle["loss_rate"] is None
    (p,) = doc["partners"]
    assert (p["dpid"], p["instructed"], p["completed"]) == (9, 50, 5)
    assert p["loss_rate"] == 0.9


def test_document_shape() -> None:
    doc = report(
        "15m",
        NOW_MINUTE,
        empty("15m"),
        [Target("d", 9, "px", "url"), Target("d", 30, "s", "s2s"), Target("p", 1234, "acme")],
    )
    assert set(doc) == {"window", "destinations", "partners"}
    url, s2s = doc["destinations"]
    common = {"id", "name", "type", *DEST_COUNTERS, "loss_rate", "series"}
    assert set(url) == common | {"ack_loss_rate"}
    assert set(s2s) == common
    assert set(url["series"][0]) == {"t", *DEST_COUNTERS, "loss_rate"}
    (p,) = doc["partners"]
    assert set(p) == {"dpid", "name", "instructed", "completed", "loss_rate", "series"}

"""Outbound sync decisions, with an injected clock."""

from __future__ import annotations

import base64
from random import Random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.config import parse_settings
from service.sync import (
    DEXTP_MAX_BYTES,
    DEXTP_MAX_ENTRIES,
    HOUR_MS,
    OutboundPartner,
    due_partners,
    format_dextp,
    is_compact_dextp,
    outbound_partners,
    parse_dextp,
    record_hand_outs,
    sync_url,
)

NOW = 1_800_000_000.0  # an injected clock
DAY_MS = 86_400_000


def partners(n: int, refresh_days: int = 7) -> list[OutboundPartner]:
    doc = {
        "partners": [
            {
                "dpid": 100 + i,
                "name": f"p{i}",
                "sync_url": f"https://p{i}.test/s?u=${{DD_UUID}}&cb=${{CALLBACK}}",
                "refresh_days": refresh_days,
            }
            for i in range(n)
        ]
        + [{"dpid": 999, "name": "inbound-only"}]
    }
    return outbound_partners(parse_settings(doc).partners)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, {}),
        ("", {}),
        ("100-1-1700000000000", {100: 1700000000000}),
        ("100-1-5|101-1-6", {100: 5, 101: 6}),
        ("garbage", {}),
        ("100-1-5|x-1-2|101--3|-1-|102-1-7", {100: 5, 102: 7}),
        ("100-1-99999999999999999999", {}),
        ("%00|\u00e9-1-1|1-1-1", {1: 1}),
        ("|".join(f"{i}-1-1" for i in range(1000)), {i: 1 for i in range(200)}),
    ],
)
def test_dextp_reading_ignores_garbage(value: str | None, expected: dict[int, int]) -> None:
    assert parse_dextp(value) == expected


HOUR = 1_800_000_000_000 // HOUR_MS  # the injected clock's hour
HANDED = st.dictionaries(
    st.integers(1, 2**40) | st.integers(1, 600),  # dpids sparse and dense
    st.integers(0, 2**40),  # unix ms
    max_size=60,
)


def hourly(handed: dict[int, int]) -> dict[int, int]:
    return {dpid: -(-ms // HOUR_MS) * HOUR_MS for dpid, ms in handed.items()}  # rounded up


def test_dextp_round_trip_at_hour_precision() -> None:
    handed = {101: 1_700_000_000_123, 7: 5, 2**62: 1_700_000_000_000}
    value = format_dextp(handed)
    assert value.startswith("2.") and len(value) < 40
    assert parse_dextp(value) == hourly(handed)
    assert format_dextp({}) == ""


def test_the_encoder_picks_a_bitmap_for_dense_partners() -> None:
    dense = {dpid: HOUR * HOUR_MS for dpid in range(1000, 1500)}  # one hour, 500 partners
    value = format_dextp(dense)
    assert len(value) <= 2 + 4 * (3 + 1 + 2 + 2 + 63) // 3 + 1  # hour, older, head, first, bits
    assert parse_dextp(value) == dense


@settings(max_examples=300)
@given(HANDED)
def test_dextp_round_trips_within_the_cap(handed: dict[int, int]) -> None:
    value = format_dextp(handed)
    assert len(value) <= DEXTP_MAX_BYTES  # 60 entries always fit
    assert parse_dextp(value) == hourly(handed)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(250, 10_000),
    st.integers(1, 50),
    st.sampled_from([1, 7, 97]),
    st.randoms(use_true_random=False),
)
def test_dextp_stays_under_the_cap_keeping_the_newest(
    n: int, per_hour: int, spacing: int, rnd: Random
) -> None:
    """Any number of partners: the value fits in 1 KiB; what is left out is older than
    anything kept."""
    dpids = [1 + i * spacing for i in range(n)]
    rnd.shuffle(dpids)
    handed = {d: (HOUR - i // per_hour) * HOUR_MS + 17 for i, d in enumerate(dpids)}
    value = format_dextp(handed)
    assert len(value) <= DEXTP_MAX_BYTES
    kept = parse_dextp(value)
    assert kept and kept.items() <= hourly(handed).items()
    left_out = handed.keys() - kept.keys()
    if left_out:
        assert max(handed[d] for d in left_out) <= min(handed[d] for d in kept)


@given(st.binary(max_size=2000), st.text(max_size=1200))
@example(b"\xff" * 800, "")
@example(b"\x00" + b"\x80" * 20, "-_")
@example(b"\x00\x00\xff\xff\xff\xff\x0f", "")  # a sparse group of 2**34 entries, cut short
@example(b"\x00\x00\xff\xff\xff\xff\x0f\xff\xff\xff\xff\x0f", "")  # a 2**34-byte bitmap
def test_hostile_dextp_never_raises(raw: bytes, text: str) -> None:
    for value in ("2." + base64.urlsafe_b64encode(raw).decode(), "2." + text, text):
        handed = parse_dextp(value)
        assert len(handed) <= DEXTP_MAX_ENTRIES
        assert all(isinstance(k, int) and isinstance(v, int) for k, v in handed.items())


def test_hostile_dextp_is_read_in_linear_time() -> None:
    # The parser looks at 1 KiB: a longer value costs no more than one that size.
    value = "2." + base64.urlsafe_b64encode(b"\x00\x00\x01" + b"\xff" * 100_000).decode()
    assert len(parse_dextp(value)) <= 8 * DEXTP_MAX_BYTES


def test_a_legacy_cookie_is_read_and_rewritten_compact() -> None:
    ps = {p.dpid: p for p in partners(250, refresh_days=7)}
    now_ms = int(NOW * 1000)
    # The case: 250 partners, 50 views handing out 5 each, an hour apart.
    legacy = "|".join(f"{d}-1-{now_ms - (d - 100) // 5 * HOUR_MS}" for d in ps)
    assert len(legacy) > 4096 and not is_compact_dextp(legacy)
    handed = parse_dextp(legacy)
    assert len(handed) == 200  # the older reader's own bound
    value = record_hand_outs(handed, [], ps, {}, now=NOW)
    assert is_compact_dextp(value) and len(value) <= 400
    assert parse_dextp(value) == hourly(handed)


def test_hand_outs_keep_only_what_paces() -> None:
    ps = {p.dpid: p for p in partners(4, refresh_days=7)}  # 100-103
    now_ms = int(NOW * 1000)
    handed = {
        100: now_ms - 6 * DAY_MS,  # still pacing
        101: now_ms - 7 * DAY_MS,  # due again anyway: left out
        102: now_ms + 2 * HOUR_MS,  # from the future: left out
        555: now_ms,  # no longer configured: left out
    }
    value = record_hand_outs(handed, [103], ps, {100: int(NOW) // 86400}, now=NOW)
    assert parse_dextp(value) == hourly({100: handed[100], 103: now_ms})
    # Under the cap, a partner the match table paces keeps its hand-out: the cookie alone
    # tells it is not due, with no read of the match table. A time from the future paces
    # no more.
    after = due_partners(list(ps.values()), parse_dextp(value), {}, now=NOW, limit=9)
    assert [p.dpid for p in after] == [101, 102]


def test_over_the_cap_the_match_table_paced_partners_go_first() -> None:
    ps = {p.dpid: p for p in partners(850, refresh_days=30)}  # 100-949
    now_ms = int(NOW * 1000)
    today = int(NOW) // 86400
    # Each partner handed out in one of the last 400 hours: over the cap.
    handed = {d: now_ms - (d * 7 % 400) * HOUR_MS for d in ps}
    assert len(parse_dextp(format_dextp(handed))) < len(handed)
    synced = {d: today for d in handed if d < 400}  # synced since: the match table paces
    kept = parse_dextp(record_hand_outs(handed, [], ps, synced, now=NOW))
    assert not kept.keys() & synced.keys()
    assert len(kept) > 200
    left_out = handed.keys() - kept.keys() - synced.keys()
    assert max(handed[d] for d in left_out) <= min(handed[d] for d in kept)
    # Without the match table, the oldest go.
    kept = parse_dextp(record_hand_outs(handed, [], ps, {}, now=NOW))
    assert kept.keys() & synced.keys()


@pytest.mark.parametrize(("n", "per_view", "hours_apart"), [(1000, 10, 1), (8000, 50, 0)])
def test_every_partner_is_served_once_when_the_cookie_is_over_its_cap(
    n: int, per_view: int, hours_apart: int
) -> None:
    """The cookie cannot hold them all: it forgets the oldest hand-outs, yet the rotation
    goes on past the newest instead of handing the forgotten ones out again."""
    doc = {
        "partners": [
            {"dpid": 1 + 7 * i, "name": f"p{i}", "sync_url": "https://p.test/?u=${DD_UUID}"}
            for i in range(n)
        ]
    }
    ps = outbound_partners(parse_settings(doc).partners)
    by_dpid = {p.dpid: p for p in ps}
    value, served, now = "", [], NOW
    for _ in range(n // per_view):
        handed = parse_dextp(value)
        due = [p.dpid for p in due_partners(ps, handed, {}, now=now, limit=per_view)]
        served += due
        value = record_hand_outs(handed, due, by_dpid, {}, now=now)
        assert len(value) <= DEXTP_MAX_BYTES and set(due) <= parse_dextp(value).keys()
        now += hours_apart * 3600
    assert len(parse_dextp(value)) < n  # over the cap
    assert sorted(served) == sorted(by_dpid)


def test_only_partners_with_a_sync_url_are_synced() -> None:
    assert [p.dpid for p in partners(2)] == [100, 101]


def test_rotation_serves_every_partner_in_turn() -> None:
    ps = partners(5, refresh_days=1)
    handed: dict[int, int] = {}
    served: list[list[int]] = []
    now = NOW
    for _ in range(4):
        due = due_partners(ps, handed, {}, now=now, limit=2)
        served.append([p.dpid for p in due])
        for p in due:
            handed[p.dpid] = int(now * 1000)
        now += 3600  # an hour later: nothing is due again yet but the rest
    assert served == [[100, 101], [102, 103], [104], []]
    # A day later everyone is due again, the longest waiting first.
    due = due_partners(ps, handed, {}, now=NOW + 86400 + 3 * 3600, limit=2)
    assert [p.dpid for p in due] == [100, 101]


def test_a_mapping_seen_recently_counts_as_synced() -> None:
    ps = partners(3, refresh_days=7)
    today = int(NOW) // 86400
    due = due_partners(ps, {}, {100: today - 2, 101: today - 8}, now=NOW, limit=5)
    assert [p.dpid for p in due] == [101, 102]


def test_handed_out_within_refresh_is_not_due() -> None:
    ps = partners(2, refresh_days=7)
    now_ms = int(NOW * 1000)
    handed = {100: now_ms - 6 * DAY_MS, 101: now_ms - 8 * DAY_MS}
    assert [p.dpid for p in due_partners(ps, handed, {}, now=NOW, limit=5)] == [101]


def test_sync_url_macros() -> None:
    (p,) = partners(1)
    url = sync_url(
        p,
        uuid="12345",
        partner_uid="",
        public_url="https://px.test",
        proto="https",
        consent={},
        rand="7",
    )
    assert url == (
        "https://p0.test/s?u=12345&cb=https%3A%2F%2Fpx.test%2Fibs%3Adpid%3D100%26dpuuid%3D%24UID"
    )

"""Outbound sync decisions, with an injected clock."""

from __future__ import annotations

import pytest

from service.config import parse_settings
from service.sync import (
    OutboundPartner,
    due_partners,
    format_dextp,
    outbound_partners,
    parse_dextp,
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


def test_dextp_round_trip() -> None:
    handed = {101: 1_700_000_000_123, 7: 5}
    assert format_dextp(handed) == "7-1-5|101-1-1700000000123"
    assert parse_dextp(format_dextp(handed)) == handed


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

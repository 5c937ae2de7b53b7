"""Qualification (SPEC §6) over an injected day: no clock, no Redis."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from service.config import Segment, Trait
from service.profiles import Profile
from service.qualification import MIN_KEEP_DAYS, Qualifier

DAY = 20_000  # an injected day number


def rule_trait(sid: int, rule: str, ttl_days: int = 120) -> Trait:
    return Trait(sid=sid, name=f"t{sid}", rule=rule, ttl_days=ttl_days)


def onboarded_trait(sid: int, data_source: int | None, ttl_days: int = 120) -> Trait:
    return Trait(
        sid=sid, name=f"t{sid}", type="onboarded", data_source=data_source, ttl_days=ttl_days
    )


def segment(sid: int, rule: str) -> Segment:
    return Segment(sid=sid, name=f"s{sid}", rule=rule)


TRAITS = [
    rule_trait(100, 'c_section == "sports"'),
    rule_trait(101, 'c_section == "news"', ttl_days=3),
    rule_trait(102, "p_age < 25"),
    onboarded_trait(200, data_source=1234),
    onboarded_trait(201, data_source=None),
    onboarded_trait(202, data_source=5678),
]
SEGMENTS = [
    segment(500, "FREQUENCY([100T] <= 7D) >= 3"),
    segment(501, "RECENCY([100T, 200T]) <= 2D"),
    segment(502, "101T"),
    segment(503, "100T AND NOT 101T"),
]


def qualifier(
    traits: Sequence[Trait] = TRAITS, segments: Sequence[Segment] = SEGMENTS
) -> Qualifier:
    return Qualifier(traits, segments)


# --- realize -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signals", "private", "direct", "expected"),
    [
        pytest.param({}, {}, [], [], id="nothing"),
        pytest.param({"c_section": ["sports"]}, {}, [], [100], id="rule trait"),
        pytest.param({"c_section": ["sports", "news"]}, {}, [], [100, 101], id="multi-value"),
        pytest.param({"section": ["sports"]}, {}, [], [], id="exact key name"),
        pytest.param({}, {"p_age": ["20"]}, [], [102], id="private signal"),
        pytest.param({}, {"p_age": ["30"]}, [], [], id="private signal false"),
        pytest.param(
            {"c_section": ["sports"]}, {"p_age": ["18"]}, [], [100, 102], id="signals and private"
        ),
        pytest.param({}, {}, [101], [101], id="d_sid rule trait"),
        pytest.param({}, {}, [201], [201], id="d_sid onboarded without data_source"),
        pytest.param({}, {}, [200], [], id="d_sid onboarded with data_source refused"),
        pytest.param({}, {}, [202, 200, 201], [201], id="d_sid only allowed ones"),
        pytest.param({}, {}, [999], [], id="d_sid unknown sid ignored"),
        pytest.param({"c_section": ["sports"]}, {}, [100], [100], id="d_sid and rule once"),
        pytest.param({}, {}, [101, 101], [101], id="d_sid repeated once"),
        pytest.param({"c_section": ["sports"]}, {}, [201, 999], [100, 201], id="rules then d_sid"),
    ],
)
def test_realize(
    signals: dict[str, list[str]],
    private: dict[str, list[str]],
    direct: list[int],
    expected: list[int],
) -> None:
    assert qualifier().realize(signals, private, direct) == expected


@pytest.mark.parametrize(
    ("source", "sids", "expected"),
    [
        pytest.param(1234, [200], [200], id="its own"),
        pytest.param(1234, [200, 202, 201, 100, 999], [200], id="only its own"),
        pytest.param(5678, [200, 202], [202], id="other partner"),
        pytest.param(1234, [201], [], id="no data_source: no partner owns it"),
        pytest.param(1234, [100], [], id="rule trait"),
        pytest.param(1234, [999], [], id="unknown sid"),
        pytest.param(9999, [200, 202], [], id="unknown partner"),
        pytest.param(1234, [], [], id="nothing"),
    ],
)
def test_onboarded(source: int, sids: list[int], expected: list[int]) -> None:
    assert qualifier().onboarded(source, sids) == expected


# --- qualify over days -------------------------------------------------------------------


def run(q: Qualifier, profile: Profile, days: dict[int, list[int]]) -> dict[int, frozenset[int]]:
    """Qualify on each day (offset from DAY) with the traits realized that day."""
    return {
        offset: q.qualify(profile, realized, DAY + offset).segments
        for offset, realized in sorted(days.items())
    }


@pytest.mark.parametrize(
    ("days", "in_segment"),
    [
        pytest.param({0: [100, 100, 100]}, {0: True}, id="three today"),
        pytest.param({0: [100, 100]}, {0: False}, id="two today"),
        pytest.param({0: [100], 3: [100], 6: [100]}, {0: False, 3: False, 6: True}, id="in 7D"),
        pytest.param(
            {0: [100], 3: [100], 7: [100]}, {0: False, 3: False, 7: False}, id="age 7 outside 7D"
        ),
        pytest.param(
            {0: [100], 1: [100], 2: [100], 6: [], 7: []},
            {0: False, 1: False, 2: True, 6: True, 7: False},
            id="falls out of the window",
        ),
    ],
)
def test_frequency_window(days: dict[int, list[int]], in_segment: dict[int, bool]) -> None:
    q = qualifier(segments=[segment(500, "FREQUENCY([100T] <= 7D) >= 3")])
    got = run(q, Profile(), days)
    assert {k: 500 in v for k, v in got.items()} == in_segment


@pytest.mark.parametrize(
    ("days", "in_segment"),
    [
        pytest.param({0: [100]}, {0: True}, id="today"),
        pytest.param({0: [100], 1: []}, {0: True, 1: True}, id="age 1 within 2D"),
        pytest.param({0: [100], 2: []}, {0: True, 2: False}, id="age 2 outside 2D"),
        pytest.param({0: [200], 1: []}, {0: True, 1: True}, id="any listed trait"),
        pytest.param({0: [100], 2: [], 3: [200]}, {0: True, 2: False, 3: True}, id="comes back"),
        pytest.param({0: [101]}, {0: False}, id="other trait"),
    ],
)
def test_recency_window(days: dict[int, list[int]], in_segment: dict[int, bool]) -> None:
    q = qualifier(segments=[segment(501, "RECENCY([100T, 200T]) <= 2D")])
    got = run(q, Profile(), days)
    assert {k: 501 in v for k, v in got.items()} == in_segment


def test_frequency_without_window_counts_old_merged_days() -> None:
    q = qualifier(
        traits=[rule_trait(100, 'c == "1"', ttl_days=0)],
        segments=[segment(510, "FREQUENCY([100T]) >= 4")],
    )
    profile = Profile()
    got = run(q, profile, {0: [100], 10: [100], 20: [100], 30: [], 40: [100]})
    assert {k: 510 in v for k, v in got.items()} == {
        0: False,
        10: False,
        20: False,
        30: False,
        40: True,
    }
    assert sum(n for _, n in profile.traits[100]) == 4


def test_ttl_expiry_makes_a_segment_exit() -> None:
    q = qualifier()  # 101 expires after 3 days; 502 = 101T
    profile = Profile()
    first = q.qualify(profile, [101], DAY)
    assert (first.entered, first.exited, 502 in first.segments) == ([502], [], True)
    for offset in (1, 2):
        still = q.qualify(profile, [], DAY + offset)
        assert (still.entered, still.exited, 502 in still.segments) == ([], [], True)
    gone = q.qualify(profile, [], DAY + 3)
    assert (gone.entered, gone.exited, 502 in gone.segments) == ([], [502], False)
    assert 101 not in profile.traits
    assert 502 not in profile.segments


def test_entered_and_exited() -> None:
    q = qualifier()
    profile = Profile()
    r = q.qualify(profile, [100], DAY)
    assert r.realized == [100]
    assert r.entered == [501, 503]
    assert r.exited == []
    assert r.segments == frozenset({501, 503})
    assert profile.segments == {501, 503}
    # The same again: nothing new.
    r = q.qualify(profile, [100], DAY)
    assert (r.entered, r.exited) == ([], [])
    # 101 realized: enters 502, leaves 503 (100T AND NOT 101T); 3 of 100 today: enters 500.
    r = q.qualify(profile, [100, 101], DAY)
    assert r.entered == [500, 502]
    assert r.exited == [503]
    assert r.segments == frozenset({500, 501, 502})
    # Eight days later: 100 (3 realizations, age 8) is out of 7D and 2D; 101 expired.
    r = q.qualify(profile, [], DAY + 8)
    assert r.entered == [503]
    assert r.exited == [500, 501, 502]
    assert r.segments == frozenset({503})
    assert profile.segments == {503}


def test_qualify_records_realizations_and_prunes() -> None:
    q = qualifier()
    profile = Profile(traits={100: [(DAY - 1, 2)], 777: [(DAY, 1)]}, segments={999})
    r = q.qualify(profile, [100, 200], DAY)
    assert profile.traits == {100: [(DAY - 1, 2), (DAY, 1)], 200: [(DAY, 1)]}
    assert r.exited == [999]  # a segment no longer configured is left
    assert r.entered == [500, 501, 503]


def test_evaluate_does_not_change_the_profile() -> None:
    q = qualifier()
    profile = Profile(traits={100: [(DAY, 3)]})
    assert q.evaluate(profile, DAY) == frozenset({500, 501, 503})
    assert profile.segments == set()


# --- configuration-derived properties ----------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "segments", "active"),
    [
        pytest.param([], [], False, id="nothing configured"),
        pytest.param([rule_trait(100, 'c == "1"')], [], True, id="traits only"),
        pytest.param([onboarded_trait(200, 1234)], [], True, id="onboarded only"),
        pytest.param([], [segment(500, "100T")], True, id="segments only"),
    ],
)
def test_active(traits: list[Trait], segments: list[Segment], active: bool) -> None:
    assert Qualifier(traits, segments).active is active


@pytest.mark.parametrize(
    ("rules", "keep_days"),
    [
        pytest.param([], MIN_KEEP_DAYS, id="no segments"),
        pytest.param(["100T"], MIN_KEEP_DAYS, id="no windows"),
        pytest.param(["FREQUENCY([100T] <= 3D) >= 1"], MIN_KEEP_DAYS, id="short window"),
        pytest.param(["RECENCY([100T]) <= 30D"], 30, id="recency window"),
        pytest.param(
            ["FREQUENCY([100T] <= 14D) >= 2", "RECENCY([100T]) <= 45D OR 100T"],
            45,
            id="largest window",
        ),
        pytest.param(
            ["FREQUENCY([100T] <= 10D) >= 2 AND RECENCY([100T]) <= 20D"], 20, id="one rule"
        ),
    ],
)
def test_keep_days(rules: list[str], keep_days: int) -> None:
    q = Qualifier([rule_trait(100, 'c == "1"')], [segment(500 + i, r) for i, r in enumerate(rules)])
    assert q.keep_days == keep_days


def test_keep_days_keeps_a_long_window_exact() -> None:
    """A 30-day window still sees day by day what is older than MIN_KEEP_DAYS."""
    q = qualifier(
        traits=[rule_trait(100, 'c == "1"', ttl_days=0)],
        segments=[segment(520, "FREQUENCY([100T] <= 30D) >= 3")],
    )
    profile = Profile()
    got = run(q, profile, {0: [100], 10: [100], 20: [100], 29: [], 30: []})
    assert {k: 520 in v for k, v in got.items()} == {
        0: False,
        10: False,
        20: True,
        29: True,
        30: False,
    }


# --- retention (the sweeper) ---------------------------------------------------------------


def test_retain_expires_realizations_and_silent_visitors() -> None:
    q = qualifier()
    profile = Profile()
    q.qualify(profile, [100, 101], DAY)
    assert profile.segments == {501, 502}  # 503 needs NOT 101T
    kept = q.retain(profile, DAY + 3, visitor_days=180)  # 101 expired, 100 three days old
    assert kept is not None and sorted(kept.traits) == [100]
    # The segments stay as they were: the next request works them out in full, and so
    # sees the entries and exits that the expiry causes.
    assert kept.segments == {501, 502} and kept.evaluated == 0
    after = q.qualify(kept, [], DAY + 3)
    assert (after.entered, after.exited) == ([503], [501, 502])
    assert q.retain(kept, DAY + 180, visitor_days=180) is None  # silent for 180 days
    assert q.retain(Profile(), DAY, visitor_days=180) is None


def test_retain_keeps_a_visitor_the_match_table_saw_lately() -> None:
    q = qualifier([onboarded_trait(201, None, ttl_days=0)], [segment(600, "201T")])
    profile = Profile()
    q.qualify(profile, [201], DAY)
    assert q.retain(profile, DAY + 200, visitor_days=180, seen=DAY + 199) is not None
    assert q.retain(profile, DAY + 200, visitor_days=180, seen=DAY + 10) is None


def test_new_rules_are_worked_out_the_same_day() -> None:
    """A segment added to the config counts at once, not from the next day."""
    profile = Profile()
    qualifier().qualify(profile, [100], DAY)
    newer = qualifier(TRAITS, [*SEGMENTS, segment(599, "100T")])
    assert 599 in newer.qualify(profile, [], DAY).entered


def test_same_day_evaluation_is_incremental_and_exact() -> None:
    """Later events of a day re-evaluate only the segments of the traits realized; the
    answer must equal a full evaluation every time."""
    q = qualifier()
    profile = Profile()
    steps = [(DAY, [100]), (DAY, [100]), (DAY, [101]), (DAY, [100]), (DAY + 1, []),
             (DAY + 1, [200]), (DAY + 3, [100]), (DAY + 3, [102]), (DAY + 9, [])]  # fmt: skip
    for day, realized in steps:
        result = q.qualify(profile, realized, day)
        assert profile.evaluated == day
        assert result.segments == q.evaluate(profile, day), (day, realized)

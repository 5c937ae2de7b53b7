"""Profiles (SPEC §6, §7): realizations per day, expiry, merging, and the stored bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.profiles import PENDING_DAYS, History, Pending, Profile, merge_pending
from service.store.codec import pack_profile, parse_profile

TODAY = 20_000  # an injected day number (2024-10-04)
Entries = list[tuple[int, int]]


# --- realize -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "day", "times", "after"),
    [
        pytest.param([], TODAY, 1, [(TODAY, 1)], id="first"),
        pytest.param([(TODAY, 2)], TODAY, 1, [(TODAY, 3)], id="same day merges"),
        pytest.param([(TODAY, 2)], TODAY, 5, [(TODAY, 7)], id="same day merges times"),
        pytest.param([(TODAY - 1, 2)], TODAY, 1, [(TODAY - 1, 2), (TODAY, 1)], id="new day"),
        pytest.param(
            [(TODAY - 3, 1), (TODAY, 1)],
            TODAY - 1,
            2,
            [(TODAY - 3, 1), (TODAY - 1, 2), (TODAY, 1)],
            id="late day keeps order",
        ),
        pytest.param(
            [(TODAY - 1, 1), (TODAY, 1)],
            TODAY - 5,
            1,
            [(TODAY - 5, 1), (TODAY - 1, 1), (TODAY, 1)],
            id="late day before all",
        ),
        pytest.param(
            [(TODAY - 2, 1), (TODAY, 1)],
            TODAY - 2,
            3,
            [(TODAY - 2, 4), (TODAY, 1)],
            id="late day already present merges",
        ),
    ],
)
def test_realize(before: Entries, day: int, times: int, after: Entries) -> None:
    profile = Profile(traits={100: list(before)} if before else {})
    profile.realize(100, day, times)
    assert profile.traits == {100: after}


def test_realize_keeps_traits_apart() -> None:
    profile = Profile()
    profile.realize(100, TODAY)
    profile.realize(101, TODAY)
    profile.realize(100, TODAY)
    assert profile.traits == {100: [(TODAY, 2)], 101: [(TODAY, 1)]}
    assert profile.realized_traits() == [100, 101]
    assert not profile.empty


def test_empty() -> None:
    assert Profile().empty


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(Profile(traits={1: [(TODAY, 1)]}), id="trait"),
        pytest.param(Profile(segments={5}), id="segment"),
        pytest.param(Profile(pending=[Pending(9, 5, TODAY)]), id="pending"),
    ],
)
def test_not_empty(profile: Profile) -> None:
    assert not profile.empty


# --- prune -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "age", "kept"),
    [
        pytest.param(30, 0, True, id="today"),
        pytest.param(30, 29, True, id="age ttl-1 stays"),
        pytest.param(30, 30, False, id="age ttl goes"),
        pytest.param(30, 31, False, id="older goes"),
        pytest.param(1, 0, True, id="ttl 1 today stays"),
        pytest.param(1, 1, False, id="ttl 1 yesterday goes"),
        pytest.param(0, 0, True, id="ttl 0 today"),
        pytest.param(0, 5000, True, id="ttl 0 never expires"),
    ],
)
def test_prune_ttl(ttl: int, age: int, kept: bool) -> None:
    profile = Profile(traits={100: [(TODAY - age, 3)]})
    # keep_days large enough that no merging happens here
    profile.prune(TODAY, {100: ttl}, keep_days=10_000)
    assert profile.traits == ({100: [(TODAY - age, 3)]} if kept else {})


def test_prune_ttl_keeps_the_live_days_of_a_trait() -> None:
    profile = Profile(traits={100: [(TODAY - 12, 1), (TODAY - 10, 2), (TODAY - 9, 4)]})
    profile.prune(TODAY, {100: 10}, keep_days=30)
    assert profile.traits == {100: [(TODAY - 9, 4)]}


def test_prune_drops_traits_no_longer_configured() -> None:
    profile = Profile(traits={100: [(TODAY, 1)], 200: [(TODAY, 1)], 300: [(TODAY - 1, 2)]})
    profile.prune(TODAY, {100: 30, 300: 0}, keep_days=7)
    assert profile.traits == {100: [(TODAY, 1)], 300: [(TODAY - 1, 2)]}


def test_prune_drops_a_trait_whose_realizations_all_expired() -> None:
    profile = Profile(traits={100: [(TODAY - 40, 1), (TODAY - 31, 1)], 101: [(TODAY, 1)]})
    profile.prune(TODAY, {100: 30, 101: 30}, keep_days=7)
    assert 100 not in profile.traits
    assert profile.traits == {101: [(TODAY, 1)]}


@pytest.mark.parametrize(
    ("before", "keep_days", "after"),
    [
        pytest.param(
            [(TODAY - 9, 1), (TODAY - 8, 2), (TODAY - 7, 4), (TODAY - 6, 8), (TODAY, 16)],
            7,
            [(TODAY - 7, 7), (TODAY - 6, 8), (TODAY, 16)],
            id="older than keep_days merged, dated by newest merged",
        ),
        pytest.param(
            [(TODAY - 7, 3), (TODAY - 1, 1)],
            7,
            [(TODAY - 7, 3), (TODAY - 1, 1)],
            id="a single old entry stays as it is",
        ),
        pytest.param(
            [(TODAY - 6, 3), (TODAY - 5, 1), (TODAY, 2)],
            7,
            [(TODAY - 6, 3), (TODAY - 5, 1), (TODAY, 2)],
            id="nothing old",
        ),
        pytest.param(
            [(TODAY - 300, 5), (TODAY - 200, 6), (TODAY - 31, 7)],
            30,
            [(TODAY - 31, 18)],
            id="everything old",
        ),
        pytest.param(
            [(TODAY - 40, 1), (TODAY - 35, 2), (TODAY - 20, 3), (TODAY - 2, 4)],
            10,
            [(TODAY - 20, 6), (TODAY - 2, 4)],
            id="ttl 0 merges too",
        ),
    ],
)
def test_prune_merges_old_days(before: Entries, keep_days: int, after: Entries) -> None:
    profile = Profile(traits={100: before})
    profile.prune(TODAY, {100: 0}, keep_days=keep_days)
    assert profile.traits == {100: after}


def test_an_expiring_trait_is_never_merged() -> None:
    """Each day of a trait with a ttl expires on its own day: FREQUENCY never counts a
    realization past its ttl_days (merging would date old ones by a newer day)."""
    profile = Profile(traits={100: [(TODAY - 50, 100), (TODAY - 20, 1), (TODAY - 10, 2)]})
    profile.prune(TODAY, {100: 45}, keep_days=7)
    assert profile.traits == {100: [(TODAY - 20, 1), (TODAY - 10, 2)]}
    profile.prune(TODAY + 25, {100: 45}, keep_days=7)  # TODAY-20 is 45 days old now
    assert profile.traits == {100: [(TODAY - 10, 2)]}
    profile.prune(TODAY + 35, {100: 45}, keep_days=7)
    assert profile.traits == {}


def test_prune_keeps_segments() -> None:
    profile = Profile(segments={500, 501})
    profile.prune(TODAY, {}, keep_days=7)
    assert profile.segments == {500, 501}


@pytest.mark.parametrize(
    ("age", "kept"),
    [
        pytest.param(0, True, id="today"),
        # SPEC §7: a pending fire waits "expiring after a day". With day-granular
        # stamps, one made late yesterday is minutes old: it must still be there.
        pytest.param(PENDING_DAYS, True, id="yesterday stays"),
        pytest.param(PENDING_DAYS + 1, False, id="older than a day goes"),
        pytest.param(30, False, id="long ago goes"),
    ],
)
def test_prune_pending(age: int, kept: bool) -> None:
    fire = Pending(9, 500, TODAY - age)
    profile = Profile(pending=[fire, Pending(9, 501, TODAY)])
    profile.prune(TODAY, {}, keep_days=7)
    assert profile.pending == ([fire] if kept else []) + [Pending(9, 501, TODAY)]


# --- History.count -----------------------------------------------------------------------

HISTORY = Profile(
    traits={
        100: [(TODAY - 10, 1), (TODAY - 3, 2), (TODAY - 1, 4), (TODAY, 8)],
        101: [(TODAY - 2, 16)],
    }
)


@pytest.mark.parametrize(
    ("sids", "within", "expected"),
    [
        pytest.param([100], None, 15, id="all"),
        pytest.param([100], 1, 8, id="window 1: today only"),
        pytest.param([100], 2, 12, id="window 2: ages 0..1"),
        pytest.param([100], 3, 12, id="window 3: ages 0..2"),
        pytest.param([100], 4, 14, id="window 4: ages 0..3"),
        pytest.param([100], 10, 14, id="window 10 excludes age 10"),
        pytest.param([100], 11, 15, id="window 11 includes age 10"),
        pytest.param([100, 101], 3, 28, id="several traits"),
        pytest.param([100, 101], None, 31, id="several traits, all"),
        pytest.param([101], 2, 0, id="outside the window"),
        pytest.param([999], None, 0, id="never realized"),
        pytest.param([], None, 0, id="no traits"),
    ],
)
def test_history_count(sids: list[int], within: int | None, expected: int) -> None:
    assert History(HISTORY, TODAY).count(sids, within) == expected


# --- merge_pending -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        pytest.param([], [], [], id="nothing"),
        pytest.param([], [Pending(9, 1, TODAY)], [Pending(9, 1, TODAY)], id="new only"),
        pytest.param(
            [Pending(9, 1, TODAY - 1)],
            [Pending(9, 1, TODAY)],
            [Pending(9, 1, TODAY)],
            id="same fire: newest day",
        ),
        pytest.param(
            [Pending(9, 1, TODAY)],
            [Pending(9, 1, TODAY - 1)],
            [Pending(9, 1, TODAY)],
            id="same fire: newest day kept when older comes",
        ),
        pytest.param(
            [Pending(9, 1, TODAY), Pending(9, 2, TODAY)],
            [Pending(10, 1, TODAY), Pending(9, 2, TODAY)],
            [Pending(9, 1, TODAY), Pending(9, 2, TODAY), Pending(10, 1, TODAY)],
            id="one per destination and segment",
        ),
        pytest.param(
            [Pending(9, 1, TODAY), Pending(9, 1, TODAY)],
            [],
            [Pending(9, 1, TODAY)],
            id="duplicates in current",
        ),
    ],
)
def test_merge_pending(current: list[Pending], new: list[Pending], expected: list[Pending]) -> None:
    assert merge_pending(current, new) == expected


# --- codec -------------------------------------------------------------------------------

DAYS = st.integers(min_value=19_000, max_value=21_000)
SIDS = st.integers(min_value=1, max_value=2**31 - 1)
COUNTS = st.integers(min_value=1, max_value=10**6)
PROFILES = st.builds(
    Profile,
    traits=st.dictionaries(
        SIDS,
        st.lists(st.tuples(DAYS, COUNTS), min_size=1, max_size=8),
        max_size=12,
    ),
    segments=st.sets(SIDS, max_size=12),
    pending=st.lists(st.builds(Pending, SIDS, SIDS, DAYS), max_size=6),
)


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(Profile(traits={100: [(TODAY, 1)]}), id="one trait"),
        pytest.param(Profile(segments={500}), id="segment only"),
        pytest.param(Profile(pending=[Pending(9, 500, TODAY)]), id="pending only"),
        pytest.param(
            Profile(
                traits={100: [(TODAY - 120, 3), (TODAY - 1, 1), (TODAY, 200)], 2**31 - 1: [(1, 1)]},
                segments={500, 501, 2**31 - 1},
                pending=[Pending(9, 500, TODAY), Pending(10, 501, TODAY - 1)],
            ),
            id="everything",
        ),
    ],
)
def test_codec_round_trip(profile: Profile) -> None:
    assert parse_profile(pack_profile(profile)) == profile


@given(PROFILES)
def test_codec_round_trip_property(profile: Profile) -> None:
    raw = pack_profile(profile)
    assert (raw == b"") == profile.empty
    assert parse_profile(raw) == profile


@pytest.mark.parametrize("raw", [None, b""])
def test_nothing_stored_is_an_empty_profile(raw: bytes | None) -> None:
    assert parse_profile(raw) == Profile()


def test_empty_profile_packs_to_nothing() -> None:
    assert pack_profile(Profile()) == b""


FULL = Profile(
    traits={100: [(TODAY - 3, 2), (TODAY, 1)]},
    segments={500},
    pending=[Pending(9, 500, TODAY)],
)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x00", id="one byte"),
        pytest.param(b"\x4e\x20", id="day only"),
        pytest.param(b"\x4e\x20\x05", id="count without traits"),
        pytest.param(b"\x4e\x20\xff\xff\xff\xff", id="unterminated varint"),
        pytest.param(b"\x4e\x20\x01\x64\x01", id="trait entry cut"),
        pytest.param(pack_profile(FULL)[:-1], id="last byte cut"),
        pytest.param(pack_profile(FULL)[:5], id="cut in a trait"),
    ],
)
def test_garbage_parses_to_an_empty_profile(raw: bytes) -> None:
    assert parse_profile(raw) == Profile()


def test_every_truncation_parses_to_an_empty_profile() -> None:
    raw = pack_profile(FULL)
    for n in range(len(raw)):
        assert parse_profile(raw[:n]) == Profile(), n


@given(st.binary(max_size=64))
def test_any_bytes_parse_without_raising(raw: bytes) -> None:
    assert isinstance(parse_profile(raw), Profile)


def test_typical_profile_is_small() -> None:
    """20 traits (a few days each) and 10 segments."""
    profile = Profile()
    for i in range(20):
        sid = 1000 + i  # two-byte varints, as real sids are
        for age in range(i % 3 + 1):
            profile.realize(sid, TODAY - age * 4, times=i % 5 + 1)
    profile.segments = {5000 + i for i in range(10)}
    raw = pack_profile(profile)
    print(f"20-trait/10-segment profile: {len(raw)} bytes")
    assert parse_profile(raw) == profile
    assert len(raw) < 200

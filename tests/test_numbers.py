"""service/numbers.py: integers from requests, length-checked before int() reads them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.numbers import MAX_DIGITS, parse_small_int, parse_uint

HUGE = "9" * 5000  # past the 4,300 digits that make int() raise


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("007", 7),
        ("9" * MAX_DIGITS, int("9" * MAX_DIGITS)),
        ("9" * (MAX_DIGITS + 1), None),
        ("0" * 4999 + "2", None),  # the zeros count: no int() of 5,000 characters
        (HUGE, None),
        ("", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1_000", None),
        ("١٢", None),  # Arabic-Indic digits: int() reads them, we do not
        ("²", None),  # isdigit() but not a decimal digit
        (b"12", 12),
        (b"1" * 21, None),
        (b"\xd9\xa1", None),
    ],
)
def test_parse_uint(text: str | bytes, expected: int | None) -> None:
    assert parse_uint(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", 2),
        ("-128", -128),
        ("+127", 127),
        ("0" * 4999 + "2", 2),  # Go's ParseInt reads leading zeros: so do we, cheaply
        ("-" + "0" * 4999 + "7", -7),
        ("1000", None),  # four significant digits: out of an int8's range, unread
        (HUGE, None),
        ("+-1", None),
        ("", None),
        ("-", None),
        ("1e2", None),
    ],
)
def test_parse_small_int(text: str, expected: int | None) -> None:
    assert parse_small_int(text, 3) == expected


@given(st.text(max_size=30) | st.integers(-(10**25), 10**25).map(str))
def test_parse_uint_agrees_with_int(text: str) -> None:
    expected = (
        int(text) if text.isascii() and text.isdigit() and 0 < len(text) <= MAX_DIGITS else None
    )
    assert parse_uint(text) == expected


@given(st.integers(0, 6000), st.integers(0, 6000), st.sampled_from(["", "+", "-"]))
def test_long_digit_runs(zeros: int, nines: int, sign: str) -> None:
    """Any run of digits is refused or read, never with a ValueError."""
    text = sign + "0" * zeros + "9" * nines
    small = parse_small_int(text, 3)
    unsigned = parse_uint(text)
    if nines > 3 or not zeros + nines:
        assert small is None
    else:
        assert small == int(sign + ("9" * nines or "0"))
    short = not sign and 0 < len(text) <= MAX_DIGITS
    assert unsigned == (int(text) if short else None)

"""Integers from requests, cookies and files, length-checked before they are parsed.

int() refuses more than 4,300 digits with a ValueError (sys.int_max_str_digits), and
its cost grows faster than the text: a number a client sends is read here, never with
a bare int(). Only ASCII digits count (int() also reads "١٢" and " 1_0 ")."""

from __future__ import annotations

from typing import Final

MAX_DIGITS: Final = 18  # every id of ours fits a signed 64-bit integer


def parse_uint(text: str | bytes, max_digits: int = MAX_DIGITS) -> int | None:
    """The value of 1 to `max_digits` ASCII digits, or None for anything else."""
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def parse_small_int(text: str, max_digits: int) -> int | None:
    """A signed integer as Go's strconv.ParseInt reads it (one optional sign, leading
    zeros allowed), or None when it has more than `max_digits` significant digits."""
    sign = text[:1] if text[:1] in ("+", "-") else ""
    digits = text[len(sign) :]
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    significant = digits.lstrip("0") or "0"
    if len(significant) > max_digits:
        return None
    value = int(significant)
    return -value if sign == "-" else value

"""A test encoder of GPP v1 strings: the header's Fibonacci range, US sections from
their layouts (service/gpp.py's, checked against the IAB's strings in test_gpp.py), and
the "compressed" base64url of the IAB's reference library."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from service.gpp import US_LAYOUTS, USNAT, USNAT_V1, USNAT_V2, FieldValue, Layout

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(bits: str) -> str:
    """Padded as the reference library pads: to whole bytes, then to whole characters."""
    bits += "0" * (-len(bits) % 8)
    bits += "0" * (-len(bits) % 6)
    return "".join(_ALPHABET[int(bits[i : i + 6], 2)] for i in range(0, len(bits), 6))


def fibonacci(n: int) -> str:
    """The Fibonacci code of n >= 1 (Zeckendorf bits, lowest weight first, then "1")."""
    assert n >= 1
    weights = [1, 2]
    while weights[-1] + weights[-2] <= n:
        weights.append(weights[-1] + weights[-2])
    bits = ["0"] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        if weights[i] <= n:
            bits[i] = "1"
            n -= weights[i]
    return "".join(bits).rstrip("0") + "1"


def fibonacci_range(ids: Sequence[int], *, groups: bool = True) -> str:
    """A Range (Fibonacci) of increasing ids: runs as groups (or every id single)."""
    runs: list[list[int]] = []
    for sid in ids:
        if groups and runs and runs[-1][-1] + 1 == sid:
            runs[-1].append(sid)
        else:
            runs.append([sid])
    bits = f"{len(runs):012b}"
    last = 0
    for run in runs:
        if len(run) == 1:
            bits += "0" + fibonacci(run[0] - last)
        else:
            bits += "1" + fibonacci(run[0] - last) + fibonacci(run[-1] - run[0])
        last = run[-1]
    return bits


def header(
    ids: Sequence[int] | range, *, groups: bool = True, kind: int = 3, version: int = 1
) -> str:
    return b64(f"{kind:06b}{version:06b}" + fibonacci_range(ids, groups=groups))


def gpp(sections: Iterable[tuple[int, str]], *, groups: bool = True) -> str:
    """header~section~…, in the order given (sorted ids, as the header lists them)."""
    pairs = list(sections)
    return "~".join([header([sid for sid, _ in pairs], groups=groups), *(t for _, t in pairs)])


def layout(sid: int, version: int = 1, v2_layout: bool = False) -> Layout:
    if sid == USNAT:
        return USNAT_V2 if v2_layout or version == 2 else USNAT_V1
    return US_LAYOUTS[sid].fields


def us_section(
    sid: int,
    values: Mapping[str, FieldValue] | None = None,
    *,
    version: int = 1,
    gpc: bool | None = None,
    fields: Layout | None = None,
) -> str:
    """A US section: every field of its layout (0 unless `values` says), and a GPC
    subsection when `gpc` is not None."""
    values = values or {}
    bits = f"{version:06b}"
    for name, count in fields or layout(sid, version):
        value = values.get(name, (0,) * count if count else 0)
        for v in value if isinstance(value, tuple) else (value,):
            bits += f"{v:02b}"
    text = b64(bits)
    if gpc is not None:
        text += "." + b64("01" + ("1" if gpc else "0"))
    return text

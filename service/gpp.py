"""IAB GPP v1 strings (SPEC §12): the header, the sections it lists, and the US sections'
fields, turned into the one decision pixelsync needs. No HTTP, no Redis.

A GPP string is `header~section~section…`: the header (Type 3, Version 1, then the
section ids as a Fibonacci-coded range list) lists the sections in the order they
follow. Every part is the IAB's "compressed" base64url: each character six bits, no
padding characters; a section may carry `.`-separated subsections (usnat's GPC one).

Section 2 (TCF EU v2) is a TC string: consent.decode_tcf reads it. The US sections'
layouts (7 usnat, versions 1 and 2; 8-23, the states' version 1) are those of the IAB's
specifications (github.com/InteractiveAdvertisingBureau/Global-Privacy-Platform,
Sections/) and its reference library (github.com/IABTechLab/iabgpp-es, field/*.ts,
segment/*CoreSegment.ts), which agree. Sections 24-27 (usmd, usin, usky, usri) are
left undecoded: their specifications are public-comment drafts whose encoding (a
section header of their own) differs from the reference library's. Any other id is
kept as its undecoded text.

The string comes from a browser: it is read in time linear in its length, refused past
MAX_GPP_CHARS, and no Fibonacci code is read past what MAX_SECTION_ID needs, so hostile
input builds no large integer and no large range."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# A TCF EU section at consent.MAX_CONSENT_CHARS, a TCF CA section of the same size, and
# the US sections (a dozen characters each) with room to spare.
MAX_GPP_CHARS: Final = 16384
# gpp_sid names sections by up to three digits (consent.gpp_sections); the IAB's ids
# reach 27. A larger id is refused, so that a range in the header lists at most this many.
MAX_SECTION_ID: Final = 999
TCF_EU_V2: Final = 2
USP_V1: Final = 6  # a us_privacy string, unencoded (consent.us_privacy_opt_out reads it)
USNAT: Final = 7

GPC_SUBSECTION: Final = 1  # SubsectionType of the GPC subsection


class GppError(ValueError):
    """Not a GPP v1 string (or a section of one that cannot be read)."""


_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_GPP_CHARS: Final = re.compile(r"[A-Za-z0-9_\-.~]*")


def _fibonacci_codes(limit: int) -> dict[str, int]:
    """Every Fibonacci code up to the length whose top weight is over `limit`, without its
    closing "1" (a code ends at its first "11"), and its value: a longer code is over
    `limit`, so no longer one needs reading, nor any arithmetic."""
    weights = [1, 2]
    while weights[-1] <= limit:
        weights.append(weights[-1] + weights[-2])
    codes = {}
    for n in range(1, weights[-1] + weights[-2]):
        bits, rest = ["0"] * len(weights), n
        for i in range(len(weights) - 1, -1, -1):
            if weights[i] <= rest:
                bits[i], rest = "1", rest - weights[i]
        codes["".join(bits).rstrip("0")] = n
    return codes


_FIB_CODES: Final = _fibonacci_codes(MAX_SECTION_ID)
_FIB_MAX_BITS: Final = max(map(len, _FIB_CODES))


def _bits(text: str) -> str:
    """Six bits a character ("0"/"1"), in one pass of C (base64 of whole bytes)."""
    if text.strip(_ALPHABET):
        raise GppError("not base64url")
    if not text:
        return ""
    raw = base64.urlsafe_b64decode(text + "A" * (-len(text) % 4))
    return format(int.from_bytes(raw, "big"), f"0{len(raw) * 8}b")[: len(text) * 6]


class _Reader:
    """Big-endian fields of a "0"/"1" string, read in order."""

    def __init__(self, bits: str) -> None:
        self.bits = bits
        self.pos = 0

    def read(self, width: int) -> int:
        end = self.pos + width
        if end > len(self.bits):
            raise GppError("too short")
        field = self.bits[self.pos : end]
        self.pos = end
        return int(field, 2)

    def fibonacci(self) -> int:
        """A Fibonacci code ends at its first "11"; one longer than any in _FIB_CODES is
        over MAX_SECTION_ID, and only that far is looked at."""
        end = self.bits.find("11", self.pos, self.pos + _FIB_MAX_BITS + 1)
        if end < 0:
            raise GppError("Fibonacci integer too long or cut short")
        value = _FIB_CODES[self.bits[self.pos : end + 1]]
        self.pos = end + 2
        return value


def _section_ids(reader: _Reader) -> tuple[int, ...]:
    """A Range (Fibonacci): a 12-bit count, then per entry a group flag and the offset
    from the last id (a group: its start's offset, then its length)."""
    ids: list[int] = []
    last = 0
    for _ in range(reader.read(12)):
        group = reader.read(1)
        start = last + reader.fibonacci()
        end = start + reader.fibonacci() if group else start
        if end > MAX_SECTION_ID:
            raise GppError(f"section id over {MAX_SECTION_ID}")
        ids.extend(range(start, end + 1))  # ids only grow: at most MAX_SECTION_ID in all
        last = end
    return tuple(ids)


@dataclass(frozen=True)
class GppString:
    """A GPP string's section ids, in header order, and each section's text."""

    section_ids: tuple[int, ...]
    sections: tuple[str, ...]

    def section(self, sid: int) -> str | None:
        """The text of section `sid`, or None when the string has none."""
        try:
            return self.sections[self.section_ids.index(sid)]
        except ValueError:
            return None

    def us_signals(self, named: Iterable[int]) -> UsSignals:
        """What the US sections among `named` (gpp_sid's) say, each decoded only here."""
        opt_out = gpc = False
        for sid in sorted(set(named) & US_LAYOUTS.keys()):
            text = self.section(sid)
            if text is None:
                continue
            section = decode_us(sid, text)
            opt_out = opt_out or section.opts_out
            gpc = gpc or section.gpc is True
        return UsSignals(opt_out, gpc)


def decode(text: str) -> GppString:
    """The header and the sections' texts, checked against each other; the sections
    themselves are read by `decode_us` (US) and consent.decode_tcf (section 2)."""
    if len(text) > MAX_GPP_CHARS:
        raise GppError(f"gpp string over {MAX_GPP_CHARS} characters")
    if not _GPP_CHARS.fullmatch(text):
        raise GppError("not base64url")
    header, *sections = text.split("~")
    reader = _Reader(_bits(header))
    kind, version = reader.read(6), reader.read(6)
    if kind != 3:
        raise GppError(f"header type {kind}, not 3")
    if version != 1:
        raise GppError(f"GPP version {version}, not 1")
    ids = _section_ids(reader)
    if len(ids) != len(sections):
        raise GppError(f"the header lists {len(ids)} sections, the string has {len(sections)}")
    if not all(sections):
        raise GppError("an empty section")
    return GppString(ids, tuple(sections))


# --------------------------------------------------------------------------- US sections

# A layout: after the 6-bit Version, each field's name and its count of 2-bit values
# (0: a single value, an int; n: a list of n).
Layout = tuple[tuple[str, int], ...]

_MSPA: Final[Layout] = (
    ("MspaCoveredTransaction", 0),
    ("MspaOptOutOptionMode", 0),
    ("MspaServiceProviderMode", 0),
)


def _state(
    notice: str,
    sensitive: int,
    children: int,
    *,
    additional: bool = True,
    sensitive_notice: str = "",
) -> Layout:
    """The layout most state sections share: a first notice, the sale and targeted
    advertising notices and opt-outs, sensitive data and known-child consents."""
    fields: list[tuple[str, int]] = [
        (notice, 0),
        ("SaleOptOutNotice", 0),
        ("TargetedAdvertisingOptOutNotice", 0),
    ]
    if sensitive_notice:
        fields.append((sensitive_notice, 0))
    fields += [
        ("SaleOptOut", 0),
        ("TargetedAdvertisingOptOut", 0),
        ("SensitiveDataProcessing", sensitive),
        ("KnownChildSensitiveDataConsents", children),
    ]
    if additional:
        fields.append(("AdditionalDataProcessingConsent", 0))
    return (*fields, *_MSPA)


def _usnat(sensitive: int, children: int) -> Layout:
    return (
        ("SharingNotice", 0),
        ("SaleOptOutNotice", 0),
        ("SharingOptOutNotice", 0),
        ("TargetedAdvertisingOptOutNotice", 0),
        ("SensitiveDataProcessingOptOutNotice", 0),
        ("SensitiveDataLimitUseNotice", 0),
        ("SaleOptOut", 0),
        ("SharingOptOut", 0),
        ("TargetedAdvertisingOptOut", 0),
        ("SensitiveDataProcessing", sensitive),
        ("KnownChildSensitiveDataConsents", children),
        ("PersonalDataConsents", 0),
        *_MSPA,
    )


USNAT_V1: Final = _usnat(12, 2)
USNAT_V2: Final = _usnat(16, 3)
# usnat's layout goes by the core's length, as the reference library reads it: strings
# labelled version 2 in version 1's 60 bits are in use (its tests decode "CVQqAAAACg").
_USNAT_V2_BITS: Final = 6 + 2 * sum(max(n, 1) for _, n in USNAT_V2)


@dataclass(frozen=True)
class UsLayout:
    name: str
    fields: Layout  # of version 1 (usnat: see USNAT_V1, USNAT_V2)
    gpc: bool  # a GPC subsection may follow


US_LAYOUTS: Final = {
    USNAT: UsLayout("usnat", USNAT_V2, True),
    8: UsLayout(
        "usca",
        (
            ("SaleOptOutNotice", 0),
            ("SharingOptOutNotice", 0),
            ("SensitiveDataLimitUseNotice", 0),
            ("SaleOptOut", 0),
            ("SharingOptOut", 0),
            ("SensitiveDataProcessing", 9),
            ("KnownChildSensitiveDataConsents", 2),
            ("PersonalDataConsents", 0),
            *_MSPA,
        ),
        True,
    ),
    9: UsLayout("usva", _state("SharingNotice", 8, 0, additional=False), False),
    10: UsLayout("usco", _state("SharingNotice", 7, 0, additional=False), True),
    11: UsLayout(
        "usut",
        _state(
            "SharingNotice",
            8,
            0,
            additional=False,
            sensitive_notice="SensitiveDataProcessingOptOutNotice",
        ),
        False,
    ),
    12: UsLayout("usct", _state("SharingNotice", 8, 3, additional=False), True),
    13: UsLayout("usfl", _state("ProcessingNotice", 8, 3), False),
    14: UsLayout("usmt", _state("SharingNotice", 8, 3), True),
    15: UsLayout("usor", _state("ProcessingNotice", 11, 3), True),
    16: UsLayout("ustx", _state("ProcessingNotice", 8, 0), True),
    17: UsLayout("usde", _state("ProcessingNotice", 9, 5), True),
    18: UsLayout(
        "usia",
        _state(
            "ProcessingNotice", 8, 0, additional=False, sensitive_notice="SensitiveDataOptOutNotice"
        ),
        True,
    ),
    19: UsLayout("usne", _state("ProcessingNotice", 8, 0), True),
    20: UsLayout("usnh", _state("ProcessingNotice", 8, 3), True),
    21: UsLayout("usnj", _state("ProcessingNotice", 10, 5), True),
    22: UsLayout("ustn", _state("ProcessingNotice", 8, 0), True),
    23: UsLayout("usmn", _state("ProcessingNotice", 8, 0), True),
}

# A decision's fields: 1 means opted out (the opt-outs) or no consent (the consents).
_OPT_OUTS: Final = ("SaleOptOut", "SharingOptOut", "TargetedAdvertisingOptOut")
_NO_CONSENT: Final = ("SensitiveDataProcessing", "KnownChildSensitiveDataConsents")

FieldValue = int | tuple[int, ...]


@dataclass(frozen=True)
class UsSection:
    sid: int
    version: int
    fields: tuple[tuple[str, FieldValue], ...]  # the core's, after Version, in order
    gpc: bool | None = None  # the GPC subsection's Gpc; None without one

    def field(self, name: str) -> FieldValue | None:
        return next((value for key, value in self.fields if key == name), None)

    @property
    def opts_out(self) -> bool:
        """Opted out of sale, sharing or targeted advertising, or no consent to a
        sensitive data category or a known child's (only the fields it has count)."""
        for name, value in self.fields:
            if name in _OPT_OUTS and value == 1:
                return True
            if name in _NO_CONSENT and (1 in value if isinstance(value, tuple) else value == 1):
                return True
        return False


@dataclass(frozen=True)
class UsSignals:
    opt_out: bool  # a US section opts out
    gpc: bool  # a GPC subsection says Gpc = 1


def us_layout(sid: int, version: int, bits: int) -> Layout:
    """The layout of section `sid` at `version`, whose core has `bits` bits."""
    layout = US_LAYOUTS.get(sid)
    if layout is None:
        raise GppError(f"section {sid} is no US section with a known layout")
    if sid == USNAT:
        if version not in (1, 2):
            raise GppError(f"usnat version {version}, not 1 or 2")
        return USNAT_V2 if bits >= _USNAT_V2_BITS else USNAT_V1
    if version != 1:
        raise GppError(f"{layout.name} version {version}, not 1")
    return layout.fields


def decode_us(sid: int, text: str) -> UsSection:
    """A US section (7-23): its core's fields and its GPC subsection, if any."""
    core, *subsections = text.split(".")
    reader = _Reader(_bits(core))
    version = reader.read(6)
    fields: list[tuple[str, FieldValue]] = []
    for name, count in us_layout(sid, version, len(reader.bits)):
        if count:
            fields.append((name, tuple(reader.read(2) for _ in range(count))))
        else:
            fields.append((name, reader.read(2)))
    gpc: bool | None = None
    if subsections:
        if len(subsections) > 1 or not US_LAYOUTS[sid].gpc:
            raise GppError(f"{US_LAYOUTS[sid].name}: unexpected subsections")
        sub = _Reader(_bits(subsections[0]))
        kind = sub.read(2)
        if kind != GPC_SUBSECTION:
            raise GppError(f"subsection type {kind}, not {GPC_SUBSECTION} (GPC)")
        gpc = sub.read(1) == 1
    return UsSection(sid, version, tuple(fields), gpc)

"""Privacy signals (SPEC §12): IAB TCF v2 consent strings, us_privacy, GPP strings
(gpp.py) and section ids, and Sec-GPC, turned into decisions. No HTTP, no Redis.

The TCF v2 core segment is decoded here (fixed-width fields, two vendor sections and
the publisher restrictions): the Python packages for it are unmaintained, and the
format is small. A consent string comes from a browser: it is read in time linear in
its length, and refused (313) past MAX_CONSENT_CHARS."""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from itertools import compress
from typing import Any, Final

from . import gpp
from .errors import Code, RequestError

PURPOSE_STORAGE: Final = 1  # "Store and/or access information on a device"
# Real strings, with a bitfield of every vendor on the Global Vendor List (~1,000), the
# disclosed-vendors segment and publisher restrictions, stay under a few KB.
MAX_CONSENT_CHARS: Final = 8192
_RANGE_BITS: Final = 17  # the least a range entry takes: a flag and one 16-bit vendor id
_RESTRICTION_BITS: Final = 6 + 2 + 12  # a restriction with no entries: purpose, type, count


class ConsentStringError(ValueError):
    """Not a TCF v2 consent string."""


class RestrictionType(IntEnum):
    """A publisher restriction's type (2 bits); 3 is undefined and restricts nothing."""

    NOT_ALLOWED = 0
    REQUIRE_CONSENT = 1
    REQUIRE_LI = 2
    UNDEFINED = 3


@dataclass(frozen=True)
class Restriction:
    """The publisher's restriction of one purpose for the vendors in `vendors`: sorted,
    disjoint, non-adjacent (first, last) ranges, the union of every entry of the
    string for this purpose and type (a range is kept as such: hundreds of
    restrictions of the whole id space would be millions of ids)."""

    purpose: int
    type: RestrictionType
    vendors: tuple[tuple[int, int], ...]

    def covers(self, vendor_id: int) -> bool:
        at = bisect_right(self.vendors, (vendor_id, 65536)) - 1
        return at >= 0 and self.vendors[at][1] >= vendor_id


@dataclass(frozen=True)
class PurposeOnePolicy:
    """What a string with PurposeOneTreatment set (purpose 1 was not disclosed to the
    user, as publishers in some countries may) means for purpose 1, as Prebid Server's
    gdpr.tcf2.purpose_one_treatment decides it: when `enabled`, purpose 1 is allowed
    (`access_allowed`) or refused for every vendor without looking further (vendor
    consent, publisher restrictions); otherwise the string is read as any other.
    [privacy] purpose_one_treatment and purpose_one_access_allowed."""

    enabled: bool = True  # Prebid Server's defaults
    access_allowed: bool = True


PBS_PURPOSE_ONE: Final = PurposeOnePolicy()


@dataclass(frozen=True)
class TCString:
    version: int
    created_ds: int  # deciseconds since the epoch
    updated_ds: int
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    purposes: frozenset[int]  # purposes consented to
    vendors: frozenset[int]  # vendors consented to
    special_features: frozenset[int] = frozenset()  # special features opted in to
    purposes_li: frozenset[int] = frozenset()  # purposes whose legitimate interest was disclosed
    purpose_one_treatment: bool = False  # purpose 1 was not disclosed
    publisher_cc: str = "AA"  # the publisher's country code
    vendors_li: frozenset[int] = frozenset()  # vendors whose legitimate interest was disclosed
    restrictions: tuple[Restriction, ...] = ()  # one per (purpose, type), in that order
    purpose_one: PurposeOnePolicy = PBS_PURPOSE_ONE  # the service's reading ([privacy])

    def restricted(self, vendor_id: int, purpose: int) -> list[RestrictionType]:
        """The publisher's restrictions of `purpose` for this vendor."""
        return [r.type for r in self.restrictions if r.purpose == purpose and r.covers(vendor_id)]

    def allows(self, vendor_id: int, purpose: int = PURPOSE_STORAGE) -> bool:
        """Consent to `purpose` for this vendor. A publisher restriction refusing the
        purpose to the vendor (type 0), or requiring legitimate interest for it (type 2:
        the consent this establishes does not count; for purpose 1, which has no
        legitimate-interest basis, Prebid Server refuses too) wins over consent; one
        requiring consent (type 1) asks what is asked anyway."""
        if purpose == PURPOSE_STORAGE and self.purpose_one_treatment and self.purpose_one.enabled:
            return self.purpose_one.access_allowed  # Prebid Server's order: first
        refused = (RestrictionType.NOT_ALLOWED, RestrictionType.REQUIRE_LI)
        if any(t in refused for t in self.restricted(vendor_id, purpose)):
            return False
        return purpose in self.purposes and vendor_id in self.vendors

    def describe(self, vendor_ids: Iterable[int]) -> dict[str, Any]:
        """The decoded string for a debug answer, with what it says of these vendors
        (each restriction is summed up by its range count: its ranges could be 2,000)."""
        return {
            "version": self.version,
            "cmp_id": self.cmp_id,
            "cmp_version": self.cmp_version,
            "vendor_list_version": self.vendor_list_version,
            "policy_version": self.policy_version,
            "publisher_cc": self.publisher_cc,
            "purposes": sorted(self.purposes),
            "purposes_li": sorted(self.purposes_li),
            "special_features": sorted(self.special_features),
            "purpose_one_treatment": self.purpose_one_treatment,
            "publisher_restrictions": [
                {"purpose": r.purpose, "type": r.type.name.lower(), "ranges": len(r.vendors)}
                for r in self.restrictions
            ],
            "vendors": {
                str(v): {
                    "consent": v in self.vendors,
                    "legitimate_interest": v in self.vendors_li,
                    "restrictions": [
                        {"purpose": r.purpose, "type": r.type.name.lower()}
                        for r in self.restrictions
                        if r.covers(v)
                    ],
                    "purpose_one_allowed": self.allows(v),
                }
                for v in sorted(set(vendor_ids))
            },
        }


_BIT_VALUES: Final = bytes.maketrans(b"01", b"\x00\x01")  # "0"/"1" -> false/true bytes


class _Bits:
    """A reader of big-endian bit fields. The bits are a str of "0" and "1", made in one
    pass: reading a field costs its width (shifting one big integer per field cost the
    whole string's length each time: 62 ms for an 11 KB bitfield of 65,535 vendors)."""

    def __init__(self, raw: bytes) -> None:
        self._bits = format(int.from_bytes(raw, "big"), f"0{len(raw) * 8}b") if raw else ""
        self._pos = 0

    def _take(self, width: int) -> str:
        end = self._pos + width
        if end > len(self._bits):
            raise ConsentStringError("consent string too short")
        field = self._bits[self._pos : end]
        self._pos = end
        return field

    def read(self, width: int) -> int:
        return int(self._take(width), 2)

    def flags(self, width: int) -> frozenset[int]:
        """Bit i (1-based) set -> i in the set."""
        field = self._take(width).encode("ascii").translate(_BIT_VALUES)
        return frozenset(compress(range(1, width + 1), field))

    def letters(self, count: int) -> str:
        """Letters of 6 bits each, 0 is A."""
        return "".join(chr(ord("A") + self.read(6)) for _ in range(count))

    def count(self, width: int, least_bits: int) -> int:
        """A count of items that take at least `least_bits` each: refused at once when
        the rest of the string cannot hold them (4,095 announced restrictions of 4,095
        ranges each are not read one by one to find that out)."""
        count = self.read(width)
        if count * least_bits > len(self._bits) - self._pos:
            raise ConsentStringError("consent string too short")
        return count

    def ranges(self, max_id: int) -> list[tuple[int, int]]:
        """A range list: NumEntries(12), then the entries (_entries)."""
        out: list[tuple[int, int]] = []
        count = self.count(12, _RANGE_BITS)
        self._pos = _entries(self._bits, self._pos, count, max_id, out)
        return out

    def restrictions(self) -> dict[int, list[tuple[int, int]]]:
        """Publisher restrictions: NumPubRestrictions(12), then each PurposeId(6),
        RestrictionType(2), NumEntries(12) and the entries, by PurposeId and
        RestrictionType (the 8 bits); a repeated one adds to the same list. Read
        with no call per restriction but _entries (a string can hold 900)."""
        count = self.count(12, _RESTRICTION_BITS)
        bits, pos = self._bits, self._pos
        by_key: dict[int, list[tuple[int, int]]] = {}
        for _ in range(count):
            if pos + _RESTRICTION_BITS > len(bits):
                raise ConsentStringError("consent string too short")
            head = int(bits[pos : pos + _RESTRICTION_BITS], 2)
            out = by_key.get(head >> 12)
            if out is None:
                out = by_key[head >> 12] = []
            pos = _entries(bits, pos + _RESTRICTION_BITS, head & 0xFFF, 65535, out)
        self._pos = pos
        return by_key

    def vendors(self) -> frozenset[int]:
        """A vendor section: MaxVendorId(16), IsRangeEncoding(1), then a bitfield of
        MaxVendorId bits or a range list."""
        max_vendor = self.read(16)
        if self.read(1):
            merged = _merge(self.ranges(max_vendor))
            return frozenset(i for start, end in merged for i in range(start, end + 1))
        return self.flags(max_vendor)


def _entries(bits: str, pos: int, count: int, max_id: int, out: list[tuple[int, int]]) -> int:
    """`count` range entries at `pos`, each IsARange(1), StartOrOnlyVendorId(16) and
    EndVendorId(16) when a range, added to `out` (vendor ids from 1 to max_id); where
    they end. The hot loop of a hostile string: slices, no call per field."""
    if count * _RANGE_BITS > len(bits) - pos:
        raise ConsentStringError("consent string too short")
    size = len(bits)
    for _ in range(count):
        width = 33 if bits[pos] == "1" else 17  # there is room for 17: checked above
        if pos + width > size:
            raise ConsentStringError("consent string too short")
        start = int(bits[pos + 1 : pos + 17], 2)
        end = int(bits[pos + 17 : pos + 33], 2) if width == 33 else start
        if not 1 <= start <= end <= max_id:  # vendor ids start at 1
            raise ConsentStringError("bad vendor range")
        out.append((start, end))
        pos += width
    return pos


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Possibly overlapping ranges as sorted disjoint ones, each id in one: 4,095 ranges
    of the whole id space (a 22 KB string) would otherwise cost 268 M set insertions."""
    out: list[tuple[int, int]] = []
    last = -2
    for start, end in sorted(ranges):
        if start <= last + 1:  # overlapping or touching the previous one
            if end > last:
                out[-1] = (out[-1][0], end)
                last = end
        else:
            out.append((start, end))
            last = end
    return out


def _restrictions(bits: _Bits) -> tuple[Restriction, ...]:
    """The publisher restrictions, one per (purpose, type): the union of its entries."""
    return tuple(
        Restriction(key >> 2, RestrictionType(key & 3), tuple(_merge(ranges)))
        for key, ranges in sorted(bits.restrictions().items())
    )


def decode_tcf(text: str, purpose_one: PurposeOnePolicy = PBS_PURPOSE_ONE) -> TCString:
    """The core segment of a TCF v2 string (the segments after it are not read)."""
    if len(text) > MAX_CONSENT_CHARS:
        raise ConsentStringError(f"consent string over {MAX_CONSENT_CHARS} characters")
    core = text.split(".", 1)[0]
    if not core or not core.isascii():
        raise ConsentStringError("empty or non-ASCII consent string")
    try:
        raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ConsentStringError("not base64url") from exc
    bits = _Bits(raw)
    version = bits.read(6)
    if version != 2:
        raise ConsentStringError(f"TCF version {version}, not 2")
    created, updated = bits.read(36), bits.read(36)
    cmp_id, cmp_version, screen = bits.read(12), bits.read(12), bits.read(6)
    language = bits.letters(2)
    vendor_list_version, policy_version = bits.read(12), bits.read(6)
    bits.read(1 + 1)  # is service specific, non-standard texts
    special_features = bits.flags(12)
    purposes, purposes_li = bits.flags(24), bits.flags(24)
    purpose_one_treatment = bool(bits.read(1))
    publisher_cc = bits.letters(2)
    consented, legitimate = bits.vendors(), bits.vendors()
    return TCString(
        version,
        created,
        updated,
        cmp_id,
        cmp_version,
        screen,
        language,
        vendor_list_version,
        policy_version,
        purposes,
        consented,
        special_features,
        purposes_li,
        purpose_one_treatment,
        publisher_cc,
        legitimate,
        _restrictions(bits),
        purpose_one,
    )


class OptOut(Enum):
    """Why a request refuses outbound syncs and destination fires (SPEC §12); the value
    is the reason code in answers (`X-Privacy`), metrics and docs/privacy.md. When
    several apply, the first of these names it: the signals a consent string carries
    for this request before the browser-wide GPC."""

    US_PRIVACY = "us_privacy"  # us_privacy 1?Y?
    GPP_US = "gpp_us"  # a US section of the gpp string that gpp_sid names (6: 1?Y?)
    GPC = "gpc"  # Sec-GPC: 1 or a GPP GPC subsection's Gpc = 1, when [privacy] honor_gpc


@dataclass(frozen=True)
class Privacy:
    """What one request's privacy signals allow."""

    gdpr_applies: bool
    tcf: TCString | None
    # The GPP section ids that gpp_sid names (SPEC §12): the sections in force.
    sections: frozenset[int] = frozenset()
    # An opt-out of sale or sharing (us_privacy 1?Y?, Sec-GPC: 1 when honoured, a GPP US
    # section), and why; None: none.
    opt_out: OptOut | None = None

    def partner_allowed(self, gvl_id: int) -> bool:
        """May this partner be synced or fed? (gvl_id 0: never while GDPR applies.)"""
        if not self.gdpr_applies:
            return True
        return gvl_id != 0 and self.tcf is not None and self.tcf.allows(gvl_id)

    @property
    def sale_opt_out(self) -> bool:
        return self.opt_out is not None

    @property
    def outbound_allowed(self) -> bool:
        """Outbound syncs and destination fires to partners, for this request."""
        return self.opt_out is None


_PLAIN: Final = {
    (applies, reason): Privacy(applies, None, frozenset(), reason)
    for applies in (False, True)
    for reason in (None, *OptOut)
}


def us_privacy_opt_out(value: str) -> bool:
    """`1?Y?`: opted out of sale. `1---`: not applicable. Anything else: no opt-out."""
    return len(value) == 4 and value[0] == "1" and value[2].upper() == "Y"


class GdprScope(Enum):
    """Whether GDPR applies to a request (SPEC §12), and why."""

    APPLIES = "applies"  # gdpr=1, or gpp_sid naming section 2 (TCF EU v2)
    ASSUMED = "assumed"  # no gdpr=0|1 signal: the configured default (gdpr_default = 1)
    NO = "no"


def gpp_sections(params: Mapping[str, str]) -> frozenset[int]:
    """The section ids of `gpp_sid` (comma-separated). A token that is not a small
    number names no section; each distinct token is read once."""
    sids = params.get("gpp_sid")
    if not sids:
        return frozenset()
    tokens = {t.strip() for t in sids.split(",")}
    return frozenset(int(t) for t in tokens if 0 < len(t) <= 3 and t.isascii() and t.isdigit())


def gdpr_scope(
    params: Mapping[str, str], gdpr_default: int, sections: frozenset[int] | None = None
) -> GdprScope:
    """GDPR applies with gdpr=1 or gpp_sid containing 2; without a gdpr signal, as
    `gdpr_default` says."""
    gdpr = params.get("gdpr")
    if gdpr == "1":
        return GdprScope.APPLIES
    if 2 in (gpp_sections(params) if sections is None else sections):
        return GdprScope.APPLIES
    if gdpr != "0" and gdpr_default == 1:
        return GdprScope.ASSUMED
    return GdprScope.NO


def decode_gpp(params: Mapping[str, str]) -> gpp.GppString | None:
    """The request's gpp string (its header and sections checked; the sections are
    read where they are used), None without one; 313 when it cannot be read."""
    text = params.get("gpp", "")
    if not text:
        return None
    try:
        return gpp.decode(text)
    except gpp.GppError as exc:
        raise RequestError(Code.CONSENT_UNPARSABLE, f"gpp string unparsable: {exc}") from None


def consent_string(params: Mapping[str, str]) -> str:
    """The request's TCF string: gdpr_consent, else the gpp string's section 2 (SPEC
    §12); "" for neither, and for a gpp string that cannot be read (evaluate: 313)."""
    text = params.get("gdpr_consent", "")
    if text or not params.get("gpp"):
        return text
    try:
        return _gpp_tcf(decode_gpp(params))
    except RequestError:
        return ""


def _gpp_tcf(decoded: gpp.GppString | None) -> str:
    return (decoded.section(gpp.TCF_EU_V2) or "") if decoded is not None else ""


def _us_signals(decoded: gpp.GppString, sections: frozenset[int]) -> gpp.UsSignals:
    """The US sections gpp_sid names, each read now (313 when one cannot be); section 6
    is a us_privacy string."""
    try:
        signals = decoded.us_signals(sections)
    except gpp.GppError as exc:
        raise RequestError(Code.CONSENT_UNPARSABLE, f"gpp string unparsable: {exc}") from None
    usp = decoded.section(gpp.USP_V1) if gpp.USP_V1 in sections else None
    if usp is not None and us_privacy_opt_out(usp):
        return gpp.UsSignals(True, signals.gpc)
    return signals


def evaluate(
    params: Mapping[str, str],
    *,
    vendor_id: int,
    gdpr_default: int,
    gpc: bool,
    honor_gpc: bool = False,
    purpose_one: PurposeOnePolicy = PBS_PURPOSE_ONE,
) -> Privacy:
    """Decide, or refuse with the contract's code: 315 (GDPR applies, no consent
    string), 313 (unparsable), 314 (this service's vendor may not store). `gpc`: the
    request's Sec-GPC, already weighed against honor_gpc; `honor_gpc`: whether a GPP
    GPC subsection counts too.

    A gpp string is always checked (header, sections against it); its section 2 is read
    only as the consent string (GDPR applies and gdpr_consent is absent), its US
    sections only where gpp_sid names them."""
    sections = gpp_sections(params)
    applies = gdpr_scope(params, gdpr_default, sections) is not GdprScope.NO
    decoded = decode_gpp(params)
    tcf: TCString | None = None
    text = params.get("gdpr_consent", "")
    if applies and not text:
        text = _gpp_tcf(decoded)
    if applies and text:
        try:
            tcf = decode_tcf(text, purpose_one)
        except ConsentStringError as exc:
            raise RequestError(
                Code.CONSENT_UNPARSABLE, f"consent string unparsable: {exc}"
            ) from None
    if applies and vendor_id:
        if tcf is None:
            raise RequestError(Code.CONSENT_MISSING, "GDPR applies and no consent string")
        if not tcf.allows(vendor_id):
            raise RequestError(Code.CONSENT_REFUSED, "no consent to store for this service")
    us = _us_signals(decoded, sections) if decoded is not None and sections else None
    reason = (
        OptOut.US_PRIVACY
        if us_privacy_opt_out(params.get("us_privacy", ""))
        else OptOut.GPP_US
        if us is not None and us.opt_out
        else OptOut.GPC
        if gpc or (honor_gpc and us is not None and us.gpc)
        else None
    )
    if tcf is None and not sections:  # most requests: one of a few answers, built once
        return _PLAIN[applies, reason]
    return Privacy(applies, tcf, sections, reason)

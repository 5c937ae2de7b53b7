"""Privacy signals (SPEC §12): IAB TCF v2 consent strings, us_privacy, GPP strings
(gpp.py) and section ids, and Sec-GPC, turned into decisions. No HTTP, no Redis.

The TCF v2 core segment is decoded here (a few fixed-width fields and one vendor
section): the Python packages for it are unmaintained, and the format is small. A
consent string comes from a browser: it is read in time linear in its length, and
refused (313) past MAX_CONSENT_CHARS."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from itertools import compress
from typing import Final

from . import gpp
from .errors import Code, RequestError

PURPOSE_STORAGE: Final = 1  # "Store and/or access information on a device"
# Real strings, with a bitfield of every vendor on the Global Vendor List (~1,000), the
# disclosed-vendors segment and publisher restrictions, stay under a few KB.
MAX_CONSENT_CHARS: Final = 8192


class ConsentStringError(ValueError):
    """Not a TCF v2 consent string."""


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

    def allows(self, vendor_id: int, purpose: int = PURPOSE_STORAGE) -> bool:
        return purpose in self.purposes and vendor_id in self.vendors


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


def _union(ranges: list[tuple[int, int]]) -> frozenset[int]:
    """The vendor ids of possibly overlapping ranges, each id set once: 4,095 ranges of
    the whole id space (a 22 KB string) would otherwise cost 268 M set insertions."""
    ids: list[range] = []
    last = -1
    for start, end in sorted(ranges):
        if end > last:
            ids.append(range(max(start, last + 1), end + 1))
            last = end
    return frozenset(i for r in ids for i in r)


def decode_tcf(text: str) -> TCString:
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
    language = "".join(chr(ord("A") + bits.read(6)) for _ in range(2))
    vendor_list_version, policy_version = bits.read(12), bits.read(6)
    bits.read(1 + 1 + 12)  # is service specific, non-standard texts, special features
    purposes = bits.flags(24)
    bits.read(24 + 1 + 12)  # legitimate interests, purpose one treatment, publisher CC
    max_vendor = bits.read(16)
    if bits.read(1):  # range encoding
        ranges: list[tuple[int, int]] = []
        for _ in range(bits.read(12)):
            is_range = bits.read(1)
            start = bits.read(16)
            end = bits.read(16) if is_range else start
            if not 1 <= start <= end <= max_vendor:  # vendor ids start at 1
                raise ConsentStringError("bad vendor range")
            ranges.append((start, end))
        consented = _union(ranges)
    else:
        consented = bits.flags(max_vendor)
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
    sale_opt_out: bool  # us_privacy 1?Y?, Sec-GPC: 1 (when honoured), a GPP US opt-out
    # The GPP section ids that gpp_sid names (SPEC §12): the sections in force.
    sections: frozenset[int] = frozenset()
    opt_out: OptOut | None = None  # why sale_opt_out, when it is set

    def partner_allowed(self, gvl_id: int) -> bool:
        """May this partner be synced or fed? (gvl_id 0: never while GDPR applies.)"""
        if not self.gdpr_applies:
            return True
        return gvl_id != 0 and self.tcf is not None and self.tcf.allows(gvl_id)

    @property
    def outbound_allowed(self) -> bool:
        """Outbound syncs and destination fires to partners, for this request."""
        return not self.sale_opt_out


_PLAIN: Final = {
    (applies, reason): Privacy(applies, None, reason is not None, frozenset(), reason)
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
            tcf = decode_tcf(text)
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
    return Privacy(applies, tcf, reason is not None, sections, reason)

"""ID synchronization decisions (SPEC §5), free of HTTP and Redis."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

from .config import Partner
from .errors import Code, RequestError
from .redirects import normalize_domains, redirect_allowed
from .signals import CONSENT_KEYS

MAX_UID_BYTES: Final = 256
_URL_SAFE: Final = "!#$%&'()*+,-./:;=?@[]~_"  # everything printable but space, " < > \\ ^ ` { | }


@dataclass(frozen=True)
class PartnerRules:
    """What /ibs needs to know of a partner, prepared once."""

    dpid: int
    name: str
    redirect_domains: frozenset[str]
    gvl_id: int = 0

    @classmethod
    def of(cls, partner: Partner) -> PartnerRules:
        domains = normalize_domains(partner.redirect_domains)
        return cls(partner.dpid, partner.name, domains, partner.gvl_id)


def partner_rules(partners: Iterable[Partner]) -> dict[int, PartnerRules]:
    return {p.dpid: PartnerRules.of(p) for p in partners}


@dataclass(frozen=True)
class IbsRequest:
    partner: PartnerRules
    uid: str
    redir: str | None
    bounced: bool  # the cookie-bounce follow-up (d_bounce=1)
    consent: dict[str, str] = field(default_factory=dict)


def valid_uid(uid: str) -> bool:
    """1-256 bytes of printable ASCII, no whitespace."""
    return 0 < len(uid) <= MAX_UID_BYTES and all("!" <= c <= "~" for c in uid)


def parse_ibs(pairs: Sequence[tuple[str, str]], partners: Mapping[int, PartnerRules]) -> IbsRequest:
    """Validate an inbound sync; the first value of each parameter counts."""
    params: dict[str, str] = {}
    for key, value in pairs:
        params.setdefault(key, value)
    raw_dpid = params.get("dpid", "")
    partner = partners.get(int(raw_dpid)) if raw_dpid.isascii() and raw_dpid.isdigit() else None
    if partner is None:
        raise RequestError(Code.UNKNOWN_DPID, "unknown dpid")
    uid = params.get("dpuuid", "")
    if not valid_uid(uid):
        raise RequestError(Code.INVALID_UID, "dpuuid must be 1-256 printable ASCII characters")
    redir = params.get("redir")
    if redir is not None and not redirect_allowed(redir, partner.redirect_domains):
        raise RequestError(Code.REDIRECT_NOT_ALLOWED, "redirect target not allowed")
    consent = {k: v for k, v in params.items() if k in CONSENT_KEYS}
    return IbsRequest(partner, uid, redir, params.get("d_bounce") == "1", consent)


def check_declared_ids(declared: Sequence[tuple[int, str]], dpids: frozenset[int]) -> None:
    """Declared IDs (d_cid) are stored like ID syncs, so they are checked like them."""
    for dpid, uid in declared:
        if dpid not in dpids:
            raise RequestError(Code.UNKNOWN_DPID, "unknown dpid in d_cid")
        if not valid_uid(uid):
            raise RequestError(Code.INVALID_UID, "invalid id in d_cid")


def redirect_target(redir: str, uuid: str) -> bytes:
    """The partner's redirect with the visitor's uuid filled in, as a Location header
    value: characters outside ASCII are percent-encoded (UTF-8), the rest kept."""
    return quote(redir.replace("${DD_UUID}", uuid), safe=_URL_SAFE).encode("ascii")

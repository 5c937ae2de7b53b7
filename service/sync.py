"""ID synchronization decisions (SPEC §5), free of HTTP and Redis."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from itsdangerous import BadData, URLSafeTimedSerializer

from .config import Partner
from .errors import Code, RequestError
from .macros import Template
from .redirects import normalize_domains, redirect_allowed

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


_UID: Final = re.compile(rf"[!-~]{{1,{MAX_UID_BYTES}}}")


def valid_uid(uid: str) -> bool:
    """1-256 bytes of printable ASCII, no whitespace."""
    return _UID.fullmatch(uid) is not None


def parse_ibs(
    params: Mapping[str, str],
    partners: Mapping[int, PartnerRules],
    own_chain: tuple[str, frozenset[str]] = ("", frozenset()),
    consented: Callable[[int], bool] | None = None,
) -> IbsRequest:
    """Validate an inbound sync (`params`: the first value of each). `own_chain`:
    (our /sync/chain URL prefix, our host): hops back to us need no redirect_domains.
    `consented(gvl_id)`: whether the partner may sync, checked first once the partner
    is known (SPEC §13: 314 before 320-323)."""
    raw_dpid = params.get("dpid", "")
    partner = (
        partners.get(int(raw_dpid))
        if len(raw_dpid) <= 18 and raw_dpid.isascii() and raw_dpid.isdigit()
        else None
    )
    if partner is None:
        raise RequestError(Code.UNKNOWN_DPID, "unknown dpid")
    if consented is not None and not consented(partner.gvl_id):
        raise RequestError(Code.CONSENT_REFUSED, "no consent for this partner")
    uid = params.get("dpuuid", "")
    if not valid_uid(uid):
        raise RequestError(Code.INVALID_UID, "dpuuid must be 1-256 printable ASCII characters")
    redir = params.get("redir")
    if redir is not None and not redirect_allowed(redir, partner.redirect_domains):
        prefix, host = own_chain
        if not (prefix and redir.startswith(prefix) and redirect_allowed(redir, host)):
            raise RequestError(Code.REDIRECT_NOT_ALLOWED, "redirect target not allowed")
    return IbsRequest(partner, uid, redir, params.get("d_bounce") == "1")


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


# --------------------------------------------------------------------------- outbound

DEXTP_MAX_ENTRIES: Final = 200  # a garbage or hostile cookie cannot make us loop long


@dataclass(frozen=True)
class OutboundPartner:
    """A partner we hand syncs out for: its sync_url template, prepared once."""

    dpid: int
    name: str
    template: Template
    refresh_days: int
    gvl_id: int
    callback_uid_macro: str
    render: str = "img"  # img | iframe: how a browser must load the sync URL

    @classmethod
    def of(cls, partner: Partner) -> OutboundPartner:
        return cls(
            partner.dpid,
            partner.name,
            Template.parse(partner.sync_url),
            partner.refresh_days,
            partner.gvl_id,
            partner.callback_uid_macro,
            "iframe" if partner.sync_type == "iframe" else "img",
        )


def outbound_partners(partners: Iterable[Partner]) -> list[OutboundPartner]:
    return [OutboundPartner.of(p) for p in partners if p.sync_url]


def parse_dextp(value: str | None) -> dict[int, int]:
    """`<dpid>-1-<unix ms>|…` -> {dpid: ms}. Anything unreadable is ignored."""
    handed: dict[int, int] = {}
    if not value:
        return handed
    for entry in value.split("|")[:DEXTP_MAX_ENTRIES]:
        parts = entry.split("-")
        if len(parts) == 3 and all(p.isascii() and p.isdigit() and len(p) < 16 for p in parts):
            handed[int(parts[0])] = int(parts[2])
    return handed


def format_dextp(handed: Mapping[int, int]) -> str:
    return "|".join(f"{dpid}-1-{ms}" for dpid, ms in sorted(handed.items()))


def due_partners(
    partners: Sequence[OutboundPartner],
    handed: Mapping[int, int],
    synced_days: Mapping[int, int],
    *,
    now: float,
    limit: int,
) -> list[OutboundPartner]:
    """The partners to sync now: never synced, or last synced (handed out, or seen in
    the match table) longer ago than their refresh_days. At most `limit`, the longest
    waiting first, so every partner is served in turn."""
    now_ms = int(now * 1000)
    today = int(now) // 86400
    due: list[tuple[int, int, OutboundPartner]] = []
    for p in partners:
        refresh_ms = p.refresh_days * 86_400_000
        last_handed = handed.get(p.dpid, -1)
        if last_handed >= 0 and now_ms - last_handed < refresh_ms:
            continue
        day = synced_days.get(p.dpid)
        if day is not None and today - day < p.refresh_days:
            continue
        due.append((last_handed, p.dpid, p))
    due.sort(key=lambda item: (item[0], item[1]))
    return [p for _, _, p in due[:limit]]


def sync_url(
    partner: OutboundPartner,
    *,
    uuid: str,
    partner_uid: str,
    public_url: str,
    proto: str,
    consent: Mapping[str, str],
    rand: str,
    callback: str | None = None,
) -> str:
    if callback is None:
        callback = f"{public_url}/ibs:dpid={partner.dpid}&dpuuid={partner.callback_uid_macro}"
    values = {
        "DD_UUID": uuid,
        "DP_UUID": partner_uid,
        "CALLBACK": callback,
        "DD_RAND": rand,
        "HTTP_PROTO": proto,
        **consent,
    }
    return partner.template.render(values)


# --------------------------------------------------------------------------- redirect chains

MAX_HOPS: Final = 10
CHAIN_TOKEN_MAX_AGE_S: Final = 600


class ChainTokens:
    """Signed, expiring hop tokens of /sync/chain: the partners still to visit and the
    consent parameters of the first request."""

    def __init__(self, secret_keys: list[str]) -> None:
        # itsdangerous wants keys oldest first; it signs with the last.
        self._serializer = URLSafeTimedSerializer(
            list(reversed(secret_keys)), salt="pixelsync.chain"
        )

    def make(self, dpids: Sequence[int], consent: Mapping[str, str]) -> str:
        return str(self._serializer.dumps({"d": list(dpids), "c": dict(consent)}))

    def read(
        self, token: str, max_age: int = CHAIN_TOKEN_MAX_AGE_S
    ) -> tuple[list[int], dict[str, str]]:
        try:
            doc = self._serializer.loads(token, max_age=max_age)
        except BadData:
            raise RequestError(Code.INVALID_TOKEN, "invalid or expired chain token") from None
        dpids, consent = doc.get("d"), doc.get("c")
        if not (
            isinstance(dpids, list)
            and all(isinstance(d, int) for d in dpids)
            and isinstance(consent, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in consent.items())
        ):
            raise RequestError(Code.INVALID_TOKEN, "invalid chain token")
        return dpids[:MAX_HOPS], consent


def parse_dpid_list(value: str) -> list[int]:
    """`1,2,3` -> [1, 2, 3]; 311 for anything else."""
    dpids = []
    for part in value.split(","):
        part = part.strip()
        if not part.isascii() or not part.isdigit() or len(part) > 18:
            raise RequestError(Code.MALFORMED, "dpids must be a comma-separated list of integers")
        dpids.append(int(part))
    return dpids


def chain_callback(public_url: str, partner: OutboundPartner, next_hop: str | None) -> str:
    """The ${CALLBACK} of a chain hop: back to /ibs, then on to the next hop."""
    callback = f"{public_url}/ibs:dpid={partner.dpid}&dpuuid={partner.callback_uid_macro}"
    return callback if next_hop is None else f"{callback}&redir={quote(next_hop, safe='')}"

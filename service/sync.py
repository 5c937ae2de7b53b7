"""ID synchronization decisions (SPEC §5), free of HTTP and Redis."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from itsdangerous import BadData, URLSafeTimedSerializer

from .config import Partner
from .errors import Code, RequestError
from .macros import Template
from .numbers import parse_uint
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
    dpid = parse_uint(params.get("dpid", ""))
    partner = partners.get(dpid) if dpid is not None else None
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


# The compact format: "2." + base64url (no padding) of varint(newest hour since the
# epoch), then groups of one hour each, newest first: varint(hours older than the
# previous group), varint((n << 1) | kind), then for kind 0 (sparse) n varints of
# ascending dpid deltas (the first absolute), for kind 1 (bitmap) varint(first dpid) and
# n bytes, bit i (least significant first) set for dpid first + i.
DEXTP_VERSION: Final = "2."
DEXTP_MAX_BYTES: Final = 1024
DEXTP_MAX_ENTRIES: Final = 10_000  # a hostile cookie cannot make us loop long
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
_VARINT_MAX_BYTES: Final = 9  # 63 bits: every dpid /ibs accepts (18 digits)
_MAX_VARINT: Final = (1 << (7 * _VARINT_MAX_BYTES)) - 1
_RAW_MAX: Final = (DEXTP_MAX_BYTES - len(DEXTP_VERSION)) * 3 // 4  # base64: 4 chars per 3
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_LEGACY_MAX_ENTRIES: Final = 200
_LEGACY_MAX_CHARS: Final = _LEGACY_MAX_ENTRIES * 40


def parse_dextp(value: str | None) -> dict[int, int]:
    """The dextp cookie -> {dpid: unix ms of the hand-out}. Reads the compact format (at
    hour precision: ms is the hour's start) and the older `<dpid>-1-<ms>|…`. Never raises:
    anything unreadable gives {} or what was readable before it."""
    if not value:
        return {}
    if value.startswith(DEXTP_VERSION):
        return _parse_compact(value[len(DEXTP_VERSION) : DEXTP_MAX_BYTES])
    return _parse_legacy(value[:_LEGACY_MAX_CHARS])


def is_compact_dextp(value: str | None) -> bool:
    """Whether a dextp value needs no rewriting: absent, or in the compact format."""
    return not value or value.startswith(DEXTP_VERSION)


def format_dextp(
    handed: Mapping[int, int], evict_first: Collection[int] = (), newest: Collection[int] = ()
) -> str:
    """{dpid: unix ms} -> the dextp value, at most DEXTP_MAX_BYTES for any number of
    partners, hand-out times at hour precision (rounded up). Over the cap, the
    `evict_first` partners are left out first, then the oldest hand-outs; within an
    hour, `newest` ones last."""
    hours = {
        dpid: -(-ms // HOUR_MS)  # rounded up: a partner is due late by minutes, never early
        for dpid, ms in handed.items()
        if 0 <= dpid <= _MAX_VARINT and 0 <= -(-ms // HOUR_MS) <= _MAX_VARINT
    }
    raw = _encode_newest_first(hours)
    if raw is None and evict_first:
        hours = {d: h for d, h in hours.items() if d not in evict_first}
        raw = _encode_newest_first(hours)
    if raw is None:
        raw = _encode_newest_first(hours, fill=newest)
        assert raw is not None
    if not raw:
        return ""
    return DEXTP_VERSION + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def record_hand_outs(
    handed: Mapping[int, int],
    dpids: Iterable[int],
    partners: Mapping[int, OutboundPartner],
    synced_days: Mapping[int, int],
    *,
    now: float,
) -> str:
    """The dextp value once `dpids` are handed out `now`. Left out, as they pace nothing:
    hand-outs older than their partner's refresh_days (or from the future), and partners
    no longer configured. Over the cap, the partners the match table paces (synced the
    day of the hand-out or later) go first, then the oldest hand-outs."""
    now_ms = int(now * 1000)
    kept = {
        dpid: ms
        for dpid, ms in handed.items()
        if (p := partners.get(dpid)) is not None
        and -HOUR_MS <= now_ms - ms < p.refresh_days * DAY_MS
    }
    for dpid in dpids:
        kept[dpid] = now_ms
    paced = {d for d, ms in kept.items() if synced_days.get(d, -1) >= ms // DAY_MS}
    return format_dextp(kept, paced, set(dpids))


def _parse_legacy(value: str) -> dict[int, int]:
    handed: dict[int, int] = {}
    for entry in value.split("|", _LEGACY_MAX_ENTRIES)[:_LEGACY_MAX_ENTRIES]:
        match [parse_uint(part, 15) for part in entry.split("-")]:
            case [int(dpid), int(), int(ms)]:
                handed[dpid] = ms
    return handed


def _parse_compact(text: str) -> dict[int, int]:
    match = _B64URL.match(text)
    text = match.group() if match else ""
    if len(text) % 4 == 1:  # a lone last character holds no whole byte
        text = text[:-1]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:  # binascii.Error
        return {}
    handed: dict[int, int] = {}
    hour, pos = _read_varint(raw, 0)
    end = len(raw)
    while pos < end and len(handed) < DEXTP_MAX_ENTRIES:
        older, pos = _read_varint(raw, pos)
        head, pos = _read_varint(raw, pos)
        if head < 0 or older < 0 or older > hour:
            break
        hour -= older
        ms = hour * HOUR_MS
        count = head >> 1
        if head & 1:  # bitmap
            first, pos = _read_varint(raw, pos)
            if first < 0:
                break
            for i, byte in enumerate(raw[pos : pos + count]):
                base = first + (i << 3)
                while byte:
                    low = byte & -byte
                    handed.setdefault(base + low.bit_length() - 1, ms)
                    byte ^= low
            pos += count
        else:  # sparse: each varint takes a byte at least, so this ends with the input
            dpid = 0
            for _ in range(count):
                if pos < end and raw[pos] < 0x80:  # the usual one-byte delta, inline
                    dpid += raw[pos]
                    pos += 1
                else:
                    delta, pos = _read_varint(raw, pos)
                    if delta < 0:
                        return handed
                    dpid += delta
                handed.setdefault(dpid, ms)
    return handed


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); value -1 when truncated or longer than allowed."""
    value = shift = 0
    for i in range(pos, min(pos + _VARINT_MAX_BYTES, len(raw))):
        byte = raw[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    return -1, len(raw)


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _encode_newest_first(
    hours: Mapping[int, int], fill: Collection[int] | None = None
) -> bytearray | None:
    """The compact bytes of {dpid: hour}; None when over the cap, unless `fill` is given:
    then as many of the newest hand-outs as fit, in the oldest hour that fits in part
    those in `fill` first (the ones just handed out), then the highest dpids (the later
    ones in the rotation)."""
    groups: dict[int, list[int]] = {}
    for dpid, hour in hours.items():
        groups.setdefault(hour, []).append(dpid)
    out = bytearray()
    if not groups:
        return out
    newest = max(groups)
    _put_varint(out, newest)
    previous = newest
    for hour in sorted(groups, reverse=True):
        dpids = sorted(groups[hour])
        group = _encode_group(previous - hour, dpids)
        if len(out) + len(group) > _RAW_MAX:
            if fill is None:
                return None
            dpids.sort(key=lambda d: (d not in fill, -d))
            lo, hi = 0, len(dpids) - 1  # how many fit
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if len(out) + len(_encode_group(previous - hour, sorted(dpids[:mid]))) <= _RAW_MAX:
                    lo = mid
                else:
                    hi = mid - 1
            if lo:
                out += _encode_group(previous - hour, sorted(dpids[:lo]))
            break
        out += group
        previous = hour
    return out


def _encode_group(older: int, dpids: list[int]) -> bytearray:
    """One hour's group; `dpids` ascending. The shorter of the sparse and bitmap kinds."""
    sparse = bytearray()
    last = 0
    for dpid in dpids:
        _put_varint(sparse, dpid - last)
        last = dpid
    first = dpids[0]
    size = (dpids[-1] - first) // 8 + 1
    out = bytearray()
    _put_varint(out, older)
    if _varint_len(first) + _varint_len(size << 1 | 1) + size < len(sparse) + _varint_len(
        len(dpids) << 1
    ):
        bitmap = bytearray(size)
        for dpid in dpids:
            i = dpid - first
            bitmap[i >> 3] |= 1 << (i & 7)
        _put_varint(out, size << 1 | 1)
        _put_varint(out, first)
        out += bitmap
    else:
        _put_varint(out, len(dpids) << 1)
        out += sparse
    return out


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
    waiting first, so every partner is served in turn. Of those the cookie does not
    record, the dpids past the highest it records first: when the cookie was over its
    cap, the ones it left out were handed out before them."""
    now_ms = int(now * 1000)
    today = int(now) // 86400
    top = max(handed, default=-1)
    due: list[tuple[int, bool, int, OutboundPartner]] = []
    for p in partners:
        refresh_ms = p.refresh_days * 86_400_000
        last_handed = handed.get(p.dpid, -1)
        if last_handed >= 0 and now_ms - last_handed < refresh_ms:
            continue
        day = synced_days.get(p.dpid)
        if day is not None and today - day < p.refresh_days:
            continue
        due.append((last_handed, last_handed < 0 and p.dpid <= top, p.dpid, p))
    due.sort(key=lambda item: item[:3])
    return [item[3] for item in due[:limit]]


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
        dpid = parse_uint(part.strip())
        if dpid is None:
            raise RequestError(Code.MALFORMED, "dpids must be a comma-separated list of integers")
        dpids.append(dpid)
    return dpids


def chain_callback(public_url: str, partner: OutboundPartner, next_hop: str | None) -> str:
    """The ${CALLBACK} of a chain hop: back to /ibs, then on to the next hop."""
    callback = f"{public_url}/ibs:dpid={partner.dpid}&dpuuid={partner.callback_uid_macro}"
    return callback if next_hop is None else f"{callback}&redir={quote(next_hop, safe='')}"

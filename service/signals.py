"""Parsing what a browser sends to /event (SPEC §4), free of any HTTP framework."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote_to_bytes

from .errors import Code, RequestError
from .numbers import parse_uint

_BAD_PERCENT: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
CALLBACK: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.]{0,63}")
CONSENT_KEYS: Final = frozenset({"gdpr", "gdpr_consent", "us_privacy", "gpp", "gpp_sid"})
# The distinct values of one signal key that the rules see: a request's cost is values
# times the rules on the key, and 32 KiB of "0,1,2,…" against a DMP's hundreds of rules on
# one key held the event loop ~170 ms. Real pages send a handful (keywords: dozens).
MAX_VALUES_PER_KEY: Final = 100
# Ids a request may declare (d_cid): each is a write.
MAX_DECLARED_IDS: Final = 100
# Header-derived signals the service fills; a browser cannot send these itself.
HEADER_SIGNALS: Final = {
    b"referer": "h_referer",
    b"user-agent": "h_user-agent",
    b"host": "h_host",
    b"accept-language": "h_accept-language",
}


def _decode(part: bytes, plus_is_space: bool) -> str:
    if plus_is_space and b"+" in part:
        part = part.replace(b"+", b" ")
    if b"%" in part:
        if _BAD_PERCENT.search(part):
            raise RequestError(Code.MALFORMED, "bad percent-encoding")
        part = unquote_to_bytes(part)
    try:
        text = part.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(Code.MALFORMED, "invalid UTF-8") from None
    if "\x00" in text:
        raise RequestError(Code.MALFORMED, "NUL byte in a parameter")
    return text


def decode_path_part(raw: bytes) -> str:
    """A percent-encoded path segment, strictly: 311 for bad percent-encoding, invalid
    UTF-8 or a NUL byte (the server's own decoding replaces what it cannot read)."""
    return _decode(raw, plus_is_space=False)


def first_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Parameter -> its first value (a repeated parameter's later values are ignored)."""
    params: dict[str, str] = {}
    for key, value in pairs:
        params.setdefault(key, value)
    return params


def consent_params(params: Mapping[str, str]) -> dict[str, str]:
    """The consent parameters (gdpr, gdpr_consent, us_privacy, gpp, gpp_sid) of a
    request's parameters."""
    return {k: v for k, v in params.items() if k in CONSENT_KEYS}


def parse_pairs(raw: bytes, *, plus_is_space: bool = True) -> list[tuple[str, str]]:
    """Strictly decode an application/x-www-form-urlencoded string, one pair at a time."""
    if b"%" not in raw and b"+" not in raw and raw.isascii() and b"\x00" not in raw:
        # The common case: nothing encoded, so decoding is splitting.
        fast: list[tuple[str, str]] = []
        for part in raw.decode("ascii").split("&"):
            left, _, right = part.partition("=")
            if left:
                fast.append((left, right))
        return fast
    pairs: list[tuple[str, str]] = []
    for chunk in raw.split(b"&"):
        if not chunk:
            continue
        key, _, value = chunk.partition(b"=")
        name = _decode(key, plus_is_space)
        if name:
            pairs.append((name, _decode(value, plus_is_space)))
    return pairs


@dataclass(slots=True)
class EventRequest:
    """What /event was asked, split by prefix. Private (p_) values live only here."""

    signals: dict[str, list[str]] = field(default_factory=dict)  # c_, unprefixed, h_
    private: dict[str, list[str]] = field(default_factory=dict)  # p_
    json: bool = False
    callback: str | None = None
    dests: bool = False
    cts: int = 0
    declared_ids: list[tuple[int, str]] = field(default_factory=list)  # d_cid
    trait_sids: list[int] = field(default_factory=list)  # d_sid
    consent: dict[str, str] = field(default_factory=dict)
    bounced: bool = False  # the cookie bounce's follow-up (d_bounce=1, SPEC §3)

    @property
    def answers_json(self) -> bool:
        return self.json or self.callback is not None


def _int(value: str, key: str) -> int:
    number = parse_uint(value)
    if number is None:
        raise RequestError(Code.MALFORMED, f"{key} must be an unsigned integer")
    return number


def _system(req: EventRequest, key: str, value: str) -> None:
    if key == "d_rtbd":
        req.json = req.json or value == "json"
    elif key == "d_cb":
        if not CALLBACK.fullmatch(value):
            raise RequestError(Code.MALFORMED, "invalid callback name")
        req.callback = value
    elif key == "d_dst":
        req.dests = value == "1"
    elif key == "d_cts":
        req.cts = _int(value, key) if value else 0
        if req.cts > 2:
            raise RequestError(Code.MALFORMED, "d_cts must be 0, 1 or 2")
    elif key == "d_cid":
        dpid, sep, uid = value.partition("\x01")
        if not sep:
            raise RequestError(Code.MALFORMED, "d_cid must be <dpid>%01<id>")
        req.declared_ids.append((_int(dpid, key), uid))
    elif key == "d_sid":
        req.trait_sids.extend(_int(v, key) for v in value.split(",") if v)
    elif key == "d_bounce":
        req.bounced = value == "1"
    # Other d_ keys are the DMP protocol's and carry nothing for us: ignored.


def parse_event(
    pairs: Iterable[tuple[str, str]],
    headers: Mapping[bytes, bytes] | None = None,
    wanted: AbstractSet[str] | None = None,
) -> EventRequest:
    """Classify decoded pairs; header-derived h_ signals come from the headers only.
    `wanted`: the signal keys some rule names (TraitIndex.keys); the others are left
    out of `signals` and `private`, as no rule could look at them."""
    req = EventRequest()
    for key, value in pairs:
        if key.startswith("d_"):
            _system(req, key, value)
        elif key in CONSENT_KEYS:
            req.consent[key] = value
        elif wanted is not None and key not in wanted:
            continue
        elif key.startswith("p_"):
            req.private.setdefault(key, []).extend(value.split(","))
        elif not key.startswith("h_"):
            req.signals.setdefault(key, []).extend(value.split(","))
    if len(req.declared_ids) > 1:  # the same id declared again is the same write
        req.declared_ids = list(dict.fromkeys(req.declared_ids))
        if len(req.declared_ids) > MAX_DECLARED_IDS:
            raise RequestError(Code.MALFORMED, f"at most {MAX_DECLARED_IDS} d_cid ids")
    for found in (req.signals, req.private):
        for key, values in found.items():
            if len(values) > 1:  # a rule asks whether ANY value holds: each once is enough
                # (32 KiB of "1," is 16,384); the first MAX_VALUES_PER_KEY distinct ones
                distinct = list(dict.fromkeys(values))
                found[key] = distinct[:MAX_VALUES_PER_KEY]
    if headers:
        for header, name in HEADER_SIGNALS.items():
            if (wanted is None or name in wanted) and (raw := headers.get(header)):
                req.signals[name] = [raw.decode("latin-1")]
    return req

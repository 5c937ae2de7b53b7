"""Visitor identity (SPEC §3): the 38-digit uuid and its signed cookie value."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from enum import Enum
from typing import Final

from itsdangerous import BadSignature, TimestampSigner
from itsdangerous.encoding import base64_decode, bytes_to_int
from itsdangerous.signer import HMACAlgorithm

UUID_DIGITS: Final = 38
OPT_OUT: Final = "NOTARGET"
OPT_OUT_MAX_AGE: Final = 10 * 365 * 86400
_SALT: Final = "pixelsync.visitor"
_VERIFIED_CACHE: Final = 16384  # entries, ~250 bytes each


def new_uuid() -> str:
    """38 decimal digits from the OS's cryptographic random source."""
    return f"{secrets.randbelow(10**UUID_DIGITS):0{UUID_DIGITS}d}"


def is_uuid(value: str) -> bool:
    return len(value) == UUID_DIGITS and value.isascii() and value.isdigit()


class _OneShotHMAC(HMACAlgorithm):
    """The same HMAC-SHA1 signatures, computed by OpenSSL in one call: hmac.new() with
    a digest constructor takes Python's slow path (two hash objects per call)."""

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, "sha1")


class _CachedKeySigner(TimestampSigner):
    """itsdangerous derives the HMAC key from the secret on every call; do it once."""

    def __init__(self, secret_keys: list[str]) -> None:
        super().__init__(secret_keys, salt=_SALT, algorithm=_OneShotHMAC())
        self._derived: dict[bytes, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        raw = self.secret_keys[-1] if secret_key is None else secret_key
        raw = raw.encode() if isinstance(raw, str) else raw
        key = self._derived.get(raw)
        if key is None:
            key = self._derived[raw] = super().derive_key(raw)
        return key


class VisitorKind(Enum):
    NEW = "new"  # no cookie, or one whose signature failed: a fresh uuid
    KNOWN = "known"
    OPTED_OUT = "opted_out"


@dataclass(frozen=True, slots=True)
class Visitor:
    kind: VisitorKind
    uuid: str | None  # None only when opted out
    signed_at: int = 0  # unix seconds when the presented cookie was signed
    # The presented cookie value when it can be sent back as it is: signed today
    # with the newest key. Refreshing a cookie means resetting its Max-Age; a new
    # signature once a day is enough.
    reusable: str | None = None

    @property
    def opted_out(self) -> bool:
        return self.kind is VisitorKind.OPTED_OUT


class CookieSigner:
    """Signs uuids for the visitor cookie. secret_keys newest first: the first signs,
    every key verifies, so keys rotate without logging visitors out."""

    def __init__(self, secret_keys: list[str]) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is needed")
        self._newest = _CachedKeySigner(secret_keys[:1])
        # Values that verified, newest first out. A browser presents the same value
        # all day (see Visitor.reusable), and a page view brings several requests.
        self._verified: dict[str, tuple[str, int, bool]] = {}
        # itsdangerous wants keys oldest first and signs with the last.
        self._any = _CachedKeySigner(list(reversed(secret_keys)))

    def sign(self, uuid: str) -> str:
        return self._newest.sign(uuid).decode("ascii")

    def verify(self, value: str) -> tuple[str, int] | None:
        """(uuid, signed at) for a valid value, None for anything else."""
        verified = self._verify(value)
        return None if verified is None else verified[:2]

    def _verify(self, value: str) -> tuple[str, int, bool] | None:
        """(uuid, signed at, signed with the newest key)."""
        verified = self._verified.get(value)
        if verified is None:
            verified = self._check(value)
            if verified is not None:
                if len(self._verified) >= _VERIFIED_CACHE:
                    del self._verified[next(iter(self._verified))]
                self._verified[value] = verified
        return verified

    def _check(self, value: str) -> tuple[str, int, bool] | None:
        """The value is itsdangerous's TimestampSigner format, `<uuid>.<ts>.<signature>`,
        checked with its verify_signature directly: unsign() decodes the ts twice."""
        body, dot, sig = value.rpartition(".")
        uuid, dot2, stamp = body.partition(".")
        if not (dot and dot2 and is_uuid(uuid)) or "." in stamp:
            return None
        try:
            if self._newest.verify_signature(body, sig):
                newest = True
            elif self._any.verify_signature(body, sig):
                newest = False
            else:
                return None
            return uuid, bytes_to_int(base64_decode(stamp)), newest
        except (BadSignature, UnicodeError, ValueError):
            return None

    def resolve(self, cookie: str | None, now: float | None = None) -> Visitor:
        """Who is this? A tampered or garbage cookie counts as absent."""
        if cookie == OPT_OUT:
            return Visitor(VisitorKind.OPTED_OUT, None)
        if cookie:
            verified = self._verify(cookie)
            if verified is not None:
                uuid, signed_at, newest = verified
                fresh = newest and signed_at // 86400 == today(now)
                return Visitor(VisitorKind.KNOWN, uuid, signed_at, cookie if fresh else None)
        return Visitor(VisitorKind.NEW, new_uuid())


def needs_touch(visitor: Visitor, now: float) -> bool:
    """Refresh a returning visitor's last-seen day at most once per day per browser:
    the cookie's signing time tells when it was last refreshed. A new visitor has
    nothing stored to refresh (and a browser refusing cookies stays new forever)."""
    return visitor.kind is VisitorKind.KNOWN and visitor.signed_at // 86400 != int(now) // 86400


def today(now: float | None = None) -> int:
    """Days since 1970-01-01 (UTC)."""
    return int(time.time() if now is None else now) // 86400

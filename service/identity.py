"""Visitor identity (SPEC §3): the 38-digit uuid and its signed cookie value."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import Enum
from typing import Final

from itsdangerous import BadSignature, TimestampSigner

UUID_DIGITS: Final = 38
OPT_OUT: Final = "NOTARGET"
OPT_OUT_MAX_AGE: Final = 10 * 365 * 86400
_SALT: Final = "pixelsync.visitor"


def new_uuid() -> str:
    """38 decimal digits from the OS's cryptographic random source."""
    return f"{secrets.randbelow(10**UUID_DIGITS):0{UUID_DIGITS}d}"


def is_uuid(value: str) -> bool:
    return len(value) == UUID_DIGITS and value.isascii() and value.isdigit()


class _CachedKeySigner(TimestampSigner):
    """itsdangerous derives the HMAC key from the secret on every call; do it once."""

    def __init__(self, secret_keys: list[str]) -> None:
        super().__init__(secret_keys, salt=_SALT)
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

    @property
    def opted_out(self) -> bool:
        return self.kind is VisitorKind.OPTED_OUT


class CookieSigner:
    """Signs uuids for the visitor cookie. secret_keys newest first: the first signs,
    every key verifies, so keys rotate without logging visitors out."""

    def __init__(self, secret_keys: list[str]) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is needed")
        # itsdangerous wants them oldest first and signs with the last.
        self._signer = _CachedKeySigner(list(reversed(secret_keys)))

    def sign(self, uuid: str) -> str:
        return self._signer.sign(uuid).decode("ascii")

    def verify(self, value: str) -> tuple[str, int] | None:
        """(uuid, signed at) for a valid value, None for anything else."""
        try:
            raw, signed_at = self._signer.unsign(value, return_timestamp=True)
        except (BadSignature, UnicodeError, ValueError):
            return None
        uuid = raw.decode("ascii", "replace")
        return (uuid, int(signed_at.timestamp())) if is_uuid(uuid) else None

    def resolve(self, cookie: str | None) -> Visitor:
        """Who is this? A tampered or garbage cookie counts as absent."""
        if cookie == OPT_OUT:
            return Visitor(VisitorKind.OPTED_OUT, None)
        if cookie:
            verified = self.verify(cookie)
            if verified is not None:
                return Visitor(VisitorKind.KNOWN, verified[0], verified[1])
        return Visitor(VisitorKind.NEW, new_uuid())


def needs_touch(visitor: Visitor, now: float) -> bool:
    """Record the visitor's last-seen day at most once per day per browser: the
    cookie's signing time tells when it was last refreshed."""
    if visitor.kind is VisitorKind.NEW:
        return True
    return visitor.kind is VisitorKind.KNOWN and visitor.signed_at // 86400 != int(now) // 86400


def today(now: float | None = None) -> int:
    """Days since 1970-01-01 (UTC)."""
    return int(time.time() if now is None else now) // 86400

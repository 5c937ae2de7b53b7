"""Reading and writing the visitor cookie (SPEC §3)."""

from __future__ import annotations

from ..config import CookiesConfig
from ..identity import OPT_OUT, OPT_OUT_MAX_AGE, CookieSigner, Visitor


def cookie_value(cookie_header: bytes | None, prefix: bytes) -> str | None:
    """The first value of the cookie `prefix` (b"<name>=") in a Cookie header."""
    if not cookie_header:
        return None
    start = 0
    while (at := cookie_header.find(prefix, start)) >= 0:
        if at == 0 or cookie_header[at - 1] in b"; ":  # a whole name, not a suffix
            at += len(prefix)
            end = cookie_header.find(b";", at)
            value = cookie_header[at:] if end < 0 else cookie_header[at:end]
            return value.strip().decode("latin-1")
        start = at + 1
    return None


class VisitorCookies:
    def __init__(self, cookies: CookiesConfig, signer: CookieSigner) -> None:
        self.name = cookies.name
        self._prefix = self.name.encode() + b"="
        self.signer = signer
        domain = f"; Domain={cookies.domain}" if cookies.domain else ""
        self._attrs = f"; Path=/; Max-Age={cookies.ttl_days * 86400}{domain}".encode()
        self._secure = b"; HttpOnly; Secure; SameSite=None"
        self._opt_out = (
            self._prefix
            + OPT_OUT.encode()
            + f"; Path=/; Max-Age={OPT_OUT_MAX_AGE}{domain}".encode()
            + self._secure
        )

    def read(self, cookie_header: bytes | None) -> str | None:
        """The first value of our cookie in a Cookie header."""
        return cookie_value(cookie_header, self._prefix)

    def resolve(self, cookie_header: bytes | None) -> Visitor:
        return self.signer.resolve(self.read(cookie_header))

    def set_header(self, visitor: Visitor) -> tuple[bytes, bytes]:
        """The Set-Cookie that refreshes this visitor's cookie."""
        if visitor.uuid is None:
            return (b"set-cookie", self._opt_out)
        value = (visitor.reusable or self.signer.sign(visitor.uuid)).encode()
        return (b"set-cookie", self._prefix + value + self._attrs + self._secure)

    def opt_out_header(self) -> tuple[bytes, bytes]:
        return (b"set-cookie", self._opt_out)

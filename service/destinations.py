"""Destinations (SPEC §7): what a visitor's segments turn into for partners, and the
signed tokens that measure how much of it is lost. No HTTP, no Redis.

- url: pixels handed to the browser (JSON `dests`, dest5.html), through
  `<public_url>/fire/<token>` when tracked. The token carries the partner URL, signed,
  so /fire needs no lookup; `${ACK_URL}` gives the partner `<public_url>/ack/<token>`.
- cookie: `stuff` key-values, and the cookie itself when its domain is ours.
- s2s: segment entries and exits, for outbound/s2s.py to send.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from itsdangerous import BadData, URLSafeTimedSerializer

from .config import (
    CookieDestinationConfig,
    Destination,
    S2SDestinationConfig,
    UrlDestinationConfig,
)
from .errors import Code, RequestError
from .macros import Template
from .profiles import Pending

TOKEN_MAX_AGE_S: Final = 86400  # SPEC §7: tracking tokens expire after a day
# Cookie values: RFC 6265 cookie-octets, so the browser stores them as sent.
_COOKIE_SAFE: Final = "!#$%&'()*+-./:<=>?@[]^_`{|}~"


def dest_field(destination: int, counter: str) -> str:
    """Tally field of a destination's loss counter (tally.py)."""
    return f"d:{destination}:{counter}"


@dataclass(frozen=True, slots=True)
class Fire:
    """A URL destination pixel handed to a browser."""

    destination: int
    url: str  # what the browser loads: /fire/<token>, or the partner URL untracked
    secure_url: str  # the same for https pages (secure_url when configured)
    render: str  # img | iframe

    def doc(self) -> dict[str, str]:
        """The JSON /event `dests` entry."""
        return {"id": str(self.destination), "c": self.url, "e": self.secure_url, "y": self.render}


@dataclass(frozen=True, slots=True)
class Stuff:
    cn: str
    cv: str
    ttl: int  # days
    dmn: str

    def doc(self) -> dict[str, Any]:
        return {"cn": self.cn, "cv": self.cv, "ttl": self.ttl, "dmn": self.dmn}


class Tokens:
    """/fire and /ack tokens: signed, expiring, each with a nonce counted once."""

    def __init__(self, secret_keys: Sequence[str], public_url: str) -> None:
        keys = list(reversed(secret_keys))  # itsdangerous: oldest first, signs with the last
        self._fire = URLSafeTimedSerializer(keys, salt="pixelsync.fire")
        self._ack = URLSafeTimedSerializer(keys, salt="pixelsync.ack")
        self.public_url = public_url.rstrip("/")

    @staticmethod
    def nonce() -> str:
        return secrets.token_urlsafe(9)

    def ack_url(self, destination: int, nonce: str) -> str:
        return f"{self.public_url}/ack/{self._ack.dumps([destination, nonce])}"

    def fire_url(self, destination: int, nonce: str, target: str) -> str:
        return f"{self.public_url}/fire/{self._fire.dumps([destination, nonce, target])}"

    def read_fire(self, token: str) -> tuple[int, str, str]:
        doc = self._load(self._fire, token)
        if len(doc) != 3 or not isinstance(doc[2], str):
            raise RequestError(Code.INVALID_TOKEN, "invalid fire token")
        return doc[0], doc[1], doc[2]

    def read_ack(self, token: str) -> tuple[int, str]:
        doc = self._load(self._ack, token)
        if len(doc) != 2:
            raise RequestError(Code.INVALID_TOKEN, "invalid ack token")
        return doc[0], doc[1]

    @staticmethod
    def _load(serializer: URLSafeTimedSerializer, token: str) -> list[Any]:
        try:
            doc = serializer.loads(token, max_age=TOKEN_MAX_AGE_S)
        except BadData:
            raise RequestError(Code.INVALID_TOKEN, "invalid or expired token") from None
        if not (
            isinstance(doc, list)
            and len(doc) >= 2
            and isinstance(doc[0], int)
            and isinstance(doc[1], str)
        ):
            raise RequestError(Code.INVALID_TOKEN, "invalid token")
        return doc


class UrlDestination:
    def __init__(self, d: UrlDestinationConfig) -> None:
        self.id = d.id
        self.partner = d.partner
        self.mappings = {int(sid): alias for sid, alias in d.mappings.items()}
        self.template = Template.parse(d.url)
        self.secure_template = Template.parse(d.secure_url) if d.secure_url else None
        self.render = d.render
        self.serialize = d.serialize
        self.delimiter = d.delimiter
        self.tracked = d.tracked

    def aliases(self, pending: Sequence[int], segments: Iterable[int]) -> list[str]:
        """The %ALIAS% of each URL to fire: one joined URL of every mapped segment the
        visitor is in (serialize), or one per pending segment."""
        if self.serialize:
            mine = [self.mappings[s] for s in sorted(segments) if s in self.mappings]
            return [self.delimiter.join(mine)] if mine else []
        return [self.mappings[s] for s in pending if s in self.mappings]


class CookieDestination:
    def __init__(self, d: CookieDestinationConfig) -> None:
        self.id = d.id
        self.partner = d.partner
        self.mappings = {int(sid): alias for sid, alias in d.mappings.items()}
        self.name = d.cookie_name
        self.key = d.key
        self.multi = d.format == "multi"
        self.serialize = d.serialize
        self.delimiter = d.delimiter
        self.domain = d.domain
        self.ttl_days = d.ttl_days

    def value(self, segments: Iterable[int]) -> str:
        aliases = [self.mappings[s] for s in sorted(segments) if s in self.mappings]
        if self.multi:  # each alias is a key=value pair of its own
            pairs = [a.partition("=") for a in aliases]
            groups: dict[str, list[str]] = {}
            for key, _, value in pairs:
                groups.setdefault(key, []).append(value)
            return self._join(groups)
        if not self.key:
            return self.delimiter.join(aliases)
        return self._join({self.key: aliases} if aliases else {})

    def _join(self, groups: Mapping[str, list[str]]) -> str:
        if self.serialize:
            return "&".join(f"{k}={self.delimiter.join(v)}" for k, v in groups.items())
        return "&".join(f"{k}={v}" for k, vs in groups.items() for v in vs)

    def own_domain(self, host: str) -> bool:
        """Whether the destination's domain domain-matches the request host (RFC 6265)."""
        domain = self.domain.lstrip(".").lower()
        host = host.split(":", 1)[0].lower() if not host.startswith("[") else host
        return bool(domain) and (host == domain or host.endswith("." + domain))

    def set_cookie(self, value: str) -> tuple[bytes, bytes]:
        parts = [f"{self.name}={quote(value, safe=_COOKIE_SAFE)}", "Path=/"]
        parts.append(f"Domain={self.domain}")
        parts.append(f"Max-Age={self.ttl_days * 86400 if value else 0}")
        parts.append("SameSite=Lax")  # our host is on the page's site: first-party
        return b"set-cookie", "; ".join(parts).encode("latin-1")


class S2SRules:
    def __init__(self, d: S2SDestinationConfig) -> None:
        self.id = d.id
        self.partner = d.partner
        self.mappings = {int(sid): alias for sid, alias in d.mappings.items()}

    def changes(self, entered: Iterable[int], exited: Iterable[int]) -> list[tuple[str, bool]]:
        """(alias, entered?) for each mapped segment the visitor entered or left."""
        out = [(self.mappings[s], True) for s in entered if s in self.mappings]
        return out + [(self.mappings[s], False) for s in exited if s in self.mappings]


class DestinationRules:
    """The configured destinations by type, prepared once."""

    def __init__(self, destinations: Iterable[Destination]) -> None:
        ds = list(destinations)
        self.url = {d.id: UrlDestination(d) for d in ds if isinstance(d, UrlDestinationConfig)}
        self.cookie = [CookieDestination(d) for d in ds if isinstance(d, CookieDestinationConfig)]
        self.s2s = [S2SRules(d) for d in ds if isinstance(d, S2SDestinationConfig)]
        self.own_cookies = [c for c in self.cookie if c.domain]  # may be set by us
        self.names = {d.id: d.name for d in ds}
        self.types = {d.id: d.type for d in ds}
        self._url_by_segment: dict[int, list[int]] = {}
        for u in self.url.values():
            for sid in u.mappings:
                self._url_by_segment.setdefault(sid, []).append(u.id)

    def pending_for(
        self, entered: Iterable[int], day: int, allowed: Callable[[int | None], bool]
    ) -> list[Pending]:
        """The URL fires due because the visitor entered these segments, for the
        destinations this request's privacy signals allow feeding."""
        if not self._url_by_segment:
            return []
        return [
            Pending(dest, sid, day)
            for sid in entered
            for dest in self._url_by_segment.get(sid, ())
            if allowed(self.url[dest].partner)
        ]

    def fires(
        self,
        pending: Sequence[Pending],
        segments: Iterable[int],
        tokens: Tokens,
        values: Callable[[int | None], dict[str, str] | None],
    ) -> list[Fire]:
        """The pixels for these pending fires. `values(partner)` gives the macro values
        for a destination's partner, or None when privacy forbids feeding it."""
        member = set(segments)
        by_dest: dict[int, list[int]] = {}
        for p in pending:
            # A segment left since the fire was queued is not sent any more.
            if p.destination in self.url and p.segment in member:
                by_dest.setdefault(p.destination, []).append(p.segment)
        fires = []
        for dest_id, sids in by_dest.items():
            d = self.url[dest_id]
            macro = values(d.partner)
            if macro is None:
                continue
            for alias in d.aliases(sids, member):
                fires.append(self._fire(d, alias, macro, tokens))
        return fires

    @staticmethod
    def _fire(d: UrlDestination, alias: str, macro: dict[str, str], tokens: Tokens) -> Fire:
        """Both variants share one nonce: whichever the browser loads counts, once."""
        nonce = tokens.nonce()
        values = {**macro, "ALIAS": alias, "DD_RAND": str(secrets.randbelow(10**12))}
        if d.tracked:
            values["ACK_URL"] = tokens.ack_url(d.id, nonce)
        plain = d.template.render({**values, "HTTP_PROTO": "http"})
        secure = (d.secure_template or d.template).render({**values, "HTTP_PROTO": "https"})
        if d.tracked:
            plain = tokens.fire_url(d.id, nonce, plain)
            secure = tokens.fire_url(d.id, nonce, secure)
        return Fire(d.id, plain, secure, d.render)

    def stuff(
        self, segments: Iterable[int], allowed: Callable[[int | None], bool]
    ) -> list[tuple[CookieDestination, str]]:
        """(cookie destination, value) for each that has something for this visitor."""
        member = list(segments)
        out = []
        for c in self.cookie:
            if allowed(c.partner):
                value = c.value(member)
                if value:
                    out.append((c, value))
        return out

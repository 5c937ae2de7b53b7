"""Where /ibs may send a browser (SPEC §5 `redir`): an open redirect on a pixel domain
is a phishing tool, so anything a browser could read differently from us is refused."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

import idna

# Browsers strip or reinterpret these; we refuse the whole value instead.
_FORBIDDEN: Final = re.compile(r"[\x00-\x20\x7f\\]|[\u0080-\u009f]")
_HOST: Final = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]")


def browser_host(host: str) -> str | None:
    """The host a browser would connect to (UTS #46 mapping, IDNA, lower case, no
    trailing dot), or None when it is not a plain host name or address."""
    if not host or "%" in host:
        return None
    if host.startswith("["):
        return host.lower() if _HOST.fullmatch(host.lower()) else None
    try:
        ascii_host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    ascii_host = ascii_host.lower().removesuffix(".")
    return ascii_host if ascii_host and _HOST.fullmatch(ascii_host) else None


def normalize_domains(domains: Iterable[str]) -> frozenset[str]:
    """Configured redirect_domains as browser hosts (invalid entries dropped: the
    configuration check reports them)."""
    return frozenset(h for d in domains if (h := browser_host(d.strip())) is not None)


def redirect_allowed(url: str, domains: frozenset[str]) -> bool:
    """An absolute http(s) URL, without userinfo, to a host that is one of `domains`
    or a subdomain of one."""
    if _FORBIDDEN.search(url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme.lower() not in ("http", "https") or not url[len(parts.scheme) :].startswith(
        "://"
    ):
        return False
    netloc = parts.netloc
    if not netloc or "@" in netloc:
        return False
    if netloc.startswith("["):
        raw_host = netloc[: netloc.find("]") + 1]
    else:
        raw_host = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
    try:
        port = parts.port
    except ValueError:
        return False
    if port is not None and not 0 < port < 65536:
        return False
    host = browser_host(raw_host)
    if host is None:
        return False
    return any(host == d or host.endswith("." + d) for d in domains)

"""Which `secret_keys` a service reachable by others may run with (SPEC §2).

The keys sign visitor cookies, `/fire` and chain tokens: whoever knows one can forge
any visitor's cookie and make `/fire` an open redirect that counts as a loaded pixel.
Every listed key verifies, so an old weak key is as bad as a weak signing key.

A key is weak when it is
- published: it appears in the pixelsync repository (PUBLISHED_KEYS, kept complete by
  tests/test_secrets.py, which scans the repository for keys);
- a placeholder: it contains one of PLACEHOLDER_WORDS (case-insensitively, `-` and `_`
  ignored), or one of PLACEHOLDER_TOKENS (`xxx`, `TODO`...) as a whole part between
  `-`, `_`, `.` or spaces;
- shorter than MIN_BYTES bytes (UTF-8), or shorter once a repetition is removed
  (`abcabc…` is as strong as `abc`);
- of too little variety: fewer than MIN_DISTINCT distinct characters, or a run or
  sequence (three quarters of neighbouring characters one code point apart or equal,
  as in `aaaa…`, `abcdef…`, `123456…`).

A weak key is refused unless only this machine can reach the service: its
`public_url` host is loopback (127.0.0.0/8, ::1, localhost) and, for `serve`, the
address it listens on is loopback too (the image listens on 0.0.0.0, so it refuses
them whatever its public_url). That keeps `make run` and the tests working.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "MAKE_A_KEY",
    "MIN_BYTES",
    "PUBLISHED_KEYS",
    "KeyCheck",
    "check_secret_keys",
    "is_loopback_host",
    "key_setting",
    "settings_key_check",
    "weakness",
]

MIN_BYTES: Final = 32
MIN_DISTINCT: Final = 6
MAKE_A_KEY: Final = 'python3 -c "import secrets; print(secrets.token_urlsafe(48))"'

# Every key that is or was in the repository (a removed one stays public in its
# history). tests/test_secrets.py fails when a key found in the tracked files is not
# refused, so a new example key must be added here (or be weak by the rules above).
PUBLISHED_KEYS: Final = frozenset(
    {
        # service/config.py's built-in default; deploy/pixelsync.example.toml; SPEC §2
        "dev-only-change-me",
        # deploy/docker-compose.yml's former fallback
        "CHANGE-ME-insecure-compose-default",
        # deploy/k8s/secret.yaml's former placeholders
        "CHANGE-ME-newest-key",
        "CHANGE-ME-previous-key",
    }
)
_PUBLISHED_FOLDED: Final = frozenset(k.casefold() for k in PUBLISHED_KEYS)

# Matched anywhere in the key, case-insensitively, with `-` and `_` removed: long
# enough that a random key contains one by chance less than once in ten million.
PLACEHOLDER_WORDS: Final = (
    "changeme",
    "replace",
    "example",
    "secret",
    "placeholder",
    "insecure",
    "default",
    "password",
)
# Short ones, matched only as a whole part of the key (`key-xxx`, `TODO_key`) and in one
# case: a random urlsafe key contains "xxx" in any case somewhere about once in 500
# keys, as a whole part in any case about once in 100,000, and as matched here in
# none of 1,000,000 token_urlsafe(48) keys tried.
PLACEHOLDER_TOKENS: Final = re.compile(r"x{3,}|X{3,}|todo|TODO|fixme|FIXME")
_PARTS: Final = re.compile(r"[-_.\s]+")


def _short_unit(key: str) -> str | None:
    """The unit the key repeats, when one shorter than MIN_BYTES characters."""
    for p in range(1, min(len(key) // 2, MIN_BYTES - 1) + 1):
        if key[p:] == key[:-p]:
            return key[:p]
    return None


def weakness(key: str) -> str | None:
    """Why this key is weak, or None. Never includes the key itself."""
    if key.casefold() in _PUBLISHED_FOLDED:
        return "it is published in the pixelsync repository"
    folded = key.casefold().replace("-", "").replace("_", "")
    for word in PLACEHOLDER_WORDS:
        if word in folded:
            return f"it looks like a placeholder (it contains {word!r})"
    for part in _PARTS.split(key):
        if PLACEHOLDER_TOKENS.fullmatch(part):
            word = "xxx" if part[0] in "xX" else part.lower()
            return f"it looks like a placeholder (a part of it is {word!r})"
    size = len(key.encode())
    if size < MIN_BYTES:
        return f"it is shorter than {MIN_BYTES} bytes ({size})"
    unit = _short_unit(key)
    if unit is not None and len(unit.encode()) < MIN_BYTES:
        return f"it repeats a unit shorter than {MIN_BYTES} bytes ({len(unit.encode())})"
    if len(set(key)) < MIN_DISTINCT:
        return f"it has too little variety (fewer than {MIN_DISTINCT} distinct characters)"
    steps = sum(abs(ord(a) - ord(b)) <= 1 for a, b in pairwise(key))
    if 4 * steps >= 3 * (len(key) - 1):
        return "it has too little variety (a run or a sequence of characters)"
    return None


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as [::1] or ::ffff:127.x.y.z) and `localhost`."""
    host = host.strip().removeprefix("[").removesuffix("]").lower().removesuffix(".")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def key_setting(source: str, *, from_env: bool, is_default: bool) -> str:
    """How an operator finds the keys: the environment variable, or the config key in
    the file (source: Settings.source) or the built-in default."""
    if from_env:
        return "PIXELSYNC_SECRET_KEYS"
    if source == "<defaults>":
        return "[server] secret_keys (the built-in default: no config file)"
    default = " (or its built-in default)" if is_default else ""
    return f"[server] secret_keys in {source}{default}"


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """The verdict on a service's keys: one line per weak key, then what to do (none
    when every key is strong); refused: True when the service must not run with them."""

    lines: tuple[str, ...]
    refused: bool


def check_secret_keys(
    keys: Sequence[str], *, setting: str, public_url: str, listen_host: str | None = None
) -> KeyCheck:
    """Judge `keys` (newest first) for a service whose public_url is `public_url` and
    that listens on `listen_host` (None: not known, as for check-config)."""
    weak = [(i, why) for i, key in enumerate(keys, 1) if (why := weakness(key)) is not None]
    if not weak:
        return KeyCheck((), refused=False)
    lines = [
        f"{setting}: key {i} of {len(keys)} ({'signs' if i == 1 else 'verifies'}): {why}"
        for i, why in weak
    ]
    make = (
        f"make a key with: {MAKE_A_KEY} (newest first: the first signs, every key "
        "verifies, so replace or drop a weak old key too)"
    )
    url_host = urlsplit(public_url).hostname or ""
    if not is_loopback_host(url_host):
        reach = f"public_url {public_url} is not a loopback address"
    elif listen_host is not None and not is_loopback_host(listen_host):
        reach = f"serve listens on {listen_host}, which other machines can reach"
    else:
        listens = (
            "(serve also needs --host on loopback)"
            if listen_host is None
            else f"and serve listens on {listen_host}"
        )
        lines.append(
            f"{setting}: accepted only because public_url {public_url} is a loopback "
            f"address {listens}; before anyone else can reach this service, {make}"
        )
        return KeyCheck(tuple(lines), refused=False)
    lines.append(
        f"{setting}: refused because {reach}: with a known or guessable key anyone can "
        f"forge visitor cookies and /fire tokens; {make}"
    )
    return KeyCheck(tuple(lines), refused=True)


def settings_key_check(settings: Settings, listen_host: str | None) -> KeyCheck:
    """check_secret_keys for loaded settings, naming where their keys came from."""
    from .config import ServerConfig

    return check_secret_keys(
        settings.secret_keys,
        setting=key_setting(
            settings.source,
            from_env=bool(os.environ.get("PIXELSYNC_SECRET_KEYS", "").strip(" ,")),
            is_default=settings.secret_keys == ServerConfig().secret_keys,
        ),
        public_url=settings.public_url,
        listen_host=listen_host,
    )

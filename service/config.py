"""TOML + environment → typed, validated settings (SPEC §1, §2).

Validation is strict and complete: every problem in the file is collected, each
naming the table, the entry and the key, and reported together as a ConfigError.

Each table and each kind of array entry is a frozen dataclass whose fields are its
schema: a field's name is the key, its annotation the TOML type (a Literal: the
allowed strings), its default the value of an absent key (none: the key is
required, unless `metadata["default_from"]` names the table whose key of the same
name is the default), and `metadata["check"]` what else the value must satisfy.
Destinations are a tagged union on `type`: one class per type, sharing the common keys.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, Field, dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Final, Literal, Never, TypeAlias
from urllib.parse import urlsplit

from .macros import Template, TemplateError
from .numbers import parse_uint
from .redirects import browser_host
from .rules import RuleError, compile_segment_rule, compile_trait_rule

__all__ = [
    "ApiKey",
    "ConfigError",
    "CookieDestinationConfig",
    "CookiesConfig",
    "DashboardConfig",
    "Destination",
    "FileDestinationConfig",
    "LimitsConfig",
    "Partner",
    "PrebidConfig",
    "PrivacyConfig",
    "PrivacyRule",
    "RealtimeConfig",
    "S2SDestinationConfig",
    "Segment",
    "ServerConfig",
    "Settings",
    "StoreConfig",
    "SyncConfig",
    "Trait",
    "UrlDestinationConfig",
    "find_config_path",
    "load_settings",
    "parse_settings",
]


class ConfigError(Exception):
    """Every problem found in a configuration, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --------------------------------------------------------------------------- checks

Check = Callable[[Any], str | None]


def _check(check: Callable[[Never], str | None]) -> dict[str, object]:
    """A field's metadata: the check its value must pass (None, or why not)."""
    return {"check": check}


def _positive(v: int) -> str | None:
    return None if v > 0 else "must be > 0"


def _fraction(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def _non_negative(v: int | float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _non_empty(v: str | list[str]) -> str | None:
    return None if len(v) > 0 else "must not be empty"


def _zero_or_one(v: int) -> str | None:
    return None if v in (0, 1) else "must be 0 or 1"


def _one_to_ten(v: int) -> str | None:
    return None if 1 <= v <= 10 else "must be 1..10"


def _one_of(*choices: str) -> Check:
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


def _http_url(v: str) -> str | None:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http(s) URL"
    return None


def _http_url_or_empty(v: str) -> str | None:
    return None if v == "" else _http_url(v)


def _redis_url(v: str) -> str | None:
    if v == "" or urlsplit(v).scheme in ("redis", "rediss", "unix"):
        return None
    return "must be empty or a redis://, rediss:// or unix:// URL"


def _secret_keys(v: list[str]) -> str | None:
    if not v:
        return "must not be empty"
    return "must not contain an empty key" if any(not k for k in v) else None


def _realtime_url(v: str) -> str | None:
    if v and "${DP_UUID}" not in v:
        return "must contain ${DP_UUID} (the partner's uid for the visitor)"
    return _http_url_or_empty(v)


def _cookie_name(v: str) -> str | None:
    ok = v != "" and all(c.isascii() and (c.isalnum() or c in "-_.") for c in v)
    return None if ok else "must be a non-empty token of letters, digits, '-', '_' or '.'"


def _cookie_domain(v: str) -> str | None:
    ok = all(c.isascii() and (c.isalnum() or c in "-.") for c in v)
    return None if ok else "must be a host name such as .sync.example.com"


def _hhmm(v: str) -> str | None:
    try:
        hours, minutes = v.split(":")
        ok = len(hours) == 2 and len(minutes) == 2 and 0 <= int(hours) < 24
        ok = ok and 0 <= int(minutes) < 60
    except ValueError:
        ok = False
    return None if ok else 'must be "HH:MM" (UTC)'


def _sha256_hex(v: str) -> str | None:
    ok = len(v) == 64 and all(c in "0123456789abcdef" for c in v.lower())
    return None if ok else "must be 64 hex digits"


def _scopes(v: list[str]) -> str | None:
    bad = [s for s in v if s not in ("read", "write", "admin")]
    return f"unknown scope(s) {', '.join(bad)}; use read, write or admin" if bad else None


def origin(v: str) -> str | None:
    """A web origin as browsers send it in `Origin` (lower case, IDNA, no default
    port), or None when `v` is not "scheme://host[:port]" with http or https."""
    try:
        parts = urlsplit(v)
        port = parts.port
    except ValueError:  # a port that is no number, a bad IPv6 address
        return None
    scheme, netloc = parts.scheme.lower(), parts.netloc
    # Nothing but the scheme and the host[:port]: no userinfo, path, "/", query, fragment.
    if scheme not in ("http", "https") or "@" in netloc or v[len(scheme) :] != "://" + netloc:
        return None
    host = browser_host(netloc.rsplit(":", 1)[0] if port is not None else netloc)
    if host is None or netloc.endswith(":"):
        return None
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _origins(v: list[str]) -> str | None:
    bad = [o for o in v if origin(o) is None]
    if bad:
        listed = ", ".join(map(repr, bad))
        return f"{listed}: not an origin (scheme://host[:port], http or https, no path)"
    return None


# What a [[partners.privacy]] rule may name (service/activities.py says what each covers).
ACTIVITIES: Final = ("sync", "fire", "s2s", "export")
# GPP section ids as gpp_sid carries them (consent.gpp_sections reads up to 3 digits);
# 3 and 4 are the GPP header and signal integrity, never a section in force.
_NOT_SECTIONS: Final = frozenset({3, 4})


def _activities(v: list[str]) -> str | None:
    if not v:
        return "must not be empty"
    bad = [a for a in v if a not in ACTIVITIES]
    if bad:
        return f"unknown activity {', '.join(map(repr, bad))}; use {', '.join(ACTIVITIES)}"
    return None


def _section_ids(v: list[int]) -> str | None:
    if not v:
        return "must not be empty (leave the key out for no condition)"
    bad = [s for s in v if not 0 < s <= 999 or s in _NOT_SECTIONS]
    if bad:
        return (
            f"{', '.join(map(str, bad))}: not a GPP section id (1..999; 3 and 4 are the "
            "GPP header and signal integrity)"
        )
    return None


def _power_of_two(v: int) -> str | None:
    return None if v >= 1 and v & (v - 1) == 0 else "must be a power of two"


# Room in a request head besides the query: the request line's method, path and
# version, `&d_bounce=1` (a bounce's follow-up), and the headers of a browser with
# big cookies. A head cap below the query cap plus this would answer an over-long
# query 431 instead of the contract's 414.
HEAD_ROOM: Final = 8192


def _head_room(max_head_bytes: int, max_query_bytes: int) -> str | None:
    least = max_query_bytes + HEAD_ROOM
    return None if max_head_bytes >= least else f"must be >= max_query_bytes + {HEAD_ROOM}"


def _host_port(v: str) -> tuple[str, int] | None:
    """A "host:port" (an IPv6 host in brackets) as (host, port); None if it is not."""
    host, sep, port = v.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = parse_uint(port, 5)
    if not sep or not host or number is None:
        return None
    return (host, number) if 0 < number < 65536 else None


def _host_port_or_empty(v: str) -> str | None:
    ok = v == "" or _host_port(v) is not None
    return None if ok else 'must be "" or "host:port", e.g. "127.0.0.1:9091"'


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    public_url: str = field(default="http://127.0.0.1:8080", metadata=_check(_http_url))
    redis_url: str = field(default="", metadata=_check(_redis_url))
    redis_cluster: bool = False
    data_dir: str = field(default="var", metadata=_check(_non_empty))
    secret_keys: list[str] = field(
        default_factory=lambda: ["dev-only-change-me"], metadata=_check(_secret_keys)
    )
    vendor_id: int = field(default=0, metadata=_check(_non_negative))
    region: int = field(default=0, metadata=_check(_non_negative))
    trusted_proxies: list[str] = field(default_factory=list)
    # /metrics, /readyz and /openapi.json on a listener of their own ("host:port");
    # "": on the public one, for admin API keys only.
    admin_listen: str = field(default="", metadata=_check(_host_port_or_empty))

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """admin_listen as (host, port); None when it is empty."""
        return _host_port(self.admin_listen) if self.admin_listen else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CookiesConfig:
    name: str = field(default="uuid", metadata=_check(_cookie_name))
    domain: str = field(default="", metadata=_check(_cookie_domain))
    ttl_days: int = field(default=180, metadata=_check(_positive))
    sync_name: str = field(default="dextp", metadata=_check(_cookie_name))
    bounce: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncConfig:
    max_partners_per_page: int = field(default=5, metadata=_check(_non_negative))
    refresh_days: int = field(default=7, metadata=_check(_positive))
    mapping_ttl_days: int = field(default=90, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyConfig:
    honor_gpc: bool = True
    gdpr_default: int = field(default=0, metadata=_check(_zero_or_one))
    # Prebid Server's gdpr.tcf2.purpose_one_treatment.enabled and .access_allowed:
    # what a TCF string saying purpose 1 was not disclosed (PurposeOneTreatment) means.
    purpose_one_treatment: bool = True
    purpose_one_access_allowed: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RealtimeConfig:
    budget_ms: int = field(default=50, metadata=_check(_positive))
    cache_s: int = field(default=30, metadata=_check(_non_negative))
    breaker_failures: int = field(default=5, metadata=_check(_positive))
    breaker_open_s: int = field(default=30, metadata=_check(_positive))
    max_answer_bytes: int = field(default=65536, metadata=_check(_positive))
    max_in_flight: int = field(default=16, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    match_buckets: int = field(default=65536, metadata=_check(_power_of_two))
    buffer_max_ops: int = field(default=100_000, metadata=_check(_positive))
    sweep_interval_s: int = field(default=86400, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    max_query_bytes: int = field(default=8192, metadata=_check(_positive))
    max_body_bytes: int = field(default=32768, metadata=_check(_positive))
    # The HTTP server's own (deploy/pixelsync.example.toml says why these defaults).
    max_head_bytes: int = field(default=32768, metadata=_check(_positive))
    max_headers: int = field(default=100, metadata=_check(_positive))
    head_timeout_s: float = field(default=10.0, metadata=_check(_positive))
    keep_alive_s: int = field(default=75, metadata=_check(_positive))
    max_concurrency: int = field(default=4096, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class DashboardConfig:
    # Loss rates above this are highlighted (pixel syncing loses 5-20 % normally).
    loss_threshold: float = field(default=0.2, metadata=_check(_fraction))
    refresh_s: int = field(default=60, metadata=_check(_positive))
    session_hours: int = field(default=12, metadata=_check(_positive))


@dataclass(frozen=True, slots=True, kw_only=True)
class PrebidConfig:
    """Prebid Server's endpoints (SPEC §15)."""

    # The pages (origins) that may read /getuids with credentials: a visitor's uids.
    cors_origins: list[str] = field(default_factory=list, metadata=_check(_origins))

    @property
    def allowed_origins(self) -> frozenset[str]:
        """cors_origins as browsers send them in `Origin`."""
        return frozenset(o for v in self.cors_origins if (o := origin(v)) is not None)


# --------------------------------------------------------------------------- arrays


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyRule:
    """One [[partners.privacy]] entry: the activities it denies (or allows, overriding
    the partner's later rules), when its conditions hold. First match wins, per
    activity, as in Prebid Server's activity controls (service/activities.py)."""

    deny: list[str] | None = field(default=None, metadata=_check(_activities))
    allow: list[str] | None = field(default=None, metadata=_check(_activities))
    # Conditions, all of which must hold; none: the rule always applies.
    gpp_sid: list[int] | None = field(default=None, metadata=_check(_section_ids))
    gdpr: bool | None = None  # whether GDPR applies to the request

    @property
    def allows(self) -> bool:
        return self.allow is not None

    @property
    def activities(self) -> list[str]:
        return self.allow if self.allow is not None else (self.deny or [])


@dataclass(frozen=True, slots=True, kw_only=True)
class Partner:
    dpid: int = field(metadata=_check(_positive))
    name: str = field(metadata=_check(_non_empty))
    sync_url: str = field(default="", metadata=_check(_http_url_or_empty))
    callback_uid_macro: str = field(default="$UID", metadata=_check(_non_empty))
    redirect_domains: list[str] = field(default_factory=list)
    # Absent from the entry: [sync]'s key of the same name.
    refresh_days: int = field(metadata={**_check(_positive), "default_from": "sync"})
    mapping_ttl_days: int = field(metadata={**_check(_positive), "default_from": "sync"})
    gvl_id: int = field(default=0, metadata=_check(_non_negative))
    realtime_url: str = field(default="", metadata=_check(_realtime_url))
    realtime_traits: dict[str, int] = field(default_factory=dict)
    # What sync_url is, for Prebid's /cookie_sync (SPEC §15).
    sync_type: Literal["redirect", "iframe"] = "redirect"
    # An iframe sync besides sync_url (Prebid's iframe syncer).
    iframe_sync_url: str = field(default="", metadata=_check(_http_url_or_empty))
    # [[partners.privacy]]: activity rules (read by read_partner, not by the schema).
    privacy: list[PrivacyRule] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    name: str = field(metadata=_check(_non_empty))
    sha256: str = field(metadata=_check(_sha256_hex))
    partner: int | None = field(default=None, metadata=_check(_positive))
    scopes: list[str] = field(default_factory=lambda: ["read"], metadata=_check(_scopes))


@dataclass(frozen=True, slots=True, kw_only=True)
class Trait:
    sid: int = field(metadata=_check(_positive))
    name: str = field(metadata=_check(_non_empty))
    folder: str = ""
    type: Literal["rule", "onboarded"] = "rule"
    rule: str = ""
    data_source: int | None = field(default=None, metadata=_check(_positive))
    ttl_days: int = field(default=120, metadata=_check(_non_negative))


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    sid: int = field(metadata=_check(_positive))
    name: str = field(metadata=_check(_non_empty))
    folder: str = ""
    rule: str = field(metadata=_check(_non_empty))


@dataclass(frozen=True, slots=True, kw_only=True)
class _DestinationConfig:
    """The keys of every [[destinations]] entry; `type` tells which class below it is."""

    id: int = field(metadata=_check(_positive))
    name: str = field(metadata=_check(_non_empty))
    type: Literal["url", "cookie", "s2s", "file"]
    partner: int | None = field(default=None, metadata=_check(_positive))  # fills ${DP_UUID}
    mappings: dict[str, str]  # segment sid -> alias (%ALIAS%)


@dataclass(frozen=True, slots=True, kw_only=True)
class UrlDestinationConfig(_DestinationConfig):
    type: Literal["url"] = "url"
    url: str = field(metadata=_check(_http_url))
    secure_url: str = field(default="", metadata=_check(_http_url_or_empty))
    render: Literal["img", "iframe"] = "img"
    serialize: bool = False
    delimiter: str = field(default=",", metadata=_check(_non_empty))
    track: Literal["redirect", "none"] = "redirect"

    @property
    def tracked(self) -> bool:
        """Whether its pixels go through /fire, so that their loss is measured."""
        return self.track == "redirect"


@dataclass(frozen=True, slots=True, kw_only=True)
class CookieDestinationConfig(_DestinationConfig):
    type: Literal["cookie"] = "cookie"
    cookie_name: str = field(metadata=_check(_cookie_name))
    key: str = ""
    format: Literal["single", "multi"] = "single"
    serialize: bool = True
    delimiter: str = field(default=",", metadata=_check(_non_empty))
    domain: str = field(default="", metadata=_check(_cookie_domain))
    ttl_days: int = field(default=30, metadata=_check(_non_negative))


@dataclass(frozen=True, slots=True, kw_only=True)
class S2SDestinationConfig(_DestinationConfig):
    type: Literal["s2s"] = "s2s"
    url: str = field(metadata=_check(_http_url))
    hmac_secret_env: str = ""
    batch_max_users: int = field(default=10, metadata=_check(_one_to_ten))
    timeout_ms: int = field(default=3000, metadata=_check(_positive))
    retries: int = field(default=1, metadata=_check(_non_negative))


@dataclass(frozen=True, slots=True, kw_only=True)
class FileDestinationConfig(_DestinationConfig):
    type: Literal["file"] = "file"
    out_dir: str = ""
    schedule: str = field(default="14:00", metadata=_check(_hhmm))
    mode: Literal["iter", "full"] = "iter"
    split_lines: int = field(default=1_000_000, metadata=_check(_positive))


Destination: TypeAlias = (
    UrlDestinationConfig | CookieDestinationConfig | S2SDestinationConfig | FileDestinationConfig
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    server: ServerConfig = field(default_factory=ServerConfig)
    cookies: CookiesConfig = field(default_factory=CookiesConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    prebid: PrebidConfig = field(default_factory=PrebidConfig)
    partners: list[Partner] = field(default_factory=list)
    api_keys: list[ApiKey] = field(default_factory=list)
    traits: list[Trait] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    destinations: list[Destination] = field(default_factory=list)
    source: str = "<defaults>"

    @property
    def public_url(self) -> str:
        return self.server.public_url.rstrip("/")

    @property
    def redis_url(self) -> str:
        return self.server.redis_url

    @property
    def secret_keys(self) -> list[str]:
        return list(self.server.secret_keys)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    def summary(self) -> str:
        return (
            f"{self.source}: ok — {len(self.partners)} partners, {len(self.api_keys)} api keys, "
            f"{len(self.traits)} traits, {len(self.segments)} segments, "
            f"{len(self.destinations)} destinations"
        )


# --------------------------------------------------------------------------- schema

_REQUIRED: Final = object()

# The TOML types a field may have, and how an error names them.
_KIND_NAMES: Final[dict[object, str]] = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    list[str]: "a list of strings",
    list[int]: "a list of integers",
    dict[str, int]: "a table of integers",
    dict[str, str]: "a table of strings",
}


@dataclass(frozen=True, slots=True)
class _Key:
    """What one key accepts, read off its dataclass field."""

    kind: object  # a key of _KIND_NAMES
    default: object = _REQUIRED  # the value of an absent key, unless factory makes it
    factory: Callable[[], object] | None = None
    check: Check | None = None
    default_from: str = ""  # the table whose key of the same name is the default

    def __post_init__(self) -> None:
        assert self.kind in _KIND_NAMES, f"no TOML type for {self.kind!r}"


def _key_of(f: Field[object], annotation: object) -> _Key:
    check: Check | None = f.metadata.get("check")
    kind = annotation
    if typing.get_origin(kind) is Literal:  # a closed set of strings
        assert check is None and all(isinstance(c, str) for c in typing.get_args(kind))
        kind, check = str, _one_of(*typing.get_args(kind))
    elif isinstance(kind, UnionType):  # X | None: None stands for an absent key
        (kind,) = (t for t in typing.get_args(kind) if t is not NoneType)
    factory = None if f.default_factory is MISSING else f.default_factory
    default = _REQUIRED if f.default is MISSING else f.default
    return _Key(kind, default, factory, check, f.metadata.get("default_from", ""))


def _schema(cls: type, *, skip: Collection[str] = ()) -> dict[str, _Key]:
    """Each field's key, in the order of the fields (which is the order of the errors)."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: _key_of(f, hints[f.name]) for f in dataclasses.fields(cls) if f.name not in skip
    }


def _settings_fields() -> tuple[dict[str, type], tuple[str, ...]]:
    """Settings' tables ([server], …) and arrays of tables ([[partners]], …)."""
    hints = typing.get_type_hints(Settings)
    tables = {n: t for n, t in hints.items() if isinstance(t, type) and dataclasses.is_dataclass(t)}
    arrays = tuple(n for n, t in hints.items() if typing.get_origin(t) is list)
    return tables, arrays


_TABLE_TYPES, _ARRAYS = _settings_fields()
_TABLES: Final = {name: _schema(cls) for name, cls in _TABLE_TYPES.items()}
_PARTNER: Final = _schema(Partner, skip=("privacy",))
_PRIVACY_RULE: Final = _schema(PrivacyRule)
_API_KEY: Final = _schema(ApiKey)
_TRAIT: Final = _schema(Trait)
_SEGMENT: Final = _schema(Segment)
_DEST_COMMON: Final = _schema(_DestinationConfig)


def _tag(cls: type[Destination]) -> str:
    (tag,) = typing.get_args(typing.get_type_hints(cls)["type"])  # Literal["url"]: "url"
    assert isinstance(tag, str)
    return tag


_DESTINATIONS: Final[dict[str, type[Destination]]] = {
    _tag(cls): cls for cls in typing.get_args(Destination)
}
# Every type the common `type` key allows has its class.
assert set(typing.get_args(typing.get_type_hints(_DestinationConfig)["type"])) == set(_DESTINATIONS)
_DEST_BY_TYPE: Final = {
    kind: _schema(cls, skip=_DEST_COMMON) for kind, cls in _DESTINATIONS.items()
}


# --------------------------------------------------------------------------- reading


def _is_kind(value: object, kind: object) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    args = typing.get_args(kind)
    if typing.get_origin(kind) is list:
        return isinstance(value, list) and all(_is_kind(v, args[0]) for v in value)
    if typing.get_origin(kind) is dict:
        return isinstance(value, dict) and all(_is_kind(v, args[1]) for v in value.values())
    raise AssertionError(kind)


def _read_keys(
    raw: Mapping[str, Any],
    schema: Mapping[str, _Key],
    where: str,
    problems: list[str],
    *,
    extra_ok: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in raw:
        if key not in schema and key not in extra_ok:
            problems.append(f"{where}: key '{key}': unknown key")
    for key, spec in schema.items():
        if key not in raw:
            if spec.factory is not None:
                values[key] = spec.factory()
            elif spec.default is not _REQUIRED:
                values[key] = spec.default
            elif not spec.default_from:  # those the caller fills in
                problems.append(f"{where}: key '{key}': required")
            continue
        value = raw[key]
        if not _is_kind(value, spec.kind):
            problems.append(
                f"{where}: key '{key}': must be {_KIND_NAMES[spec.kind]}, "
                f"got {type(value).__name__} {value!r}"
            )
            continue
        if spec.check is not None and (why := spec.check(value)) is not None:
            problems.append(f"{where}: key '{key}': {why} (got {value!r})")
            continue
        values[key] = value
    return values


def _entry_label(table: str, index: int, raw: Mapping[str, Any], id_key: str) -> str:
    ident = raw.get(id_key)
    suffix = f" ({id_key} {ident!r})" if ident is not None else ""
    return f"[[{table}]] entry {index + 1}{suffix}"


def _read_array(
    raw: Any,
    table: str,
    id_key: str,
    problems: list[str],
    read_entry: Callable[[Mapping[str, Any], str], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        problems.append(f"[[{table}]]: must be an array of tables ([[{table}]])")
        return []
    entries: list[dict[str, Any]] = []
    first_seen: dict[Any, int] = {}
    for index, entry in enumerate(raw):
        where = _entry_label(table, index, entry, id_key)
        values = read_entry(entry, where)
        ident = entry.get(id_key)
        if isinstance(ident, int | str) and not isinstance(ident, bool):
            if ident in first_seen:
                problems.append(
                    f"{where}: key '{id_key}': duplicate {id_key} {ident!r} "
                    f"(also entry {first_seen[ident] + 1})"
                )
            else:
                first_seen[ident] = index
        if values is not None:
            entries.append(values)
    return entries


def _check_templates(
    values: Mapping[str, Any], keys: tuple[str, ...], where: str, problems: list[str]
) -> None:
    for key in keys:
        if values.get(key):
            try:
                Template.parse(values[key])
            except TemplateError as exc:
                problems.append(f"{where}: key '{key}': {exc}")


def _check_partner_refs(raw: Mapping[str, list[Any]], problems: list[str]) -> None:
    """Every dpid a key refers to must be a configured partner."""
    dpids = {
        p["dpid"] for p in raw["partners"] if isinstance(p, dict) and _is_kind(p.get("dpid"), int)
    }
    refs = (("api_keys", "partner", "name"), ("traits", "data_source", "sid"))
    for table, key, id_key in (*refs, ("destinations", "partner", "id")):
        for index, entry in enumerate(raw[table]):
            if not isinstance(entry, dict):
                continue
            where = _entry_label(table, index, entry, id_key)
            ref = entry.get(key)
            if _is_kind(ref, int) and ref not in dpids:
                problems.append(f"{where}: key '{key}': no partner with dpid {ref}")
            if table == "destinations" and ref is None and entry.get("type") in ("s2s", "file"):
                problems.append(f"{where}: key 'partner': required for type {entry['type']}")


def _read_privacy_rules(raw: Any, where: str, problems: list[str]) -> list[PrivacyRule]:
    """A partner's [[partners.privacy]] entries, each checked on its own."""
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        problems.append(
            f"{where}: key 'privacy': must be an array of tables ([[partners.privacy]])"
        )
        return []
    rules: list[PrivacyRule] = []
    for index, entry in enumerate(raw):
        at = f"{where}: [[partners.privacy]] entry {index + 1}"
        before = len(problems)
        values = _read_keys(entry, _PRIVACY_RULE, at, problems)
        if ("deny" in entry) == ("allow" in entry):
            problems.append(f"{at}: key 'deny': one of deny or allow is required, not both")
        activities = values.get("deny") or values.get("allow") or []
        if "export" in activities and "gpp_sid" in entry:
            problems.append(
                f"{at}: key 'gpp_sid': not allowed on a rule naming export: a batch export "
                "has no request, so no gpp_sid (give export a rule of its own, with no "
                "condition or gdpr, which is [privacy] gdpr_default)"
            )
        if len(problems) == before:
            rules.append(PrivacyRule(**values))
    return rules


@dataclass
class _Refs:
    """Sids named by rules and mappings, checked once every array is read."""

    segment_traits: list[tuple[str, frozenset[int]]] = field(default_factory=list)
    mappings: list[tuple[str, list[str]]] = field(default_factory=list)
    realtime: list[tuple[str, Any, dict[str, int]]] = field(default_factory=list)


def _check_rule_refs(
    refs: _Refs, arrays: Mapping[str, list[dict[str, Any]]], problems: list[str]
) -> None:
    traits = {t["sid"]: t for t in arrays["traits"] if "sid" in t}
    segments = {seg["sid"] for seg in arrays["segments"] if "sid" in seg}
    for where, sids in refs.segment_traits:
        for sid in sorted(sids - set(traits)):
            problems.append(f"{where}: key 'rule': no trait with sid {sid}")
    for where, keys in refs.mappings:
        for key in keys:
            if not (key.isascii() and key.isdigit()) or int(key) not in segments:
                problems.append(f"{where}: key 'mappings': {key!r} is not a segment sid")
    for where, dpid, codes in refs.realtime:
        for code, sid in codes.items():
            trait = traits.get(sid, {})
            if trait.get("type") != "onboarded" or trait.get("data_source") not in (None, dpid):
                problems.append(
                    f"{where}: key 'realtime_traits': {code!r} -> {sid} is not an onboarded "
                    "trait this partner may realize"
                )


def parse_settings(doc: Mapping[str, Any], source: str = "<config>") -> Settings:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    problems: list[str] = []
    for key in doc:
        if key not in _TABLES and key not in _ARRAYS:
            problems.append(f"[{key}]: unknown table")

    tables: dict[str, dict[str, Any]] = {}
    for name, schema in _TABLES.items():
        raw = doc.get(name, {})
        if not isinstance(raw, dict):
            problems.append(f"[{name}]: must be a table")
            raw = {}
        tables[name] = _read_keys(raw, schema, f"[{name}]", problems)

    def read_partner(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
        values = _read_keys(raw, _PARTNER, where, problems, extra_ok=frozenset({"privacy"}))
        values["privacy"] = _read_privacy_rules(raw.get("privacy", []), where, problems)
        _check_templates(values, ("sync_url", "realtime_url", "iframe_sync_url"), where, problems)
        if values.get("sync_type") == "iframe" and values.get("iframe_sync_url"):
            problems.append(
                f"{where}: key 'iframe_sync_url': not allowed with sync_type = \"iframe\" "
                "(sync_url is the iframe sync then)"
            )
        for domain in values.get("redirect_domains", []):
            if browser_host(domain.strip()) is None:
                problems.append(f"{where}: key 'redirect_domains': {domain!r} is not a host name")
        for key, spec in _PARTNER.items():
            if spec.default_from and values.get(key) is None:
                values[key] = tables[spec.default_from].get(key)
        refs.realtime.append((where, values.get("dpid"), values.get("realtime_traits", {})))
        # Names are Prebid bidder codes, matched case-insensitively (SPEC §15).
        if "name" in values:  # else the name is missing or bad, and reported so
            code = values["name"].lower()
            if code in bidder_codes:
                problems.append(
                    f"{where}: key 'name': {values['name']!r} is also the name of dpid "
                    f"{bidder_codes[code]!r} (bidder codes ignore case)"
                )
            bidder_codes.setdefault(code, values.get("dpid"))
        return values

    refs = _Refs()
    bidder_codes: dict[str, Any] = {}

    def read_trait(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
        values = _read_keys(raw, _TRAIT, where, problems)
        if values.get("type") == "rule" and not values.get("rule"):
            problems.append(f"{where}: key 'rule': required for type rule")
        if values.get("type") == "onboarded" and values.get("rule"):
            problems.append(f"{where}: key 'rule': not allowed for type onboarded")
        if values.get("type") == "rule" and values.get("rule"):
            try:
                compile_trait_rule(values["rule"])
            except RuleError as exc:
                problems.append(f"{where}: key 'rule': {exc}")
        return values

    def read_segment(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
        values = _read_keys(raw, _SEGMENT, where, problems)
        if values.get("rule"):
            try:
                refs.segment_traits.append((where, compile_segment_rule(values["rule"]).traits))
            except RuleError as exc:
                problems.append(f"{where}: key 'rule': {exc}")
        return values

    def read_destination(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
        kind = raw.get("type")
        type_keys = _DEST_BY_TYPE.get(kind, {}) if isinstance(kind, str) else {}
        values = _read_keys(raw, _DEST_COMMON, where, problems, extra_ok=frozenset(type_keys))
        own = _read_keys(
            {k: v for k, v in raw.items() if k in type_keys}, type_keys, where, problems
        )
        _check_templates(own, ("url", "secure_url"), where, problems)
        refs.mappings.append((where, list(values.get("mappings", {}))))
        return {**values, **own}

    def reader(schema: Mapping[str, _Key]) -> Callable[[Mapping[str, Any], str], dict[str, Any]]:
        return lambda raw, where: _read_keys(raw, schema, where, problems)

    arrays = {
        "partners": _read_array(
            doc.get("partners", []), "partners", "dpid", problems, read_partner
        ),
        "api_keys": _read_array(
            doc.get("api_keys", []), "api_keys", "name", problems, reader(_API_KEY)
        ),
        "traits": _read_array(doc.get("traits", []), "traits", "sid", problems, read_trait),
        "segments": _read_array(doc.get("segments", []), "segments", "sid", problems, read_segment),
        "destinations": _read_array(
            doc.get("destinations", []), "destinations", "id", problems, read_destination
        ),
    }
    _check_partner_refs(
        {k: v if isinstance(v := doc.get(k, []), list) else [] for k in _ARRAYS}, problems
    )
    _check_rule_refs(refs, arrays, problems)
    limits = tables["limits"]
    if "max_head_bytes" in limits and "max_query_bytes" in limits:
        why = _head_room(limits["max_head_bytes"], limits["max_query_bytes"])
        if why is not None:
            problems.append(
                f"[limits]: key 'max_head_bytes': {why} (got {limits['max_head_bytes']})"
            )

    if problems:
        raise ConfigError(problems)
    try:
        typed: dict[str, Any] = {n: cls(**tables[n]) for n, cls in _TABLE_TYPES.items()}
        return Settings(
            **typed,
            partners=[Partner(**p) for p in arrays["partners"]],
            api_keys=[ApiKey(**a) for a in arrays["api_keys"]],
            traits=[Trait(**t) for t in arrays["traits"]],
            segments=[Segment(**s) for s in arrays["segments"]],
            destinations=[_DESTINATIONS[d["type"]](**d) for d in arrays["destinations"]],
            source=source,
        )
    except TypeError as exc:  # a required key was missing: already reported above
        raise ConfigError([str(exc)]) from exc


def find_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    """--config, else PIXELSYNC_CONFIG, else ./pixelsync.toml, else None (defaults)."""
    if explicit:
        return Path(explicit)
    if environ.get("PIXELSYNC_CONFIG"):
        return Path(environ["PIXELSYNC_CONFIG"])
    local = Path("pixelsync.toml")
    return local if local.exists() else None


def _apply_env(doc: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    if not isinstance(doc.get("server", {}), dict):
        return doc  # validation reports it
    server = dict(doc.get("server", {}))
    redis_url = environ.get("PIXELSYNC_REDIS_URL") or environ.get("REDIS_URL")
    if redis_url:
        server["redis_url"] = redis_url
    if environ.get("PIXELSYNC_SECRET_KEYS"):
        keys = [k.strip() for k in environ["PIXELSYNC_SECRET_KEYS"].split(",") if k.strip()]
        server["secret_keys"] = keys
    if environ.get("PIXELSYNC_PUBLIC_URL"):
        server["public_url"] = environ["PIXELSYNC_PUBLIC_URL"]
    if environ.get("PIXELSYNC_ADMIN_LISTEN"):
        server["admin_listen"] = environ["PIXELSYNC_ADMIN_LISTEN"]
    if server or "server" in doc:
        return {**doc, "server": server}
    return doc


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the config file (or built-in defaults) and apply the environment overrides."""
    env = os.environ if environ is None else environ
    found = find_config_path(str(path) if path else None, env)
    doc: dict[str, Any] = {}
    source = "<defaults>"
    if found is not None:
        source = str(found)
        try:
            with open(found, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([f"{found}: cannot read: {exc.strerror}"]) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{found}: not valid TOML: {exc}"]) from exc
    return parse_settings(_apply_env(doc, env), source)

"""TOML + environment → typed, validated settings (SPEC §1, §2).

Validation is strict and complete: every problem in the file is collected, each
naming the table, the entry and the key, and reported together as a ConfigError.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from .macros import Template, TemplateError
from .redirects import browser_host
from .rules import RuleError, compile_segment_rule, compile_trait_rule

__all__ = [
    "ApiKey",
    "ConfigError",
    "Destination",
    "Partner",
    "Segment",
    "Settings",
    "Trait",
    "find_config_path",
    "load_settings",
    "parse_settings",
]


class ConfigError(Exception):
    """Every problem found in a configuration, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --------------------------------------------------------------------------- schema

_REQUIRED: Final = object()
Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class _Key:
    kind: str  # str | int | bool | float | list[str] | list[int] | dict[str,int] | dict[str,str]
    default: Any = _REQUIRED
    check: Check | None = None


def _is_kind(value: Any, kind: str) -> bool:
    match kind:
        case "str":
            return isinstance(value, str)
        case "bool":
            return isinstance(value, bool)
        case "int":
            return isinstance(value, int) and not isinstance(value, bool)
        case "float":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "list[str]":
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        case "list[int]":
            return isinstance(value, list) and all(_is_kind(v, "int") for v in value)
        case "dict[str,int]":
            return isinstance(value, dict) and all(_is_kind(v, "int") for v in value.values())
        case "dict[str,str]":
            return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    raise AssertionError(kind)


_KIND_NAMES: Final = {
    "str": "a string",
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "list[str]": "a list of strings",
    "list[int]": "a list of integers",
    "dict[str,int]": "a table of integers",
    "dict[str,str]": "a table of strings",
}


def _positive(v: int) -> str | None:
    return None if v > 0 else "must be > 0"


def _fraction(v: float) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def _non_negative(v: int | float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _non_empty(v: str | list[Any]) -> str | None:
    return None if len(v) > 0 else "must not be empty"


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


def _power_of_two(v: int) -> str | None:
    return None if v >= 1 and v & (v - 1) == 0 else "must be a power of two"


_TABLES: Final[dict[str, dict[str, _Key]]] = {
    "server": {
        "public_url": _Key("str", "http://127.0.0.1:8080", _http_url),
        "redis_url": _Key("str", "", _redis_url),
        "redis_cluster": _Key("bool", False),
        "data_dir": _Key("str", "var", _non_empty),
        "secret_keys": _Key("list[str]", ["dev-only-change-me"], _secret_keys),
        "vendor_id": _Key("int", 0, _non_negative),
        "region": _Key("int", 0, _non_negative),
        "trusted_proxies": _Key("list[str]", []),
    },
    "cookies": {
        "name": _Key("str", "uuid", _cookie_name),
        "domain": _Key("str", "", _cookie_domain),
        "ttl_days": _Key("int", 180, _positive),
        "sync_name": _Key("str", "dextp", _cookie_name),
        "bounce": _Key("bool", True),
    },
    "sync": {
        "max_partners_per_page": _Key("int", 5, _non_negative),
        "refresh_days": _Key("int", 7, _positive),
        "mapping_ttl_days": _Key("int", 90, _positive),
    },
    "privacy": {
        "honor_gpc": _Key("bool", True),
        "gdpr_default": _Key("int", 0, lambda v: None if v in (0, 1) else "must be 0 or 1"),
    },
    "realtime": {
        "budget_ms": _Key("int", 50, _positive),
        "cache_s": _Key("int", 30, _non_negative),
        "breaker_failures": _Key("int", 5, _positive),
        "breaker_open_s": _Key("int", 30, _positive),
        "max_answer_bytes": _Key("int", 65536, _positive),
        "max_in_flight": _Key("int", 16, _positive),
    },
    "store": {
        "match_buckets": _Key("int", 65536, _power_of_two),
        "buffer_max_ops": _Key("int", 100_000, _positive),
        "sweep_interval_s": _Key("int", 86400, _positive),
    },
    "limits": {
        "max_query_bytes": _Key("int", 8192, _positive),
        "max_body_bytes": _Key("int", 32768, _positive),
    },
    "dashboard": {
        # Loss rates above this are highlighted (pixel syncing loses 5-20 % normally).
        "loss_threshold": _Key("float", 0.2, _fraction),
        "refresh_s": _Key("int", 60, _positive),
        "session_hours": _Key("int", 12, _positive),
    },
}

_PARTNER: Final = {
    "dpid": _Key("int", _REQUIRED, _positive),
    "name": _Key("str", _REQUIRED, _non_empty),
    "sync_url": _Key("str", "", _http_url_or_empty),
    "callback_uid_macro": _Key("str", "$UID", _non_empty),
    "redirect_domains": _Key("list[str]", []),
    "refresh_days": _Key("int", None, _positive),
    "mapping_ttl_days": _Key("int", None, _positive),
    "gvl_id": _Key("int", 0, _non_negative),
    "realtime_url": _Key("str", "", _realtime_url),
    "realtime_traits": _Key("dict[str,int]", {}),
    "sync_type": _Key("str", "redirect", _one_of("redirect", "iframe")),
    "iframe_sync_url": _Key("str", "", _http_url_or_empty),
}

_API_KEY: Final = {
    "name": _Key("str", _REQUIRED, _non_empty),
    "sha256": _Key("str", _REQUIRED, _sha256_hex),
    "partner": _Key("int", None, _positive),
    "scopes": _Key("list[str]", ["read"], _scopes),
}

_TRAIT: Final = {
    "sid": _Key("int", _REQUIRED, _positive),
    "name": _Key("str", _REQUIRED, _non_empty),
    "folder": _Key("str", ""),
    "type": _Key("str", "rule", _one_of("rule", "onboarded")),
    "rule": _Key("str", ""),
    "data_source": _Key("int", None, _positive),
    "ttl_days": _Key("int", 120, _non_negative),
}

_SEGMENT: Final = {
    "sid": _Key("int", _REQUIRED, _positive),
    "name": _Key("str", _REQUIRED, _non_empty),
    "folder": _Key("str", ""),
    "rule": _Key("str", _REQUIRED, _non_empty),
}

_DEST_COMMON: Final = {
    "id": _Key("int", _REQUIRED, _positive),
    "name": _Key("str", _REQUIRED, _non_empty),
    "type": _Key("str", _REQUIRED, _one_of("url", "cookie", "s2s", "file")),
    "partner": _Key("int", None, _positive),
    "mappings": _Key("dict[str,str]", _REQUIRED),
}

_DEST_BY_TYPE: Final[dict[str, dict[str, _Key]]] = {
    "url": {
        "url": _Key("str", _REQUIRED, _http_url),
        "secure_url": _Key("str", "", _http_url_or_empty),
        "render": _Key("str", "img", _one_of("img", "iframe")),
        "serialize": _Key("bool", False),
        "delimiter": _Key("str", ",", _non_empty),
        "track": _Key("str", "redirect", _one_of("redirect", "none")),
    },
    "cookie": {
        "cookie_name": _Key("str", _REQUIRED, _cookie_name),
        "key": _Key("str", ""),
        "format": _Key("str", "single", _one_of("single", "multi")),
        "serialize": _Key("bool", True),
        "delimiter": _Key("str", ",", _non_empty),
        "domain": _Key("str", "", _cookie_domain),
        "ttl_days": _Key("int", 30, _non_negative),
    },
    "s2s": {
        "url": _Key("str", _REQUIRED, _http_url),
        "hmac_secret_env": _Key("str", ""),
        "batch_max_users": _Key("int", 10, lambda v: None if 1 <= v <= 10 else "must be 1..10"),
        "timeout_ms": _Key("int", 3000, _positive),
        "retries": _Key("int", 1, _non_negative),
    },
    "file": {
        "out_dir": _Key("str", ""),
        "schedule": _Key("str", "14:00", _hhmm),
        "mode": _Key("str", "iter", _one_of("iter", "full")),
        "split_lines": _Key("int", 1_000_000, _positive),
    },
}

_ARRAYS: Final = ("partners", "api_keys", "traits", "segments", "destinations")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Partner:
    dpid: int
    name: str
    sync_url: str
    callback_uid_macro: str
    redirect_domains: list[str]
    refresh_days: int
    mapping_ttl_days: int
    gvl_id: int
    realtime_url: str
    realtime_traits: dict[str, int]
    sync_type: str = "redirect"  # what sync_url is, for Prebid's /cookie_sync (SPEC §15)
    iframe_sync_url: str = ""  # an iframe sync besides sync_url (Prebid's iframe syncer)


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    partner: int | None
    scopes: list[str]


@dataclass(frozen=True)
class Trait:
    sid: int
    name: str
    folder: str
    type: str
    rule: str
    data_source: int | None
    ttl_days: int


@dataclass(frozen=True)
class Segment:
    sid: int
    name: str
    folder: str
    rule: str


@dataclass(frozen=True)
class Destination:
    id: int
    name: str
    type: str
    partner: int | None
    mappings: dict[str, str]
    options: dict[str, Any]  # the type-specific keys, defaults filled in


@dataclass(frozen=True)
class Settings:
    server: dict[str, Any]
    cookies: dict[str, Any]
    sync: dict[str, Any]
    privacy: dict[str, Any]
    realtime: dict[str, Any]
    store: dict[str, Any]
    limits: dict[str, Any]
    dashboard: dict[str, Any]
    partners: list[Partner] = field(default_factory=list)
    api_keys: list[ApiKey] = field(default_factory=list)
    traits: list[Trait] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    destinations: list[Destination] = field(default_factory=list)
    source: str = "<defaults>"

    # Typed accessors for the keys the hot path reads.
    @property
    def public_url(self) -> str:
        return str(self.server["public_url"]).rstrip("/")

    @property
    def redis_url(self) -> str:
        return str(self.server["redis_url"])

    @property
    def secret_keys(self) -> list[str]:
        return list(self.server["secret_keys"])

    @property
    def data_dir(self) -> Path:
        return Path(self.server["data_dir"])

    def summary(self) -> str:
        return (
            f"{self.source}: ok — {len(self.partners)} partners, {len(self.api_keys)} api keys, "
            f"{len(self.traits)} traits, {len(self.segments)} segments, "
            f"{len(self.destinations)} destinations"
        )


# --------------------------------------------------------------------------- reading


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
            if spec.default is _REQUIRED:
                problems.append(f"{where}: key '{key}': required")
            else:
                values[key] = spec.default
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
        p["dpid"] for p in raw["partners"] if isinstance(p, dict) and _is_kind(p.get("dpid"), "int")
    }
    refs = (("api_keys", "partner", "name"), ("traits", "data_source", "sid"))
    for table, key, id_key in (*refs, ("destinations", "partner", "id")):
        for index, entry in enumerate(raw[table]):
            if not isinstance(entry, dict):
                continue
            where = _entry_label(table, index, entry, id_key)
            ref = entry.get(key)
            if _is_kind(ref, "int") and ref not in dpids:
                problems.append(f"{where}: key '{key}': no partner with dpid {ref}")
            if table == "destinations" and ref is None and entry.get("type") in ("s2s", "file"):
                problems.append(f"{where}: key 'partner': required for type {entry['type']}")


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
        values = _read_keys(raw, _PARTNER, where, problems)
        _check_templates(values, ("sync_url", "realtime_url", "iframe_sync_url"), where, problems)
        if values.get("sync_type") == "iframe" and values.get("iframe_sync_url"):
            problems.append(
                f"{where}: key 'iframe_sync_url': not allowed with sync_type = \"iframe\" "
                "(sync_url is the iframe sync then)"
            )
        for domain in values.get("redirect_domains", []):
            if browser_host(domain.strip()) is None:
                problems.append(f"{where}: key 'redirect_domains': {domain!r} is not a host name")
        for key in ("refresh_days", "mapping_ttl_days"):
            if values.get(key) is None:
                values[key] = tables["sync"].get(key)
        refs.realtime.append((where, values.get("dpid"), values.get("realtime_traits", {})))
        # Names are Prebid bidder codes, matched case-insensitively (SPEC §15).
        code = values.get("name", "").lower()
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
        values["options"] = _read_keys(
            {k: v for k, v in raw.items() if k in type_keys},
            type_keys,
            where,
            problems,
        )
        _check_templates(values["options"], ("url", "secure_url"), where, problems)
        refs.mappings.append((where, list(values.get("mappings", {}))))
        return values

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

    if problems:
        raise ConfigError(problems)
    try:
        return Settings(
            **tables,
            partners=[Partner(**p) for p in arrays["partners"]],
            api_keys=[ApiKey(**a) for a in arrays["api_keys"]],
            traits=[Trait(**t) for t in arrays["traits"]],
            segments=[Segment(**s) for s in arrays["segments"]],
            destinations=[Destination(**d) for d in arrays["destinations"]],
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

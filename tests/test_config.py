from __future__ import annotations

import dataclasses
import secrets
import subprocess
import sys
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import (
    ApiKey,
    ConfigError,
    CookieDestinationConfig,
    Destination,
    FileDestinationConfig,
    Partner,
    S2SDestinationConfig,
    Segment,
    ServerConfig,
    Settings,
    Trait,
    UrlDestinationConfig,
    load_settings,
    parse_settings,
)

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[server]
public_url = "https://sync.example.test"
secret_keys = ["new", "old"]
vendor_id = 755

[cookies]
domain = ".example.test"
ttl_days = 30

[sync]
refresh_days = 3

[[partners]]
dpid = 1234
name = "acme-dsp"
sync_url = "https://sync.acme.test/match?aam=${DD_UUID}&redir=${CALLBACK}"
redirect_domains = ["acme.test"]
realtime_traits = { "abc" = 5001 }

[[partners]]
dpid = 99
name = "other"
mapping_ttl_days = 30

[[api_keys]]
name = "acme"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
partner = 1234
scopes = ["read", "write"]

[[traits]]
sid = 100
name = "Sports readers"
rule = 'c_section == "sports"'

[[traits]]
sid = 5001
name = "acme abc"
type = "onboarded"
data_source = 1234

[[segments]]
sid = 500
name = "Sports fans"
rule = "100T"

[[destinations]]
id = 9
name = "acme pixel"
type = "url"
partner = 1234
mappings = { "500" = "sportsfan" }
url = "https://px.acme.test/seg?s=%ALIAS%"
render = "iframe"

[[destinations]]
id = 10
name = "acme file"
type = "file"
partner = 1234
mappings = { "500" = "sportsfan" }
schedule = "03:30"
"""


def test_good_config_is_read_with_defaults_filled_in() -> None:
    settings = parse_settings(tomllib.loads(GOOD))
    assert settings.public_url == "https://sync.example.test"
    assert settings.secret_keys == ["new", "old"]
    assert settings.cookies.domain == ".example.test"
    assert settings.cookies.name == "uuid"  # default
    acme, other = settings.partners
    assert acme.refresh_days == 3  # inherits [sync] refresh_days
    assert acme.mapping_ttl_days == 90
    assert other.mapping_ttl_days == 30
    pixel, file = settings.destinations
    assert isinstance(pixel, UrlDestinationConfig) and pixel.type == "url"
    assert pixel.render == "iframe"
    assert pixel.track == "redirect" and pixel.tracked
    assert isinstance(file, FileDestinationConfig) and file.type == "file"
    assert file.split_lines == 1_000_000
    assert file.schedule == "03:30"


def test_example_config_is_valid() -> None:
    settings = load_settings(ROOT / "deploy" / "pixelsync.example.toml", environ={})
    assert settings.redis_url == ""
    assert settings.store.match_buckets == 65536


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, environ={})
    assert settings.source == "<defaults>"
    assert settings.partners == []
    assert settings.public_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    ("description", "toml", "expected"),
    [
        ("unknown table", "[sever]\n", ["[sever]: unknown table"]),
        ("unknown key", "[server]\npublic_ur = 'x'\n", ["[server]: key 'public_ur': unknown key"]),
        (
            "wrong type",
            "[cookies]\nttl_days = '180'\n",
            ["[cookies]: key 'ttl_days': must be an integer"],
        ),
        ("bool is not an int", "[sync]\nrefresh_days = true\n", ["key 'refresh_days'"]),
        ("negative", "[cookies]\nttl_days = -1\n", ["[cookies]: key 'ttl_days': must be > 0"]),
        (
            "bad redis url",
            "[server]\nredis_url = 'http://x'\n",
            ["[server]: key 'redis_url': must be empty or a redis://"],
        ),
        ("empty secret keys", "[server]\nsecret_keys = []\n", ["key 'secret_keys': must not"]),
        ("gdpr_default", "[privacy]\ngdpr_default = 2\n", ["key 'gdpr_default': must be 0 or 1"]),
        (
            "purpose one treatment is true or false",
            "[privacy]\npurpose_one_treatment = 1\npurpose_one_access_allowed = 'yes'\n",
            [
                "[privacy]: key 'purpose_one_treatment': must be true or false",
                "[privacy]: key 'purpose_one_access_allowed': must be true or false",
            ],
        ),
        (
            "buckets not a power of two",
            "[store]\nmatch_buckets = 1000\n",
            ["[store]: key 'match_buckets': must be a power of two"],
        ),
        (
            "missing required",
            "[[partners]]\nname = 'x'\n",
            ["[[partners]] entry 1: key 'dpid': required"],
        ),
        (
            "duplicate dpid",
            "[[partners]]\ndpid = 7\nname = 'a'\n[[partners]]\ndpid = 7\nname = 'b'\n",
            ["[[partners]] entry 2 (dpid 7): key 'dpid': duplicate dpid 7 (also entry 1)"],
        ),
        (
            "unknown partner key names the entry",
            "[[partners]]\ndpid = 7\nname = 'a'\nsync_ur = 'x'\n",
            ["[[partners]] entry 1 (dpid 7): key 'sync_ur': unknown key"],
        ),
        (
            "non-http sync url",
            "[[partners]]\ndpid = 7\nname = 'a'\nsync_url = 'javascript:alert(1)'\n",
            ["[[partners]] entry 1 (dpid 7): key 'sync_url': must be an absolute http(s) URL"],
        ),
        (
            "a head cap that would turn an over-long query's 414 into a 431",
            "[limits]\nmax_query_bytes = 16384\nmax_head_bytes = 20000\n",
            ["[limits]: key 'max_head_bytes': must be >= max_query_bytes + 8192 (got 20000)"],
        ),
        (
            "server limits must be positive",
            "[limits]\nhead_timeout_s = 0\nkeep_alive_s = -1\nmax_concurrency = 0\n"
            "max_headers = 0\n",
            [
                "[limits]: key 'max_headers': must be > 0",
                "[limits]: key 'head_timeout_s': must be > 0",
                "[limits]: key 'keep_alive_s': must be > 0",
                "[limits]: key 'max_concurrency': must be > 0",
            ],
        ),
        (
            "admin_listen without a port",
            "[server]\nadmin_listen = '127.0.0.1'\n",
            ['[server]: key \'admin_listen\': must be "" or "host:port"'],
        ),
        (
            "admin_listen with a port out of range",
            "[server]\nadmin_listen = '0.0.0.0:70000'\n",
            ["[server]: key 'admin_listen': must be"],
        ),
        (
            "bad scope",
            "[[api_keys]]\nname = 'k'\nsha256 = '" + "a" * 64 + "'\nscopes = ['root']\n",
            ["[[api_keys]] entry 1 (name 'k'): key 'scopes': unknown scope(s) root"],
        ),
        (
            "bad sha256",
            "[[api_keys]]\nname = 'k'\nsha256 = 'abc'\n",
            ["key 'sha256': must be 64 hex digits"],
        ),
        (
            "api key for unknown partner",
            "[[api_keys]]\nname = 'k'\nsha256 = '" + "a" * 64 + "'\npartner = 5\n",
            ["[[api_keys]] entry 1 (name 'k'): key 'partner': no partner with dpid 5"],
        ),
        (
            "rule trait without rule",
            "[[traits]]\nsid = 1\nname = 't'\n",
            ["[[traits]] entry 1 (sid 1): key 'rule': required for type rule"],
        ),
        (
            "duplicate trait sid",
            "[[traits]]\nsid = 1\nname = 't'\nrule = 'a == 1'\n"
            "[[traits]]\nsid = 1\nname = 'u'\nrule = 'a == 2'\n",
            ["[[traits]] entry 2 (sid 1): key 'sid': duplicate sid 1"],
        ),
        (
            "segment without rule",
            "[[segments]]\nsid = 5\nname = 's'\n",
            ["[[segments]] entry 1 (sid 5): key 'rule': required"],
        ),
        (
            "destination key of another type",
            "[[destinations]]\nid = 1\nname = 'd'\ntype = 'url'\nmappings = {}\n"
            "url = 'https://x.test/'\ncookie_name = 'c'\n",
            ["[[destinations]] entry 1 (id 1): key 'cookie_name': unknown key"],
        ),
        (
            "s2s destination without partner",
            "[[destinations]]\nid = 1\nname = 'd'\ntype = 's2s'\nmappings = {}\n"
            "url = 'https://x.test/'\n",
            ["[[destinations]] entry 1 (id 1): key 'partner': required for type s2s"],
        ),
        (
            "bad schedule",
            "[[partners]]\ndpid = 7\nname = 'a'\n[[destinations]]\nid = 1\nname = 'd'\n"
            "type = 'file'\npartner = 7\nmappings = {}\nschedule = '25:00'\n",
            ["[[destinations]] entry 1 (id 1): key 'schedule': must be \"HH:MM\" (UTC)"],
        ),
        ("dpid of the wrong type", "[[partners]]\ndpid = [1]\nname = 'a'\n", ["key 'dpid'"]),
        (
            "destination type of the wrong type",
            "[[destinations]]\nid = 1\nname = 'd'\ntype = ['url']\nmappings = {}\n",
            ["[[destinations]] entry 1 (id 1): key 'type': must be a string"],
        ),
        ("server not a table", "server = 5\n", ["[server]: must be a table"]),
        (
            "a loss threshold that is no fraction",
            "[dashboard]\nloss_threshold = 20\n",
            ["[dashboard]: key 'loss_threshold': must be between 0 and 1 (got 20)"],
        ),
        ("an empty secret key", "[server]\nsecret_keys = ['']\n", ["empty key"]),
        (
            "realtime url without the partner uid",
            "[[partners]]\ndpid = 7\nname = 'a'\nrealtime_url = 'https://rt.test/?u=1'\n",
            ["[[partners]] entry 1 (dpid 7): key 'realtime_url': must contain ${DP_UUID}"],
        ),
        (
            "unknown macro in a sync url",
            "[[partners]]\ndpid = 7\nname = 'a'\nsync_url = 'https://p.test/?u=${DD_UUDI}'\n",
            ["[[partners]] entry 1 (dpid 7): key 'sync_url': unknown macro ${DD_UUDI}"],
        ),
        (
            "bad redirect domain",
            "[[partners]]\ndpid = 7\nname = 'a'\nredirect_domains = ['evil.test/x']\n",
            ["key 'redirect_domains': 'evil.test/x' is not a host name"],
        ),
        (
            "unknown macro in a destination url",
            "[[destinations]]\nid = 1\nname = 'd'\ntype = 'url'\nmappings = {}\n"
            "url = 'https://x.test/?a=${ALIASS}'\n",
            ["[[destinations]] entry 1 (id 1): key 'url': unknown macro ${ALIASS}"],
        ),
        (
            "trait rule that does not parse",
            "[[traits]]\nsid = 1\nname = 't'\nrule = 'c_x == \"a\" AND'\n",
            ["[[traits]] entry 1 (sid 1): key 'rule': expected a signal name", "column 15"],
        ),
        (
            "segment rule that does not parse",
            "[[segments]]\nsid = 5\nname = 's'\nrule = 'RECENCY([1T]) >= 3D'\n",
            ["[[segments]] entry 1 (sid 5): key 'rule': ", "line 1, column 15"],
        ),
        (
            "segment of an unknown trait",
            "[[traits]]\nsid = 1\nname = 't'\nrule = 'a == 1'\n"
            "[[segments]]\nsid = 5\nname = 's'\nrule = '1T OR 2T'\n",
            ["[[segments]] entry 1 (sid 5): key 'rule': no trait with sid 2"],
        ),
        (
            "mapping of an unknown segment",
            "[[destinations]]\nid = 1\nname = 'd'\ntype = 'url'\nurl = 'https://x.test/'\n"
            "mappings = { '77' = 'a', 'x' = 'b' }\n",
            [
                "[[destinations]] entry 1 (id 1): key 'mappings': '77' is not a segment sid",
                "key 'mappings': 'x' is not a segment sid",
            ],
        ),
        (
            "real-time code of a rule trait",
            "[[partners]]\ndpid = 7\nname = 'a'\nrealtime_traits = { 'abc' = 1 }\n"
            "[[traits]]\nsid = 1\nname = 't'\nrule = 'a == 1'\n",
            ["[[partners]] entry 1 (dpid 7): key 'realtime_traits': 'abc' -> 1 is not"],
        ),
        (
            "unknown sync type",
            "[[partners]]\ndpid = 7\nname = 'a'\nsync_type = 'image'\n",
            ["[[partners]] entry 1 (dpid 7): key 'sync_type': must be one of redirect, iframe"],
        ),
        (
            "iframe sync url not a URL",
            "[[partners]]\ndpid = 7\nname = 'a'\niframe_sync_url = 'sync.html'\n",
            ["[[partners]] entry 1 (dpid 7): key 'iframe_sync_url': must be an absolute http(s)"],
        ),
        (
            "iframe sync url with an unknown macro",
            "[[partners]]\ndpid = 7\nname = 'a'\niframe_sync_url = 'https://a.test/?u=${UID}'\n",
            ["[[partners]] entry 1 (dpid 7): key 'iframe_sync_url': unknown macro ${UID}"],
        ),
        (
            "a second iframe sync for an iframe partner",
            "[[partners]]\ndpid = 7\nname = 'a'\nsync_type = 'iframe'\n"
            "sync_url = 'https://a.test/i'\niframe_sync_url = 'https://a.test/j'\n",
            ["[[partners]] entry 1 (dpid 7): key 'iframe_sync_url': not allowed with sync_type"],
        ),
        (
            "bidder codes that differ only in case",
            "[[partners]]\ndpid = 7\nname = 'Acme'\n[[partners]]\ndpid = 8\nname = 'acme'\n",
            ["[[partners]] entry 2 (dpid 8): key 'name': 'acme' is also the name of dpid 7"],
        ),
        (
            "array written as a table",
            "[partners]\ndpid = 1\n",
            ["[[partners]]: must be an array of tables"],
        ),
        (
            "two partners without a name",
            "[[partners]]\ndpid = 7\n[[partners]]\ndpid = 8\nname = ''\n",
            [
                "[[partners]] entry 1 (dpid 7): key 'name': required",
                "[[partners]] entry 2 (dpid 8): key 'name': must not be empty",
            ],
        ),
        (
            "unknown destination type",
            "[[destinations]]\nid = 1\nname = 'd'\ntype = 'email'\nmappings = {}\n",
            ["[[destinations]] entry 1 (id 1): key 'type': must be one of url, cookie, s2s, file"],
        ),
        (
            "unknown render",
            "[[destinations]]\nid = 1\nname = 'd'\ntype = 'url'\nmappings = {}\n"
            "url = 'https://x.test/'\nrender = 'video'\n",
            ["[[destinations]] entry 1 (id 1): key 'render': must be one of img, iframe"],
        ),
        (
            "unknown cookie format",
            "[[destinations]]\nid = 1\nname = 'd'\ntype = 'cookie'\nmappings = {}\n"
            "cookie_name = 'c'\nformat = 'json'\n",
            ["[[destinations]] entry 1 (id 1): key 'format': must be one of single, multi"],
        ),
        (
            "cookie destination without its cookie",
            "[[destinations]]\nid = 1\nname = 'd'\ntype = 'cookie'\nmappings = {}\n",
            ["[[destinations]] entry 1 (id 1): key 'cookie_name': required"],
        ),
        (
            "too large an s2s batch",
            "[[partners]]\ndpid = 7\nname = 'a'\n[[destinations]]\nid = 1\nname = 'd'\n"
            "type = 's2s'\npartner = 7\nmappings = {}\nurl = 'https://x.test/'\n"
            "batch_max_users = 11\n",
            ["[[destinations]] entry 1 (id 1): key 'batch_max_users': must be 1..10 (got 11)"],
        ),
        (
            "unknown export mode",
            "[[partners]]\ndpid = 7\nname = 'a'\n[[destinations]]\nid = 1\nname = 'd'\n"
            "type = 'file'\npartner = 7\nmappings = {}\nmode = 'delta'\n",
            ["[[destinations]] entry 1 (id 1): key 'mode': must be one of iter, full"],
        ),
        (
            "unknown trait type",
            "[[traits]]\nsid = 1\nname = 't'\ntype = 'segment'\n",
            ["[[traits]] entry 1 (sid 1): key 'type': must be one of rule, onboarded"],
        ),
        (
            "partner refresh of zero days",
            "[[partners]]\ndpid = 7\nname = 'a'\nrefresh_days = 0\n",
            ["[[partners]] entry 1 (dpid 7): key 'refresh_days': must be > 0 (got 0)"],
        ),
        (
            "list of the wrong items",
            "[server]\ntrusted_proxies = [1]\n",
            ["[server]: key 'trusted_proxies': must be a list of strings, got list [1]"],
        ),
        (
            "table of the wrong values",
            "[[partners]]\ndpid = 7\nname = 'a'\nrealtime_traits = { 'abc' = 'x' }\n",
            ["key 'realtime_traits': must be a table of integers"],
        ),
        (
            "float where an integer goes",
            "[realtime]\nbudget_ms = 1.5\n",
            ["[realtime]: key 'budget_ms': must be an integer, got float 1.5"],
        ),
    ],
)
def test_each_mistake_is_named(description: str, toml: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(tomllib.loads(toml))
    text = str(caught.value)
    for fragment in expected:
        assert fragment in text, f"{description}: {fragment!r} not in {text!r}"


# Every URL template of the configuration (SPEC §5, §7, §8), as TOML around {url}.
_TEMPLATED = {
    "partner sync_url": ("sync_url", "[[partners]]\ndpid = 7\nname = 'a'\nsync_url = '{url}'\n"),
    "partner iframe_sync_url": (
        "iframe_sync_url",
        "[[partners]]\ndpid = 7\nname = 'a'\niframe_sync_url = '{url}'\n",
    ),
    "partner realtime_url": (
        "realtime_url",
        "[[partners]]\ndpid = 7\nname = 'a'\nrealtime_url = '{url}'\n",
    ),
    "url destination url": (
        "url",
        "[[destinations]]\nid = 1\nname = 'd'\ntype = 'url'\nmappings = {{}}\nurl = '{url}'\n",
    ),
    "url destination secure_url": (
        "secure_url",
        "[[destinations]]\nid = 1\nname = 'd'\ntype = 'url'\nmappings = {{}}\n"
        "url = 'https://px.test/'\nsecure_url = '{url}'\n",
    ),
    "s2s destination url": (
        "url",
        "[[partners]]\ndpid = 7\nname = 'a'\n[[destinations]]\nid = 1\nname = 'd'\n"
        "type = 's2s'\npartner = 7\nmappings = {{}}\nurl = '{url}'\n",
    ),
}
# A macro in the scheme, userinfo, host or port lets a request's value choose where
# the call goes. Each also carries ${DP_UUID} in its query (realtime_url needs it).
_HOST_CHOOSING = [
    "http://${DP_UUID}/rt",
    "https://a.test${X}/",
    "https://a.test${DD_UUID}/",
    "https://%ALIAS%.x.test/",
    "https://%did%.x.test/",
    "https://u:${P}@h.test/",
    "https://${GDPR_CONSENT}@h.test/",
    "https://h.test:${PORT}/",
    "https://h.test:${DD_RAND}/",
    "https://h.test%2F${GPP}/",  # no path yet: an encoded slash is not one
    "https://h.test\\${GPP}/",  # a backslash ends the host for browsers, not for others
    "https://h.test",  # the macro in the query below comes right after the host
]
_SCHEME_CHOOSING = ["${SCHEME}://h.test/", "%http_proto%://h.test/", "${DD_UUID}://h.test/"]
_SITES = [(where, url) for where in _TEMPLATED for url in _HOST_CHOOSING + _SCHEME_CHOOSING]


@pytest.mark.parametrize(("where", "url"), _SITES, ids=[f"{w}: {u}" for w, u in _SITES])
def test_macros_before_the_path_are_refused(where: str, url: str) -> None:
    key, toml = _TEMPLATED[where]
    template = url + ("${DP_UUID}" if url == "https://h.test" else "?u=${DP_UUID}")
    with pytest.raises(ConfigError) as caught:
        parse_settings(tomllib.loads(toml.format(url=template)))
    (line,) = [p for p in caught.value.problems if f"key '{key}'" in p]
    if url in _SCHEME_CHOOSING:  # no http(s) scheme either
        assert "must be an absolute http(s) URL" in line
    else:
        assert "before the path" in line and "macro " in line, line


@pytest.mark.parametrize("where", _TEMPLATED)
def test_macros_in_the_path_query_and_fragment_work(where: str) -> None:
    _, toml = _TEMPLATED[where]
    url = "https://u:pw@h.test:8443/${DD_UUID}/%alias%?u=${DP_UUID}&r=%rnd%#${GDPR}"
    parse_settings(tomllib.loads(toml.format(url=url)))  # no ConfigError
    for url in ("https://h.test/${DP_UUID}", "https://h.test?u=${DP_UUID}"):
        parse_settings(tomllib.loads(toml.format(url=url)))


def test_prebid_cors_origins() -> None:
    """[prebid] cors_origins: empty by default; origins are compared as browsers send
    them (lower case, IDNA, no default port)."""
    assert parse_settings({}).prebid.cors_origins == []
    assert parse_settings({}).prebid.allowed_origins == frozenset()
    listed = [
        "HTTPS://Pub.test:443",
        "http://localhost:8080",
        "http://[::1]:9",
        "https://bücher.test",
    ]
    settings = parse_settings({"prebid": {"cors_origins": listed}})
    assert settings.prebid.allowed_origins == {
        "https://pub.test",
        "http://localhost:8080",
        "http://[::1]:9",
        "https://xn--bcher-kva.test",
    }


@pytest.mark.parametrize(
    "bad",
    [
        "https://pub.test/",  # a path, even "/"
        "https://pub.test/page",
        "https://pub.test?x",
        "https://pub.test#x",
        "https://u@pub.test",
        "https://pub.test:99999",
        "https://pub.test:",
        "ftp://pub.test",
        "pub.test",
        "*",
        "null",
        "https://*.pub.test",
        "",
    ],
)
def test_prebid_cors_origins_are_origins(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"prebid": {"cors_origins": ["https://ok.test", bad]}})
    (line,) = caught.value.problems
    assert line.startswith(f"[prebid]: key 'cors_origins': {bad!r}: not an origin"), line


def test_prebid_unknown_keys_are_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"prebid": {"cors_origin": ["https://pub.test"]}})
    assert caught.value.problems == ["[prebid]: key 'cors_origin': unknown key"]


def test_all_problems_are_reported_together() -> None:
    toml = (
        "[server]\nbogus = 1\n[cookies]\nttl_days = 'x'\n"
        "[[partners]]\ndpid = 0\nname = ''\n[[partners]]\ndpid = 0\nname = 'b'\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_settings(tomllib.loads(toml))
    assert len(caught.value.problems) == 6, caught.value.problems  # 2 + 2 + 2


ALL_DESTINATIONS = """
[[partners]]
dpid = 7
name = "p"

[[segments]]
sid = 500
name = "s"
rule = "100T"

[[traits]]
sid = 100
name = "t"
rule = 'c_a == "1"'

[[destinations]]
id = 1
name = "pixel"
type = "url"
mappings = { "500" = "a" }
url = "https://px.test/?s=%ALIAS%"
track = "none"

[[destinations]]
id = 2
name = "cookie"
type = "cookie"
mappings = { "500" = "a" }
cookie_name = "seg"
format = "multi"

[[destinations]]
id = 3
name = "s2s"
type = "s2s"
partner = 7
mappings = { "500" = "a" }
url = "https://s2s.test/in"
retries = 3

[[destinations]]
id = 4
name = "file"
type = "file"
partner = 7
mappings = { "500" = "a" }
mode = "full"
"""


def test_each_destination_type_is_its_own_class() -> None:
    """[[destinations]] is a tagged union: the class says the type, and only that
    type's keys are there, typed."""
    url, cookie, s2s, file = parse_settings(tomllib.loads(ALL_DESTINATIONS)).destinations

    def describe(d: Destination) -> str:
        match d:
            case UrlDestinationConfig():
                return f"url {d.url} tracked={d.tracked}"
            case CookieDestinationConfig():
                return f"cookie {d.cookie_name} {d.format}"
            case S2SDestinationConfig():
                return f"s2s {d.url} retries={d.retries} partner={d.partner}"
            case FileDestinationConfig():
                return f"file {d.mode} {d.schedule}"

    assert [describe(d) for d in (url, cookie, s2s, file)] == [
        "url https://px.test/?s=%ALIAS% tracked=False",
        "cookie seg multi",
        "s2s https://s2s.test/in retries=3 partner=7",
        "file full 14:00",
    ]
    assert [d.type for d in (url, cookie, s2s, file)] == ["url", "cookie", "s2s", "file"]
    assert not hasattr(url, "cookie_name") and not hasattr(file, "url")


def _as_toml(entry: Any) -> dict[str, object]:
    """A settings dataclass as the TOML table that says it (None: the key left out)."""
    return {k: v for k, v in dataclasses.asdict(entry).items() if v is not None}


@pytest.mark.parametrize("toml", [GOOD, ALL_DESTINATIONS])
def test_every_field_is_a_key(toml: str) -> None:
    """The schema is read off the dataclasses: every field of the settings, written
    back as a TOML key, reads as the same settings."""
    settings = parse_settings(tomllib.loads(toml))
    doc: dict[str, object] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, list):
            doc[f.name] = [_as_toml(entry) for entry in value]
        elif dataclasses.is_dataclass(value):
            doc[f.name] = _as_toml(value)
    assert parse_settings(doc) == settings


def test_defaults_are_the_dataclass_defaults() -> None:
    assert parse_settings({}, source="<defaults>") == Settings()
    assert ServerConfig().secret_keys == ["dev-only-change-me"]
    assert ServerConfig().secret_keys is not ServerConfig().secret_keys  # not shared


def test_settings_are_frozen() -> None:
    settings = parse_settings(tomllib.loads(GOOD))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.cookies.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.destinations[0].id = 1  # type: ignore[misc]


def _annotations(hint: object) -> Iterator[object]:
    yield hint
    for arg in typing.get_args(hint):
        yield from _annotations(arg)


TABLES = [t for t in typing.get_type_hints(Settings).values() if dataclasses.is_dataclass(t)]


@pytest.mark.parametrize(
    "cls",
    [Settings, *TABLES, Partner, ApiKey, Trait, Segment, *typing.get_args(Destination)],
    ids=lambda cls: cls.__name__,
)
def test_no_any_in_the_settings_types(cls: type) -> None:
    """mypy checks the reads of a setting only where its type is not Any."""
    for name, hint in typing.get_type_hints(cls).items():
        assert Any not in set(_annotations(hint)), f"{cls.__name__}.{name}: {hint}"


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nredis_url = "redis://file:6379"\n')
    env = {
        "REDIS_URL": "redis://generic:6379",
        "PIXELSYNC_REDIS_URL": "redis://specific:6379",
        "PIXELSYNC_SECRET_KEYS": "k2, k1",
        "PIXELSYNC_PUBLIC_URL": "https://px.example.test/",
        "PIXELSYNC_ADMIN_LISTEN": "0.0.0.0:9091",
    }
    settings = load_settings(path, environ=env)
    assert settings.server.admin_address == ("0.0.0.0", 9091)
    assert settings.redis_url == "redis://specific:6379"
    assert settings.secret_keys == ["k2", "k1"]
    assert settings.public_url == "https://px.example.test"
    assert load_settings(path, environ={"REDIS_URL": "redis://g:1"}).redis_url == "redis://g:1"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text("[cookies]\nname = 'vid'\n")
    settings = load_settings(None, environ={"PIXELSYNC_CONFIG": str(path)})
    assert settings.cookies.name == "vid"


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    # Its public_url is not loopback: a key serve would take (a hex key is never weak).
    good.write_text(GOOD.replace('["new", "old"]', f'["{secrets.token_hex(32)}"]'))
    ok = _check_config(good)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert "2 partners" in ok.stdout and "ok" in ok.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nbogus = 1\n[[partners]]\nname = 'x'\n")
    refused = _check_config(bad)
    assert refused.returncode == 2
    assert "[server]: key 'bogus': unknown key" in refused.stderr
    assert "[[partners]] entry 1: key 'dpid': required" in refused.stderr


def test_check_config_refuses_a_host_from_a_macro(tmp_path: Path) -> None:
    """SSRF by configuration: the partner's uid (from a browser) as the host."""
    bad = tmp_path / "ssrf.toml"
    bad.write_text("[[partners]]\ndpid = 7\nname = 'a'\nrealtime_url = 'http://${DP_UUID}/rt'\n")
    refused = _check_config(bad)
    assert refused.returncode == 2
    assert (
        "[[partners]] entry 1 (dpid 7): key 'realtime_url': macro ${DP_UUID} before the path"
        in refused.stderr
    )


def test_admin_listen_host_and_port() -> None:
    def admin(value: str) -> tuple[str, int] | None:
        return parse_settings({"server": {"admin_listen": value}}).server.admin_address

    assert admin("") is None
    assert admin("127.0.0.1:9091") == ("127.0.0.1", 9091)
    assert admin("[::1]:9091") == ("::1", 9091)

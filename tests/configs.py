"""Configuration pieces several test modules share, as TOML text to put together:
`Config(API + SPORTS, ...)` (tests/services.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def entry(table: str, **keys: str | int | bool | list[str]) -> str:
    """One [[table]] entry (strings, numbers, booleans, lists of strings), as TOML."""
    return f"\n[[{table}]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def api_key(name: str, token: str, *scopes: str, partner: int | None = None) -> str:
    """An [[api_keys]] entry for this bearer token."""
    owner = {} if partner is None else {"partner": partner}
    return entry("api_keys", name=name, sha256=sha256(token), **owner, scopes=list(scopes))


def syncing_partners(origin: str, dpids: Iterable[int]) -> str:
    """Partners whose sync URL is a tests.partners.SyncingPartner at `origin`, which
    answers each (p=<dpid>, aam=our uuid) with a redirect back to the callback."""
    return "".join(
        entry(
            "partners",
            dpid=dpid,
            name=f"p{dpid}",
            sync_url=f"{origin}/sync?p={dpid}&aam=${{DD_UUID}}&redir=${{CALLBACK}}",
        )
        for dpid in dpids
    )


# The match-table API's service (tests/web/test_api.py, test_schema_fuzz.py): partners,
# one of them with a short retention, and a key of each kind.
API_TOKENS = {"admin": "admin-token", "reader": "read-token", "acme": "acme-token"}
API = (
    entry("partners", dpid=1234, name="acme")
    + entry("partners", dpid=99, name="other")
    + entry("partners", dpid=7, name="short-lived", mapping_ttl_days=1)
    + api_key("admin", API_TOKENS["admin"], "admin")
    + api_key("reader", API_TOKENS["reader"], "read")
    + api_key("acme", API_TOKENS["acme"], "read", "write", partner=1234)
)

# A rule trait (100: c_section == "sports"), its segment (500) and two destinations of
# it: a url pixel (9) and the ad server's cookie key-values (11) on .pub.test.
SPORTS = """
[[traits]]
sid = 100
name = "sports"
rule = 'c_section == "sports"'

[[segments]]
sid = 500
name = "sports"
rule = "100T"

[[destinations]]
id = 9
name = "pixel"
type = "url"
url = "https://px.test/p?seg=%ALIAS%"
mappings = { "500" = "sports" }

[[destinations]]
id = 11
name = "key-values"
type = "cookie"
cookie_name = "aam_seg"
key = "seg"
domain = ".pub.test"
mappings = { "500" = "sportsfan" }
"""


def file_config(
    dpid: int, dest: int, *, server: str = "", destination: str = "", mappings: str = ""
) -> str:
    """The batch tests' configuration: a file partner, onboarded traits 300 ("bought")
    and 301 ("browsed"), segments 800 (300T) and 801 (301T), and a file destination
    mapping them."""
    mapped = mappings or '{ "800" = "buyers", "801" = "browsers" }'
    return f"""
[server]
secret_keys = ["batch-test"]
{server}
[[partners]]
dpid = {dpid}
name = "file partner"

[[traits]]
sid = 300
name = "bought"
type = "onboarded"

[[traits]]
sid = 301
name = "browsed"
type = "onboarded"

[[segments]]
sid = 800
name = "buyers"
rule = "300T"

[[segments]]
sid = 801
name = "browsers"
rule = "301T"

[[destinations]]
id = {dest}
name = "daily file"
type = "file"
partner = {dpid}
mappings = {mapped}
{destination}"""

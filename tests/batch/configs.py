"""The configuration the batch tests share: a file partner, onboarded traits 300
("bought") and 301 ("browsed"), segments 800 (300T) and 801 (301T), and a file
destination mapping them."""

from __future__ import annotations


def file_config(
    dpid: int, dest: int, *, server: str = "", destination: str = "", mappings: str = ""
) -> str:
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

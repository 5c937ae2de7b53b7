"""Erasures reach the partners (SPEC §12) end to end: a real service on the session's
Redis/Valkey, real HTTP, a real s2s partner server on 127.0.0.1, and the file
destination's export run against the same data. DELETE /v1/users/{uuid} and
/demoptout.jpg both leave removal lines for the next iter export and send s2s exits;
GET /v1/erasures counts them and never says who."""

from __future__ import annotations

import json
import secrets
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.batch.exporter import Exporter
from service.batch.run import running
from service.config import Settings, parse_settings
from tests.batch.test_export import read_back
from tests.configs import api_key
from tests.conftest import wait_for
from tests.partners import PartnerServer
from tests.services import Config

PARTNER = 4000 + secrets.randbelow(10**6)  # its own partner: the export sees only ours
FILE_DEST, S2S_DEST = 61, 62
TOKENS = {"admin": "erasure-admin", "reader": "erasure-reader", "partner": "erasure-partner"}
AUTH = {"authorization": f"Bearer {TOKENS['admin']}"}


def toml(partner_origin: str) -> str:
    return f"""
{api_key("admin", TOKENS["admin"], "admin")}
{api_key("reader", TOKENS["reader"], "read")}
{api_key("partner", TOKENS["partner"], "read", "write", "admin", partner=PARTNER)}
[[partners]]
dpid = {PARTNER}
name = "dsp"

[[traits]]
sid = 100
name = "sports"
rule = 'c_section == "sports"'

[[traits]]
sid = 101
name = "news"
rule = 'c_topic == "news"'

[[segments]]
sid = 500
name = "sports"
rule = "100T"

[[segments]]
sid = 501
name = "news"
rule = "101T"

[[destinations]]
id = {FILE_DEST}
name = "daily file"
type = "file"
partner = {PARTNER}
mappings = {{ "500" = "sports", "501" = "news" }}
split_lines = 2

[[destinations]]
id = {S2S_DEST}
name = "dsp real time"
type = "s2s"
partner = {PARTNER}
url = "{partner_origin}/s2s"
mappings = {{ "500" = "sportsfan" }}
"""


@pytest.fixture(scope="module")
def service_config(partner: PartnerServer) -> Config:
    return Config(toml(partner.origin), keys=("erasure-key",))


@pytest.fixture(scope="module")
def settings(partner: PartnerServer) -> Settings:
    """The service's configuration, for the export run here."""
    return parse_settings(tomllib.loads(toml(partner.origin)))


async def new_visitor(http: httpx.AsyncClient, uid: str, query: str) -> tuple[str, dict[str, str]]:
    """A visitor mapped to the partner as `uid`, in the segments `query` qualifies for,
    stored: (uuid, its Cookie header)."""
    resp = await http.get("/event")
    cookie = resp.headers["set-cookie"].split(";", 1)[0]
    uuid, headers = cookie.split("=", 1)[1].split(".", 1)[0], {"cookie": cookie}
    assert (await http.get(f"/ibs:dpid={PARTNER}&dpuuid={uid}", headers=headers)).status_code == 200
    resp = await http.get(f"/event?d_rtbd=json&{query}", headers=headers)
    assert resp.status_code == 200, resp.text

    async def stored() -> bool:
        user = (await http.get(f"/v1/users/{uuid}", headers=AUTH)).json()
        return bool(user.get("segments") and user.get("ids"))

    assert await wait_for(stored)
    return uuid, headers


async def erased(http: httpx.AsyncClient, uuid: str) -> bool:
    return (await http.get(f"/v1/users/{uuid}", headers=AUTH)).status_code == 404


async def export(settings: Settings, redis_url: str, out: Path) -> tuple[list[str], int]:
    """The file destination's iter export: (its lines, visitors written as removals)."""
    async with running(settings, redis_url) as (store, domain):
        [dest] = [d for d in settings.destinations if d.id == FILE_DEST]
        result = await Exporter(store, domain.qualifier).run(dest, "iter", out)
    return sorted(read_back(out, result.info)), result.removed


def exits(partner: PartnerServer, uuid: str) -> list[tuple[int, str, str, list[tuple[str, str]]]]:
    """The s2s users sent for this visitor: (destination, uid, partner, segment changes)."""
    found = []
    for request in partner.seen("/s2s"):
        doc: dict[str, Any] = json.loads(request.body)
        for user in doc["Users"]:
            if user["AAM_UUID"] == uuid:
                changes = [(s["Segment_ID"], s["Status"]) for s in user["Segments"]]
                found.append(
                    (doc["AAM_Destination_Id"], user["DataPartner_UUID"], doc["User_DPID"], changes)
                )
    return found


async def test_erasures_reach_the_file_and_s2s_partners(
    http: httpx.AsyncClient,
    partner: PartnerServer,
    settings: Settings,
    redis_url: str,
    tmp_path: Path,
) -> None:
    by_api, _ = await new_visitor(http, "uid-by-api", "c_section=sports&c_topic=news")
    by_optout, cookie = await new_visitor(http, "uid-by-optout", "c_section=sports")
    kept, _ = await new_visitor(http, "uid-kept", "c_topic=news")
    lines, removed = await export(settings, redis_url, tmp_path / "1")
    assert lines == ["uid-by-api sports,news ", "uid-by-optout sports ", "uid-kept news "]
    assert removed == 0

    assert (await http.delete(f"/v1/users/{by_api}", headers=AUTH)).status_code == 204
    assert (await http.get("/demoptout.jpg", headers=cookie)).status_code == 200
    assert await wait_for(lambda: erased(http, by_optout))

    lines, removed = await export(settings, redis_url, tmp_path / "2")
    assert lines == ["uid-by-api  sports,news", "uid-by-optout  sports"] and removed == 2
    assert await export(settings, redis_url, tmp_path / "3") == ([], 0)

    async def exited() -> bool:
        return all(
            (S2S_DEST, uid, PARTNER, [("sportsfan", "0")]) in exits(partner, uuid)
            for uuid, uid in ((by_api, "uid-by-api"), (by_optout, "uid-by-optout"))
        )

    assert await wait_for(exited)
    assert not [e for e in exits(partner, kept) if e[3] != [("sportsfan", "1")]]


async def test_the_erasure_log_counts_and_never_names(http: httpx.AsyncClient) -> None:
    since = time.time()
    by_api, _ = await new_visitor(http, "uid-log-api", "c_section=sports")
    by_optout, cookie = await new_visitor(http, "uid-log-optout", "c_section=sports")
    assert (await http.delete(f"/v1/users/{by_api}", headers=AUTH)).status_code == 204
    assert (await http.get("/demoptout.jpg", headers=cookie)).status_code == 200
    assert await wait_for(lambda: erased(http, by_optout))

    iso = datetime.fromtimestamp(since, UTC).isoformat()
    for query in (f"{since:.3f}", iso, iso.replace("+00:00", "Z")):
        resp = await http.get("/v1/erasures", params={"since": query}, headers=AUTH)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        assert doc["count"] == 2 and doc["truncated"] is False
        assert sorted(e["source"] for e in doc["erasures"]) == ["api", "optout"]
        for e in doc["erasures"]:
            at = datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp()
            assert since - 1 <= at <= time.time() + 1
        for secret in (by_api, by_optout, "uid-log-api", "uid-log-optout"):
            assert secret not in resp.text
    later = await http.get("/v1/erasures", params={"since": int(time.time()) + 5}, headers=AUTH)
    assert later.json()["count"] == 0 and later.json()["erasures"] == []


@pytest.mark.parametrize(
    ("token", "query", "status", "code"),
    [
        ("admin", "since=yesterday", 400, "bad_since"),
        ("admin", "", 400, "bad_since"),
        ("admin", "since=-5", 400, "bad_since"),
        ("admin", "since=2024-13-01T00:00:00", 400, "bad_since"),
        ("reader", "since=0", 403, "forbidden"),  # lacks the admin scope
        ("partner", "since=0", 403, "forbidden"),  # the log is not a partner's
    ],
)
async def test_the_erasure_log_refuses(
    http: httpx.AsyncClient, token: str, query: str, status: int, code: str
) -> None:
    headers = {"authorization": f"Bearer {TOKENS[token]}"}
    resp = await http.get(f"/v1/erasures?{query}", headers=headers)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("since", "answered"),
    [
        ("9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59.000Z"),  # year 10000 in UTC
        ("99999999999.5", "5138-11-16T09:46:39.500Z"),  # near the largest seconds form
        ("0001-01-01T00:00:00+14:00", "1970-01-01T00:00:00.000Z"),  # before 1970
    ],
)
async def test_the_erasure_log_takes_the_extremes(
    http: httpx.AsyncClient, since: str, answered: str
) -> None:
    """SPEC §13: no input ever produces a 500 (an offset past 9999-12-31 did)."""
    resp = await http.get("/v1/erasures", params={"since": since}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["since"] == answered

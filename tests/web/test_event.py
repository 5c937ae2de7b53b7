"""/event, /demoptout.jpg and the visitor cookie, over real HTTP to `pixelsync serve`."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from service.identity import CookieSigner, new_uuid
from service.store import PartnerUid, Store
from service.web.responses import GIF
from tests.configs import entry
from tests.conftest import cookie_signed_days_ago, wait_for
from tests.services import DEFAULT_KEYS, OPS, Config, Services, free_port

NEW_KEY, OLD_KEY = DEFAULT_KEYS
PARTNER = 1234  # the one partner, for declared IDs (d_cid)
DAY = int(time.time() // 86400)
COOKIE_RE = re.compile(r"^uuid=(\d{38})\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


@pytest.fixture(scope="module")
def service_config() -> Config:
    """The default settings, and a partner."""
    return Config(entry("partners", dpid=PARTNER, name="acme"), keys=DEFAULT_KEYS)


def set_cookie(resp: httpx.Response) -> list[str]:
    values = resp.headers.get_list("set-cookie")
    assert len(values) == 1, values
    return [part.strip() for part in values[0].split(";")]


def cookie_uuid(resp: httpx.Response) -> str:
    match = COOKIE_RE.match(set_cookie(resp)[0])
    assert match, set_cookie(resp)
    return match.group(1)


def cookie_value(resp: httpx.Response) -> str:
    return set_cookie(resp)[0].split("=", 1)[1]


def assert_gif(resp: httpx.Response, status: int = 200) -> None:
    assert resp.status_code == status
    assert resp.headers["content-type"] == "image/gif"
    assert resp.content == GIF and len(resp.content) == 43
    assert resp.headers["cache-control"] == "no-cache, no-store, must-revalidate"
    assert resp.headers["pragma"] == "no-cache"
    assert resp.headers["expires"] == "0"


# --------------------------------------------------------------------------- answers


async def test_gif_answer_and_cookie_attributes(http: httpx.AsyncClient) -> None:
    resp = await http.get("/event?c_section=sports")
    assert_gif(resp)
    assert "x-error" not in resp.headers
    parts = set_cookie(resp)
    assert COOKIE_RE.match(parts[0])
    assert parts[1:] == ["Path=/", f"Max-Age={180 * 86400}", "HttpOnly", "Secure", "SameSite=None"]


async def test_cookie_domain_when_configured(services: Services) -> None:
    svc = services.start(Config('[cookies]\ndomain = ".sync.example.test"\nttl_days = 30\n'))
    resp = httpx.get(svc.url + "/event")
    parts = set_cookie(resp)
    assert "Domain=.sync.example.test" in parts
    assert f"Max-Age={30 * 86400}" in parts


async def test_head_and_post(http: httpx.AsyncClient) -> None:
    head = await http.head("/event?c_a=1")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "image/gif"
    assert_gif(await http.post("/event", data={"c_a": "1"}))
    beacon = await http.post(
        "/event", content=b"d_rtbd=json&c_a=1", headers={"content-type": "text/plain"}
    )
    assert beacon.status_code == 200 and "uuid" in beacon.json()
    bad = await http.put("/event")
    assert bad.status_code == 405


async def test_every_answer_refreshes_the_same_uuid(http: httpx.AsyncClient) -> None:
    first = await http.get("/event")
    uuid = cookie_uuid(first)
    again = await http.get("/event", headers={"cookie": f"other=1; uuid={cookie_value(first)}"})
    assert cookie_uuid(again) == uuid
    as_json = await http.get(
        "/event?d_rtbd=json", headers={"cookie": f"uuid={cookie_value(again)}"}
    )
    assert as_json.json()["uuid"] == uuid and cookie_uuid(as_json) == uuid


async def test_json_answer(http: httpx.AsyncClient) -> None:
    resp = await http.get(
        "/event?d_rtbd=json&c_section=sports", headers={"origin": "https://pub.example.test"}
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["access-control-allow-origin"] == "https://pub.example.test"
    assert resp.headers["access-control-allow-credentials"] == "true"
    doc = resp.json()
    assert doc["uuid"] == cookie_uuid(resp)
    assert re.fullmatch(r"[A-Za-z0-9_-]{12}", doc["tid"])
    assert doc["dcs_region"] == 0
    assert doc["stuff"] == [] and doc["dests"] == [] and doc["ibs"] == []
    assert "segments" not in doc and "traits" not in doc
    cts = (await http.get("/event?d_rtbd=json&d_cts=2")).json()
    assert cts["segments"] == [] and cts["traits"] == []
    assert "traits" not in (await http.get("/event?d_rtbd=json&d_cts=1")).json()


async def test_jsonp_answer(http: httpx.AsyncClient) -> None:
    resp = await http.get("/event?d_cb=window.cb_1$")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/javascript")
    assert resp.headers["x-content-type-options"] == "nosniff"
    match = re.fullmatch(r"/\*\*/window\.cb_1\$\((.*)\);", resp.text)
    assert match
    assert json.loads(match.group(1))["uuid"] == cookie_uuid(resp)


@pytest.mark.parametrize(
    "name", ["1abc", "alert(1)", "a" * 65, "cb;x", "<script>", "", "cb%0A", "caf%C3%A9"]
)
async def test_invalid_callback_is_refused_and_never_echoed(
    http: httpx.AsyncClient, name: str
) -> None:
    resp = await http.get(f"/event?d_cb={name}")
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-error"] == "311"
    assert resp.json()["errors"][0]["code"] == 311
    if name:
        assert name not in resp.text
    assert "set-cookie" not in resp.headers  # nothing issued on a refusal


# --------------------------------------------------------------------------- identity


async def test_key_rotation_and_tampering(http: httpx.AsyncClient) -> None:
    uuid = new_uuid()
    old = CookieSigner([OLD_KEY]).sign(uuid)
    resp = await http.get("/event", headers={"cookie": f"uuid={old}"})
    assert cookie_uuid(resp) == uuid  # an older key still verifies
    fresh = cookie_value(resp)
    assert CookieSigner([NEW_KEY]).verify(fresh) is not None  # re-signed with the newest
    assert CookieSigner([OLD_KEY]).verify(fresh) is None

    foreign = CookieSigner(["someone-else"]).sign(uuid)
    tampered = fresh.replace(uuid, uuid[:-1] + str((int(uuid[-1]) + 1) % 10))
    for bad in (foreign, tampered, uuid, "garbage", "a.b.c", ""):
        resp = await http.get("/event", headers={"cookie": f"uuid={bad}"})
        assert_gif(resp)
        assert cookie_uuid(resp) != uuid  # counts as absent: a new visitor


async def test_returning_visitor_is_refreshed_once_a_day(
    http: httpx.AsyncClient, store: Store
) -> None:
    uuid = new_uuid()
    store.put_mapping(uuid, 1234, "p-" + uuid[:6], DAY - 3)  # stored 3 days ago
    await store.drain()
    cookie = cookie_signed_days_ago(uuid, NEW_KEY, 2)
    resp = await http.get("/event", headers={"cookie": f"uuid={cookie}"})
    assert cookie_uuid(resp) == uuid
    assert cookie_value(resp) != cookie  # re-signed: the first answer of the day
    assert await wait_for(lambda: _last_seen_is(store, uuid, DAY))
    assert (await store.mappings(uuid, DAY))[1234].day == DAY - 3  # the mapping's own day


async def _last_seen_is(store: Store, uuid: str, day: int) -> bool:
    return await store.visitor_last_seen(uuid) == day


async def test_a_new_visitor_costs_no_memory(http: httpx.AsyncClient, store: Store) -> None:
    """Browsers that refuse cookies come back new every time: nothing is stored."""
    uuids = [cookie_uuid(await http.get("/event?c_a=1")) for _ in range(5)]
    await _wait_behind(http, store)
    for uuid in uuids:
        assert not (await store.visitor_state(uuid)).found


async def _wait_behind(http: httpx.AsyncClient, store: Store) -> None:
    """Until a returning visitor's write, sent now, is read back: writes are applied
    in order, so any write of the requests before it would be there too."""
    behind = new_uuid()
    store.put_mapping(behind, PARTNER, f"behind-{behind[:8]}", DAY - 3)
    await store.drain()
    cookie = {"cookie": f"uuid={cookie_signed_days_ago(behind, NEW_KEY, 2)}"}  # a touch due
    assert (await http.get("/event", headers=cookie)).status_code == 200
    assert await wait_for(lambda: _last_seen_is(store, behind, DAY))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("c_a=%zz", "bad percent-encoding"),
        ("c_a=%4", "bad percent-encoding"),
        ("c_a=%ff%fe", "invalid UTF-8"),
        ("c_a=x%00y", "NUL"),
        ("c_%00=1", "NUL"),
        ("d_cts=abc", "d_cts"),
        ("d_cts=7", "d_cts"),
        ("d_sid=1,x", "d_sid"),
        ("d_cid=12345", "d_cid"),
    ],
)
async def test_malformed_input_is_311(http: httpx.AsyncClient, query: str, why: str) -> None:
    gif = await http.get(f"/event?{query}")
    assert_gif(gif, 400)
    assert gif.headers["x-error"] == "311"
    resp = await http.get(f"/event?d_rtbd=json&{query}")
    assert resp.status_code == 400
    assert resp.headers["x-error"] == "311"
    (error,) = resp.json()["errors"]
    assert error["code"] == 311 and why in error["msg"]


@pytest.mark.parametrize(
    ("malformed", "code"),
    [
        (f"/event?d_cid={PARTNER}%01{{uid}}&c_a=%zz", "311"),  # refused while parsing
        (f"/event?d_rtbd=json&d_cid={PARTNER}%01{{uid}}&d_cts=9", "311"),
        (f"/event?d_cid={PARTNER}%01{{uid}}&d_cid=5%01x", "320"),  # an unknown dpid beside
    ],
)
async def test_malformed_input_stores_nothing(
    http: httpx.AsyncClient, store: Store, malformed: str, code: str
) -> None:
    """A returning visitor's refused request stores nothing: neither the daily touch
    nor its declared ID. Writes are applied in order, so once a later request's
    write is read back, any write of the refused one would be there too."""
    refused, behind = new_uuid(), new_uuid()
    stored = {PARTNER: PartnerUid(f"before-{refused[:8]}", DAY - 3)}
    store.put_mapping(refused, PARTNER, stored[PARTNER].uid, DAY - 3)  # seen 3 days ago
    await store.drain()
    uid = f"malformed-{refused[:8]}"
    cookie = {"cookie": f"uuid={cookie_signed_days_ago(refused, NEW_KEY, 2)}"}  # a touch due
    resp = await http.get(malformed.format(uid=uid), headers=cookie)
    assert resp.status_code == 400 and resp.headers["x-error"] == code
    assert cookie_uuid(resp) == refused  # a known visitor's cookie is still refreshed

    later = {"cookie": f"uuid={cookie_signed_days_ago(behind, NEW_KEY, 2)}"}
    ok = await http.get(f"/event?d_cid={PARTNER}%01behind-{behind[:8]}", headers=later)
    assert ok.status_code == 200 and "x-error" not in ok.headers

    async def behind_stored() -> bool:
        return PARTNER in await store.mappings(behind, DAY)

    assert await wait_for(behind_stored)
    assert await store.visitor_last_seen(refused) == DAY - 3
    assert await store.mappings(refused, DAY) == stored
    assert await store.lookup(PARTNER, [uid], DAY) == {}


async def test_size_limits(http: httpx.AsyncClient) -> None:
    fits = await http.get("/event?c_a=" + "x" * (8192 - 4))
    assert fits.status_code == 200
    too_long = await http.get("/event?c_a=" + "x" * 8192)
    assert too_long.status_code == 414 and too_long.headers["x-error"] == "311"
    too_long_json = await http.get("/event?d_rtbd=json&c_a=" + "x" * 9000)
    assert too_long_json.status_code == 414
    assert too_long_json.json()["errors"][0]["code"] == 311

    assert (await http.post("/event", content=b"c_a=" + b"x" * (32768 - 4))).status_code == 400
    form = {"content-type": "application/x-www-form-urlencoded"}
    ok = await http.post("/event", content=b"c_a=" + b"x" * (32768 - 4), headers=form)
    assert ok.status_code == 200
    big = await http.post("/event", content=b"c_a=" + b"x" * 32768, headers=form)
    assert big.status_code == 413 and big.headers["x-error"] == "311"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * 1024

    streamed = await http.post("/event", content=chunks(), headers=form)
    assert streamed.status_code == 413


async def test_form_post_rejects_other_content_types(http: httpx.AsyncClient) -> None:
    resp = await http.post(
        "/event", content=b'{"a": 1}', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400 and resp.headers["x-error"] == "311"


# --------------------------------------------------------------------------- opt-out


async def test_opt_out(http: httpx.AsyncClient, store: Store) -> None:
    uuid = new_uuid()
    cookie = CookieSigner([NEW_KEY]).sign(uuid)
    store.put_mapping(uuid, 1234, "partner-uid-" + uuid[:8], DAY)
    await store.drain()
    assert await store.mappings(uuid, DAY) == {1234: PartnerUid("partner-uid-" + uuid[:8], DAY)}

    resp = await http.get("/demoptout.jpg", headers={"cookie": f"uuid={cookie}"})
    assert_gif(resp)
    parts = set_cookie(resp)
    assert parts[0] == "uuid=NOTARGET"
    assert f"Max-Age={10 * 365 * 86400}" in parts and "Secure" in parts
    gone = await wait_for(lambda: _erased(store, uuid))
    assert gone
    assert await store.lookup(1234, ["partner-uid-" + uuid[:8]], DAY) == {}

    opted = {"cookie": "uuid=NOTARGET"}
    gif = await http.get("/event?c_a=1", headers=opted)
    assert_gif(gif)
    assert gif.headers["x-error"] == "171"
    assert set_cookie(gif)[0] == "uuid=NOTARGET"
    doc = await http.get("/event?d_rtbd=json", headers=opted)
    assert doc.status_code == 200 and doc.headers["x-error"] == "171"
    body = doc.json()
    assert body["errors"] == [{"code": 171, "msg": "visitor opted out"}]
    assert "uuid" not in body
    # Two Cookie headers count as one: still opted out.
    split = await http.get("/event", headers=[("cookie", "uuid=NOTARGET"), ("cookie", "a=b")])
    assert split.headers["x-error"] == "171"
    jsonp = await http.get("/event?d_cb=cb", headers=opted)
    assert jsonp.text.startswith("/**/cb(") and '"code":171' in jsonp.text
    declared = await http.get(f"/event?d_cid={PARTNER}%01opted", headers=opted)
    assert declared.headers["x-error"] == "171"
    await _wait_behind(http, store)
    assert await store.lookup(PARTNER, ["opted"], DAY) == {}  # no declared ID stored
    assert await _erased(store, uuid)  # and nothing brought the erased visitor back


async def test_opt_out_pixel_methods(http: httpx.AsyncClient) -> None:
    head = await http.head("/demoptout.jpg")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["set-cookie"].startswith("uuid=NOTARGET;")
    post = await http.post("/demoptout.jpg")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_refusals_from_a_post_body_answer_json(http: httpx.AsyncClient) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    bad_cb = await http.post("/event", content=b"d_cb=1bad", headers=form)
    assert bad_cb.status_code == 400 and bad_cb.json()["errors"][0]["code"] == 311
    bad = await http.post("/event", content=b"d_rtbd=json&d_cts=9", headers=form)
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == 311


async def _erased(store: Store, uuid: str) -> bool:
    return await store.visitor_last_seen(uuid) is None and not await store.mappings(uuid, DAY)


# --------------------------------------------------------------------------- operations


async def test_health_readiness_and_metrics(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200
    ready = await http.get("/readyz", headers=OPS)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    await http.get("/event?c_x=%zz")
    text = (await http.get("/metrics", headers=OPS)).text
    assert re.search(r'pixelsync_requests_total\{endpoint="event",outcome="ok"\} [1-9]', text)
    assert re.search(r'pixelsync_requests_total\{endpoint="event",outcome="error_311"\}', text)
    assert 'pixelsync_request_seconds_bucket{endpoint="event"' in text


async def test_redis_down(services: Services) -> None:
    svc = services.start(Config(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    cookie = cookie_signed_days_ago(new_uuid(), "dev-only-change-me", 1)
    async with svc.client() as http:
        assert (await http.get("/readyz", headers=OPS)).status_code == 503
        started = time.perf_counter()
        resp = await http.get("/event", headers={"cookie": f"uuid={cookie}"})  # a write
        assert_gif(resp)
        assert time.perf_counter() - started < 0.5

        async def flush_failed() -> bool:
            text = (await http.get("/metrics", headers=OPS)).text
            return bool(re.search(r'pixelsync_redis_errors_total\{op="flush"\} [1-9]', text))

        assert await wait_for(flush_failed)
        assert (await http.get("/healthz")).status_code == 200
    svc.stop(signal.SIGKILL)  # a clean stop would wait 10 s for the writes to flush


async def test_log_lines_are_json_without_private_values(services: Services) -> None:
    svc = services.start()
    httpx.get(svc.url + "/event?p_secret=hunter2&c_a=%zz")
    httpx.get(svc.url + "/event?p_secret=hunter2")
    tid = httpx.get(svc.url + "/event?d_rtbd=json&p_secret=hunter2").json()["tid"]
    for _ in range(50):  # the access log is written in batches, every half second
        if tid in svc.log():
            break
        time.sleep(0.1)
    lines = [line for line in svc.log().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]
    refused = [d for d in docs if d.get("msg") == "event refused"]
    assert refused and refused[0]["code"] == 311 and len(refused[0]["tid"]) == 12
    answered = [d for d in docs if d.get("tid") == tid]
    assert answered and answered[0]["msg"] == "event answered"
    assert "hunter2" not in svc.log()


async def test_a_client_gone_mid_body_is_not_processed(http: httpx.AsyncClient) -> None:
    host, port = http.base_url.host, http.base_url.port
    assert port is not None
    _, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 100\r\n\r\nc_a=1&d_cid=1234%01trunc"
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    async def gone() -> bool:
        text = (await http.get("/metrics", headers=OPS)).text
        return 'outcome="client_gone"' in text

    assert await wait_for(gone)


async def test_rules_on_header_and_private_signals(services: Services) -> None:
    svc = services.start(
        Config(
            # No cookie bounce: the first request, without a cookie, is answered at once.
            "[cookies]\nbounce = false\n"
            '[[traits]]\nsid = 71\nname = "bots"\nrule = \'h_user-agent contains "TestBot"\'\n'
            "[[traits]]\nsid = 72\nname = \"young\"\nrule = 'p_age < 25'\n"
            '[[traits]]\nsid = 73\nname = "sports"\nrule = \'c_section == "sports"\'\n'
        )
    )
    async with svc.client() as client:
        resp = await client.get(
            "/event?d_rtbd=json&d_cts=2&p_age=24&c_section=news&c_other=1",
            headers={"user-agent": "Mozilla/5.0 TestBot/1.0"},
        )
    assert sorted(resp.json()["traits"]) == [71, 72]

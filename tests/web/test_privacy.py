"""Consent gating (SPEC §12) on /ibs and /event, over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from service.identity import CookieSigner, new_uuid, today
from service.store import Store
from tests.configs import entry
from tests.conftest import wait_for
from tests.gpp_encoder import gpp
from tests.services import Config
from tests.test_consent import NO_VENDORS, TRAFFECTIVE

KEY = "privacy-test-key"


@pytest.fixture(scope="module")
def service_config() -> Config:
    # Host vendor 2 and partner vendor 3 are consented in TRAFFECTIVE; 4 is not.
    toml = "[server]\nvendor_id = 2\n"
    toml += entry("partners", dpid=1234, name="consented", gvl_id=3)
    toml += entry("partners", dpid=55, name="not-consented", gvl_id=4)
    toml += entry("partners", dpid=66, name="no-iab-id")
    return Config(toml, keys=(KEY,))


def cookie_for(uuid: str) -> dict[str, str]:
    return {"cookie": f"uuid={CookieSigner([KEY]).sign(uuid)}"}


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("gdpr=1", 200, "315"),
        ("gdpr=1&gdpr_consent=not-a-consent-string", 400, "313"),
        (f"gdpr=1&gdpr_consent={NO_VENDORS}", 200, "314"),  # the host may not store
        ("gpp_sid=2", 200, "315"),
        # GPP only: section 2 is the consent string (SPEC §12)
        (f"gpp_sid=2&gpp={gpp([(2, NO_VENDORS)])}", 200, "314"),
        (f"gpp_sid=2&gpp={gpp([(2, 'not-a-consent-string')])}", 400, "313"),
        (f"gpp_sid=2&gpp={gpp([(7, 'BAAAAAAAAABA')])}", 200, "315"),  # no section 2
        ("gpp=DBABM", 400, "313"),  # a section listed, none given
        ("gdpr=0&gpp=junk!", 400, "313"),
    ],
)
async def test_without_consent_nothing_is_stored_and_no_cookie_set(
    http: httpx.AsyncClient, store: Store, query: str, status: int, code: str
) -> None:
    uuid = new_uuid()
    uid = f"c-{uuid[:8]}"
    ibs = await http.get(f"/ibs:dpid=1234&dpuuid={uid}&{query}", headers=cookie_for(uuid))
    assert ibs.status_code == status and ibs.headers["x-error"] == code
    assert "set-cookie" not in ibs.headers
    event = await http.get(f"/event?d_cid=1234%01{uid}&{query}", headers=cookie_for(uuid))
    assert event.status_code == status and event.headers["x-error"] == code
    assert "set-cookie" not in event.headers
    as_json = await http.get(f"/event?d_rtbd=json&{query}")
    assert as_json.json()["errors"][0]["code"] == int(code)
    assert "uuid" not in as_json.json() and "set-cookie" not in as_json.headers

    await http.get("/ibs:dpid=1234&dpuuid=marker&gdpr=0", headers=cookie_for(uuid))

    async def marker() -> bool:
        return 1234 in await store.mappings(uuid, today())

    assert await wait_for(marker)
    assert await store.lookup(1234, [uid], today()) == {}


@pytest.mark.parametrize(
    "consent",
    [f"gdpr=1&gdpr_consent={TRAFFECTIVE}", f"gpp_sid=2&gpp={gpp([(2, TRAFFECTIVE)])}"],
    ids=["gdpr_consent", "gpp only"],
)
async def test_partners_are_synced_only_with_their_own_consent(
    http: httpx.AsyncClient, store: Store, consent: str
) -> None:
    uuid = new_uuid()
    ok = await http.get(f"/ibs:dpid=1234&dpuuid=yes-{uuid[:6]}&{consent}", headers=cookie_for(uuid))
    assert ok.status_code == 200 and "x-error" not in ok.headers
    for dpid in (55, 66):  # gvl 4 not consented; no gvl id at all
        refused = await http.get(f"/ibs:dpid={dpid}&dpuuid=no&{consent}", headers=cookie_for(uuid))
        assert refused.status_code == 200 and refused.headers["x-error"] == "314"
    # Declared IDs follow the same rule: stored for 1234, silently not for 55.
    event = await http.get(
        f"/event?d_cid=1234%01cid-{uuid[:6]}&d_cid=55%01nope&{consent}", headers=cookie_for(uuid)
    )
    assert event.status_code == 200 and "x-error" not in event.headers

    async def stored() -> bool:
        got = await store.mappings(uuid, today())
        return got.get(1234) is not None and got[1234].uid == f"cid-{uuid[:6]}"

    assert await wait_for(stored)
    assert set(await store.mappings(uuid, today())) == {1234}
    # the host is consented: a new visitor is given a uuid
    answer = await http.get(f"/event?d_rtbd=json&{consent}")
    assert answer.status_code == 200 and "errors" not in answer.json()
    assert answer.json()["uuid"] and "set-cookie" in answer.headers


async def test_outside_gdpr_everything_flows(http: httpx.AsyncClient, store: Store) -> None:
    uuid = new_uuid()
    resp = await http.get("/ibs:dpid=66&dpuuid=free&gdpr=0", headers=cookie_for(uuid))
    assert resp.status_code == 200 and "x-error" not in resp.headers

    async def stored() -> bool:
        return 66 in await store.mappings(uuid, today())

    assert await wait_for(stored)

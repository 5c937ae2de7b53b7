"""Consent gating (SPEC §12) on /ibs and /event, over real HTTP."""

from __future__ import annotations

import httpx
import pytest

from service.identity import CookieSigner, new_uuid, today
from service.store import Store
from tests.configs import entry
from tests.conftest import wait_for
from tests.gpp_encoder import gpp
from tests.services import Config, Services
from tests.test_consent import NO_VENDORS, TRAFFECTIVE, tcf

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


# Purpose 1 and vendors 2 (the host) and 3 (partner 1234) consented, and the
# publisher's restriction of purpose 1 (type 0, not allowed) for these vendor ids.
def restricted(*ranges: tuple[int, int]) -> str:
    return tcf(max_vendor=3, bitfield="011", restrictions=[(1, 0, list(ranges))])


@pytest.mark.parametrize(
    ("description", "consent", "code"),
    [
        ("restricted for the partner's vendor", restricted((3, 3)), "314"),
        ("restricted for every vendor, the host's too", restricted((1, 65535)), "314"),
        ("restricted for another vendor", restricted((4, 9)), None),
        (
            "restricted for purpose 2 only",
            tcf(max_vendor=3, bitfield="011", restrictions=[(2, 0, [(3, 3)])]),
            None,
        ),
    ],
)
async def test_a_publisher_restriction_on_the_partner_refuses_its_sync(
    http: httpx.AsyncClient, store: Store, description: str, consent: str, code: str | None
) -> None:
    """SPEC §12: a partner is synced only when its gvl_id is consented; a publisher
    restriction of purpose 1 for its vendor id takes that consent back."""
    uuid = new_uuid()
    uid = f"r-{uuid[:8]}"
    ibs = await http.get(
        f"/ibs:dpid=1234&dpuuid={uid}&gdpr=1&gdpr_consent={consent}", headers=cookie_for(uuid)
    )
    assert ibs.status_code == 200 and ibs.headers.get("x-error") == code, description
    await http.get("/ibs:dpid=66&dpuuid=marker&gdpr=0", headers=cookie_for(uuid))

    async def marker() -> bool:
        return 66 in await store.mappings(uuid, today())

    assert await wait_for(marker)
    stored = await store.lookup(1234, [uid], today())
    assert (stored == {}) is (code is not None), description


async def test_purpose_one_treatment_as_configured(
    http: httpx.AsyncClient, services: Services
) -> None:
    """A string saying purpose 1 was not disclosed (PurposeOneTreatment), with no
    purpose consented: allowed with Prebid Server's defaults ([privacy]
    purpose_one_treatment and purpose_one_access_allowed true), refused (314) with
    purpose_one_access_allowed = false, and read as any other (no consent: 314) with
    purpose_one_treatment = false."""
    consent = tcf(purposes=0, purpose_one_treatment=True, max_vendor=3, bitfield="011")
    ibs = f"/ibs:dpid=1234&dpuuid=p1t&gdpr=1&gdpr_consent={consent}"
    allowed = await http.get(ibs, headers=cookie_for(new_uuid()))
    assert allowed.status_code == 200 and "x-error" not in allowed.headers
    partners = entry("partners", dpid=1234, name="consented", gvl_id=3)
    for setting in ("purpose_one_access_allowed = false", "purpose_one_treatment = false"):
        toml = f"[server]\nvendor_id = 2\n\n[privacy]\n{setting}\n{partners}"
        async with services.start(Config(toml, keys=(KEY,))).client() as other:
            refused = await other.get(ibs, headers=cookie_for(new_uuid()))
        assert refused.headers.get("x-error") == "314", setting

"""/sync/chain through three real partner servers, hop by hop as a browser follows it."""

from __future__ import annotations

import httpx
import pytest

from service.errors import Code, RequestError
from service.identity import CookieSigner, new_uuid, today
from service.store import Store
from service.sync import MAX_HOPS, ChainTokens
from tests.configs import syncing_partners
from tests.conftest import wait_for
from tests.partners import SyncingPartner
from tests.services import Config, Service

KEY = "chain-test-key"


@pytest.fixture(scope="module")
def service_config(syncing_partner: SyncingPartner) -> Config:
    return Config(syncing_partners(syncing_partner.origin, (21, 22, 23)), keys=(KEY,))


async def test_a_chain_through_three_partners(svc: Service, store: Store) -> None:
    uuid = new_uuid()
    cookie = {"cookie": f"uuid={CookieSigner([KEY]).sign(uuid)}"}
    url = f"{svc.url}/sync/chain?dpids=21,22,23&gdpr=0"
    visited: list[str] = []
    async with httpx.AsyncClient(timeout=5) as browser:
        for _ in range(20):
            resp = await browser.get(url, headers=cookie)
            visited.append(url)
            if resp.status_code != 302:
                break
            url = resp.headers["location"]
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/gif"
    assert sum("/sync?p=" in u for u in visited) == 3  # each partner once
    assert sum("/sync/chain?t=" in u for u in visited) == 2  # two signed hops back

    async def all_three() -> bool:
        return set(await store.mappings(uuid, today())) == {21, 22, 23}

    assert await wait_for(all_three)


async def test_tampered_tokens_are_refused(http: httpx.AsyncClient) -> None:
    tokens = ChainTokens([KEY])
    good = tokens.make([22], {})
    ok = await http.get(f"/sync/chain?t={good}")
    assert ok.status_code == 302
    for bad in (good[:-2] + "xx", ChainTokens(["other-key"]).make([22], {}), "garbage"):
        resp = await http.get(f"/sync/chain?t={bad}")
        assert resp.status_code == 400 and resp.headers["x-error"] == "323"
        assert "location" not in resp.headers
    bad_list = await http.get("/sync/chain?dpids=1,x")
    assert bad_list.status_code == 400 and bad_list.headers["x-error"] == "311"


def test_tokens_expire_and_carry_at_most_ten_hops() -> None:
    tokens = ChainTokens(["new", "old"])
    token = tokens.make(list(range(1, 15)), {"gdpr": "0"})
    dpids, consent = tokens.read(token)
    assert dpids == list(range(1, MAX_HOPS + 1)) and consent == {"gdpr": "0"}
    with pytest.raises(RequestError) as caught:
        tokens.read(token, max_age=-1)
    assert caught.value.code is Code.INVALID_TOKEN
    assert ChainTokens(["newer", "new"]).read(token)[0][:1] == [1]  # keys rotate

"""Partners whose sync page is an iframe (`sync_type = "iframe"`) in the service's own
sync flows: dest5.html frames them, the JSON `ibs` list says so, and /sync/chain (for
places where no iframe can run) leaves them out."""

from __future__ import annotations

import re

import httpx
import pytest

from service.identity import CookieSigner, new_uuid
from tests.services import Config

KEY = "iframe-partners-key"
PARTNERS = """
[[partners]]
dpid = 31
name = "framer"
sync_type = "iframe"
sync_url = "https://framer.test/frame.html?u=${DD_UUID}&redir=${CALLBACK}"

[[partners]]
dpid = 32
name = "pixel"
sync_url = "https://pixel.test/sync?u=${DD_UUID}&redir=${CALLBACK}"
"""


@pytest.fixture(scope="module")
def service_config() -> Config:
    return Config(PARTNERS, keys=(KEY,))


def cookie() -> dict[str, str]:
    return {"cookie": f"uuid={CookieSigner([KEY]).sign(new_uuid())}"}


async def test_dest5_frames_iframe_partners(http: httpx.AsyncClient) -> None:
    page = await http.get("/dest5.html", headers=cookie())
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == "default-src 'none'; img-src *; frame-src *"
    assert re.findall(r'<iframe src="https://([a-z.]+)/', page.text) == ["framer.test"]
    assert re.findall(r'<img src="https://([a-z.]+)/', page.text) == ["pixel.test"]


async def test_the_ibs_list_names_the_tag(http: httpx.AsyncClient) -> None:
    resp = await http.get("/event?d_rtbd=json", headers=cookie())
    assert {(e["id"], e["tag"]) for e in resp.json()["ibs"]} == {("31", "iframe"), ("32", "img")}


@pytest.mark.parametrize(
    ("description", "query", "first"),
    [
        ("whoever is due", "", "pixel.test"),
        ("a list naming the iframe partner first", "?dpids=31,32", "pixel.test"),
        ("a list of the iframe partner only", "?dpids=31", None),
    ],
)
async def test_the_chain_skips_iframe_partners(
    http: httpx.AsyncClient, description: str, query: str, first: str | None
) -> None:
    resp = await http.get(f"/sync/chain{query}", headers=cookie())
    if first is None:
        assert resp.status_code == 200, description
        assert resp.headers["content-type"] == "image/gif", description
    else:
        assert resp.status_code == 302, description
        location = resp.headers["location"]
        assert location.startswith(f"https://{first}/"), description
        assert "%2Fsync%2Fchain" not in location, description  # no hop left after it

from __future__ import annotations

from service.config import CookiesConfig
from service.identity import CookieSigner
from service.web.cookies import VisitorCookies


def test_visitor_cookie_is_found_by_its_whole_name() -> None:
    cookies = VisitorCookies(CookiesConfig(name="uuid", ttl_days=1), CookieSigner(["k"]))
    assert cookies.read(b"uuid=a.b.c") == "a.b.c"
    assert cookies.read(b"xuuid=no; uuid=yes; uuid=second") == "yes"
    assert cookies.read(b"a=1;uuid= spaced ;b=2") == "spaced"
    assert cookies.read(b"myuuid=no") is None
    assert cookies.read(b"") is None and cookies.read(None) is None

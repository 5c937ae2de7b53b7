"""Destinations (SPEC §7): URL pixels and their tracking tokens, cookie key-values,
s2s changes. Pure: no HTTP, no Redis."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from itsdangerous.timed import TimestampSigner

from service.config import CookieDestinationConfig, S2SDestinationConfig, UrlDestinationConfig
from service.destinations import (
    TOKEN_MAX_AGE_S,
    CookieDestination,
    DestinationRules,
    Fire,
    S2SRules,
    Tokens,
    UrlDestination,
)
from service.errors import Code, RequestError
from service.profiles import Pending

DAY = 20_000
PUBLIC = "https://sync.test"
KEYS = ["new-key", "old-key"]
UUID = "12345678901234567890123456789012345678"
PARTNER = 1234


def url_dest(
    id: int = 9,
    mappings: dict[str, str] | None = None,
    partner: int | None = PARTNER,
    **keys: Any,
) -> UrlDestinationConfig:
    maps = {"500": "sports", "501": "news", "502": "auto"} if mappings is None else mappings
    values: dict[str, Any] = {"url": "https://px.test/p?seg=%ALIAS%", **keys}
    return UrlDestinationConfig(id=id, name=f"url{id}", partner=partner, mappings=maps, **values)


def cookie_dest(
    id: int = 20,
    mappings: dict[str, str] | None = None,
    partner: int | None = None,
    **keys: Any,
) -> CookieDestinationConfig:
    maps = {"500": "a", "501": "b", "502": "c"} if mappings is None else mappings
    values: dict[str, Any] = {"cookie_name": "aam", "key": "seg", **keys}
    return CookieDestinationConfig(
        id=id, name=f"cookie{id}", partner=partner, mappings=maps, **values
    )


def s2s_dest(id: int = 30, mappings: dict[str, str] | None = None) -> S2SDestinationConfig:
    maps = {"500": "sports", "501": "news"} if mappings is None else mappings
    return S2SDestinationConfig(
        id=id, name=f"s2s{id}", partner=PARTNER, mappings=maps, url="https://s2s.test/in"
    )


def tokens() -> Tokens:
    return Tokens(KEYS, PUBLIC)


def macros(partner: int | None) -> dict[str, str] | None:
    return {"DD_UUID": UUID, "DP_UUID": f"uid-of-{partner}", "GDPR": "0", "GDPR_CONSENT": ""}


def pending(dest: int, *sids: int) -> list[Pending]:
    return [Pending(dest, sid, DAY) for sid in sids]


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


# --- url: one per segment, or serialized ----------------------------------------------------


@pytest.mark.parametrize(
    ("serialize", "delimiter", "due", "segments", "expected"),
    [
        pytest.param(False, ",", [500], {500}, ["sports"], id="one segment"),
        pytest.param(False, ",", [500, 501], {500, 501, 502}, ["sports", "news"], id="one each"),
        pytest.param(False, ",", [999], {500, 999}, [], id="unmapped segment"),
        pytest.param(True, ",", [501], {500, 501, 502}, ["sports,news,auto"], id="serialized"),
        pytest.param(True, "|", [500, 501], {501, 500}, ["sports|news"], id="serialized once"),
        pytest.param(True, ",", [500], {500, 999}, ["sports"], id="serialized mapped only"),
        pytest.param(True, ",", [500], set(), [], id="serialized: left every segment"),
    ],
)
def test_url_aliases(
    serialize: bool, delimiter: str, due: list[int], segments: set[int], expected: list[str]
) -> None:
    rules = DestinationRules([url_dest(serialize=serialize, delimiter=delimiter, track="none")])
    fires = rules.fires(pending(9, *due), segments, tokens(), macros)
    assert [query(f.url)["seg"] for f in fires] == [[a] for a in expected]
    assert all(f.destination == 9 for f in fires)


def test_serialized_alias_is_encoded_once() -> None:
    rules = DestinationRules([url_dest(serialize=True, track="none")])
    (fire,) = rules.fires(pending(9, 500), {500, 501}, tokens(), macros)
    assert fire.url == "https://px.test/p?seg=sports%2Cnews"


MACRO_URL = (
    "https://px.test/p?seg=%ALIAS%&u=${DD_UUID}&p=${DP_UUID}&r=%rnd%"
    "&c=${GDPR_CONSENT}&ack=${ACK_URL}&proto=%http_proto%"
)


def test_url_macros_filled_and_encoded() -> None:
    def values(partner: int | None) -> dict[str, str]:
        return {"DD_UUID": UUID, "DP_UUID": "a b&c=d/é", "GDPR": "1", "GDPR_CONSENT": "CO+x/y=="}

    rules = DestinationRules([url_dest(url=MACRO_URL, mappings={"500": "spo rts&x"}, track="none")])
    (fire,) = rules.fires(pending(9, 500), {500}, tokens(), values)
    q = query(fire.url)
    assert q["seg"] == ["spo rts&x"]
    assert q["u"] == [UUID]
    assert q["p"] == ["a b&c=d/é"]
    assert q["c"] == ["CO+x/y=="]
    assert q["r"][0].isdigit()
    assert q["ack"] == [""]  # untracked: there is nothing to acknowledge
    assert q["proto"] == ["http"]
    assert query(fire.secure_url)["proto"] == ["https"]
    # Every value is encoded: nothing raw leaks into the URL's structure.
    assert "%2F" in fire.url and "é" not in fire.url and " " not in fire.url
    assert fire.url.count("&") == MACRO_URL.count("&")


def test_untracked_hands_the_partner_url() -> None:
    rules = DestinationRules([url_dest(url="http://px.test/p?s=%ALIAS%", track="none")])
    (fire,) = rules.fires(pending(9, 500), {500}, tokens(), macros)
    assert fire == Fire(9, "http://px.test/p?s=sports", "http://px.test/p?s=sports", "img")
    assert fire.doc() == {
        "id": "9",
        "c": "http://px.test/p?s=sports",
        "e": "http://px.test/p?s=sports",
        "y": "img",
    }


def test_secure_url_for_the_secure_variant() -> None:
    rules = DestinationRules(
        [
            url_dest(
                url="http://px.test/p?s=%ALIAS%",
                secure_url="https://secure.px.test/p?s=%ALIAS%",
                render="iframe",
                track="none",
            )
        ]
    )
    (fire,) = rules.fires(pending(9, 500), {500}, tokens(), macros)
    assert fire.url == "http://px.test/p?s=sports"
    assert fire.secure_url == "https://secure.px.test/p?s=sports"
    assert fire.render == "iframe"
    assert fire.doc()["y"] == "iframe"


def test_rnd_changes_between_fires() -> None:
    rules = DestinationRules([url_dest(url="https://px.test/p?r=%rnd%&s=%ALIAS%", track="none")])
    fires = rules.fires(pending(9, 500, 501, 502), {500, 501, 502}, tokens(), macros)
    assert len({query(f.url)["r"][0] for f in fires}) == 3


def test_dp_uuid_is_the_destination_partners() -> None:
    asked: list[int | None] = []

    def values(partner: int | None) -> dict[str, str]:
        asked.append(partner)
        return {"DD_UUID": UUID, "DP_UUID": f"uid-of-{partner}"}

    rules = DestinationRules(
        [
            url_dest(9, url="https://a.test/?p=${DP_UUID}&s=%ALIAS%", track="none"),
            url_dest(10, partner=77, url="https://b.test/?p=${DP_UUID}&s=%ALIAS%", track="none"),
        ]
    )
    fires = rules.fires([*pending(9, 500), *pending(10, 500)], {500}, tokens(), values)
    assert [query(f.url)["p"] for f in fires] == [["uid-of-1234"], ["uid-of-77"]]
    assert set(asked) == {77, 1234}


def test_values_none_skips_the_destination() -> None:
    rules = DestinationRules([url_dest(9, track="none"), url_dest(10, partner=77, track="none")])

    def values(partner: int | None) -> dict[str, str] | None:
        return None if partner == PARTNER else {"DD_UUID": UUID}

    fires = rules.fires([*pending(9, 500), *pending(10, 500)], {500}, tokens(), values)
    assert [f.destination for f in fires] == [10]
    assert rules.fires(pending(9, 500, 501), {500, 501}, tokens(), lambda _: None) == []


def test_pending_of_unknown_destinations_is_ignored() -> None:
    rules = DestinationRules([url_dest(9, track="none"), cookie_dest(20)])
    fires = rules.fires([*pending(20, 500), *pending(99, 500)], {500}, tokens(), macros)
    assert fires == []


# --- url: tracking tokens ------------------------------------------------------------------


def fire_token(url: str) -> str:
    prefix = f"{PUBLIC}/fire/"
    assert url.startswith(prefix), url
    return url[len(prefix) :]


def ack_token(url: str) -> str:
    prefix = f"{PUBLIC}/ack/"
    assert url.startswith(prefix), url
    return url[len(prefix) :]


def test_tracked_fire_goes_through_the_service() -> None:
    t = tokens()
    rules = DestinationRules(
        [
            url_dest(
                url="http://px.test/p?s=%ALIAS%&ack=${ACK_URL}",
                secure_url="https://px.test/p?s=%ALIAS%&ack=${ACK_URL}",
            )
        ]
    )
    (fire,) = rules.fires(pending(9, 500), {500}, t, macros)
    dest, nonce, target = t.read_fire(fire_token(fire.url))
    s_dest, s_nonce, s_target = t.read_fire(fire_token(fire.secure_url))
    assert dest == s_dest == 9
    assert nonce == s_nonce  # whichever variant loads, it counts once
    assert nonce
    assert target.startswith("http://px.test/p?s=sports&ack=")
    assert s_target.startswith("https://px.test/p?s=sports&ack=")
    # The ACK_URL inside the partner URL is encoded once and names the same nonce.
    ack = query(target)["ack"][0]
    assert unquote(target.split("ack=", 1)[1]) == ack
    assert t.read_ack(ack_token(ack)) == (9, nonce)
    assert query(s_target)["ack"] == [ack]


def test_each_fire_has_its_own_nonce() -> None:
    t = tokens()
    rules = DestinationRules([url_dest()])
    fires = rules.fires(pending(9, 500, 501), {500, 501}, t, macros)
    nonces = {t.read_fire(fire_token(f.url))[1] for f in fires}
    assert len(nonces) == 2


def test_public_url_trailing_slash() -> None:
    t = Tokens(KEYS, PUBLIC + "/")
    assert t.fire_url(9, "n", "https://px.test/").startswith(f"{PUBLIC}/fire/")
    assert t.ack_url(9, "n").startswith(f"{PUBLIC}/ack/")


def test_token_round_trip() -> None:
    t = tokens()
    assert t.read_fire(fire_token(t.fire_url(9, "nonce", "https://px.test/?a=b"))) == (
        9,
        "nonce",
        "https://px.test/?a=b",
    )
    assert t.read_ack(ack_token(t.ack_url(9, "nonce"))) == (9, "nonce")


def flip(token: str, at: int) -> str:
    """One character changed. (Not the last one: its low base64 bits are padding.)"""
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]


def tampered(token: str) -> list[str]:
    signature = token.rindex(".") + 1
    return [
        flip(token, signature),  # signature
        flip(token, 0),  # payload
        token[:-3],
        "",
        "garbage",
        token + "x",
    ]


def assert_invalid(read: Any, token: str) -> None:
    with pytest.raises(RequestError) as exc:
        read(token)
    assert exc.value.code == Code.INVALID_TOKEN == 323
    assert exc.value.status == 400


@pytest.mark.parametrize("index", range(6))
def test_tampered_tokens_are_refused(index: int) -> None:
    t = tokens()
    assert_invalid(t.read_fire, tampered(fire_token(t.fire_url(9, "n", "https://px.test/")))[index])
    assert_invalid(t.read_ack, tampered(ack_token(t.ack_url(9, "n")))[index])


def test_fire_and_ack_tokens_are_not_interchangeable() -> None:
    t = tokens()
    assert_invalid(t.read_ack, fire_token(t.fire_url(9, "n", "https://px.test/")))
    assert_invalid(t.read_fire, ack_token(t.ack_url(9, "n")))


def test_tokens_of_another_key_are_refused() -> None:
    other = Tokens(["someone-else"], PUBLIC)
    assert_invalid(tokens().read_fire, fire_token(other.fire_url(9, "n", "https://px.test/")))
    assert_invalid(tokens().read_ack, ack_token(other.ack_url(9, "n")))


def test_key_rotation() -> None:
    """The first key signs; every key verifies."""
    old = Tokens(["old-key"], PUBLIC)
    current = Tokens(["new-key", "old-key"], PUBLIC)
    assert current.read_ack(ack_token(old.ack_url(9, "n"))) == (9, "n")
    assert_invalid(old.read_ack, ack_token(current.ack_url(9, "n")))
    assert Tokens(["new-key"], PUBLIC).read_ack(ack_token(current.ack_url(9, "n"))) == (9, "n")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param([9, "n"], id="too short"),
        pytest.param([9, "n", 5], id="target not a string"),
        pytest.param(["9", "n", "https://px.test/"], id="destination not an int"),
        pytest.param([9, 5, "https://px.test/"], id="nonce not a string"),
        pytest.param({"d": 9}, id="not a list"),
        pytest.param("x", id="a string"),
    ],
)
def test_signed_but_malformed_fire_tokens_are_refused(payload: Any) -> None:
    t = tokens()
    assert_invalid(t.read_fire, t._fire.dumps(payload))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param([9, "n", "x"], id="too long"),
        pytest.param([9], id="too short"),
        pytest.param([None, "n"], id="destination not an int"),
    ],
)
def test_signed_but_malformed_ack_tokens_are_refused(payload: Any) -> None:
    t = tokens()
    assert_invalid(t.read_ack, t._ack.dumps(payload))


@pytest.mark.parametrize(
    ("age", "valid"),
    [
        pytest.param(0, True, id="fresh"),
        pytest.param(TOKEN_MAX_AGE_S - 1, True, id="a second under a day"),
        pytest.param(TOKEN_MAX_AGE_S, True, id="exactly a day"),
        pytest.param(TOKEN_MAX_AGE_S + 1, False, id="over a day"),
        pytest.param(30 * 86400, False, id="a month"),
    ],
)
def test_tokens_expire_after_a_day(monkeypatch: pytest.MonkeyPatch, age: int, valid: bool) -> None:
    clock = [1_800_000_000]
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: clock[0])
    t = tokens()
    fire = fire_token(t.fire_url(9, "n", "https://px.test/"))
    ack = ack_token(t.ack_url(9, "n"))
    clock[0] += age
    if valid:
        assert t.read_fire(fire) == (9, "n", "https://px.test/")
        assert t.read_ack(ack) == (9, "n")
    else:
        assert_invalid(t.read_fire, fire)
        assert_invalid(t.read_ack, ack)


# --- cookie destinations -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "mappings", "segments", "expected"),
    [
        pytest.param({}, None, {500, 501}, "seg=a,b", id="single serialized"),
        pytest.param({}, None, {501, 500, 502}, "seg=a,b,c", id="ordered by sid"),
        pytest.param({"serialize": False}, None, {500, 501}, "seg=a&seg=b", id="unserialized"),
        pytest.param({"delimiter": "|"}, None, {500, 501}, "seg=a|b", id="delimiter"),
        pytest.param({}, None, {500}, "seg=a", id="one"),
        pytest.param({"key": ""}, None, {500, 501}, "a,b", id="empty key"),
        pytest.param({}, None, {500, 999}, "seg=a", id="only mapped segments"),
        pytest.param({}, None, {999}, "", id="no mapped segment"),
        pytest.param({}, None, set(), "", id="no segment"),
        pytest.param(
            {"format": "multi"},
            {"500": "k1=v1", "501": "k2=v2"},
            {500, 501},
            "k1=v1&k2=v2",
            id="multi",
        ),
        pytest.param(
            {"format": "multi"},
            {"500": "k1=v1", "501": "k2=v2", "502": "k1=v3"},
            {500, 501, 502},
            "k1=v1,v3&k2=v2",
            id="multi serialized same key",
        ),
        pytest.param(
            {"format": "multi", "serialize": False},
            {"500": "k1=v1", "501": "k2=v2", "502": "k1=v3"},
            {500, 501, 502},
            "k1=v1&k1=v3&k2=v2",
            id="multi unserialized same key",
        ),
        pytest.param(
            {"format": "multi"},
            {"500": "k1=v1", "501": "k2=v2"},
            {501},
            "k2=v2",
            id="multi only the visitor's",
        ),
    ],
)
def test_cookie_value(
    options: dict[str, Any], mappings: dict[str, str] | None, segments: set[int], expected: str
) -> None:
    assert CookieDestination(cookie_dest(mappings=mappings, **options)).value(segments) == expected


def test_stuff_only_what_the_visitor_has_and_may_get() -> None:
    rules = DestinationRules(
        [
            cookie_dest(20),
            cookie_dest(21, mappings={"502": "z"}),
            cookie_dest(22, partner=77, key="p"),
            url_dest(9),
        ]
    )
    got = rules.stuff({500, 501}, lambda partner: partner != 77)
    assert [(c.id, v) for c, v in got] == [(20, "seg=a,b")]
    got = rules.stuff({500}, lambda partner: True)
    assert [(c.id, v) for c, v in got] == [(20, "seg=a"), (22, "p=a")]


@pytest.mark.parametrize(
    ("domain", "host", "matches"),
    [
        pytest.param(".pub.test", "pub.test", True, id="the domain itself"),
        pytest.param(".pub.test", "www.pub.test", True, id="subdomain"),
        pytest.param(".pub.test", "a.b.pub.test", True, id="deep subdomain"),
        pytest.param(".pub.test", "www.pub.test:8080", True, id="with port"),
        pytest.param(".pub.test", "WWW.Pub.Test", True, id="case-insensitive"),
        pytest.param("pub.test", "www.pub.test", True, id="without leading dot"),
        pytest.param(".PUB.test", "www.pub.test", True, id="domain case-insensitive"),
        pytest.param(".pub.test", "evilpub.test", False, id="suffix is not a subdomain"),
        pytest.param(".pub.test", "pub.test.evil.test", False, id="prefix"),
        pytest.param(".pub.test", "other.test", False, id="other"),
        pytest.param(".pub.test", "", False, id="no host"),
        pytest.param(".pub.test", "[::1]:8080", False, id="ipv6 literal"),
        pytest.param("", "pub.test", False, id="no domain"),
    ],
)
def test_own_domain(domain: str, host: str, matches: bool) -> None:
    assert CookieDestination(cookie_dest(domain=domain)).own_domain(host) is matches


@pytest.mark.parametrize(
    ("value", "encoded", "max_age"),
    [
        pytest.param("seg=a,b", "seg=a%2Cb", 30 * 86400, id="comma encoded"),
        pytest.param("seg=a&seg=b", "seg=a&seg=b", 30 * 86400, id="ampersand kept"),
        pytest.param('k=a b;c"d\\e', "k=a%20b%3Bc%22d%5Ce", 30 * 86400, id="separators"),
        pytest.param("k=é", "k=%C3%A9", 30 * 86400, id="non-ascii"),
        pytest.param("", "", 0, id="empty value deletes"),
    ],
)
def test_set_cookie(value: str, encoded: str, max_age: int) -> None:
    c = CookieDestination(cookie_dest(domain=".pub.test", ttl_days=30))
    name, header = c.set_cookie(value)
    assert name == b"set-cookie"
    parts = header.decode("latin-1").split("; ")
    assert parts[0] == f"aam={encoded}"
    assert "Path=/" in parts
    assert "Domain=.pub.test" in parts
    assert f"Max-Age={max_age}" in parts
    assert "SameSite=Lax" in parts
    assert len(parts) == 5


def test_own_cookies_are_those_with_a_domain() -> None:
    rules = DestinationRules([cookie_dest(20), cookie_dest(21, domain=".pub.test")])
    assert [c.id for c in rules.own_cookies] == [21]


# --- s2s and pending --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entered", "exited", "expected"),
    [
        pytest.param([], [], [], id="nothing"),
        pytest.param([500], [], [("sports", True)], id="entered"),
        pytest.param([], [501], [("news", False)], id="exited"),
        pytest.param(
            [501, 500], [999], [("news", True), ("sports", True)], id="mapped entries only"
        ),
        pytest.param([500, 999], [501], [("sports", True), ("news", False)], id="both"),
    ],
)
def test_s2s_changes(
    entered: list[int], exited: list[int], expected: list[tuple[str, bool]]
) -> None:
    rules = DestinationRules([s2s_dest()])
    (s2s,) = rules.s2s
    assert s2s.changes(entered, exited) == expected
    assert S2SRules(s2s_dest()).changes(entered, exited) == expected


def test_pending_for() -> None:
    rules = DestinationRules(
        [
            url_dest(9, mappings={"500": "a", "501": "b"}),
            cookie_dest(20, mappings={"500": "a"}),
            url_dest(10, mappings={"501": "c"}),
            s2s_dest(30),
        ]
    )
    everyone = lambda partner: True  # noqa: E731
    assert rules.pending_for([500, 501, 999], DAY, everyone) == [
        Pending(9, 500, DAY),
        Pending(9, 501, DAY),
        Pending(10, 501, DAY),
    ]
    assert rules.pending_for([999], DAY, everyone) == []
    assert rules.pending_for([], DAY, everyone) == []
    # Privacy decides per destination's partner: nothing queued for one not allowed.
    assert rules.pending_for([500, 501], DAY, lambda partner: False) == []


def test_rules_by_type() -> None:
    rules = DestinationRules([url_dest(9), cookie_dest(20), s2s_dest(30)])
    assert list(rules.url) == [9]
    assert [c.id for c in rules.cookie] == [20]
    assert [s.id for s in rules.s2s] == [30]
    assert rules.types == {9: "url", 20: "cookie", 30: "s2s"}
    assert rules.names == {9: "url9", 20: "cookie20", 30: "s2s30"}
    assert isinstance(rules.url[9], UrlDestination)
    assert rules.url[9].tracked
    assert not UrlDestination(url_dest(track="none")).tracked

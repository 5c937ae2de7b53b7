"""Property tests over the parsers that hostile input reaches (issue 9): whatever the
input, each answers or fails with the contract's error — never another exception.
(Query strings, bare cookie values, TCF strings, rule texts and the profile codec have
theirs beside their modules' other tests; here are the Cookie headers, tampered
cookies, whole consent parameter sets and rules inside a configuration.)"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from service.batch.files import LineError, parse_line, parse_name
from service.config import ConfigError, CookiesConfig, Partner, parse_settings
from service.consent import ConsentStringError, decode_tcf, evaluate, us_privacy_opt_out
from service.destinations import Tokens
from service.errors import Code, RequestError
from service.identity import OPT_OUT, CookieSigner, VisitorKind, new_uuid
from service.prebid import (
    Bidders,
    CookieSyncOutcome,
    PrebidError,
    parse_cookie_sync,
    parse_setuid,
)
from service.signals import HEADER_SIGNALS, first_values, parse_event
from service.sync import (
    HOUR_MS,
    ChainTokens,
    PartnerRules,
    format_dextp,
    parse_dextp,
    parse_dpid_list,
    parse_ibs,
    valid_uid,
)
from service.web.cookies import VisitorCookies
from tests.test_consent import TRAFFECTIVE, tcf
from tests.test_rules import _token_texts

# Runs of digits past the 4,300 that make int() raise (issue 18), some zero-padded (a
# length check must count the zeros), as whole values and inside others.
DIGITS = st.builds(
    lambda zeros, nines, sign: sign + "0" * zeros + "9" * nines,
    st.integers(0, 5200),
    st.integers(0, 5200),
    st.sampled_from(["", "", "-", "+"]),
)
TEXT = st.text(max_size=80) | DIGITS
PAIRS = st.lists(st.tuples(TEXT, TEXT), max_size=12)
SYSTEM_KEYS = st.sampled_from(
    ["d_rtbd", "d_cb", "d_dst", "d_cts", "d_sid", "d_cid", "d_cid_ic", "gdpr", "gdpr_consent",
     "us_privacy", "gpp", "gpp_sid", "dpid", "dpuuid", "redir", "d_bounce"]
)  # fmt: skip
# Pairs whose keys are the ones the parsers look at, with any values.
SYSTEM_PAIRS = st.lists(st.tuples(SYSTEM_KEYS, TEXT), max_size=10)
HEADERS = st.dictionaries(
    st.sampled_from([b"user-agent", b"referer", b"accept-language", b"x-other"]),
    st.binary(max_size=60),
    max_size=4,
)


@given(PAIRS | SYSTEM_PAIRS, HEADERS)
def test_event_requests(pairs: list[tuple[str, str]], headers: dict[bytes, bytes]) -> None:
    try:
        req = parse_event(pairs, headers)
    except RequestError as exc:
        assert 300 <= int(exc.code) < 400 or exc.status in (400, 413, 414)
        return
    # Header signals come from the headers only, never from the query string.
    assert {k for k in req.signals if k.startswith("h_")} <= set(HEADER_SIGNALS.values())
    for header, name in HEADER_SIGNALS.items():
        if headers.get(header):
            assert req.signals[name] == [headers[header].decode("latin-1")]


PARTNERS = {
    7: PartnerRules(7, "partner", frozenset({"partner.test"})),
}


@given(SYSTEM_PAIRS | PAIRS)
def test_inbound_syncs(pairs: list[tuple[str, str]]) -> None:
    try:
        req = parse_ibs(
            first_values(pairs), PARTNERS, ("https://us.test/sync/chain", frozenset({"us.test"}))
        )
    except RequestError:
        return
    assert valid_uid(req.uid) and req.partner.dpid == 7


@given(st.none() | TEXT | DIGITS.map(lambda d: f"{d}-1-{d}|{d}-{d}-1|1-1-{d}") | st.lists(st.tuples(
    st.integers(0, 10**17), st.integers(0, 10**15)), max_size=5).map(
    lambda entries: format_dextp(dict(entries))))  # fmt: skip
def test_dextp_cookies(value: str | None) -> None:
    handed = parse_dextp(value)
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in handed.items())
    hourly = {dpid: -(-ms // HOUR_MS) * HOUR_MS for dpid, ms in handed.items()}  # rounded up
    assert parse_dextp(format_dextp(handed)) == hourly  # hour precision (SPEC §5)


@given(TEXT)
def test_dpid_lists(value: str) -> None:
    try:
        dpids = parse_dpid_list(value)
    except RequestError as exc:
        assert int(exc.code) == 311
        return
    assert dpids and all(d >= 0 for d in dpids)


TOKENS = Tokens(["new-key", "old-key"], "https://us.test")
CHAIN = ChainTokens(["new-key", "old-key"])
FOREIGN = Tokens(["someone-else"], "https://us.test")


@settings(max_examples=200)
@given(
    TEXT
    | st.builds(lambda d, n, t: TOKENS.fire_url(d, n, t).rsplit("/", 1)[1], st.integers(),
                TEXT, TEXT)
    | st.builds(lambda d, n: FOREIGN.ack_url(d, n).rsplit("/", 1)[1], st.integers(), TEXT)
)  # fmt: skip
def test_fire_ack_and_chain_tokens(token: str) -> None:
    """Forged, foreign, truncated or random tokens are 323; ours read back."""
    for read in (TOKENS.read_fire, TOKENS.read_ack, CHAIN.read):
        try:
            read(token)
        except RequestError as exc:
            assert int(exc.code) == 323
    for cut in (token[:-1], token + "x", token[1:]):
        for read in (TOKENS.read_fire, TOKENS.read_ack):
            try:
                read(cut)
            except RequestError as exc:
                assert int(exc.code) == 323


@given(st.integers(-(2**31), 2**31), TEXT, TEXT)
def test_our_tokens_round_trip(destination: int, nonce: str, target: str) -> None:
    fire = TOKENS.fire_url(destination, nonce, target).rsplit("/", 1)[1]
    assert TOKENS.read_fire(fire) == (destination, nonce, target)
    ack = TOKENS.ack_url(destination, nonce).rsplit("/", 1)[1]
    assert TOKENS.read_ack(ack) == (destination, nonce)


@given(st.binary(max_size=300) | TEXT.map(lambda t: ("u1\t" + t).encode()))
def test_inbound_lines(raw: bytes) -> None:
    try:
        line = parse_line(raw)
    except LineError:
        return
    if line is not None:
        assert valid_uid(line.uid)
        assert all(isinstance(s, int) for s in line.realize + line.remove)


@given(st.lists(DIGITS.flatmap(lambda d: st.sampled_from([d, f"d_sid={d}", f"d_unsid={d}",
                                                          f"{d}:0", f"{d}:-1"])),
                min_size=1, max_size=4))  # fmt: skip
def test_inbound_lines_with_huge_trait_ids(tokens: list[str]) -> None:
    """Every integer a line holds: a trait id, or a format error, never int()'s own."""
    try:
        line = parse_line(("u1\t" + ",".join(tokens)).encode())
    except LineError as exc:
        assert str(exc).startswith("bad token")
        return
    assert line is not None
    assert all(0 <= s < 10**18 for s in line.realize + line.remove)


@given(TEXT)
def test_inbound_file_names(name: str) -> None:
    parsed = parse_name(name)
    assert parsed is None or parsed.dpid > 0


@given(TEXT)
def test_us_privacy_strings(value: str) -> None:
    assert us_privacy_opt_out(value) in (True, False)


SIGNER = CookieSigner(["new-key", "old-key"])
COOKIES = VisitorCookies(CookiesConfig(name="uuid", ttl_days=1), SIGNER)
UUID = new_uuid()
SIGNED = SIGNER.sign(UUID)
COOKIE_PARTS = st.sampled_from(
    [b"uuid=", b"uuid", b"; ", b";", b"=", b" ", b"xuuid=", b"dextp=", b"NOTARGET", b"\x00",
     b"\xff", b"\r\n", b",", b'"', SIGNED.encode(), SIGNED[:-3].encode()]
) | st.binary(max_size=12)  # fmt: skip


@given(st.lists(COOKIE_PARTS, max_size=12).map(b"".join))
def test_cookie_headers(header: bytes) -> None:
    """Any Cookie header: our value or none, and a visitor of the cookie it names."""
    value = COOKIES.read(header)
    assert value is None or isinstance(value, str)
    visitor = COOKIES.resolve(header)
    if visitor.kind is VisitorKind.KNOWN:
        assert (value, visitor.uuid) == (SIGNED, UUID)
    else:
        assert visitor.kind is (VisitorKind.OPTED_OUT if value == OPT_OUT else VisitorKind.NEW)


def _tamper(value: str, at: int, how: int, char: str) -> str:
    at %= len(value) + 1
    edits = [
        value[:at] + char + value[at + 1 :],  # replaced
        value[:at],  # truncated
        value[:at] + char + value[at:],  # inserted
        value[:at] + value[at + 1 :],  # deleted
        value + "." + char,  # another dot
    ]
    return edits[how % len(edits)]


@settings(max_examples=300)
@given(
    st.integers(0, 200),
    st.integers(0, 4),
    st.characters(codec="utf-8"),
    st.sampled_from([SIGNED, CookieSigner(["foreign"]).sign(UUID), OPT_OUT, "a.b.c", "..", ""]),
)
def test_tampered_visitor_cookies(at: int, how: int, char: str, value: str) -> None:
    """A tampered, truncated, foreign-key or garbage cookie counts as absent: never
    another visitor, never an error. (A changed last character may decode to the same
    signature: base64 has spare bits. Then it is still the same visitor.)"""
    visitor = SIGNER.resolve(_tamper(value, at, how, char))
    if visitor.kind is VisitorKind.KNOWN:
        assert visitor.uuid == UUID and value == SIGNED
    elif visitor.kind is VisitorKind.NEW:
        assert visitor.uuid != UUID


TCF_STRINGS = (
    st.builds(
        tcf,
        purposes=st.integers(0, 2**24 - 1),
        max_vendor=st.integers(0, 400),
        ranges=st.none()
        | st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), max_size=8),
        bitfield=st.text("01", max_size=420),
        version=st.sampled_from([2, 2, 1, 3]),
    )
    | st.binary(max_size=60).map(lambda raw: tcf() + ".".join(["", raw.hex()]))
    | st.just(TRAFFECTIVE)
)


@given(TCF_STRINGS.map(lambda t: t[: len(t) // 2]) | TCF_STRINGS)
@example("CAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQAQAAA")  # a vendor range starting at 0
def test_structured_consent_strings(text: str) -> None:
    """TCF strings with every vendor encoding, and cut short: decoded or refused."""
    try:
        decoded = decode_tcf(text)
    except ConsentStringError:
        return
    assert decoded.version == 2
    assert all(1 <= v <= 2**16 for v in decoded.vendors)
    assert decoded.purposes <= set(range(1, 25))


CONSENT_PARAMS = st.dictionaries(
    st.sampled_from(["gdpr", "gdpr_consent", "us_privacy", "gpp", "gpp_sid"]),
    st.sampled_from(["0", "1", "", "2", "7,2", " 2 ", "1YNN", "1---"]) | TCF_STRINGS | TEXT,
)


@given(CONSENT_PARAMS, st.sampled_from([0, 1, 3, 284]), st.sampled_from([0, 1]), st.booleans())
def test_consent_parameters(params: dict[str, str], vendor: int, default: int, gpc: bool) -> None:
    """Whole consent parameter sets, as /event, /ibs and dest5.html pass them on: a
    decision, or 313 (400), 314 or 315 (200) — nothing else."""
    try:
        privacy = evaluate(params, vendor_id=vendor, gdpr_default=default, gpc=gpc)
    except RequestError as exc:
        assert exc.code in (Code.CONSENT_UNPARSABLE, Code.CONSENT_REFUSED, Code.CONSENT_MISSING)
        assert exc.status == (400 if exc.code is Code.CONSENT_UNPARSABLE else 200)
        return
    assert all(privacy.partner_allowed(g) in (True, False) for g in (0, 1, 3, 284))
    assert privacy.outbound_allowed is not (gpc or us_privacy_opt_out(params.get("us_privacy", "")))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
RULE_TEXTS = TEXT | _token_texts


@settings(max_examples=150, deadline=None)
@given(
    RULE_TEXTS | st.just('c_a == "1"'),
    RULE_TEXTS | st.just("100T OR NOT 101T"),
    st.dictionaries(st.sampled_from(["sid", "name", "folder", "type", "ttl_days", "data_source",
                                     "rule", "other"]), JSON_VALUES, max_size=3),
)  # fmt: skip
def test_rules_in_a_configuration(trait: str, segment: str, junk: dict[str, Any]) -> None:
    """Any rule text, and any value in any key of a trait: settings, or the
    configuration error naming what is wrong — never another exception."""
    doc = {
        "traits": [
            {"sid": 100, "name": "t", "rule": trait},
            {"sid": 101, "name": "j", "rule": 'c_a == "1"', **junk},
        ],
        "segments": [{"sid": 500, "name": "s", "rule": segment}],
    }
    try:
        settings_ = parse_settings(doc)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert [t.sid for t in settings_.traits][:1] == [100]


PREBID_PARTNER = Partner(
    dpid=7,
    name="acme",
    sync_url="https://a.test/s?u=${DD_UUID}",
    refresh_days=7,
    mapping_ttl_days=90,
)
BIDDERS = Bidders([PREBID_PARTNER])


@given(
    st.sampled_from(["gdpr", "limit", "gpp_sid", "gpp_sid_list"]),
    DIGITS,
    st.booleans(),
)
@example("gpp_sid", "0" * 4999 + "2", True)  # was int() of 5,000 characters: a 500
@example("gpp_sid_list", "9" * 5000, False)
def test_cookie_sync_integers(field: str, digits: str, quoted: bool) -> None:
    """/cookie_sync's integer fields with any run of digits, as a JSON number (json.loads
    refuses one of more than 4,300 digits) or a string: a request, or Prebid Server's
    400 — never another exception."""
    value = json.dumps(digits) if quoted else digits
    key = field.removesuffix("_list")
    body = f'{{"{key}": [{value}]}}' if field.endswith("_list") else f'{{"{key}": {value}}}'
    try:
        req = parse_cookie_sync(body.encode())
    except PrebidError as exc:
        assert exc.outcome is CookieSyncOutcome.BAD_REQUEST
        return
    if key == "gpp_sid":
        assert all(-128 <= int(s) <= 127 for s in req.consent["gpp_sid"].split(",") if s)


@given(st.sampled_from(["gdpr", "gpp_sid", "uid", "bidder", "f"]), DIGITS)
def test_setuid_integers(key: str, digits: str) -> None:
    params = {"bidder": "acme", key: digits}
    try:
        parse_setuid(params, BIDDERS)
    except PrebidError as exc:
        assert exc.outcome.status in (400, 451)

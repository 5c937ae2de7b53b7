"""Property tests over the parsers that hostile input reaches (issue 9): whatever the
input, each answers or fails with the contract's error — never another exception.
(Query strings, cookie values, consent strings, rules and the profile codec have
theirs beside their modules' other tests.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from service.batch.files import LineError, parse_line, parse_name
from service.consent import us_privacy_opt_out
from service.destinations import Tokens
from service.errors import RequestError
from service.signals import HEADER_SIGNALS, parse_event
from service.sync import (
    ChainTokens,
    PartnerRules,
    format_dextp,
    parse_dextp,
    parse_dpid_list,
    parse_ibs,
    valid_uid,
)

TEXT = st.text(max_size=80)
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
        req = parse_ibs(pairs, PARTNERS, ("https://us.test/sync/chain", frozenset({"us.test"})))
    except RequestError:
        return
    assert valid_uid(req.uid) and req.partner.dpid == 7


@given(st.none() | TEXT | st.lists(st.tuples(
    st.integers(0, 10**17), st.integers(0, 10**15)), max_size=5).map(
    lambda entries: format_dextp(dict(entries))))  # fmt: skip
def test_dextp_cookies(value: str | None) -> None:
    handed = parse_dextp(value)
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in handed.items())
    assert parse_dextp(format_dextp(handed)) == handed


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


@given(TEXT)
def test_inbound_file_names(name: str) -> None:
    parsed = parse_name(name)
    assert parsed is None or parsed.dpid > 0


@given(TEXT)
def test_us_privacy_strings(value: str) -> None:
    assert us_privacy_opt_out(value) in (True, False)

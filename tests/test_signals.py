from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import Code, RequestError
from service.signals import MAX_DECLARED_IDS, MAX_VALUES_PER_KEY, parse_event, parse_pairs


def test_pairs_are_decoded_one_by_one() -> None:
    raw = b"a=1&b=x%26y%3Dz&c=hello+world&d=caf%C3%A9&&=skip&e"
    assert parse_pairs(raw) == [
        ("a", "1"),
        ("b", "x&y=z"),
        ("c", "hello world"),
        ("d", "café"),
        ("e", ""),
    ]


@pytest.mark.parametrize("raw", [b"a=%", b"a=%2", b"a=%g0", b"a=%ff", b"%00=1", b"a=%00"])
def test_malformed_pairs(raw: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_pairs(raw)
    assert caught.value.code is Code.MALFORMED and caught.value.status == 400


def test_signals_by_prefix() -> None:
    req = parse_event(
        [
            ("c_section", "sports"),
            ("section", "news"),
            ("k", "v1,v2"),
            ("p_age", "24"),
            ("h_referer", "spoofed"),
            ("d_rtbd", "json"),
            ("d_cts", "2"),
            ("d_dst", "1"),
            ("d_cid", "1234\x01abc"),
            ("d_cid", "99\x01def"),
            ("d_sid", "100,101"),
            ("gdpr", "1"),
            ("gdpr_consent", "CO"),
            ("d_unknown", "ignored"),
        ],
        {b"referer": b"https://pub.test/a", b"user-agent": b"UA", b"host": b"px.test"},
    )
    assert req.signals == {
        "c_section": ["sports"],
        "section": ["news"],
        "k": ["v1", "v2"],
        "h_referer": ["https://pub.test/a"],
        "h_user-agent": ["UA"],
        "h_host": ["px.test"],
    }
    assert req.private == {"p_age": ["24"]}
    assert req.json and req.cts == 2 and req.dests
    assert req.declared_ids == [(1234, "abc"), (99, "def")]
    assert req.trait_sids == [100, 101]
    assert req.consent == {"gdpr": "1", "gdpr_consent": "CO"}


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_with_311(raw: bytes) -> None:
    try:
        parse_event(parse_pairs(raw))
    except RequestError as exc:
        assert exc.code is Code.MALFORMED


@given(st.lists(st.tuples(st.text(min_size=1), st.text()), max_size=8))
def test_encoded_pairs_round_trip(pairs: list[tuple[str, str]]) -> None:
    from urllib.parse import urlencode

    pairs = [(k, v) for k, v in pairs if "\x00" not in k + v]
    assert parse_pairs(urlencode(pairs).encode()) == pairs


def test_only_the_keys_a_rule_names_are_kept() -> None:
    """TraitIndex.keys: the signals no rule looks at are left out (and their values
    never split); system keys and consent are read whatever the rules."""
    req = parse_event(
        [
            ("c_section", "sports"),
            ("c_price", "12"),
            ("p_age", "24"),
            ("p_x", "1"),
            ("d_rtbd", "json"),
            ("gdpr", "0"),
        ],
        {b"referer": b"https://a.test/", b"user-agent": b"TestBot"},
        frozenset({"c_section", "p_age", "h_user-agent"}),
    )
    assert req.signals == {"c_section": ["sports"], "h_user-agent": ["TestBot"]}
    assert req.private == {"p_age": ["24"]}
    assert req.json and req.consent == {"gdpr": "0"}


def test_a_key_keeps_its_first_distinct_values_up_to_the_cap() -> None:
    """The rules see at most MAX_VALUES_PER_KEY distinct values of a key: a request's
    cost is its values times the rules on the key."""
    many = ",".join(str(i % 300) for i in range(3000))
    req = parse_event(parse_pairs(f"c_s={many}&c_s=x&p_k={many}".encode()))
    assert req.signals["c_s"] == [str(i) for i in range(MAX_VALUES_PER_KEY)]
    assert req.private["p_k"] == [str(i) for i in range(MAX_VALUES_PER_KEY)]
    few = parse_event(parse_pairs(b"c_s=b,a,b&c_s=c"))
    assert few.signals["c_s"] == ["b", "a", "c"]


def test_at_most_max_declared_ids() -> None:
    def cids(n: int, repeat: int = 1) -> bytes:
        return "&".join(f"d_cid=7%01u{i % n}" for i in range(n * repeat)).encode()

    assert len(parse_event(parse_pairs(cids(MAX_DECLARED_IDS, 3))).declared_ids) == 100
    with pytest.raises(RequestError) as refused:
        parse_event(parse_pairs(cids(MAX_DECLARED_IDS + 1)))
    assert refused.value.code == Code.MALFORMED

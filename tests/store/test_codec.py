from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from service.store.codec import (
    build_record,
    decode_uid,
    encode_uid,
    parse_record,
    read_varint,
    uuid16,
    uuid_from16,
    varint,
)

PRINTABLE = st.text(alphabet=string.printable.strip(), min_size=1, max_size=256)


@given(PRINTABLE)
def test_any_uid_round_trips(uid: str) -> None:
    assert decode_uid(encode_uid(uid)) == uid


@given(st.uuids())
def test_uuids_pack_to_17_bytes(value: object) -> None:
    text = str(value)
    assert len(encode_uid(text)) == 17 and decode_uid(encode_uid(text)) == text
    assert decode_uid(encode_uid(text.upper())) == text.upper()


@given(st.integers(min_value=0, max_value=10**38 - 1))
def test_visitor_uuid_packs_to_16_bytes(n: int) -> None:
    uuid = f"{n:038d}"
    assert len(uuid16(uuid)) == 16 and uuid_from16(uuid16(uuid)) == uuid


@given(st.integers(min_value=0, max_value=2**63))
def test_varint(n: int) -> None:
    assert read_varint(varint(n) + b"tail") == (n, len(varint(n)))


@given(st.dictionaries(st.integers(1, 2**31), st.binary(min_size=2, max_size=300), max_size=20))
def test_records_round_trip(entries: dict[int, bytes]) -> None:
    assert parse_record(build_record(20_000, entries)) == (20_000, entries)

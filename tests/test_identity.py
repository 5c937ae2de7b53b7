from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from service.identity import (
    OPT_OUT,
    CookieSigner,
    Visitor,
    VisitorKind,
    is_uuid,
    needs_touch,
    new_uuid,
)


def test_uuid_is_38_random_digits() -> None:
    uuids = {new_uuid() for _ in range(1000)}
    assert len(uuids) == 1000
    assert all(is_uuid(u) for u in uuids)
    assert {u[0] for u in uuids} == set("0123456789")  # leading zeros are kept


def test_sign_and_verify_with_rotation() -> None:
    uuid = new_uuid()
    old = CookieSigner(["k1"])
    rotated = CookieSigner(["k2", "k1"])
    assert rotated.verify(old.sign(uuid)) is not None
    assert rotated.verify(old.sign(uuid))[0] == uuid  # type: ignore[index]
    assert old.verify(rotated.sign(uuid)) is None  # the newest key signs
    assert CookieSigner(["k2"]).verify(rotated.sign(uuid)) is not None


def test_resolve() -> None:
    signer = CookieSigner(["k"])
    uuid = new_uuid()
    known = signer.resolve(signer.sign(uuid))
    assert known.kind is VisitorKind.KNOWN and known.uuid == uuid and known.signed_at > 0
    assert signer.resolve(OPT_OUT).opted_out
    for absent in (None, "", "garbage", uuid, signer.sign("123"), signer.sign(uuid) + "x"):
        visitor = signer.resolve(absent)
        assert visitor.kind is VisitorKind.NEW and visitor.uuid != uuid
        assert visitor.uuid is not None and is_uuid(visitor.uuid)


def test_touch_at_most_once_a_day() -> None:
    day = 20_000 * 86400
    assert not needs_touch(Visitor(VisitorKind.NEW, new_uuid()), day)  # nothing to refresh
    assert not needs_touch(Visitor(VisitorKind.KNOWN, new_uuid(), day + 10), day + 3600)
    assert needs_touch(Visitor(VisitorKind.KNOWN, new_uuid(), day - 10), day + 3600)
    assert not needs_touch(Visitor(VisitorKind.OPTED_OUT, None), day)


@given(st.text(max_size=200))
def test_any_cookie_value_resolves(value: str) -> None:
    visitor = CookieSigner(["k"]).resolve(value)
    assert visitor.kind in (VisitorKind.NEW, VisitorKind.OPTED_OUT)


def test_a_fresh_cookie_is_sent_back_as_it_is() -> None:
    signer = CookieSigner(["new", "old"])
    uuid = new_uuid()
    value = signer.sign(uuid)
    assert signer.resolve(value).reusable == value  # signed today with the newest key
    tomorrow = signer.resolve(value, now=time.time() + 86400)
    assert tomorrow.uuid == uuid and tomorrow.reusable is None  # re-signed once a day
    old = CookieSigner(["old"]).sign(uuid)
    rotated = signer.resolve(old)
    assert rotated.uuid == uuid and rotated.reusable is None  # re-signed with the new key

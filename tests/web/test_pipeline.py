"""The pieces of the browser endpoints' opening (service/web/pipeline.py), directly; the
order they run in is tests/web/test_refusals.py's, over HTTP."""

from __future__ import annotations

import pytest

from service.consent import evaluate
from service.errors import Code, RequestError
from service.web.pipeline import PrivacyRules, request_headers
from tests.test_consent import NO_VENDORS

GPC = {b"sec-gpc": b"1"}
NO_HEADERS: dict[bytes, bytes] = {}


@pytest.mark.parametrize("gdpr_default", [0, 1])
@pytest.mark.parametrize("vendor_id", [0, 2])
@pytest.mark.parametrize("honor_gpc", [False, True])
@pytest.mark.parametrize("headers", [NO_HEADERS, GPC], ids=["no GPC", "GPC"])
@pytest.mark.parametrize(
    "params",
    [{}, {"gdpr": "0"}, {"gdpr": "1"}, {"us_privacy": "1YYN"}, {"gdpr_consent": NO_VENDORS}],
    ids=["none", "gdpr=0", "gdpr=1", "us_privacy", "consent"],
)
def test_privacy_rules_answer_as_the_consent_rules_do(
    gdpr_default: int,
    vendor_id: int,
    honor_gpc: bool,
    headers: dict[bytes, bytes],
    params: dict[str, str],
) -> None:
    """A request without consent parameters is answered from what was decided at start;
    every answer is the one consent.evaluate gives."""
    rules = PrivacyRules(vendor_id=vendor_id, gdpr_default=gdpr_default, honor_gpc=honor_gpc)
    gpc = honor_gpc and headers is GPC
    try:
        expected: object = evaluate(params, vendor_id=vendor_id, gdpr_default=gdpr_default, gpc=gpc)
    except RequestError as exc:
        expected = exc.code
    for _ in range(2):  # the second answer is the first's again: nothing shared leaks
        try:
            got: object = rules.evaluate(params, headers)
        except RequestError as exc:
            got = exc.code
            assert exc.__traceback__ is not None and exc.status == (
                200 if exc.code.is_policy else 400
            )
        assert got == expected


def test_a_refusal_decided_at_start_is_raised_afresh() -> None:
    rules = PrivacyRules(vendor_id=2, gdpr_default=1, honor_gpc=False)
    raised = []
    for _ in range(2):
        with pytest.raises(RequestError) as refused:
            rules.evaluate({}, NO_HEADERS)
        assert refused.value.code is Code.CONSENT_MISSING
        raised.append(refused.value)
    assert raised[0] is not raised[1]


def test_several_cookie_headers_count_as_one() -> None:
    scope = {"headers": [(b"cookie", b"a=1"), (b"host", b"x"), (b"cookie", b"uuid=2")]}
    assert request_headers(scope)[b"cookie"] == b"a=1; uuid=2"
    assert request_headers({"headers": [(b"cookie", b"a=1")]})[b"cookie"] == b"a=1"

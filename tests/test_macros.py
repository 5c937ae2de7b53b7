from __future__ import annotations

import pytest

from service.macros import Template, TemplateError, consent_values
from tests.gpp_encoder import gpp, us_section
from tests.test_consent import tcf


@pytest.mark.parametrize(
    ("url", "values", "expected"),
    [
        ("https://p.test/m?aam=${DD_UUID}", {"DD_UUID": "123"}, "https://p.test/m?aam=123"),
        (
            "https://p.test/m?cb=${CALLBACK}",
            {"CALLBACK": "https://px.test/ibs:dpid=1&dpuuid=$UID"},
            "https://p.test/m?cb=https%3A%2F%2Fpx.test%2Fibs%3Adpid%3D1%26dpuuid%3D%24UID",
        ),
        (
            "https://p.test/?d=%did%&r=%RND%",
            {"DD_UUID": "9", "DD_RAND": "42"},
            "https://p.test/?d=9&r=42",
        ),
        ("https://p.test/?p=%http_proto%", {"HTTP_PROTO": "https"}, "https://p.test/?p=https"),
        ("https://p.test/?s=%ALIAS%", {"ALIAS": "a b&c"}, "https://p.test/?s=a%20b%26c"),
        ("https://p.test/?u=${DP_UUID}", {}, "https://p.test/?u="),  # unknown value: empty
        (
            "https://p.test/?c=${GDPR_CONSENT_755}&g=${GDPR}",
            {"GDPR_CONSENT": "CO+x/y", "GDPR": "1"},
            "https://p.test/?c=CO%2Bx%2Fy&g=1",
        ),
        ("https://p.test/a%2Fb?x=%zz%", {}, "https://p.test/a%2Fb?x=%zz%"),  # literal %
    ],
)
def test_macros_expand_url_encoded_once(url: str, values: dict[str, str], expected: str) -> None:
    assert Template.parse(url).render(values) == expected


@pytest.mark.parametrize(
    "url", ["https://p.test/${UUID}", "https://p.test/${dd_uuid}", "https://p.test/${}"]
)
def test_unknown_macros_are_errors(url: str) -> None:
    with pytest.raises(TemplateError, match="unknown macro"):
        Template.parse(url)


@pytest.mark.parametrize(
    "url",
    [
        "${}",
        "%http_proto%://p.test/",  # the scheme
        "https://${DP_UUID}/",  # the host
        "https://p.test${DD_UUID}/",
        "https://%alias%.p.test/",
        "https://${GPP}:x@p.test/",  # the userinfo
        "https://p.test:${DD_RAND}/",  # the port
        "https://p.test${GPP}",  # no path at all
    ],
)
def test_macros_before_the_path_are_errors(url: str) -> None:
    with pytest.raises(TemplateError, match="before the path"):
        Template.parse(url)


def test_macros_listed() -> None:
    assert Template.parse("https://p.test/${DD_UUID}?x=%rnd%").macros == {"DD_UUID", "DD_RAND"}


def test_consent_values() -> None:
    values = consent_values({"gdpr_consent": "CO", "us_privacy": "1YNN"}, gdpr=1)
    assert values == {
        "GDPR": "1",
        "GDPR_CONSENT": "CO",
        "US_PRIVACY": "1YNN",
        "GPP": "",
        "GPP_SID": "",
    }


def test_a_gpp_only_requests_tcf_string_is_its_gdpr_consent() -> None:
    """As Prebid Server fills it: while GDPR applies, gdpr_consent, else gpp's section 2."""
    text = tcf(max_vendor=3, bitfield="101")
    consent = {"gpp": gpp([(2, text), (7, us_section(7))]), "gpp_sid": "2"}
    assert consent_values(consent, gdpr=1)["GDPR_CONSENT"] == text
    assert consent_values({**consent, "gdpr_consent": "CO"}, gdpr=1)["GDPR_CONSENT"] == "CO"
    assert consent_values(consent, gdpr=0)["GDPR_CONSENT"] == ""
    assert consent_values({"gpp": "junk~"}, gdpr=1)["GDPR_CONSENT"] == ""

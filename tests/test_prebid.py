"""The Prebid Server user-sync decisions (service/prebid.py), without HTTP or Redis."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest

from service.config import Partner
from service.consent import OptOut, Privacy, decode_tcf
from service.errors import Code
from service.prebid import (
    CONSENT_REQUIRED,
    CONSENT_REQUIRED_ASSUMED,
    BidderFilter,
    Bidders,
    CookieSyncOutcome,
    CookieSyncRequest,
    PrebidError,
    SetuidOutcome,
    Status,
    SyncType,
    TypeFilter,
    buyeruids,
    choose,
    cookie_sync_answer,
    cookie_sync_refusal,
    missing_consent,
    parse_cookie_sync,
    parse_setuid,
    setuid_callback,
    setuid_refusal,
    usersync_url,
)
from tests.test_consent import TRAFFECTIVE

TODAY = 20_000
PUBLIC = "https://sync.example.com"


def partner(dpid: int, name: str, **keys: Any) -> Partner:
    values: dict[str, Any] = {
        "sync_url": f"https://{name.lower()}.test/sync?u=${{DD_UUID}}&r=${{CALLBACK}}",
        "callback_uid_macro": "$UID",
        "redirect_domains": [],
        "refresh_days": 7,
        "mapping_ttl_days": 90,
        "gvl_id": 0,
        "realtime_url": "",
        "realtime_traits": {},
        **keys,
    }
    return Partner(dpid=dpid, name=name, **values)


BIDDERS = Bidders(
    [
        partner(1, "Acme"),
        partner(2, "framer", sync_type="iframe", gvl_id=3),
        partner(3, "both", iframe_sync_url="https://both.test/frame?r=${CALLBACK}", gvl_id=284),
        partner(4, "nosync", sync_url=""),
        partner(5, "weekly", refresh_days=2),
    ]
)
OPEN = Privacy(gdpr_applies=False, tcf=None)
GDPR = Privacy(gdpr_applies=True, tcf=decode_tcf(TRAFFECTIVE))
SALE_OPT_OUT = Privacy(gdpr_applies=False, tcf=None, opt_out=OptOut.US_PRIVACY)


def request(**fields: Any) -> CookieSyncRequest:
    return parse_cookie_sync(json.dumps(fields).encode())


def keep_order(codes: list[str]) -> None:
    """A shuffle that leaves the order as it is."""


def outcomes(req: CookieSyncRequest, **kwargs: Any) -> list[tuple[str, Status, str | None]]:
    synced = kwargs.pop("synced", {})
    privacy = kwargs.pop("privacy", OPEN)
    shuffle = kwargs.pop("shuffle", keep_order)
    return [
        (e.code, e.status, e.sync_type and str(e.sync_type))
        for e in choose(req, BIDDERS, synced, privacy, TODAY, shuffle)
    ]


@pytest.mark.parametrize(
    ("description", "body", "message"),
    [
        ("not JSON", b"{bad", "JSON parsing failed: Expecting property name"),
        ("an empty body", b"", "JSON parsing failed: Expecting value"),
        ("a blank body", b" \n", "JSON parsing failed: Expecting value"),
        ("not UTF-8", b'{"bidders": ["\xff"]}', "JSON parsing failed: "),
        (
            "a lone surrogate in a bidder code",
            b'{"bidders": ["\\ud800"], "debug": true}',
            "JSON parsing failed: a string holds a lone surrogate escape",
        ),
        (
            "a lone surrogate in gpp",
            b'{"bidders": ["acme"], "gpp": "\\ud800"}',
            "JSON parsing failed: a string holds a lone surrogate escape",
        ),
        (
            "a lone surrogate in gdpr_consent",
            b'{"bidders": ["acme"], "gdpr": 0, "gdpr_consent": "\\udc00x"}',
            "JSON parsing failed: a string holds a lone surrogate escape",
        ),
        (
            "a lone surrogate as a filter mode",
            b'{"filterSettings": {"iframe": {"filter": "\\ud800"}}}',
            "JSON parsing failed: a string holds a lone surrogate escape",
        ),
        (
            "a lone surrogate as filter bidders",
            b'{"filterSettings": {"iframe": {"bidders": "\\ud800"}}}',
            "JSON parsing failed: a string holds a lone surrogate escape",
        ),
        (
            "a lone surrogate in a key",
            b'{"\\ud800": 1}',
            "JSON parsing failed: a string holds a lone surrogate escape",
        ),
        (
            "gpp_sid not integers",
            b'{"gpp_sid": "2,x"}',
            'strconv.ParseInt: parsing "x": invalid syntax',
        ),
        ("gpp_sid with an empty entry", b'{"gpp_sid": "2,,6"}', 'parsing "": invalid syntax'),
        ("gpp_sid with a space", b'{"gpp_sid": "2, 6"}', 'parsing " 6": invalid syntax'),
        ("gpp_sid beyond int8", b'{"gpp_sid": "128"}', 'parsing "128": value out of range'),
        ("gpp_sid a list of others", b'{"gpp_sid": [2, 1.5]}', "parsing 1.5: invalid syntax"),
        ("not an object", b"[1]", "JSON parsing failed: the request must be a JSON object"),
        ("bidders not a list", b'{"bidders": "acme"}', "bidders must be an array of strings"),
        ("a bidder not a string", b'{"bidders": [1]}', "bidders must be an array of strings"),
        ("gdpr a string", b'{"gdpr": "1"}', "JSON parsing failed: gdpr must be an integer"),
        ("gdpr out of range", b'{"gdpr": 2}', "the gdpr field must be either 0 or 1, not 2"),
        ("consent not a string", b'{"gdpr_consent": 5}', "gdpr_consent must be a string"),
        ("limit not an integer", b'{"limit": "5"}', "limit must be an integer"),
        ("debug not a boolean", b'{"debug": 1}', "debug must be true or false"),
        ("filterSettings not an object", b'{"filterSettings": 1}', "must be an object"),
        (
            "unknown filter mode",
            b'{"filterSettings": {"iframe": {"bidders": "*", "filter": "only"}}}',
            "error parsing filtersettings.iframe: invalid filter value 'only'. must be either "
            "'include' or 'exclude'",
        ),
        (
            "bidders a string other than *",
            b'{"filterSettings": {"image": {"bidders": "acme"}}}',
            "error parsing filtersettings.image: invalid bidders value `acme`. must either be "
            "'*' or a string array",
        ),
        (
            "bidders of another type",
            b'{"filterSettings": {"image": {"bidders": 3}}}',
            "error parsing filtersettings.image: invalid bidders type. must either be a string "
            "'*' or a string array of bidders",
        ),
    ],
)
def test_cookie_sync_bad_requests(description: str, body: bytes, message: str) -> None:
    with pytest.raises(PrebidError) as caught:
        parse_cookie_sync(body)
    assert caught.value.outcome is CookieSyncOutcome.BAD_REQUEST, description
    assert message in caught.value.message, description


def test_cookie_sync_request_fields() -> None:
    req = parse_cookie_sync(
        b'{"bidders": ["a"], "gdpr": 1, "gdpr_consent": "x", "us_privacy": "1YNN", '
        b'"gpp": "DBA", "gpp_sid": [2, 6], "limit": -3, "debug": true, "account": "1", '
        b'"coopSync": false, "filterSettings": {"iframe": {"bidders": ["ACME"], '
        b'"filter": "exclude"}}}'
    )
    assert req.bidders == ("a",) and req.limit == 0 and req.debug
    assert req.consent == {
        "gdpr": "1",
        "gdpr_consent": "x",
        "us_privacy": "1YNN",
        "gpp": "DBA",
        "gpp_sid": "2,6",
    }
    assert req.filter == TypeFilter(iframe=BidderFilter(False, frozenset({"acme"})))
    assert parse_cookie_sync(b"{}") == CookieSyncRequest((), {})
    assert parse_cookie_sync(b'{"bidders": []}') == CookieSyncRequest((), {})
    # The surrogate pair of one character is Unicode: only lone ones are refused.
    assert parse_cookie_sync(b'{"bidders": ["\\ud83d\\ude00"]}').bidders == ("\U0001f600",)
    assert parse_cookie_sync(b'{"gpp_sid": "+02,-1"}').consent == {"gpp_sid": "2,-1"}


@pytest.mark.parametrize(
    ("description", "consent", "gdpr_default", "message"),
    [
        ("gdpr=1 without a string", {"gdpr": "1"}, 0, CONSENT_REQUIRED),
        ("gpp_sid 2 without a string", {"gpp_sid": "6,2"}, 0, CONSENT_REQUIRED),
        ("gdpr assumed by the default", {}, 1, CONSENT_REQUIRED_ASSUMED),
        ("gdpr=0 exempts from the default", {"gdpr": "0"}, 1, None),
        ("gdpr=1 with a string", {"gdpr": "1", "gdpr_consent": "x"}, 0, None),
        ("no gdpr, default 0", {}, 0, None),
    ],
)
def test_missing_consent(
    description: str, consent: dict[str, str], gdpr_default: int, message: str | None
) -> None:
    assert missing_consent(consent, gdpr_default) == message, description


@pytest.mark.parametrize(
    ("description", "fields", "kwargs", "expected"),
    [
        (
            "no bidders named: every partner, iframe preferred",
            {},
            {},
            [
                ("Acme", Status.OK, "redirect"),
                ("framer", Status.OK, "iframe"),
                ("both", Status.OK, "iframe"),
                ("nosync", Status.NO_SYNC_CONFIG, None),
                ("weekly", Status.OK, "redirect"),
            ],
        ),
        (
            "case-insensitive codes, a second spelling is a duplicate, unknown ones named",
            {"bidders": ["ACME", "zzz", "acme", "Framer"]},
            {},
            [
                ("ACME", Status.OK, "redirect"),
                ("zzz", Status.UNKNOWN_BIDDER, None),
                ("acme", Status.DUPLICATE, None),
                ("Framer", Status.OK, "iframe"),
            ],
        ),
        (
            "the same code again is skipped silently",
            {"bidders": ["acme", "zzz", "acme", "zzz", "ACME"]},
            {},
            [
                ("acme", Status.OK, "redirect"),
                ("zzz", Status.UNKNOWN_BIDDER, None),
                ("ACME", Status.DUPLICATE, None),
            ],
        ),
        (
            "with a limit, the bidders are taken in the shuffled order",
            {"bidders": ["acme", "framer", "both"], "limit": 2},
            {"shuffle": list.reverse},
            [("both", Status.OK, "iframe"), ("framer", Status.OK, "iframe")],
        ),
        (
            "with a limit and no bidders named, every partner shuffled",
            {"limit": 1},
            {"shuffle": list.reverse},
            [("weekly", Status.OK, "redirect")],
        ),
        (
            "without a limit, no shuffle: every bidder is evaluated anyway",
            {"bidders": ["acme", "framer"]},
            {"shuffle": list.reverse},
            [("acme", Status.OK, "redirect"), ("framer", Status.OK, "iframe")],
        ),
        (
            "limit counts the syncs chosen, not the bidders evaluated",
            {"bidders": ["zzz", "acme", "nosync", "framer", "both"], "limit": 2},
            {},
            [
                ("zzz", Status.UNKNOWN_BIDDER, None),
                ("acme", Status.OK, "redirect"),
                ("nosync", Status.NO_SYNC_CONFIG, None),
                ("framer", Status.OK, "iframe"),
            ],
        ),
        (
            "a fresh mapping is already synced, a stale one is synced again",
            {"bidders": ["acme", "weekly"]},
            {"synced": {1: TODAY - 6, 5: TODAY - 2}},
            [("acme", Status.ALREADY_SYNCED, None), ("weekly", Status.OK, "redirect")],
        ),
        (
            "iframes excluded: the redirect sync, or none",
            {
                "bidders": ["both", "framer", "acme"],
                "filterSettings": {"iframe": {"bidders": "*", "filter": "exclude"}},
            },
            {},
            [
                ("both", Status.OK, "redirect"),
                ("framer", Status.REJECTED_BY_FILTER, None),
                ("acme", Status.OK, "redirect"),
            ],
        ),
        (
            "images only for listed bidders",
            {
                "bidders": ["acme", "both"],
                "filterSettings": {
                    "image": {"bidders": ["BOTH"]},
                    "iframe": {"bidders": "*", "filter": "exclude"},
                },
            },
            {},
            [("acme", Status.REJECTED_BY_FILTER, None), ("both", Status.OK, "redirect")],
        ),
        (
            "GDPR: only partners whose vendor is consented",
            {"bidders": ["acme", "framer", "both"]},
            {"privacy": GDPR},
            [
                ("acme", Status.BLOCKED_BY_PRIVACY, None),  # gvl_id 0
                ("framer", Status.OK, "iframe"),  # vendor 3 consented
                ("both", Status.BLOCKED_BY_PRIVACY, None),  # vendor 284 not
            ],
        ),
        (
            "opt-out of sale: nobody",
            {"bidders": ["acme", "framer"]},
            {"privacy": SALE_OPT_OUT},
            [
                ("acme", Status.BLOCKED_BY_PRIVACY, None),
                ("framer", Status.BLOCKED_BY_PRIVACY, None),
            ],
        ),
        (
            "an empty list: every partner",
            {"bidders": []},
            {},
            [
                ("Acme", Status.OK, "redirect"),
                ("framer", Status.OK, "iframe"),
                ("both", Status.OK, "iframe"),
                ("nosync", Status.NO_SYNC_CONFIG, None),
                ("weekly", Status.OK, "redirect"),
            ],
        ),
    ],
)
def test_choose(
    description: str,
    fields: dict[str, Any],
    kwargs: dict[str, Any],
    expected: list[tuple[str, Status, str | None]],
) -> None:
    assert outcomes(request(**fields), **kwargs) == expected, description


def test_status_labels_and_messages() -> None:
    """Prebid Server's syncer_requests labels and debug messages, one per status."""
    assert {s: (s.label, s.message) for s in Status} == {
        Status.OK: ("ok", ""),
        Status.UNKNOWN_BIDDER: ("", "Unsupported bidder"),
        Status.DUPLICATE: ("", "Duplicate bidder synced as "),
        Status.NO_SYNC_CONFIG: ("", "No sync config"),
        Status.REJECTED_BY_FILTER: ("rejected_by_filter", "Rejected by request filter"),
        Status.ALREADY_SYNCED: ("already_synced", "Already in sync"),
        Status.BLOCKED_BY_PRIVACY: ("privacy_blocked", "Rejected by privacy"),
    }
    assert [(o.label, o.status) for o in CookieSyncOutcome] == [
        ("ok", 200),
        ("bad_request", 400),
        ("opt_out", 401),
        ("gdpr_blocked_host_cookie", 200),
    ]
    assert CookieSyncOutcome.OPT_OUT.message == "User has opted out"
    assert cookie_sync_refusal(Code.CONSENT_REFUSED) is CookieSyncOutcome.GDPR_BLOCKED
    assert cookie_sync_refusal(Code.CONSENT_UNPARSABLE) is CookieSyncOutcome.GDPR_BLOCKED


def test_usersync_url_and_answer() -> None:
    consent = {"gdpr": "1", "gdpr_consent": "CO x", "gpp_sid": "2"}
    (ok,) = choose(request(bidders=["framer"]), BIDDERS, {}, GDPR, TODAY, keep_order)
    callback = setuid_callback(PUBLIC, BIDDERS.all[1], SyncType.IFRAME, consent)
    assert callback == (  # the uid last: some partners append theirs to the URL
        f"{PUBLIC}/setuid?bidder=framer&gdpr=1&gdpr_consent=CO%20x&gpp=&gpp_sid=2&f=b&uid=$UID"
    )
    url = usersync_url(
        ok,
        uuid="u1",
        partner_uid="",
        public_url=PUBLIC,
        proto="https",
        consent=consent,
        macros={},
        rand="7",
    )
    assert url == "https://framer.test/sync?u=u1&r=" + quote(callback, safe="")  # once
    dup = choose(request(bidders=["Framer", "FRAMER"]), BIDDERS, {}, OPEN, TODAY, keep_order)
    assert cookie_sync_answer(True, [(dup[0], "u")], dup, debug=True) == {
        "status": "ok",
        "bidder_status": [  # the code as the request spelled it
            {"bidder": "Framer", "no_cookie": True, "usersync": {"url": "u", "type": "iframe"}}
        ],
        "debug": [{"bidder": "FRAMER", "error": "Duplicate bidder synced as framer"}],
    }
    assert cookie_sync_answer(False, [], dup, debug=False) == {
        "status": "no_cookie",
        "bidder_status": [],
    }
    assert cookie_sync_answer(False, [(dup[0], "u")], dup[:1], debug=True) == {
        "status": "no_cookie",
        "bidder_status": [
            {"bidder": "Framer", "no_cookie": True, "usersync": {"url": "u", "type": "iframe"}}
        ],
    }  # nothing left out: no "debug", as Prebid Server omits it


@pytest.mark.parametrize(
    ("description", "params", "outcome", "message"),
    [
        (
            "no bidder",
            {"uid": "x"},
            SetuidOutcome.SYNCER_UNKNOWN,
            '"bidder" query param is required',
        ),
        (
            "unknown bidder",
            {"bidder": "zzz"},
            SetuidOutcome.SYNCER_UNKNOWN,
            "The bidder name provided is not supported by Prebid Server",
        ),
        (
            "bad format",
            {"bidder": "acme", "f": "x"},
            SetuidOutcome.BAD_REQUEST,
            '"f" query param is invalid. must be "b" or "i"',
        ),
        (
            "bad gdpr",
            {"bidder": "acme", "gdpr": "2"},
            SetuidOutcome.BAD_REQUEST,
            "the gdpr query param must be either 0 or 1. You gave 2",
        ),
        (
            "gdpr without consent",
            {"bidder": "acme", "gdpr": "1"},
            SetuidOutcome.BAD_REQUEST,
            "gdpr_consent is required when gdpr=1",
        ),
        (
            "uid with a space",
            {"bidder": "acme", "uid": "a b"},
            SetuidOutcome.BAD_REQUEST,
            "uid must be 1-256 printable ASCII characters",
        ),
    ],
)
def test_setuid_refusals(
    description: str, params: dict[str, str], outcome: SetuidOutcome, message: str
) -> None:
    with pytest.raises(PrebidError) as caught:
        parse_setuid(params, BIDDERS)
    assert (caught.value.outcome, caught.value.message) == (outcome, message), description


@pytest.mark.parametrize(
    ("description", "params", "bidder", "fmt"),
    [
        ("redirect partner: image by default", {"bidder": "ACME", "uid": "u"}, "Acme", "i"),
        ("iframe partner: blank HTML by default", {"bidder": "framer", "uid": "u"}, "framer", "b"),
        ("asked for", {"bidder": "framer", "uid": "u", "f": "I"}, "framer", "i"),
        ("empty f: the default", {"bidder": "acme", "f": ""}, "Acme", "i"),
    ],
)
def test_setuid_formats(description: str, params: dict[str, str], bidder: str, fmt: str) -> None:
    req = parse_setuid(params, BIDDERS)
    assert (req.bidder.name, req.format) == (bidder, fmt), description


def test_setuid_consent_refusals() -> None:
    unparsable = setuid_refusal(Code.CONSENT_UNPARSABLE, "not base64url")
    assert (unparsable.outcome, unparsable.message) == (
        SetuidOutcome.BAD_REQUEST,
        "gdpr_consent was invalid. not base64url",
    )
    refused = setuid_refusal(Code.CONSENT_REFUSED, "")
    assert (refused.outcome.status, refused.message) == (
        451,
        "The gdpr_consent string prevents cookies from being saved",
    )


def test_buyeruids() -> None:
    assert buyeruids(BIDDERS.names, {1: "a", 2: "b", 99: "gone"}) == {
        "buyeruids": {"Acme": "a", "framer": "b"}
    }
    assert buyeruids(BIDDERS.names, {}) == {}

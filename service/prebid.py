"""Prebid Server-compatible user sync (SPEC §15), free of HTTP and Redis: which bidders
a /cookie_sync hands syncs out for, its filter settings, and every outcome as the
metric label, debug message and status code Prebid Server gives it.

Bidders are the configured partners, their `name` the bidder code, matched
case-insensitively. What Prebid Server keeps in its `uids` cookie is the match table."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum, StrEnum
from typing import Any, Final
from urllib.parse import quote

from .config import Partner
from .consent import GdprScope, Privacy, consent_string, gdpr_scope
from .errors import Code
from .macros import Template
from .numbers import parse_small_int
from .sync import OutboundPartner, sync_url, valid_uid

CONSENT_FIELDS: Final = ("gdpr", "gdpr_consent", "us_privacy", "gpp", "gpp_sid")
CONSENT_REQUIRED: Final = "gdpr_consent is required if gdpr=1"
CONSENT_REQUIRED_ASSUMED: Final = (
    "gdpr_consent is required. gdpr is not specified and is assumed to be 1 by the server. "
    "set gdpr=0 to exempt this request"
)
INVALID_BIDDERS_TYPE: Final = (
    "invalid bidders type. must either be a string '*' or a string array of bidders"
)
_INT8: Final = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.ParseInt(s, 10, 8) reads

# Shuffles a list in place (random.Random.shuffle); injected so tests are exact.
Shuffle = Callable[[list[str]], None]


class SyncType(StrEnum):
    IFRAME = "iframe"
    REDIRECT = "redirect"

    @property
    def answer(self) -> str:
        """The /setuid answer this sync type wants: b (blank HTML) or i (image)."""
        return "b" if self is SyncType.IFRAME else "i"


PREFERENCE: Final = (SyncType.IFRAME, SyncType.REDIRECT)  # iframe first, when allowed


@dataclass(frozen=True)
class Bidder:
    """A partner as a Prebid bidder: its sync URL per sync type it supports."""

    dpid: int
    name: str
    gvl_id: int
    refresh_days: int
    syncs: Mapping[SyncType, OutboundPartner]
    default_type: SyncType

    @classmethod
    def of(cls, partner: Partner) -> Bidder:
        base = OutboundPartner.of(partner)
        declared = SyncType(partner.sync_type)
        syncs: dict[SyncType, OutboundPartner] = {}
        if partner.sync_url:
            syncs[declared] = base
        if partner.iframe_sync_url:
            frame = Template.parse(partner.iframe_sync_url)
            syncs[SyncType.IFRAME] = replace(base, template=frame, render="iframe")
        default = declared if declared in syncs or not syncs else next(iter(syncs))
        return cls(partner.dpid, partner.name, partner.gvl_id, partner.refresh_days, syncs, default)


class Bidders:
    """The configured partners by bidder code, case-insensitively."""

    def __init__(self, partners: Iterable[Partner]) -> None:
        self.all = [Bidder.of(p) for p in partners]
        self._by_code = {b.name.lower(): b for b in self.all}
        self.names = {b.dpid: b.name for b in self.all}

    def get(self, code: str) -> Bidder | None:
        return self._by_code.get(code.lower())


# --------------------------------------------------------------------------- outcomes


class CookieSyncOutcome(Enum):
    """A /cookie_sync answer: (metric label, HTTP status, message)."""

    OK = ("ok", 200, "")
    BAD_REQUEST = ("bad_request", 400, "")  # the message says what was wrong
    OPT_OUT = ("opt_out", 401, "User has opted out")
    GDPR_BLOCKED = ("gdpr_blocked_host_cookie", 200, "")  # answered, with no syncs

    def __init__(self, label: str, status: int, message: str) -> None:
        self.label = label
        self.status = status
        self.message = message


class SetuidOutcome(Enum):
    """A /setuid answer: (metric label, HTTP status, message)."""

    OK = ("ok", 200, "")
    BAD_REQUEST = ("bad_request", 400, "")
    OPT_OUT = ("opt_out", 401, "")
    GDPR_BLOCKED = (
        "gdpr_blocked_host_cookie",
        451,
        "The gdpr_consent string prevents cookies from being saved",
    )
    SYNCER_UNKNOWN = ("syncer_unknown", 400, "")
    # Prebid Server answers a sync its activity controls deny (syncUser) with a bare 451;
    # here: an opt-out of sale or sharing, or the partner's [[partners.privacy]] rules.
    PRIVACY_BLOCKED = ("privacy_blocked", 451, "")
    # Not Prebid Server's, the cookie bounce (SPEC §3): a browser that came without our
    # cookie while [cookies] bounce is on is sent back to the same URL with a fresh one;
    # when it comes back still without one, nothing is stored (it would be a mapping no
    # browser can ever present).
    BOUNCE = ("bounce", 302, "")
    COOKIES_BLOCKED = ("cookies_blocked", 200, "")

    def __init__(self, label: str, status: int, message: str) -> None:
        self.label = label
        self.status = status
        self.message = message


class Status(Enum):
    """One bidder's evaluation in a /cookie_sync: (syncer_requests label or "" when
    there is no syncer to count it for, debug message)."""

    OK = ("ok", "")
    UNKNOWN_BIDDER = ("", "Unsupported bidder")
    DUPLICATE = ("", "Duplicate bidder synced as ")
    NO_SYNC_CONFIG = ("", "No sync config")
    REJECTED_BY_FILTER = ("rejected_by_filter", "Rejected by request filter")
    ALREADY_SYNCED = ("already_synced", "Already in sync")
    BLOCKED_BY_PRIVACY = ("privacy_blocked", "Rejected by privacy")

    def __init__(self, label: str, message: str) -> None:
        self.label = label
        self.message = message


class SyncerSet(StrEnum):
    """A /setuid of one bidder, the syncer_sets label."""

    OK = "ok"
    CLEARED = "cleared"


class PrebidError(Exception):
    """A request refused with a Prebid Server outcome and its message."""

    def __init__(self, outcome: CookieSyncOutcome | SetuidOutcome, message: str = "") -> None:
        super().__init__(message or outcome.message)
        self.outcome = outcome
        self.message = message or outcome.message


# --------------------------------------------------------------------------- /cookie_sync


@dataclass(frozen=True)
class BidderFilter:
    """filterSettings.iframe or .image: include or exclude these bidders (None: all)."""

    include: bool = True
    codes: frozenset[str] | None = None  # lower case

    def allows(self, code: str) -> bool:
        listed = self.codes is None or code.lower() in self.codes
        return listed == self.include


@dataclass(frozen=True)
class TypeFilter:
    iframe: BidderFilter = BidderFilter()
    redirect: BidderFilter = BidderFilter()

    def allows(self, sync_type: SyncType, code: str) -> bool:
        rule = self.iframe if sync_type is SyncType.IFRAME else self.redirect
        return rule.allows(code)


@dataclass(frozen=True)
class CookieSyncRequest:
    bidders: tuple[str, ...]  # as spelled in the request; (): every configured bidder
    consent: dict[str, str]  # the consent fields given, as query-style strings
    limit: int = 0  # 0: no limit
    filter: TypeFilter = TypeFilter()
    debug: bool = False


def _bad(message: str) -> PrebidError:
    return PrebidError(CookieSyncOutcome.BAD_REQUEST, message)


def _parse_filter(raw: Any, name: str) -> BidderFilter:
    if raw is None:
        return BidderFilter()
    if not isinstance(raw, dict):
        raise _bad(f"JSON parsing failed: filterSettings.{name} must be an object")
    mode = raw.get("filter", "include")
    if mode not in ("include", "exclude"):
        raise _bad(
            f"error parsing filtersettings.{name}: invalid filter value '{mode}'. "
            "must be either 'include' or 'exclude'"
        )
    codes = raw.get("bidders", "*")
    if isinstance(codes, str):
        if codes != "*":
            raise _bad(
                f"error parsing filtersettings.{name}: invalid bidders value `{codes}`. "
                "must either be '*' or a string array"
            )
        return BidderFilter(mode == "include")
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise _bad(f"error parsing filtersettings.{name}: {INVALID_BIDDERS_TYPE}")
    return BidderFilter(mode == "include", frozenset(c.lower() for c in codes))


def _consent_field(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if key == "gdpr":
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad("JSON parsing failed: gdpr must be an integer")
        if value not in (0, 1):
            raise _bad(f"JSON parsing failed: the gdpr field must be either 0 or 1, not {value}")
        return str(value)
    if key == "gpp_sid" and isinstance(value, str | list):
        return _gpp_sid(value)
    if not isinstance(value, str):
        raise _bad(f"JSON parsing failed: {key} must be a string")
    return value


def _gpp_sid(value: str | list[Any]) -> str:
    """gpp_sid as Prebid Server reads it (comma-separated int8s, each refused as Go's
    strconv.ParseInt refuses it), written back canonically ("02" names section 2)."""
    tokens = value.split(",") if isinstance(value, str) else value
    sids = []
    read: dict[str, str] = {}  # each distinct token read once: "2,2,2…" is 16,000 tokens
    for token in tokens:
        text = str(token) if isinstance(token, int) and not isinstance(token, bool) else token
        if not isinstance(text, str):
            raise _bad(f"strconv.ParseInt: parsing {json.dumps(text)}: invalid syntax")
        canonical = read.get(text)
        if canonical is None:
            if not _INT8.fullmatch(text):
                raise _bad(f"strconv.ParseInt: parsing {json.dumps(text)}: invalid syntax")
            sid = parse_small_int(text, 3)
            if sid is None or not -128 <= sid <= 127:
                raise _bad(f"strconv.ParseInt: parsing {json.dumps(text)}: value out of range")
            canonical = read[text] = str(sid)
        sids.append(canonical)
    return ",".join(sids)


def _decode(body: bytes) -> Any:
    """The JSON document; refused when it is not JSON or holds a string that is not
    Unicode (a lone surrogate escape such as "\\ud800": nothing could echo it)."""
    try:
        doc = json.loads(body)
        json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise _bad("JSON parsing failed: a string holds a lone surrogate escape") from None
    except (ValueError, RecursionError) as exc:
        raise _bad(f"JSON parsing failed: {exc}") from None
    return doc


def parse_cookie_sync(body: bytes) -> CookieSyncRequest:
    """The request body, as Prebid Server reads it; PrebidError (400) when it cannot."""
    doc = _decode(body)
    if not isinstance(doc, dict):
        raise _bad("JSON parsing failed: the request must be a JSON object")
    bidders = doc.get("bidders")
    if bidders is not None and (
        not isinstance(bidders, list) or not all(isinstance(b, str) for b in bidders)
    ):
        raise _bad("JSON parsing failed: bidders must be an array of strings")
    limit = doc.get("limit", 0)
    if limit is None:
        limit = 0
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise _bad("JSON parsing failed: limit must be an integer")
    debug = doc.get("debug", False)
    if not isinstance(debug, bool):
        raise _bad("JSON parsing failed: debug must be true or false")
    settings = doc.get("filterSettings")
    if settings is not None and not isinstance(settings, dict):
        raise _bad("JSON parsing failed: filterSettings must be an object")
    settings = settings or {}
    consent = {
        key: value for key in CONSENT_FIELDS if (value := _consent_field(doc, key)) is not None
    }
    return CookieSyncRequest(
        tuple(bidders or ()),
        consent,
        max(limit, 0),
        TypeFilter(
            _parse_filter(settings.get("iframe"), "iframe"),
            _parse_filter(settings.get("image"), "image"),
        ),
        debug,
    )


def missing_consent(consent: Mapping[str, str], gdpr_default: int) -> str | None:
    """Prebid Server's refusal of a GDPR request without a consent string (gdpr_consent,
    or the gpp string's section 2), or None."""
    if consent_string(consent):
        return None
    scope = gdpr_scope(consent, gdpr_default)
    if scope is GdprScope.APPLIES:
        return CONSENT_REQUIRED
    if scope is GdprScope.ASSUMED:
        return CONSENT_REQUIRED_ASSUMED
    return None


def cookie_sync_refusal(code: Code) -> CookieSyncOutcome:
    """A consent refusal of the privacy rules (SPEC §12), as /cookie_sync answers it:
    the host may not set a cookie, so no syncs (Prebid Server's host-cookie block)."""
    if code is Code.CONSENT_MISSING:
        return CookieSyncOutcome.BAD_REQUEST
    return CookieSyncOutcome.GDPR_BLOCKED


@dataclass(frozen=True)
class Evaluation:
    """One requested bidder: how it was evaluated, and the sync chosen when OK."""

    code: str  # as requested
    status: Status
    bidder: Bidder | None = None
    sync_type: SyncType | None = None

    @property
    def debug_message(self) -> str:
        if self.status is Status.DUPLICATE and self.bidder is not None:
            return self.status.message + self.bidder.name
        return self.status.message


def fresh(bidder: Bidder, synced_day: int | None, today: int) -> bool:
    """A mapping seen within the bidder's refresh interval: already synced (SPEC §5)."""
    return synced_day is not None and today - synced_day < bidder.refresh_days


def choose(
    request: CookieSyncRequest,
    bidders: Bidders,
    synced_days: Mapping[int, int],
    privacy: Privacy,
    today: int,
    shuffle: Shuffle,
    permits: Callable[[int], bool] | None = None,
) -> list[Evaluation]:
    """Evaluate the requested bidders (all configured ones when none were named) until
    `limit` syncs are chosen, as Prebid Server's chooser does: with a limit, in a
    shuffled order, so that every bidder gets its turn. A code named again exactly as
    before is skipped; another spelling of a bidder already seen is a duplicate.
    `permits(dpid)`: whether privacy lets the bidder sync (activities.PrivacyGate);
    without it, the request's opt-out and the bidder's GDPR consent decide."""
    codes = list(request.bidders) or [b.name for b in bidders.all]
    if request.limit:
        shuffle(codes)
    seen: set[int] = set()
    codes_seen: set[str] = set()
    chosen = 0
    out: list[Evaluation] = []
    for code in codes:
        if request.limit and chosen >= request.limit:
            break
        if code in codes_seen:
            continue
        codes_seen.add(code)
        evaluation = _evaluate(
            code, bidders, seen, request.filter, synced_days, privacy, today, permits
        )
        chosen += evaluation.status is Status.OK
        out.append(evaluation)
    return out


def _evaluate(
    code: str,
    bidders: Bidders,
    seen: set[int],
    type_filter: TypeFilter,
    synced_days: Mapping[int, int],
    privacy: Privacy,
    today: int,
    permits: Callable[[int], bool] | None,
) -> Evaluation:
    bidder = bidders.get(code)
    if bidder is None:
        return Evaluation(code, Status.UNKNOWN_BIDDER)
    if bidder.dpid in seen:
        return Evaluation(code, Status.DUPLICATE, bidder)
    seen.add(bidder.dpid)
    if not bidder.syncs:
        return Evaluation(code, Status.NO_SYNC_CONFIG, bidder)
    sync_type = next(
        (t for t in PREFERENCE if t in bidder.syncs and type_filter.allows(t, bidder.name)), None
    )
    if sync_type is None:
        return Evaluation(code, Status.REJECTED_BY_FILTER, bidder)
    if fresh(bidder, synced_days.get(bidder.dpid), today):
        return Evaluation(code, Status.ALREADY_SYNCED, bidder)
    if permits is not None:
        allowed = permits(bidder.dpid)
    else:
        allowed = privacy.partner_allowed(bidder.gvl_id) and privacy.outbound_allowed
    if not allowed:
        return Evaluation(code, Status.BLOCKED_BY_PRIVACY, bidder)
    return Evaluation(code, Status.OK, bidder, sync_type)


def setuid_callback(
    public_url: str, bidder: Bidder, sync_type: SyncType, consent: Mapping[str, str]
) -> str:
    """Where the bidder sends the browser back: /setuid with the consent of this
    request, the answer format its sync type wants and, last (some partners append
    their uid to the URL), its uid macro: Prebid Server's default redirect URL."""
    query = [f"bidder={quote(bidder.name, safe='')}"]
    for key in ("gdpr", "gdpr_consent", "gpp", "gpp_sid"):
        query.append(f"{key}={quote(consent.get(key, ''), safe='')}")
    query.append(f"f={sync_type.answer}")
    query.append(f"uid={bidder.syncs[sync_type].callback_uid_macro}")
    return f"{public_url}/setuid?{'&'.join(query)}"


def usersync_url(
    evaluation: Evaluation,
    *,
    uuid: str,
    partner_uid: str,
    public_url: str,
    proto: str,
    consent: Mapping[str, str],
    macros: Mapping[str, str],
    rand: str,
) -> str:
    """The chosen sync's URL: the partner's sync URL with the macros of SPEC §5, its
    ${CALLBACK} pointing at /setuid. `macros`: the consent macro values."""
    assert evaluation.bidder is not None and evaluation.sync_type is not None
    bidder, sync_type = evaluation.bidder, evaluation.sync_type
    return sync_url(
        bidder.syncs[sync_type],
        uuid=uuid,
        partner_uid=partner_uid,
        public_url=public_url,
        proto=proto,
        consent=macros,
        rand=rand,
        callback=setuid_callback(public_url, bidder, sync_type, consent),
    )


def privacy_debug(
    privacy: Privacy, host_vendor_id: int, evaluations: Sequence[Evaluation]
) -> dict[str, Any] | None:
    """What the TCF string said, for a debug answer: its decoded fields, and what it
    says of the host's vendor and of every bidder evaluated (by gvl_id). None when no
    string was read (GDPR does not apply)."""
    if privacy.tcf is None:
        return None
    ids = {host_vendor_id, *(e.bidder.gvl_id for e in evaluations if e.bidder is not None)}
    return {"tcf": privacy.tcf.describe(ids - {0})}


def cookie_sync_answer(
    has_mappings: bool,
    syncs: Sequence[tuple[Evaluation, str]],
    evaluations: Sequence[Evaluation],
    debug: bool,
    privacy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Prebid Server's answer: `status` ok when the visitor has any live mapping (its
    `uids` cookie would hold a sync), one entry per chosen sync under the bidder code
    as the request spelled it (Prebid.js looks its syncUrlModifier up by it), and with
    `debug` why every other bidder evaluated was left out (no `debug` when none was)
    and, not Prebid Server's, the decoded consent (`privacy`, privacy_debug's)."""
    doc: dict[str, Any] = {
        "status": "ok" if has_mappings else "no_cookie",
        "bidder_status": [
            {
                "bidder": e.code,
                "no_cookie": True,
                "usersync": {"url": url, "type": str(e.sync_type)},
            }
            for e, url in syncs
        ],
    }
    left_out = [
        {"bidder": e.code, "error": e.debug_message}
        for e in evaluations
        if e.status is not Status.OK
    ]
    if debug and left_out:
        doc["debug"] = left_out
    if debug and privacy is not None:
        doc["privacy"] = privacy
    return doc


# --------------------------------------------------------------------------- /setuid


@dataclass(frozen=True)
class SetuidRequest:
    bidder: Bidder
    uid: str  # "": delete the visitor's mapping for the bidder
    format: str  # b or i
    consent: dict[str, str]
    bounced: bool = False  # the cookie bounce's follow-up (d_bounce=1, SPEC §3)


def parse_setuid(params: Mapping[str, str], bidders: Bidders) -> SetuidRequest:
    """The /setuid query (the first value of each parameter), checked in Prebid
    Server's order; PrebidError with its outcome and message."""
    code = params.get("bidder", "")
    if not code:
        raise PrebidError(SetuidOutcome.SYNCER_UNKNOWN, '"bidder" query param is required')
    bidder = bidders.get(code)
    if bidder is None:
        raise PrebidError(
            SetuidOutcome.SYNCER_UNKNOWN,
            "The bidder name provided is not supported by Prebid Server",
        )
    fmt = params.get("f", "").lower() or bidder.default_type.answer
    if fmt not in ("b", "i"):
        raise PrebidError(
            SetuidOutcome.BAD_REQUEST, '"f" query param is invalid. must be "b" or "i"'
        )
    gdpr = params.get("gdpr", "")
    if gdpr not in ("", "0", "1"):
        raise PrebidError(
            SetuidOutcome.BAD_REQUEST,
            f"the gdpr query param must be either 0 or 1. You gave {gdpr}",
        )
    consent = setuid_consent(params)
    if gdpr == "1" and not consent_string(consent):
        raise PrebidError(SetuidOutcome.BAD_REQUEST, "gdpr_consent is required when gdpr=1")
    uid = params.get("uid", "")
    if uid and not valid_uid(uid):
        raise PrebidError(SetuidOutcome.BAD_REQUEST, "uid must be 1-256 printable ASCII characters")
    return SetuidRequest(bidder, uid, fmt, consent, params.get("d_bounce") == "1")


def setuid_consent(params: Mapping[str, str]) -> dict[str, str]:
    """The consent parameters of a /setuid query (the first value of each)."""
    return {k: params[k] for k in CONSENT_FIELDS if params.get(k)}


def setuid_refusal(code: Code, reason: str) -> PrebidError:
    """A refusal of the privacy rules (SPEC §12), as /setuid answers it."""
    if code is Code.CONSENT_UNPARSABLE:
        return PrebidError(SetuidOutcome.BAD_REQUEST, f"gdpr_consent was invalid. {reason}")
    if code is Code.CONSENT_MISSING:
        return PrebidError(SetuidOutcome.BAD_REQUEST, "gdpr_consent is required when gdpr=1")
    return PrebidError(SetuidOutcome.GDPR_BLOCKED)


def buyeruids(names: Mapping[int, str], mapped: Mapping[int, str]) -> dict[str, Any]:
    """/getuids: the visitor's uid per bidder; `{}` when there is none (as Prebid
    Server answers a browser without a uids cookie)."""
    uids = {names[dpid]: uid for dpid, uid in sorted(mapped.items()) if dpid in names}
    return {"buyeruids": uids} if uids else {}

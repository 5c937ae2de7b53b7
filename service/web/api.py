"""The server-to-server API (SPEC §10), the part over the match table: users, reverse
and bulk lookups, erasure and the erasure log (how many and when, never who). Bearer
tokens are checked against the sha256 of each configured key, in constant time.

A partner-scoped key sees only its partner (SPEC §10, §12):
- users: only visitors mapped to its partner, and of them only that partner's uid
  (no traits, no segments); any other visitor is a 404 like an unknown uuid, so that
  the key cannot probe which uuids exist;
- lookups: its own dpid only; any other dpid, configured or not, is a 403;
- erasure (write): removes its partner's mapping of the visitor, in both directions;
  the visitor itself stays (a full erasure needs an unscoped key); 404 when the
  visitor has no mapping to its partner;
- loss and match rates: its partner's ID syncs and the destinations that feed its
  partner; taxonomy: the onboarded traits its partner may realize and the segments
  its destinations map;
- the erasure log (GET /v1/erasures): 403, it is for an unscoped admin key only."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import re2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..config import ApiKey, Destination, Partner, Segment, Trait, UrlDestinationConfig
from ..identity import is_uuid, today
from ..loss import WINDOWS, Target, match_rates, minutes, report
from ..numbers import parse_uint
from ..outbound.realtime import COUNTERS as RT_COUNTERS
from ..qualification import Qualifier
from ..store import Store, StoreError
from ..sync import valid_uid
from ..tally import partner_field
from ..taxonomy import taxonomy as build_taxonomy

MAX_LOOKUP: Final = 10_000
# 10,000 uids of up to 256 characters, quoted and separated, and some room.
MAX_LOOKUP_BODY: Final = 3 * 1024 * 1024
# What json.loads may read in any shape. A bigger body must have the lookup's own shape,
# checked first in linear time (RE2, ~2 ms/MiB): 3 MiB of anything else (nested arrays,
# numbers, objects) holds the event loop 100-260 ms in json.loads.
ANY_SHAPE_BODY: Final = 64 * 1024
_WS: Final = r"[ \t\n\r]*"
_STR: Final = r'"(?:[^"\\\x00-\x1f]|\\.)*"'
_LOOKUP_SHAPE: Final = re2.compile(
    rf'{_WS}\{{{_WS}"dpuuids"{_WS}:{_WS}\[{_WS}(?:{_STR}{_WS}(?:,{_WS}{_STR}{_WS})*)?\]{_WS}\}}{_WS}'
)
# Uids looked up per round trip: each slice's answer is read in one turn of the event
# loop (~10 ms for 1,000), never the 10,000 of a whole lookup (~100 ms).
LOOKUP_SLICE: Final = 1000
MATCH_RATE_MINUTES: Final = 7 * 1440
ERASE_TIMEOUT_S: Final = 5.0
MAX_ERASURES_LISTED: Final = 1000  # /v1/erasures: the times of the first ones since


def _strings_at_least(body: bytes | bytearray) -> int:
    """At least half the JSON strings in `body`, counted in C: two quotes each, less the
    escaped ones (a `\\"` that really ends a string after an escaped backslash is
    taken off too, at most once per string). json.loads spends ~25 ns per string: 3 MiB
    of short ones is 20 ms of the event loop, where 10,000 uids of any length are 6."""
    return (body.count(b'"') - body.count(b'\\"')) // 2


SINCE_SECONDS: Final = r"^[0-9]{1,11}(\.[0-9]{1,6})?$"  # also in the OpenAPI document
_SECONDS: Final = re2.compile(SINCE_SECONDS)
_LAST_SINCE: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def parse_since(text: str) -> float | None:
    """Unix seconds, or an ISO 8601 date (and time; UTC unless it names an offset), as
    unix seconds; None when it is neither."""
    if _SECONDS.search(text):
        return float(text)
    if not 10 <= len(text) <= 40:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # before 1970: since the beginning; an offset past 9999-12-31 (year 10000 in UTC,
    # which datetime cannot show back): the end of that day
    return min(max(when.timestamp(), 0.0), _LAST_SINCE)


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, a method not served): in the API's
    error shape under /v1/ (a uid with a newline matches no route), as text elsewhere."""
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/v1/"):
        code = "not_found" if exc.status_code == 404 else "refused"
        return JSONResponse(
            {"error": {"code": code, "message": exc.detail}},
            status_code=exc.status_code,
            headers=exc.headers,
        )
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


@dataclass(frozen=True)
class Caller:
    name: str
    partner: int | None  # None: every partner
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def sees(self, dpid: int) -> bool:
        return self.partner is None or self.partner == dpid

    @property
    def operator(self) -> bool:
        """An unscoped admin key: what shows every partner at once (the dashboard, the
        operator endpoints) is for it only, not for a partner's key even with admin."""
        return self.partner is None and "admin" in self.scopes


class ApiKeys:
    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = [(bytes.fromhex(k.sha256), k) for k in keys]

    def caller(self, request: Request) -> Caller | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.by_token(token)

    def named(self, name: str, fingerprint: str) -> Caller | None:
        """The key of this name, if its sha256 still starts with `fingerprint` (a
        dashboard session names its key: replacing the key ends the session)."""
        for _, key in self._keys:
            if key.name == name and hmac.compare_digest(key.sha256[:16], fingerprint):
                return Caller(key.name, key.partner, frozenset(key.scopes))
        return None

    def fingerprint(self, name: str) -> str:
        return next((key.sha256[:16] for _, key in self._keys if key.name == name), "")

    def by_token(self, token: str) -> Caller | None:
        token = token.strip(" \t")  # HTTP's own whitespace: str.strip() also eats U+00A0
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        found: ApiKey | None = None
        for expected, key in self._keys:  # every key compared: no early exit to time
            if hmac.compare_digest(digest, expected):
                found = key
        if found is None:
            return None
        return Caller(found.name, found.partner, frozenset(found.scopes))


Handler = Callable[[Request, Caller], Awaitable[Response]]


class Api:
    def __init__(
        self,
        store: Store,
        keys: ApiKeys,
        partners: Iterable[Partner],
        *,
        qualifier: Qualifier | None = None,
        destinations: Iterable[Destination] = (),
        traits: Iterable[Trait] = (),
        segments: Iterable[Segment] = (),
    ) -> None:
        self.store = store
        self.keys = keys
        self.names = {p.dpid: p.name for p in partners}
        self.dpids = frozenset(self.names)
        self.qualifier = qualifier
        self.destinations = list(destinations)
        traits, segments = list(traits), list(segments)
        self.taxonomy_doc = build_taxonomy(traits, segments)
        # A partner key's taxonomy: the traits its partner may realize (its files, its
        # real-time answers) and the segments its partner's destinations map.
        mapped: dict[int, set[str]] = {}  # dpid -> the segment sids its destinations map
        for d in self.destinations:
            if d.partner is not None:
                mapped.setdefault(d.partner, set()).update(d.mappings)
        realized: dict[int, list[Trait]] = {}  # dpid -> the onboarded traits it may realize
        for t in traits:
            if t.type == "onboarded" and t.data_source is not None:
                realized.setdefault(t.data_source, []).append(t)
        self.partner_taxonomy = {
            dpid: build_taxonomy(
                realized.get(dpid, []),
                [s for s in segments if str(s.sid) in mapped.get(dpid, ())],
            )
            for dpid in self.names
        }

    def routes(self) -> list[Route]:
        return [
            Route("/v1/users/{uuid}", self._guard("read", self.get_user), methods=["GET"]),
            Route(
                "/v1/users/{uuid}",
                self._guard("write", self.delete_user),
                methods=["DELETE"],
                name="delete_user",
            ),
            Route(
                "/v1/partners/{dpid}/users/{dpuuid:path}",
                self._guard("read", self.partner_user),
                methods=["GET"],
            ),
            Route("/v1/partners/{dpid}/lookup", self._guard("read", self.lookup), methods=["POST"]),
            Route("/v1/match-rates", self._guard("read", self.match_rates), methods=["GET"]),
            Route("/v1/loss", self._guard("read", self.loss), methods=["GET"]),
            Route("/v1/taxonomy", self._guard("read", self.taxonomy), methods=["GET"]),
            Route("/v1/erasures", self._guard("admin", self.erasures), methods=["GET"]),
        ]

    def _guard(self, scope: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            caller = self.keys.caller(request)
            if caller is None:
                return error(401, "unauthorized", "missing or unknown bearer token")
            if not caller.may(scope):
                return error(403, "forbidden", f"this key lacks the {scope} scope")
            try:
                return await handler(request, caller)
            except StoreError:
                return error(503, "unavailable", "the match table is unreachable, retry later")

        return endpoint

    def _dpid(self, request: Request, caller: Caller) -> int | Response:
        raw = request.path_params["dpid"]
        if caller.partner is not None and raw != str(caller.partner):
            # Any other dpid, configured or not: which partners exist is not its business.
            return error(403, "forbidden", "this key is for another partner")
        dpid = parse_uint(raw)
        if dpid is None or dpid not in self.dpids:
            return error(404, "unknown_partner", "no partner with this dpid")
        return dpid

    async def get_user(self, request: Request, caller: Caller) -> Response:
        uuid = request.path_params["uuid"]
        if not is_uuid(uuid):
            return error(404, "not_found", "no such user")
        stored = await self.store.visitor_state(uuid)
        if not stored.found:
            return error(404, "not_found", "no such user")
        day = today()
        mappings = stored.mappings(day)
        if caller.partner is not None and caller.partner not in mappings:
            return error(404, "not_found", "no such user")  # as an unknown uuid: no probing
        ids = {str(d): m.uid for d, m in sorted(mappings.items()) if caller.sees(d)}
        traits: list[int] = []
        segments: list[int] = []
        if caller.partner is None and self.qualifier is not None:
            # A partner's key sees its own ids only, not the customer's segments.
            profile = stored.profile
            profile.prune(day, self.qualifier.ttl_days, self.qualifier.keep_days)
            traits = profile.realized_traits()
            segments = sorted(self.qualifier.evaluate(profile, day))
        return JSONResponse({"uuid": uuid, "ids": ids, "traits": traits, "segments": segments})

    async def delete_user(self, request: Request, caller: Caller) -> Response:
        uuid = request.path_params["uuid"]
        if not is_uuid(uuid):
            return error(404, "not_found", "no such user")
        if caller.partner is not None:
            # A scoped erasure: the partner's mapping of the visitor, both directions.
            if caller.partner not in await self.store.mappings(uuid, today()):
                return error(404, "not_found", "no such user")
            queued = self.store.clear_mapping(uuid, caller.partner)
        else:
            queued = self.store.erase_visitor(uuid)
        if not queued:
            return error(503, "unavailable", "the erasure could not be queued; retry later")
        try:
            await asyncio.wait_for(self.store.drain(), ERASE_TIMEOUT_S)
        except TimeoutError:
            # The erasure is queued and will be applied; say so rather than wait.
            return JSONResponse({"status": "queued"}, status_code=202)
        return Response(status_code=204)

    async def erasures(self, request: Request, caller: Caller) -> Response:
        """How many erasures were applied since a time, and when: never who. For an
        unscoped admin key only (a partner's key: 403; erasures are not partner's)."""
        if not caller.operator:
            return error(403, "forbidden", "the erasure log needs an unscoped admin key")
        since = parse_since(request.query_params.get("since", ""))
        if since is None:
            return error(
                400, "bad_since", "since must be unix seconds or an ISO 8601 date and time"
            )
        since_ms = int(since * 1000)
        found, count, trimmed = await self.store.erasures(since_ms, MAX_ERASURES_LISTED)
        return JSONResponse(
            {
                "since": _iso(since_ms),
                "count": count,
                "erasures": [{"at": _iso(ms), "source": source} for ms, source in found],
                "truncated": trimmed or len(found) < count,
            }
        )

    async def partner_user(self, request: Request, caller: Caller) -> Response:
        dpid = self._dpid(request, caller)
        if isinstance(dpid, Response):
            return dpid
        uid = request.path_params["dpuuid"]
        found = await self._lookup(dpid, [uid]) if valid_uid(uid) else {}
        if uid not in found:
            return error(404, "not_found", "no user matched to this partner uid")
        return JSONResponse({"uuid": found[uid]})

    async def lookup(self, request: Request, caller: Caller) -> Response:
        dpid = self._dpid(request, caller)
        if isinstance(dpid, Response):
            return dpid
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOOKUP_BODY:
                return error(413, "too_large", f"the body is over {MAX_LOOKUP_BODY} bytes")
        if len(body) > ANY_SHAPE_BODY:
            if not _LOOKUP_SHAPE.fullmatch(body):
                return error(400, "bad_request", 'expected {"dpuuids": ["…", …]}')
            if _strings_at_least(body) > MAX_LOOKUP + 1:  # before json.loads reads them
                return error(400, "too_many", f"at most {MAX_LOOKUP} dpuuids per lookup")
            await asyncio.sleep(0)  # the checks, json.loads and each slice: a loop turn each
        try:
            doc: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep: too
            return error(400, "bad_json", "the body must be JSON")
        uids = doc.get("dpuuids") if isinstance(doc, dict) else None
        if isinstance(uids, list) and len(uids) > MAX_LOOKUP:
            return error(400, "too_many", f"at most {MAX_LOOKUP} dpuuids per lookup")
        if not isinstance(uids, list) or not all(isinstance(u, str) for u in uids):
            return error(400, "bad_request", 'expected {"dpuuids": ["…", …]}')
        distinct = list(dict.fromkeys(uids))
        matches: dict[str, str] = {}
        for start in range(0, len(distinct), LOOKUP_SLICE):
            wanted = [u for u in distinct[start : start + LOOKUP_SLICE] if valid_uid(u)]
            if wanted:
                matches.update(await self._lookup(dpid, wanted))
        return JSONResponse({"matches": matches})

    async def _lookup(self, dpid: int, uids: list[str]) -> dict[str, str]:
        matches = await self.store.lookup(dpid, uids, today())
        self.store.tally.add(partner_field(dpid, "lookups_hit"), len(matches))
        self.store.tally.add(partner_field(dpid, "lookups_miss"), len(uids) - len(matches))
        return matches

    async def match_rates(self, request: Request, caller: Caller) -> Response:
        """Per partner, over the last 7 days of per-minute buckets."""
        now_minute = int(time.time()) // 60
        counts = await self.store.counts(range(now_minute - MATCH_RATE_MINUTES, now_minute + 1))
        return JSONResponse(self.match_rates_doc(counts, caller))

    def match_rates_doc(self, counts: dict[str, int], caller: Caller | None = None) -> Any:
        names = {d: n for d, n in self.names.items() if caller is None or caller.sees(d)}
        return match_rates(counts, names, RT_COUNTERS)

    async def loss(self, request: Request, caller: Caller) -> Response:
        window = request.query_params.get("window", "24h")
        if window not in WINDOWS:
            return error(400, "bad_window", "window must be one of " + ", ".join(WINDOWS))
        now_minute = int(time.time()) // 60
        buckets = await self.store.counts_by_minute(minutes(window, now_minute))
        return JSONResponse(self.loss_doc(window, now_minute, buckets, caller))

    def loss_doc(
        self,
        window: str,
        now_minute: int,
        buckets: list[dict[str, int]],
        caller: Caller | None = None,
    ) -> Any:
        targets = [
            Target("d", d.id, d.name, d.type, not isinstance(d, UrlDestinationConfig) or d.tracked)
            for d in self.destinations
            if caller is None or caller.partner is None or d.partner == caller.partner
        ]
        targets += [
            Target("p", dpid, name)
            for dpid, name in self.names.items()
            if caller is None or caller.sees(dpid)
        ]
        return report(window, now_minute, buckets, targets)

    async def taxonomy(self, request: Request, caller: Caller) -> Response:
        if caller.partner is not None:
            return JSONResponse(self.partner_taxonomy.get(caller.partner, build_taxonomy([], [])))
        return JSONResponse(self.taxonomy_doc)

"""GET /openapi.json: every endpoint of the service (SPEC §10), written out by hand so
that it says what the contract says (query forms, the path form of /ibs, GIF bodies),
and every answer each endpoint gives: its status codes, content types and shapes."""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .api import SINCE_SECONDS

_STRING: Final = {"type": "string"}
_INT: Final = {"type": "integer"}
_INTS: Final = {"type": "array", "items": _INT}
_NULLABLE_RATE: Final = {"type": ["number", "null"]}
_BINARY: Final = {"type": "string", "format": "binary"}
_GIF: Final = {"image/gif": {"schema": _BINARY}}
_HEADERS: Final = {
    "X-Error": {"description": "the contract's error code (SPEC §13)", "schema": _INT},
    "Set-Cookie": {"description": "the visitor cookie, refreshed", "schema": _STRING},
}
_CONSENT: Final = [
    {"name": n, "in": "query", "required": False, "schema": _STRING}
    for n in ("gdpr", "gdpr_consent", "us_privacy", "gpp", "gpp_sid")
]


def _object(required: list[str], properties: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties or {}}


# /event's JSON answer (SPEC §4), and its refusals ({"errors": […]}; an opted-out
# visitor's also carries the empty lists and no uuid).
_EVENT_JSON: Final = _object(
    ["tid"],
    {
        "uuid": {"type": "string", "pattern": "^[0-9]{38}$"},
        "tid": _STRING,
        "dcs_region": _INT,
        "stuff": {"type": "array", "items": _object(["cn", "cv", "ttl", "dmn"])},
        "dests": {"type": "array", "items": _object(["id", "c", "e", "y"])},
        "ibs": {"type": "array", "items": _object(["id", "tag", "url", "ttl"])},
        "segments": _INTS,
        "traits": _INTS,
        "errors": {
            "type": "array",
            "items": _object(["code", "msg"], {"code": _INT, "msg": _STRING}),
        },
    },
)
_EVENT_CONTENT: Final = {
    **_GIF,
    "application/json": {"schema": _EVENT_JSON},
    "application/javascript": {"schema": _STRING},  # JSONP: /**/name({…});
}
_API_ERROR: Final = {
    "description": "refused",
    "content": {
        "application/json": {
            "schema": _object(["error"], {"error": _object(["code", "message"], {"code": _STRING})})
        }
    },
}
_PLAIN_ERROR: Final = {
    "description": "refused, as Prebid Server says it",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """Prebid Server decodes JSON into Go pointers and slices: null is absent."""
    return {"anyOf": [schema, {"type": "null"}]}


_BIDDERS: Final = _or_null({"oneOf": [{"const": "*"}, {"type": "array", "items": _STRING}]})
_BIDDER_FILTER: Final = _or_null(
    {
        "type": "object",
        "properties": {"bidders": _BIDDERS, "filter": _or_null({"enum": ["include", "exclude"]})},
    }
)
_COOKIE_SYNC_REQUEST: Final = {
    "type": "object",
    "properties": {
        "bidders": _BIDDERS,  # absent, null or "*": every bidder
        "gdpr": _or_null({"enum": [0, 1]}),
        **{k: _or_null(_STRING) for k in ("gdpr_consent", "us_privacy", "gpp")},
        # "2,6", or as a list of section ids (ints or their text), as Prebid Server reads it
        "gpp_sid": _or_null(
            {"anyOf": [_STRING, {"type": "array", "items": {"anyOf": [_INT, _STRING]}}]}
        ),
        "limit": _or_null(_INT),
        "debug": _or_null({"type": "boolean"}),
        "filterSettings": _or_null(
            {"type": "object", "properties": {"iframe": _BIDDER_FILTER, "image": _BIDDER_FILTER}}
        ),
    },
}
_IDS: Final = {"type": "array", "items": _INT}
_RESTRICTION_TYPE: Final = {"enum": ["not_allowed", "require_consent", "require_li", "undefined"]}
# TCString.describe(): the core segment, and what it says of the host's and the
# evaluated bidders' vendor ids (keys: the ids as text)
_TCF_DEBUG: Final = {
    "type": "object",
    "properties": {
        **{
            k: _INT
            for k in ("version", "cmp_id", "cmp_version", "vendor_list_version", "policy_version")
        },
        "publisher_cc": _STRING,
        "purposes": _IDS,
        "purposes_li": _IDS,
        "special_features": _IDS,
        "purpose_one_treatment": {"type": "boolean"},
        "publisher_restrictions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"purpose": _INT, "type": _RESTRICTION_TYPE, "ranges": _INT},
            },
        },
        "vendors": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "consent": {"type": "boolean"},
                    "legitimate_interest": {"type": "boolean"},
                    "restrictions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"purpose": _INT, "type": _RESTRICTION_TYPE},
                        },
                    },
                    "purpose_one_allowed": {"type": "boolean"},
                },
            },
        },
    },
}
_COOKIE_SYNC_ANSWER: Final = {
    "type": "object",
    "required": ["status", "bidder_status"],
    "properties": {
        "status": {"enum": ["ok", "no_cookie"]},
        "bidder_status": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "bidder": {"type": "string"},
                    "no_cookie": {"type": "boolean"},
                    "usersync": {
                        "type": "object",
                        "properties": {
                            "url": {"type": "string"},
                            "type": {"enum": ["iframe", "redirect"]},
                        },
                    },
                },
            },
        },
        "debug": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"bidder": {"type": "string"}, "error": {"type": "string"}},
            },
        },
        # With debug: true and a TCF string read (GDPR applies): what it said
        "privacy": {"type": "object", "properties": {"tcf": _TCF_DEBUG}},
    },
}
_API_RESPONSES: Final = {
    "401": _API_ERROR,
    "403": _API_ERROR,
    "404": _API_ERROR,
    "503": _API_ERROR,  # the store is unreachable
}
# What a key may do (SPEC §10, §12): the API's rules, said once in the bearer scheme.
_SCOPES: Final = (
    "An [[api_keys]] token. Missing or unknown: 401; a scope the key lacks: 403 "
    "(read, write; admin has both). A key with `partner` (a partner-scoped key) sees only "
    "that partner: GET /v1/users/{uuid} answers only for visitors mapped to its partner, "
    "with that partner's uid alone (no traits or segments), and 404 for any other visitor, "
    "the same answer as for an unknown uuid; lookups only at its own dpid (any other dpid: "
    "403); DELETE /v1/users/{uuid} removes its partner's mapping of the visitor in both "
    "directions and keeps the visitor (404 when the visitor has no mapping to its partner; "
    "a full erasure needs an unscoped write or admin key); /v1/loss and /v1/match-rates "
    "show its partner's ID syncs and the destinations feeding its partner; /v1/taxonomy "
    "the onboarded traits its partner may realize and the segments its destinations map. "
    "/dashboard needs an unscoped admin key."
)
_REDIRECT: Final = {
    "headers": {"Location": {"description": "where to go next", "schema": _STRING}},
}
# SPEC §3: a request that would store for a browser without the visitor cookie.
_BOUNCE: Final = (
    "the cookie bounce: a fresh visitor cookie, and the same URL plus d_bounce=1 "
    "(its follow-up still without the cookie is answered with X-Error 172)"
)


def _answer(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "headers": _HEADERS}
    if content is not None:
        out["content"] = content
    return out


def _pixel(
    summary: str,
    params: list[dict[str, Any]] | None = None,
    *,
    extra: dict[str, Any] | None = None,
    long_queries: bool = True,
    content: dict[str, Any] = _GIF,
) -> dict[str, Any]:
    """GET and HEAD of a browser endpoint: the GIF, refusals with X-Error (SPEC §13)."""
    responses = {
        "200": _answer("the answer (X-Error: a refusal by policy)", content),
        "400": _answer("malformed input", content),
        **(extra or {}),
    }
    if long_queries:
        responses["414"] = _answer("query string over the limit", content)
    op = {
        "summary": summary,
        "parameters": [*(params or []), *_CONSENT],
        "responses": responses,
    }
    return {"get": op, "head": op}


def _query(name: str, kind: str = "string", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": {"type": kind}}


def _path(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "ok", "content": {"application/json": {"schema": schema}}}


def _api(
    summary: str,
    params: list[dict[str, Any]],
    ok: dict[str, Any],
    **responses: dict[str, Any],
) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": params,
        "responses": {"200": _json(ok), **_API_RESPONSES, **responses},
    }


def _plain(summary: str, *statuses: str, content: str, operator: bool = True) -> dict[str, Any]:
    """An operations endpoint (SPEC §11), GET and HEAD. An operator's: for an unscoped
    admin key, unless [server] admin_listen serves it apart (web/ops.py)."""
    answer: dict[str, Any] = {"content": {content: {"schema": {}}}}
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {s: {"description": s, **answer} for s in statuses},
    }
    if operator:
        op["summary"] += " (admin key, or only on [server] admin_listen)"
        op["security"] = [{"bearer": []}]
        op["responses"] |= {"401": _API_ERROR, "403": _API_ERROR}
    return {"get": op, "head": op}


_COUNTERS: Final = ("instructed", "loaded", "confirmed", "attempted", "delivered")
_COUNTERS_ALL: Final = (*_COUNTERS, "failed", "retried")
_SERIES: Final = {"type": "array", "items": _object(["t"], {"t": _STRING})}
_LOSS: Final = _object(
    ["window", "destinations", "partners"],
    {
        "window": {"type": "string", "enum": ["15m", "1h", "24h", "7d"]},
        "destinations": {
            "type": "array",
            "items": _object(
                ["id", "name", "type", *_COUNTERS_ALL, "loss_rate", "series"],
                {
                    "id": _INT,
                    "name": _STRING,
                    "type": _STRING,
                    **{c: _INT for c in _COUNTERS_ALL},
                    "loss_rate": _NULLABLE_RATE,
                    "ack_loss_rate": _NULLABLE_RATE,
                    "series": _SERIES,
                },
            ),
        },
        "partners": {
            "type": "array",
            "items": _object(
                ["dpid", "name", "instructed", "completed", "loss_rate", "series"],
                {
                    "dpid": _INT,
                    "name": _STRING,
                    "instructed": _INT,
                    "completed": _INT,
                    "loss_rate": _NULLABLE_RATE,
                    "series": _SERIES,
                },
            ),
        },
    },
)
_MATCH_RATES: Final = _object(
    ["partners"],
    {
        "partners": {
            "type": "array",
            "items": _object(
                [
                    "dpid",
                    "name",
                    "instructed",
                    "completed",
                    "match_rate",
                    "mappings",
                    "lookups_hit",
                    "lookups_miss",
                ],
                {"dpid": _INT, "name": _STRING, "match_rate": _NULLABLE_RATE},
            ),
        }
    },
)
_TAXONOMY: Final = _object(
    ["folders", "traits", "segments"],
    {
        "folders": {
            "type": "array",
            "items": _object(
                ["path", "traits", "segments"],
                {"path": _STRING, "traits": _INTS, "segments": _INTS},
            ),
        },
        "traits": {
            "type": "array",
            "items": _object(
                ["sid", "name", "folder", "type"],
                {"sid": _INT, "name": _STRING, "folder": _STRING, "type": _STRING},
            ),
        },
        "segments": {
            "type": "array",
            "items": _object(
                ["sid", "name", "folder"], {"sid": _INT, "name": _STRING, "folder": _STRING}
            ),
        },
    },
)
_HTML: Final = {"text/html": {"schema": _STRING}}
_DEST5: Final = {
    "summary": "The sync iframe: one image per due partner sync and pending URL destination",
    "parameters": _CONSENT,
    "responses": {
        code: {
            "description": description,
            "headers": {
                **_HEADERS,
                "Content-Security-Policy": {"schema": _STRING},
                "X-Content-Type-Options": {"schema": {"type": "string", "enum": ["nosniff"]}},
            },
            "content": _HTML,
        }
        for code, description in (
            ("200", "HTML, no script (X-Error: a refusal by policy, and no images)"),
            ("400", "malformed input: the page without images"),
            ("414", "query string over the limit: the page without images"),
        )
    },
}

SPEC: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {"title": "pixelsync", "version": "0.1.0"},
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": _SCOPES},
        }
    },
    "paths": {
        "/event": {
            **_pixel(
                "Data collection: GIF, JSON (d_rtbd=json) or JSONP (d_cb); a refusal of a "
                "JSON request is JSON (an invalid d_cb is never echoed)",
                [
                    _query(n)
                    for n in ("d_rtbd", "d_cb", "d_dst", "d_cts", "d_cid", "d_sid", "d_bounce")
                ],
                content=_EVENT_CONTENT,
                extra={"302": {"description": _BOUNCE, **_REDIRECT}},
            ),
            "post": {
                "summary": "Data collection, form-encoded body (at most 32 KiB: 413 beyond)",
                "requestBody": {
                    "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
                },
                "responses": {
                    "200": _answer("GIF, JSON or JSONP", _EVENT_CONTENT),
                    "307": {
                        "description": _BOUNCE + "; the browser sends the body again",
                        **_REDIRECT,
                    },
                    "400": _answer("malformed input", _EVENT_CONTENT),
                    "413": _answer("body over the limit", _EVENT_CONTENT),
                    "414": _answer("query string over the limit", _EVENT_CONTENT),
                },
            },
        },
        "/ibs": _pixel(
            "Partner-initiated ID sync (also as /ibs:dpid=…&dpuuid=…)",
            [
                _query("dpid", "integer", True),
                _query("dpuuid", required=True),
                _query("redir"),
                _query("d_bounce"),
            ],
            extra={"302": {"description": "to redir, or " + _BOUNCE, **_REDIRECT}},
        ),
        "/dest5.html": {"get": _DEST5, "head": _DEST5},
        "/sync/chain": _pixel(
            "ID syncs as a chain of redirects: 302 to the next partner, the GIF at the end, "
            "400 with X-Error 323 for a tampered or expired token",
            [_query("dpids"), _query("t")],
            extra={"302": {"description": "to the next partner", **_REDIRECT}},
        ),
        "/demoptout.jpg": _pixel("Global opt-out", long_queries=False),
        "/cookie_sync": {
            "post": {
                "summary": "Prebid Server's cookie sync: the bidder syncs this visitor needs",
                "requestBody": {
                    "content": {
                        "application/json": {"schema": _COOKIE_SYNC_REQUEST},
                        "text/plain": {"schema": _COOKIE_SYNC_REQUEST},
                    }
                },
                "responses": {
                    "200": _json(_COOKIE_SYNC_ANSWER),
                    "400": _PLAIN_ERROR,
                    "401": {**_PLAIN_ERROR, "description": "User has opted out"},
                    "413": _PLAIN_ERROR,
                },
            },
            "options": {
                "summary": "CORS preflight (credentialed; the Origin is echoed)",
                "responses": {"204": {"description": "allowed"}},
            },
        },
        "/setuid": {
            op: {
                "summary": "Prebid Server's setuid: store a bidder's uid (empty: delete it)",
                "parameters": [
                    _query("bidder", required=True),
                    _query("uid"),
                    _query("f"),
                    *(_query(n) for n in ("gdpr", "gdpr_consent", "gpp", "gpp_sid")),
                    _query("d_bounce"),
                ],
                "responses": {
                    "200": {
                        "description": "f=i: the 1x1 GIF; f=b: empty HTML",
                        "content": {
                            "image/gif": {"schema": {"type": "string", "format": "binary"}},
                            "text/html": {"schema": {"type": "string", "maxLength": 0}},
                        },
                    },
                    "302": {"description": _BOUNCE, **_REDIRECT},
                    "400": _PLAIN_ERROR,
                    "401": {"description": "the visitor opted out"},
                    "451": {**_PLAIN_ERROR, "description": "GDPR consent refused"},
                },
            }
            for op in ("get", "head")
        },
        "/getuids": {
            "options": {
                "summary": "CORS preflight: allowed (credentialed) only for an origin in "
                "[prebid] cors_origins; any other gets no Access-Control-* header",
                "responses": {"204": {"description": "answered"}},
            },
            **{
                op: {
                    "summary": "Prebid Server's getuids: the visitor's uid per bidder; "
                    "credentialed CORS only for an origin in [prebid] cors_origins",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "buyeruids": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    }
                                },
                            }
                        )
                    },
                }
                for op in ("get", "head")
            },
        },
        "/v1/users/{uuid}": {
            "get": _api(
                "A visitor's partner ids, traits and segments (a partner-scoped key: its "
                "partner's uid only, and 404 for a visitor not mapped to its partner)",
                [_path("uuid")],
                _object(
                    ["uuid", "ids", "traits", "segments"],
                    {
                        "uuid": _STRING,
                        "ids": {"type": "object", "additionalProperties": _STRING},
                        "traits": _INTS,
                        "segments": _INTS,
                    },
                ),
            ),
            "delete": {
                "summary": "Erase everything about a visitor, both directions (a partner-scoped "
                "key: its partner's mapping of the visitor only, both directions). Partners "
                "that were sent its segments get the removals: a line in each file "
                "destination's next iter export, exits to s2s destinations",
                "security": [{"bearer": []}],
                "parameters": [_path("uuid")],
                "responses": {
                    "204": {"description": "erased (the next request reads it)"},
                    "202": _json(_object(["status"], {"status": _STRING})),
                    **_API_RESPONSES,
                },
            },
        },
        "/v1/erasures": {
            "get": _api(
                "How many erasures (DELETE /v1/users/{uuid} by an unscoped key, "
                "/demoptout.jpg) were applied since a time, and when; never who. Unscoped "
                "admin key only (a partner-scoped key: 403). Counts the erasures of visitors "
                "that had something stored; lists the first 1000 since `since` (oldest "
                "first: page by passing the last `at` again); `truncated`: more than listed, "
                "or the log (the last ~100,000 erasures) no longer reaches back to `since`",
                [
                    {
                        "name": "since",
                        "in": "query",
                        "required": True,
                        "description": "unix seconds (as the schema says), or an ISO 8601 "
                        "date, or date and time (UTC unless it names an offset)",
                        "schema": {"type": "string", "pattern": SINCE_SECONDS},
                    }
                ],
                _object(
                    ["since", "count", "erasures", "truncated"],
                    {
                        "since": _STRING,
                        "count": _INT,
                        "erasures": {
                            "type": "array",
                            "items": _object(
                                ["at", "source"],
                                {
                                    "at": _STRING,
                                    "source": {"type": "string", "enum": ["api", "optout"]},
                                },
                            ),
                        },
                        "truncated": {"type": "boolean"},
                    },
                ),
                **{"400": _API_ERROR},
            )
        },
        "/v1/partners/{dpid}/users/{dpuuid}": {
            "get": _api(
                "Reverse lookup: the visitor a partner uid belongs to (a partner-scoped key: "
                "its own dpid only, 403 for any other)",
                [_path("dpid", "integer"), _path("dpuuid")],
                _object(["uuid"], {"uuid": _STRING}),
            )
        },
        "/v1/partners/{dpid}/lookup": {
            "post": {
                **_api(
                    "Bulk reverse lookup of up to 10,000 partner uids (a body of 3 MiB at "
                    "most: 413 beyond; 400 for a body that is not the JSON below; a "
                    "partner-scoped key: its own dpid only, 403 for any other)",
                    [_path("dpid", "integer")],
                    _object(
                        ["matches"],
                        {"matches": {"type": "object", "additionalProperties": _STRING}},
                    ),
                    **{"400": _API_ERROR, "413": _API_ERROR},
                ),
                "requestBody": {
                    "required": True,  # no body: 400 bad_json
                    "content": {
                        "application/json": {
                            "schema": _object(
                                ["dpuuids"],
                                {
                                    "dpuuids": {
                                        "type": "array",
                                        "items": _STRING,
                                        "maxItems": 10000,
                                    }
                                },
                            )
                        }
                    },
                },
            }
        },
        "/v1/match-rates": {
            "get": _api(
                "Per partner over 7 days: syncs handed out and completed, the match rate, "
                "mappings stored, reverse lookups that hit and missed, and the real-time "
                "calls (calls, timeouts, errors, breaker_opens, cache_hits, shed); a "
                "partner-scoped key: its partner only",
                [],
                _MATCH_RATES,
            )
        },
        "/v1/loss": {
            "get": _api(
                "Loss per destination (instructed, loaded, confirmed, attempted, delivered, "
                "failed, retried) and per partner's ID syncs, with a time series; a "
                "partner-scoped key: its partner's syncs and the destinations feeding it",
                [
                    {
                        "name": "window",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["15m", "1h", "24h", "7d"]},
                    }
                ],
                _LOSS,
                **{"400": _API_ERROR},
            )
        },
        "/v1/taxonomy": {
            "get": _api(
                "Folders, traits and segments (a partner-scoped key: the onboarded traits "
                "its partner may realize and the segments its destinations map)",
                [],
                _TAXONOMY,
            )
        },
        "/fire/{token}": {
            method: {
                "summary": "A destination pixel's load: counted once, then 302 to the partner",
                "parameters": [_path("token")],
                "responses": {
                    "302": {"description": "to the partner's pixel", **_REDIRECT},
                    "400": _answer("invalid or expired token (323)", _GIF),
                },
            }
            for method in ("get", "head")
        },
        "/ack/{token}": _pixel(
            "A partner's confirmation of a destination pixel, counted once",
            [_path("token")],
            long_queries=False,
        ),
        "/dashboard": {
            method: {
                "summary": "The loss and match-rate page (HTML, unscoped admin key): a bearer "
                "header, or ?token= once, which sets a signed HttpOnly session cookie and "
                "redirects",
                "parameters": [_query("token")],
                "responses": {
                    "200": {"description": "the page", "content": _HTML},
                    "303": {"description": "?token= accepted: the session cookie is set"},
                    "401": {"description": "no unscoped admin key", "content": _HTML},
                    "503": {"description": "the store is unreachable", "content": _HTML},
                },
            }
            for method in ("get", "head")
        },
        "/healthz": _plain("Liveness", "200", content="application/json", operator=False),
        "/readyz": _plain("Readiness: Redis answers", "200", "503", content="application/json"),
        "/metrics": _plain("Prometheus metrics", "200", content="text/plain"),
        "/openapi.json": _plain("This document", "200", content="application/json"),
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(SPEC)

"""GET /openapi.json: every endpoint of the service (SPEC §10), written out by hand so
that it says what the contract says (query forms, the path form of /ibs, GIF bodies)."""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

_GIF: Final = {"content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}}}
_ERROR_HEADER: Final = {
    "X-Error": {
        "description": "the contract's error code (SPEC §13)",
        "schema": {"type": "integer"},
    }
}
_CONSENT: Final = [
    {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
    for n in ("gdpr", "gdpr_consent", "us_privacy", "gpp", "gpp_sid")
]
_API_ERROR: Final = {
    "description": "refused",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            }
        }
    },
}
_PLAIN_ERROR: Final = {
    "description": "refused, as Prebid Server says it",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
_BIDDER_FILTER: Final = {
    "type": "object",
    "properties": {
        "bidders": {"oneOf": [{"const": "*"}, {"type": "array", "items": {"type": "string"}}]},
        "filter": {"enum": ["include", "exclude"]},
    },
}
_COOKIE_SYNC_REQUEST: Final = {
    "type": "object",
    "properties": {
        "bidders": {"type": "array", "items": {"type": "string"}},
        "gdpr": {"enum": [0, 1]},
        "gdpr_consent": {"type": "string"},
        "us_privacy": {"type": "string"},
        "gpp": {"type": "string"},
        "gpp_sid": {"type": "string"},
        "limit": {"type": "integer"},
        "debug": {"type": "boolean"},
        "filterSettings": {
            "type": "object",
            "properties": {"iframe": _BIDDER_FILTER, "image": _BIDDER_FILTER},
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
    },
}
_API_RESPONSES: Final = {"401": _API_ERROR, "403": _API_ERROR, "404": _API_ERROR}


def _pixel(summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op = {
        "summary": summary,
        "parameters": [*(params or []), *_CONSENT],
        "responses": {
            "200": {"description": "the 1x1 GIF", "headers": _ERROR_HEADER, **_GIF},
            "400": {"description": "malformed input", "headers": _ERROR_HEADER, **_GIF},
        },
    }
    return {"get": op, "head": op}


def _query(name: str, kind: str = "string", required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": {"type": kind}}


def _path(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


def _api(summary: str, params: list[dict[str, Any]], ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "parameters": params,
        "responses": {"200": ok, **_API_RESPONSES},
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": "ok", "content": {"application/json": {"schema": schema}}}


SPEC: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {"title": "pixelsync", "version": "0.1.0"},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": {
        "/event": {
            **_pixel(
                "Data collection: GIF, JSON (d_rtbd=json) or JSONP (d_cb)",
                [_query(n) for n in ("d_rtbd", "d_cb", "d_dst", "d_cts", "d_cid", "d_sid")],
            ),
            "post": {
                "summary": "Data collection, form-encoded body",
                "requestBody": {
                    "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
                },
                "responses": {"200": {"description": "GIF or JSON", **_GIF}},
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
        ),
        "/dest5.html": {
            "get": {
                "summary": "The sync iframe: one image per due partner sync",
                "parameters": _CONSENT,
                "responses": {"200": {"description": "HTML, no script"}},
            }
        },
        "/sync/chain": {
            "get": {
                "summary": "ID syncs as a chain of redirects",
                "parameters": [_query("dpids"), _query("t"), *_CONSENT],
                "responses": {
                    "302": {"description": "to the next partner"},
                    "200": {"description": "the end of the chain: the GIF", **_GIF},
                    "400": {"description": "a tampered or expired token (323)", **_GIF},
                },
            }
        },
        "/demoptout.jpg": _pixel("Global opt-out"),
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
                ],
                "responses": {
                    "200": {
                        "description": "f=i: the 1x1 GIF; f=b: empty HTML",
                        "content": {
                            "image/gif": {"schema": {"type": "string", "format": "binary"}},
                            "text/html": {"schema": {"type": "string", "maxLength": 0}},
                        },
                    },
                    "400": _PLAIN_ERROR,
                    "401": {"description": "the visitor opted out"},
                    "451": {**_PLAIN_ERROR, "description": "GDPR consent refused"},
                },
            }
            for op in ("get", "head")
        },
        "/getuids": {
            op: {
                "summary": "Prebid Server's getuids: the visitor's uid per bidder",
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
        "/v1/users/{uuid}": {
            "get": _api(
                "A visitor's partner ids, traits and segments",
                [_path("uuid")],
                _json({"type": "object", "required": ["uuid", "ids", "traits", "segments"]}),
            ),
            "delete": {
                "summary": "Erase everything about a visitor, both directions",
                "security": [{"bearer": []}],
                "parameters": [_path("uuid")],
                "responses": {
                    "204": {"description": "erased"},
                    "202": {"description": "queued: Redis did not confirm in time"},
                    **_API_RESPONSES,
                },
            },
        },
        "/v1/partners/{dpid}/users/{dpuuid}": {
            "get": _api(
                "Reverse lookup: the visitor a partner uid belongs to",
                [_path("dpid", "integer"), _path("dpuuid")],
                _json({"type": "object", "required": ["uuid"]}),
            )
        },
        "/v1/partners/{dpid}/lookup": {
            "post": {
                **_api(
                    "Bulk reverse lookup of up to 10,000 partner uids (a body of 3 MiB at "
                    "most: 413 beyond; 400 for a body that is not the JSON below)",
                    [_path("dpid", "integer")],
                    _json({"type": "object", "required": ["matches"]}),
                ),
                "responses": {
                    "200": _json({"type": "object", "required": ["matches"]}),
                    "400": _API_ERROR,
                    "413": _API_ERROR,
                    **_API_RESPONSES,
                },
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "dpuuids": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "maxItems": 10000,
                                    }
                                },
                            }
                        }
                    }
                },
            }
        },
        "/v1/match-rates": {
            "get": _api(
                "Per partner over 7 days: syncs handed out and completed, the match rate, "
                "mappings stored, reverse lookups that hit and missed, and the real-time "
                "calls (calls, timeouts, errors, breaker_opens, cache_hits, shed)",
                [],
                _json({"type": "object", "required": ["partners"]}),
            )
        },
        "/v1/loss": {
            "get": _api(
                "Loss per destination (instructed, loaded, confirmed, attempted, delivered, "
                "failed, retried) and per partner's ID syncs, with a time series",
                [
                    {
                        "name": "window",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["15m", "1h", "24h", "7d"]},
                    }
                ],
                _json({"type": "object", "required": ["window", "destinations", "partners"]}),
            )
        },
        "/v1/taxonomy": {
            "get": _api(
                "Folders, traits and segments",
                [],
                _json({"type": "object", "required": ["folders", "traits", "segments"]}),
            )
        },
        "/fire/{token}": {
            "get": {
                "summary": "A destination pixel's load: counted once, then 302 to the partner",
                "parameters": [_path("token")],
                "responses": {
                    "302": {"description": "to the partner's pixel"},
                    "400": {"description": "invalid or expired token (323)", **_GIF},
                },
            }
        },
        "/ack/{token}": _pixel(
            "A partner's confirmation of a destination pixel, counted once", [_path("token")]
        ),
        "/dashboard": {
            "get": {
                "summary": "The loss and match-rate page (HTML, admin key): a bearer header, "
                "or ?token= once, which sets a signed HttpOnly session cookie and redirects",
                "parameters": [
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {"description": "the page", "content": {"text/html": {}}},
                    "303": {"description": "?token= accepted: the session cookie is set"},
                    "401": {"description": "no admin key", "content": {"text/html": {}}},
                    "503": {"description": "the store is unreachable"},
                },
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis answers",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not"}},
            }
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "JSON"}}}
        },
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(SPEC)

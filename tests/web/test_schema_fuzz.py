"""schemathesis against the running service's /openapi.json (issue 9): every
operation, with an admin key and with none, in valid and invalid forms, answers no
5xx and only what the document says (status codes, content types, headers, bodies).

schemathesis's pytest loader (`from_fixture`) does not run under pytest 9, so the
operations are driven through its Python API: one hypothesis test per operation."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.web.openapi import SPEC
from tests.configs import API, API_TOKENS
from tests.services import OPS, Config, Service

EXAMPLES = 25  # per operation, caller and mode: the module stays well under a minute


def _can_be_wrong(op: dict[str, Any]) -> bool:
    """Whether a request can violate this operation's schema: any string is a string."""
    typed = [p for p in op.get("parameters", []) if p["schema"] != {"type": "string"}]
    return bool(typed or op.get("requestBody"))


OPERATIONS = [
    (method, path, mode)
    for path, item in SPEC["paths"].items()
    for method, op in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _can_be_wrong(op)
]
# The browser endpoints refuse well-formed input on its meaning (an unknown dpid is
# 320, an expired token 323: 400 and the GIF, as documented), which no schema can say.
BROWSER_ONLY = [positive_data_acceptance]


@pytest.fixture(scope="module")
def service_config() -> Config:
    return Config(API)  # the match-table API's: partners and keys of each kind


@pytest.fixture(scope="module")
def api_schema(svc: Service) -> Any:
    schema = schemathesis.openapi.from_url(svc.url + "/openapi.json", headers=OPS, timeout=10)
    schema.config.update(base_url=svc.url, request_timeout=10)
    # Unknown query parameters are signals to /event and ignored elsewhere, by design.
    schema.config.generation.update(allow_extra_parameters=False)
    return schema


@pytest.fixture(scope="module")
def session() -> Any:
    with requests.Session() as s:
        yield s


@pytest.mark.parametrize("caller", ["admin", "anonymous"])
@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS)
def test_operation_conforms(
    api_schema: Any, session: Any, method: str, path: str, mode: GenerationMode, caller: str
) -> None:
    operation = api_schema[path][method]
    excluded = [] if path.startswith("/v1/") else BROWSER_ONLY
    headers = {} if caller == "anonymous" else {"Authorization": f"Bearer {API_TOKENS[caller]}"}

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        case.call_and_validate(session=session, headers=headers, excluded_checks=excluded)

    run()


# Huge integers (issue 18) wherever the document says an integer is read, and in the
# strings that carry integers: 5,000 digits (past the 4,300 int() reads) and 5,000 digits
# that are the value 2 (a length check must count the zeros).
HUGE = "9" * 5000
PADDED = "0" * 4999 + "2"
INTEGER_PLACES = [
    (method, path, where, param["name"])
    for path, item in SPEC["paths"].items()
    for method, op in item.items()
    for param in op.get("parameters", [])
    for where in [param["in"]]
    if param["schema"].get("type") == "integer"
    or param["name"] in ("gdpr", "gpp_sid", "dpid", "dpids", "d_sid", "d_cts")
]


@pytest.mark.parametrize("value", [HUGE, PADDED], ids=["huge", "padded"])
@pytest.mark.parametrize(("method", "path", "where", "name"), INTEGER_PLACES)
def test_huge_integer_parameters_conform(
    api_schema: Any, session: Any, method: str, path: str, where: str, name: str, value: str
) -> None:
    """Answered as the document says (no 5xx), for the admin key."""
    operation = api_schema[path][method]
    path_parameters = {"dpid": "1234", "dpuuid": "u1", "uuid": "1" * 38, "token": "t"}
    query: dict[str, str] = {}
    if where == "path":
        path_parameters[name] = value
    else:
        query[name] = value
    body: Any = {"dpuuids": ["u1"]} if path.endswith("/lookup") else None
    case = operation.Case(
        path_parameters={k: v for k, v in path_parameters.items() if "{" + k in path},
        query=query,
        **({"body": body, "media_type": "application/json"} if body is not None else {}),
    )
    excluded = [] if path.startswith("/v1/") else BROWSER_ONLY
    headers = {"Authorization": f"Bearer {API_TOKENS['admin']}"}
    case.call_and_validate(session=session, headers=headers, excluded_checks=excluded)


@pytest.mark.parametrize("field", ["gdpr", "limit", "gpp_sid"])
@pytest.mark.parametrize("digits", [4300, 5000])
def test_huge_integers_in_json_bodies_conform(
    api_schema: Any, session: Any, field: str, digits: int
) -> None:
    """/cookie_sync's integer fields (and gpp_sid as a list of integers) holding an
    integer of 4,300 digits (which json.loads reads) or 5,000 (which it refuses)."""
    operation = api_schema["/cookie_sync"]["post"]
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # this process only: to write the body
    try:
        number = int("9" * digits)
        case = operation.Case(
            body={field: [number] if field == "gpp_sid" else number},
            media_type="application/json",
        )
        case.call_and_validate(session=session, excluded_checks=BROWSER_ONLY)
    finally:
        sys.set_int_max_str_digits(limit)

"""schemathesis against the running service's /openapi.json (issue 9): every
operation, with an admin key and with none, in valid and invalid forms, answers no
5xx and only what the document says (status codes, content types, headers, bodies).

schemathesis's pytest loader (`from_fixture`) does not run under pytest 9, so the
operations are driven through its Python API: one hypothesis test per operation."""

from __future__ import annotations

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

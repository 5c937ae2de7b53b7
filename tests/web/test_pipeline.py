"""The pieces of the browser endpoints' opening (service/web/pipeline.py), directly; the
order they run in is tests/web/test_refusals.py's, over HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from service import app as app_module
from service.config import load_settings
from service.consent import evaluate
from service.errors import Code, RequestError
from service.web.pipeline import (
    BrowserEndpoint,
    ClientGone,
    PrivacyRules,
    read_body,
    request_headers,
)
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


def _at_once(*messages: dict[str, Any]) -> Any:
    """A receive() whose messages are there already: it never waits."""
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


async def test_a_body_that_is_there_is_read_without_suspending() -> None:
    """With the server timing the body (uvicorn with our protocol), read_body is plain
    awaits: a body already received completes in one step of the coroutine, with no
    task (asyncio.wait_for made one per message on Python 3.11, and suspended)."""
    receive = _at_once(
        {"type": "http.request", "body": b"c_a=", "more_body": True},
        {"type": "http.request", "body": b"1", "more_body": False},
    )
    coro = read_body(receive, 100, {}, None)
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    assert done.value.value == b"c_a=1"


async def test_without_a_timeout_the_body_limits_still_hold() -> None:
    big = {"type": "http.request", "body": b"a" * 101, "more_body": False}
    with pytest.raises(RequestError) as exc:
        await read_body(_at_once(big), 100, {}, None)
    assert exc.value.status == 413
    with pytest.raises(ClientGone):
        await read_body(_at_once({"type": "http.disconnect"}), 100, {}, None)


def _event_endpoint(monkeypatch: pytest.MonkeyPatch, body_timer: str | None) -> Any:
    """The /event endpoint of the app `pixelsync serve`'s workers build (app_from_env)."""
    monkeypatch.setenv("PIXELSYNC_REDIS_URL", "redis://127.0.0.1:1/0")  # never connected
    monkeypatch.delenv("PIXELSYNC_CONFIG", raising=False)
    monkeypatch.delenv("PIXELSYNC_SERVER", raising=False)
    if body_timer is None:
        monkeypatch.delenv("PIXELSYNC_BODY_TIMER", raising=False)
    else:
        monkeypatch.setenv("PIXELSYNC_BODY_TIMER", body_timer)
    monkeypatch.setattr(app_module.gctune, "tune", lambda: None)  # this process's gc kept
    built: Any = app_module.app_from_env()
    endpoint = built._hot["/event"]
    assert isinstance(endpoint, BrowserEndpoint)
    return endpoint


@pytest.mark.parametrize("body_timer", [None, "app", "server"])
def test_the_app_times_a_body_unless_the_server_does(
    monkeypatch: pytest.MonkeyPatch, body_timer: str | None
) -> None:
    """`serve` under uvicorn with our protocol sets PIXELSYNC_BODY_TIMER=server
    (cli._uvicorn): its endpoints read bodies without a timeout; any other server
    (granian, an A/B protocol, an app run some other way) has them time it."""
    endpoint = _event_endpoint(monkeypatch, body_timer)
    defaults = load_settings(None, environ={"PIXELSYNC_REDIS_URL": "redis://127.0.0.1:1/0"})
    expected = None if body_timer == "server" else defaults.limits.head_timeout_s
    assert endpoint.body_timeout_s == expected

"""Real-time partner calls (SPEC §8) against real partner HTTP servers on 127.0.0.1:
each misbehaviour costs at most the budget, and the circuit breaker opens and closes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from service.macros import Template
from service.outbound.realtime import (
    Breaker,
    Failure,
    RealtimeCaller,
    RealtimePartner,
    RealtimeSettings,
    parse_answer,
)
from service.replacements.partner_transport import PartnerTransport
from tests.partners import Answer, PartnerServer, Request
from tests.services import free_port

BUDGET_S = 0.2


class Partner(PartnerServer):
    """One real-time endpoint per behaviour: /fast, /slow (3 s), /error (500), /garbage
    (not JSON), /huge (1 MiB of JSON); `mode` picks the behaviour of /switch."""

    def __init__(self) -> None:
        self.mode = "fast"
        self.stop = threading.Event()
        super().__init__(self.answer)

    def answer(self, request: Request) -> Answer:
        kind = request.path.strip("/")
        if kind == "switch":
            kind = self.mode
        body = b'{"segments": ["abc", "unknown", 7]}'
        if kind == "slow":
            self.stop.wait(3)
        elif kind == "error":
            return Answer(500)
        elif kind == "garbage":
            body = b"<html>not json</html>"
        elif kind == "huge":
            body = b'{"segments": ["' + b"x" * (1 << 20) + b'"]}'
        # A partner setting a cookie: the shared client must not keep it (tested in
        # tests/web/test_event_realtime.py).
        headers = {"content-type": "application/json", "set-cookie": "partner=seen; Path=/"}
        return Answer(200, headers, body)

    @property
    def base(self) -> str:
        return self.origin

    @property
    def calls(self) -> list[tuple[str, dict[str, list[str]]]]:
        return [(r.path.strip("/"), r.query) for r in self.seen()]

    def kinds(self) -> Counter[str]:
        return Counter(kind for kind, _ in self.calls)

    def close(self) -> None:
        self.stop.set()
        super().close()


@pytest.fixture
def partner() -> Iterator[Partner]:
    p = Partner()
    yield p
    p.close()


@pytest.fixture
async def client() -> AsyncIterator[PartnerTransport]:
    pool = PartnerTransport()
    yield pool
    await pool.aclose()


class Counts:
    def __init__(self) -> None:
        self.n: Counter[tuple[int, str]] = Counter()

    def __call__(self, dpid: int, counter: str, n: int) -> None:
        self.n[(dpid, counter)] += n


def rt_partner(dpid: int, url: str) -> RealtimePartner:
    return RealtimePartner(dpid, Template.parse(url), {"abc": 5000 + dpid, "7": 6000 + dpid})


def caller(
    partners: list[RealtimePartner],
    client: PartnerTransport,
    counts: Counts,
    **settings: float,
) -> RealtimeCaller:
    options = {"budget_s": BUDGET_S, "cache_s": 0.0, **settings}
    return RealtimeCaller(partners, client, counts, RealtimeSettings(**options))  # type: ignore[arg-type]


def consent(dpid: int) -> dict[str, str]:
    return {"GDPR": "0", "GDPR_CONSENT": ""}


async def test_a_fast_partner_realizes_its_mapped_codes(
    partner: Partner, client: PartnerTransport
) -> None:
    counts = Counts()
    rt = caller([rt_partner(31, partner.base + "/fast?u=${DP_UUID}&r=%rnd%")], client, counts)
    assert await rt.ask({31: "uid-31"}, consent) == [5031, 6031]  # "unknown" ignored
    [(_, query)] = partner.calls
    assert query["u"] == ["uid-31"] and query["r"][0].isdigit()
    assert counts.n[(31, "calls")] == 1 and counts.n[(31, "errors")] == 0


@pytest.mark.parametrize("kind", ["slow", "down", "error", "garbage", "huge"])
async def test_a_failing_partner_costs_at_most_the_budget(
    partner: Partner, client: PartnerTransport, kind: str
) -> None:
    """Next to a fast partner: the answer is on time and carries the fast one's codes."""
    counts = Counts()
    bad = f"http://127.0.0.1:{free_port()}/" if kind == "down" else f"{partner.base}/{kind}"
    rt = caller(
        [
            rt_partner(31, partner.base + "/fast?u=${DP_UUID}"),
            rt_partner(32, bad + "?u=${DP_UUID}"),
        ],
        client,
        counts,
    )
    started = time.perf_counter()
    realized = await rt.ask({31: "a", 32: "b"}, consent)
    elapsed = time.perf_counter() - started
    assert realized == [5031, 6031]
    assert elapsed < BUDGET_S + 0.15, elapsed
    expected = "timeouts" if kind == "slow" else "errors"
    assert counts.n[(32, expected)] == 1 and counts.n[(32, "calls")] == 1


async def test_no_mapping_no_call(partner: Partner, client: PartnerTransport) -> None:
    counts = Counts()
    rt = caller([rt_partner(31, partner.base + "/fast?u=${DP_UUID}")], client, counts)
    assert await rt.ask({99: "someone else"}, consent) == []
    assert partner.calls == [] and counts.n == Counter()


async def test_privacy_refusal_no_call(partner: Partner, client: PartnerTransport) -> None:
    rt = caller([rt_partner(31, partner.base + "/fast?u=${DP_UUID}")], client, Counts())
    assert await rt.ask({31: "a"}, lambda dpid: None) == []
    assert partner.calls == []


async def test_answers_are_cached_per_visitor(partner: Partner, client: PartnerTransport) -> None:
    counts = Counts()
    rt = caller([rt_partner(31, partner.base + "/fast?u=${DP_UUID}")], client, counts, cache_s=60.0)
    for _ in range(3):
        assert await rt.ask({31: "a"}, consent) == [5031, 6031]
    assert await rt.ask({31: "b"}, consent) == [5031, 6031]  # another visitor: a call
    assert partner.kinds()["fast"] == 2 and counts.n[(31, "cache_hits")] == 2


async def test_breaker_opens_then_a_probe_closes_it(
    partner: Partner, client: PartnerTransport
) -> None:
    now = [1000.0]
    counts = Counts()
    p = rt_partner(31, partner.base + "/switch?u=${DP_UUID}")
    rt = RealtimeCaller(
        [p],
        client,
        counts,
        RealtimeSettings(budget_s=BUDGET_S, cache_s=0, breaker_failures=3, breaker_open_s=30),
        clock=lambda: now[0],
    )
    partner.mode = "error"
    for _ in range(3):
        assert await rt.ask({31: "a"}, consent) == []
    assert p.state is Breaker.OPEN and counts.n[(31, "breaker_opens")] == 1
    await rt.ask({31: "a"}, consent)  # left out while open: no call
    assert partner.kinds()["switch"] == 3
    now[0] += 31  # half-open: one probe; it fails, so open again
    await rt.ask({31: "a"}, consent)
    assert p.state is Breaker.OPEN and partner.kinds()["switch"] == 4
    assert counts.n[(31, "breaker_opens")] == 2
    now[0] += 31
    partner.mode = "fast"  # the probe succeeds: closed, and its answer counts
    assert await rt.ask({31: "a"}, consent) == [5031, 6031]
    assert p.state is Breaker.CLOSED
    assert await rt.ask({31: "a"}, consent) == [5031, 6031]
    assert partner.kinds()["switch"] == 6


async def test_a_slow_probe_counts_as_a_failure(partner: Partner, client: PartnerTransport) -> None:
    now = [0.0]
    p = rt_partner(31, partner.base + "/switch?u=${DP_UUID}")
    rt = RealtimeCaller(
        [p],
        client,
        Counts(),
        RealtimeSettings(budget_s=0.1, cache_s=0, breaker_failures=1, breaker_open_s=5),
        clock=lambda: now[0],
    )
    partner.mode = "slow"
    await rt.ask({31: "a"}, consent)
    assert p.state is Breaker.OPEN
    now[0] += 6
    await rt.ask({31: "a"}, consent)  # the probe runs out of budget
    assert p.state is Breaker.OPEN and not p.probing


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        (b'{"segments": ["a", 1, true, null, 2.5, {"x": 1}]}', ("a", "1")),
        (b'{"segments": []}', ()),
    ],
)
def test_parse_answer(body: bytes, codes: tuple[str, ...]) -> None:
    assert parse_answer(body) == codes


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"segments": "a"}', b"\xff", b'{"x": []}', b"[" * 60_000 + b"]" * 60_000],
    ids=["empty", "list", "string", "not-utf8", "no-segments", "nested-too-deep"],
)
def test_parse_answer_refuses_garbage(body: bytes) -> None:
    with pytest.raises(Failure):
        parse_answer(body)


async def test_concurrent_partners_are_called_at_once(
    partner: Partner, client: PartnerTransport
) -> None:
    """Two slow partners cost one budget, not two."""
    rt = caller(
        [rt_partner(d, partner.base + "/slow?u=${DP_UUID}") for d in (31, 32)], client, Counts()
    )
    started = time.perf_counter()
    await rt.ask({31: "a", 32: "b"}, consent)
    assert time.perf_counter() - started < BUDGET_S * 1.75
    await asyncio.sleep(0)


async def test_calls_beyond_max_in_flight_are_shed(
    partner: Partner, client: PartnerTransport
) -> None:
    """A slow partner's calls go on past the budget; while max_in_flight of them run,
    further ones are not made (they would only queue in the client's pool)."""
    counts = Counts()
    p = rt_partner(31, partner.base + "/slow?u=${DP_UUID}")
    rt = RealtimeCaller(
        [p],
        client,
        counts,
        RealtimeSettings(budget_s=0.05, cache_s=0, breaker_failures=100, max_in_flight=2),
    )
    for i in range(4):
        assert await rt.ask({31: f"v{i}"}, consent) == []
    assert counts.n[(31, "calls")] == 2 and counts.n[(31, "shed")] == 2
    assert counts.n[(31, "timeouts")] == 2 and p.in_flight == 2
    partner.stop.set()  # the partner answers now: the calls end, slots free up
    await asyncio.sleep(0.3)
    assert p.in_flight == 0
    await rt.close()


async def test_a_shed_call_does_not_take_the_half_open_probe(
    partner: Partner, client: PartnerTransport
) -> None:
    """While max_in_flight calls still run, the half-open breaker keeps its probe for
    a call that is actually made."""
    now = [0.0]
    p = rt_partner(31, partner.base + "/switch?u=${DP_UUID}")
    rt = RealtimeCaller(
        [p],
        client,
        Counts(),
        RealtimeSettings(
            budget_s=0.05, cache_s=0, breaker_failures=1, breaker_open_s=5, max_in_flight=1
        ),
        clock=lambda: now[0],
    )
    partner.mode = "slow"
    await rt.ask({31: "a"}, consent)  # over the budget: the breaker opens
    assert p.state is Breaker.OPEN and p.in_flight == 1
    now[0] += 6
    await rt.ask({31: "b"}, consent)  # shed: the slow call still runs
    assert not p.probing
    partner.mode = "fast"
    partner.stop.set()
    for _ in range(50):
        if p.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    assert await rt.ask({31: "c"}, consent) == [5031, 6031]  # the probe, made now
    assert p.state is Breaker.CLOSED
    await rt.close()

"""Real-time partner calls (SPEC §8): during an /event, ask every eligible partner for
its segments on the visitor, all at once, within a total budget.

- Every call goes through the keep-alive, bounded pool of partner connections that the
  shared httpx.AsyncClient sends through (replacements/partner_transport.py), by its lean `get`:
  httpx's request and response objects cost as much CPU as the call itself.
- A partner answers `{"segments": ["abc", …]}`; the codes its `realtime_traits` maps
  become onboarded trait realizations of the same request. Unknown codes are ignored.
- Whatever goes wrong (slow, refused, 5xx, not JSON, too big) costs at most the budget
  and counts as a failure; `breaker_failures` failures in a row open the partner's
  circuit breaker for `breaker_open_s`, then one probe call decides (half-open).
- A partner's answer for a visitor is cached `cache_s` seconds, so a burst of page
  views does not call it each time.
- Counted per partner (Prometheus, and the per-minute buckets for /v1/match-rates):
  calls, timeouts, errors (invalid and oversized answers included), breaker openings,
  cache hits, calls shed (max_in_flight per partner running already), and a latency
  histogram.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, Protocol

import httpx

from .. import metrics
from ..macros import Template

log = logging.getLogger("pixelsync.realtime")

CACHE_MAX: Final = 100_000  # visitors' answers kept per process
LATE_S: Final = 2.0  # a call past its budget goes on in the background this long at most
COUNTERS: Final = ("calls", "timeouts", "errors", "breaker_opens", "cache_hits", "shed")

CountFn = Callable[[int, str, int], None]
"""(dpid, counter, n): adds n to one of COUNTERS."""


class Breaker(IntEnum):
    """Circuit breaker states; the values are the Prometheus gauge's."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass
class RealtimePartner:
    dpid: int
    template: Template
    traits: dict[str, int]  # partner segment code -> onboarded trait sid
    # Breaker bookkeeping, per process.
    failures: int = 0
    state: Breaker = Breaker.CLOSED
    open_until: float = 0.0
    probing: bool = False
    in_flight: int = 0
    children: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RealtimeSettings:
    budget_s: float = 0.05
    cache_s: float = 30.0
    breaker_failures: int = 5
    breaker_open_s: float = 30.0
    max_answer_bytes: int = 65536
    max_in_flight: int = 16  # calls running at once per partner; more are shed


@dataclass
class _Late:
    late: bool = False


class Failure(Exception):
    """A partner answer that cannot be used; `kind` is the counter it goes to."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Getter(Protocol):
    """PartnerTransport.get: the status and the body, cut at limit + 1 bytes."""

    async def get(self, url: str, limit: int) -> tuple[int, bytes]: ...


class RealtimeCaller:
    def __init__(
        self,
        partners: Sequence[RealtimePartner],
        http: Getter,
        count: CountFn,
        settings: RealtimeSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.partners = {p.dpid: p for p in partners}
        self.http = http
        self.count = count
        self.settings = settings
        self.clock = clock
        self._cache: OrderedDict[tuple[int, str], tuple[float, tuple[str, ...]]] = OrderedDict()
        self._background: set[asyncio.Task[tuple[str, ...]]] = set()
        for p in partners:
            metrics.REALTIME_BREAKER.labels(str(p.dpid)).set(Breaker.CLOSED)

    def __bool__(self) -> bool:
        return bool(self.partners)

    async def ask(
        self,
        mapped: Mapping[int, str],
        values: Callable[[int], dict[str, str] | None],
    ) -> list[int]:
        """The onboarded traits the eligible partners' answers realize. `mapped`: the
        visitor's partner uids; `values(dpid)`: the macro values for that partner, or
        None when privacy forbids calling it. Returns within the budget."""
        now = self.clock()
        calls: dict[int, tuple[asyncio.Task[tuple[str, ...]], _Late]] = {}
        codes: dict[int, tuple[str, ...]] = {}
        for dpid, partner in self.partners.items():
            uid = mapped.get(dpid)
            if not uid:
                continue  # a visitor the partner does not know: no call
            cached = self._cached(dpid, uid, now)
            if cached is not None:
                codes[dpid] = cached
                self.count(dpid, "cache_hits", 1)
                continue
            macro = values(dpid)
            if macro is None:
                continue
            if partner.in_flight >= self.settings.max_in_flight:
                # The partner has that many calls running already (slow, or we are
                # overloaded): one more would only queue in the client's pool, where
                # every waiting request makes the others slower. Left out, counted.
                # (Before the breaker: a shed call must not take the half-open probe.)
                self.count(dpid, "shed", 1)
                continue
            if not self._may_call(partner, now):
                continue
            rand = str(secrets.randbelow(10**12))
            url = partner.template.render({**macro, "DP_UUID": uid, "DD_RAND": rand})
            late = _Late()
            calls[dpid] = (asyncio.create_task(self._call(partner, uid, url, late)), late)
        if calls:
            tasks = [task for task, _ in calls.values()]
            done, _ = await asyncio.wait(tasks, timeout=self.settings.budget_s)
            for dpid, (task, late) in calls.items():
                if task in done:
                    if task.exception() is None:
                        codes[dpid] = task.result()
                    continue
                # Past the budget: a timeout, and this answer goes without it. The call
                # is not cancelled: it finishes in the background (bounded by LATE_S),
                # so its connection is reused rather than torn down and opened again
                # (under load, that churn alone made calls miss the budget), and a
                # late answer still warms the cache.
                late.late = True
                self._failed(self.partners[dpid], "timeouts", "over the budget")
                self._background.add(task)
                task.add_done_callback(self._reap)
        realized: list[int] = []
        for dpid, answer in codes.items():
            traits = self.partners[dpid].traits
            for code in answer:
                sid = traits.get(code)
                if sid is not None and sid not in realized:
                    realized.append(sid)
        return realized

    # ------------------------------------------------------------------ internals

    def _reap(self, task: asyncio.Task[tuple[str, ...]]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: counted already, not "never retrieved"

    async def close(self) -> None:
        """Stop the calls still running past their budget."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _cached(self, dpid: int, uid: str, now: float) -> tuple[str, ...] | None:
        hit = self._cache.get((dpid, uid))
        if hit is None:
            return None
        if hit[0] <= now:
            del self._cache[(dpid, uid)]
            return None
        return hit[1]

    def _remember(self, dpid: int, uid: str, codes: tuple[str, ...]) -> None:
        if self.settings.cache_s <= 0:
            return
        self._cache[(dpid, uid)] = (self.clock() + self.settings.cache_s, codes)
        self._cache.move_to_end((dpid, uid))
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)

    def _may_call(self, p: RealtimePartner, now: float) -> bool:
        if p.state is Breaker.CLOSED:
            return True
        if p.state is Breaker.OPEN:
            if now < p.open_until:
                return False
            self._set_state(p, Breaker.HALF_OPEN)
        if p.probing:  # half-open: one probe at a time
            return False
        p.probing = True
        return True

    def _set_state(self, p: RealtimePartner, state: Breaker) -> None:
        if p.state is not state:
            log.info(
                "realtime breaker",
                extra={"dpid": p.dpid, "from": p.state.name, "to": state.name},
            )
        p.state = state
        metrics.REALTIME_BREAKER.labels(str(p.dpid)).set(state)

    def _succeeded(self, p: RealtimePartner) -> None:
        p.failures = 0
        p.probing = False
        self._set_state(p, Breaker.CLOSED)

    def _failed(self, p: RealtimePartner, kind: str, detail: str) -> None:
        self.count(p.dpid, kind, 1)
        p.failures += 1
        was_probe, p.probing = p.probing, False
        if was_probe or (
            p.state is Breaker.CLOSED and p.failures >= self.settings.breaker_failures
        ):
            p.open_until = self.clock() + self.settings.breaker_open_s
            self._set_state(p, Breaker.OPEN)
            self.count(p.dpid, "breaker_opens", 1)
            log.warning(
                "realtime partner left out",
                extra={"dpid": p.dpid, "failures": p.failures, "error": detail},
            )

    async def _call(self, p: RealtimePartner, uid: str, url: str, late: _Late) -> tuple[str, ...]:
        """One call. Once `late` (past the budget, counted as a timeout already) its
        outcome no longer counts, except that an answer is cached."""
        self.count(p.dpid, "calls", 1)
        started = time.perf_counter()
        p.in_flight += 1
        try:
            async with asyncio.timeout(LATE_S):
                codes = await self._fetch(url)
        except (TimeoutError, httpx.TimeoutException):
            if not late.late:
                self._failed(p, "timeouts", "no answer")
            raise
        except Failure as exc:
            if not late.late:
                self._failed(p, "errors", f"{exc.kind}: {exc}")
            raise
        except (httpx.HTTPError, OSError) as exc:
            if not late.late:
                self._failed(p, "errors", type(exc).__name__)
            raise
        finally:
            p.in_flight -= 1
            metrics.child(metrics.REALTIME_LATENCY, str(p.dpid)).observe(
                time.perf_counter() - started
            )
        if not late.late:
            self._succeeded(p)
        self._remember(p.dpid, uid, codes)
        return codes

    async def _fetch(self, url: str) -> tuple[str, ...]:
        limit = self.settings.max_answer_bytes
        status, body = await self.http.get(url, limit)
        if status != 200:
            raise Failure("status", f"HTTP {status}")
        if len(body) > limit:
            raise Failure("oversized", f"answer over {limit} bytes")
        return parse_answer(body)


def parse_answer(body: bytes) -> tuple[str, ...]:
    """The segment codes of `{"segments": [...]}` (strings or integers)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # nested too deep: too
        raise Failure("invalid", "answer is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("segments"), list):
        raise Failure("invalid", 'answer has no "segments" list')
    return tuple(
        str(code)
        for code in doc["segments"]
        if isinstance(code, str) or (isinstance(code, int) and not isinstance(code, bool))
    )

"""Real-time server-to-server (s2s) segment delivery (SPEC §7).

The /event hot path calls `S2SSender.submit()`, which only appends to the destination's
queue: no await, no I/O, and False at once when that queue already holds `queue_max`
updates. One background task per destination cuts the queue into messages of up to
`batch_max_users` users -- as soon as that many are queued, otherwise once the oldest
has waited `linger_s` -- and hands each to a send task.

`concurrency` bounds the messages in flight *per destination*, so a hung partner holds
only its own slots and never delays the others. While its slots are busy, updates wait
in the queue, so memory stays bounded by `queue_max` (+ `concurrency` messages).

A message is delivered on a 2xx answer within `timeout_ms` (the whole exchange, not
each read). A timeout, connection error or any other status is tried again up to
`retries` more times, after `backoff_s`, then 2x, 4x ...; the body is sent unchanged
(same ProcessTime, same signature), so a partner can drop duplicates. Then the
message has failed: one error line with the destination, status or error type and the
number of tries -- never the body, the URL or the secret.

Counters, per destination, through `count(destination id, counter, n)`. They count
user updates, not messages:

- `attempted`: an update's first send. Also every update that never got one: refused
  by a full queue, submitted after close(), or still queued when close() gave up --
  so that failed/attempted is the loss rate.
- `delivered`: its message got a 2xx in time.
- `failed`: its message failed after the last try, or was abandoned by close(); or the
  update was refused (full queue, closed sender), or still queued when close() gave up.
- `retried`: each re-send (a message of n users tried 3 times adds 2n).
- `overflow`: refused by a full queue (also counted in `attempted` and `failed`).

Every update ends up counted once in `attempted` and once in either `delivered` or
`failed`: attempted = delivered + failed + (queued or in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import httpx

log = logging.getLogger("pixelsync.s2s")

COUNTERS: Final = ("attempted", "delivered", "failed", "retried", "overflow")
MAX_BATCH_USERS: Final = 10

CountFn = Callable[[int, str, int], None]
"""(destination id, counter, n): adds n to one of COUNTERS."""


@dataclass(frozen=True)
class S2SDestination:
    """An s2s destination as the sender needs it; the caller resolves the secret."""

    id: int
    url: str
    partner: int  # User_DPID
    hmac_secret: bytes | None = field(repr=False)  # never in a log line or a traceback
    batch_max_users: int = MAX_BATCH_USERS
    timeout_ms: int = 3000
    retries: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.batch_max_users <= MAX_BATCH_USERS:
            raise ValueError(f"s2s destination {self.id}: batch_max_users must be 1..10")
        if self.timeout_ms <= 0 or self.retries < 0:
            raise ValueError(f"s2s destination {self.id}: timeout_ms > 0, retries >= 0")


@dataclass(frozen=True, slots=True)
class SegmentChange:
    alias: str  # the destination's alias for the segment
    entered: bool  # Status "1"; False: left, Status "0"
    at: float  # unix time of the change


@dataclass(frozen=True, slots=True)
class UserUpdate:
    uuid: str  # AAM_UUID
    dp_uuid: str  # DataPartner_UUID
    region: int  # AAM_Regions: [region]
    changes: tuple[SegmentChange, ...]


class _Lane:
    """One destination's queue (enqueue time, update), in-flight slots and wake-up."""

    __slots__ = ("dest", "queue", "slots", "wake")

    def __init__(self, dest: S2SDestination, concurrency: int) -> None:
        self.dest = dest
        self.queue: deque[tuple[float, UserUpdate]] = deque()
        self.slots = asyncio.Semaphore(concurrency)
        self.wake = asyncio.Event()


class S2SSender:
    """Queues updates per destination; background tasks batch and POST them."""

    def __init__(
        self,
        destinations: Sequence[S2SDestination],
        client: httpx.AsyncClient,
        count: CountFn,
        *,
        client_id: str,
        queue_max: int = 10_000,
        linger_s: float = 0.05,
        concurrency: int = 4,
        backoff_s: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        ids = [d.id for d in destinations]
        if len(set(ids)) != len(ids):
            raise ValueError("s2s destination ids must be unique")
        if queue_max < 1 or concurrency < 1:
            raise ValueError("queue_max and concurrency must be >= 1")
        self._lanes = {d.id: _Lane(d, concurrency) for d in destinations}
        self._client = client  # the caller's: it closes it
        self._count_fn = count
        self._client_id = client_id
        self._queue_max = queue_max
        self._linger = linger_s
        self._backoff = backoff_s
        self._clock = clock  # ProcessTime only; lingering uses the monotonic clock
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False
        self._refused = 0

    # ------------------------------------------------------------------ producer side

    def submit(self, destination_id: int, update: UserUpdate) -> bool:
        """Queue an update; never blocks. False (counted failed) when the destination's
        queue is full or the sender is closed. An unknown id is a wiring bug: KeyError."""
        lane = self._lanes[destination_id]
        queue = lane.queue
        if self._closing or len(queue) >= self._queue_max:
            self._refuse(lane.dest.id, overflow=not self._closing)
            return False
        queue.append((time.monotonic(), update))
        # Wake the lane only when that changes what it waits for: a first update, a full batch.
        if len(queue) == 1 or len(queue) >= lane.dest.batch_max_users:
            lane.wake.set()
        return True

    def queued(self, destination_id: int) -> int:
        """Updates waiting for a send slot (not those in flight)."""
        return len(self._lanes[destination_id].queue)

    def _refuse(self, dest: int, *, overflow: bool) -> None:
        if overflow:
            self._count(dest, "overflow", 1)
        self._count(dest, "attempted", 1)
        self._count(dest, "failed", 1)
        self._refused += 1
        if self._refused % 1000 == 1:  # a flood of refusals: one line per thousand
            log.error(
                "s2s update refused",
                extra={
                    "destination": dest,
                    "reason": "queue full" if overflow else "closed",
                    "refused": self._refused,
                },
            )

    def _count(self, dest: int, counter: str, n: int) -> None:
        try:
            self._count_fn(dest, counter, n)
        except Exception:  # metrics trouble must not lose a message or a request
            log.exception("s2s counter failed", extra={"destination": dest, "counter": counter})

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start one task per destination on the running loop."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(lane), name=f"pixelsync-s2s-{lane.dest.id}")
            for lane in self._lanes.values()
        ]

    async def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, within `timeout`; then stop. What is left (queued, or
        in flight) is counted failed. Later submits are refused."""
        if self._closing:
            return
        self._closing = True
        self.start()
        for lane in self._lanes.values():
            lane.wake.set()  # no lingering from now on
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._drain()
        pending = [*self._tasks, *self._sending]
        for task in pending:
            task.cancel()  # an abandoned message counts itself failed
        await asyncio.gather(*pending, return_exceptions=True)
        for lane in self._lanes.values():
            if lane.queue:
                n, dest = len(lane.queue), lane.dest.id
                lane.queue.clear()
                self._count(dest, "attempted", n)
                self._count(dest, "failed", n)
                log.error("s2s updates dropped at close", extra={"destination": dest, "users": n})

    async def _drain(self) -> None:
        while True:
            if self._sending:
                await asyncio.wait(set(self._sending))
            elif any(lane.queue for lane in self._lanes.values()):
                await asyncio.sleep(0.005)  # the woken lanes take them on their next turn
            else:
                return

    # ------------------------------------------------------------------ consumer side

    async def _run(self, lane: _Lane) -> None:
        dest = lane.dest
        while True:
            try:
                await self._due(lane)
                await lane.slots.acquire()
                take = min(len(lane.queue), dest.batch_max_users)
                batch = [lane.queue.popleft()[1] for _ in range(take)]
                if not batch:
                    lane.slots.release()
                    continue
                task = asyncio.create_task(
                    self._deliver(lane, batch), name=f"pixelsync-s2s-{dest.id}-send"
                )
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            except Exception:  # the lane must never die
                log.exception("s2s lane error", extra={"destination": dest.id})
                await asyncio.sleep(self._backoff)

    async def _due(self, lane: _Lane) -> None:
        """Wait until a message is due: a full batch, or the oldest update has lingered."""
        queue, full = lane.queue, lane.dest.batch_max_users
        while not queue:
            lane.wake.clear()
            await lane.wake.wait()
        while len(queue) < full and not self._closing:
            left = queue[0][0] + self._linger - time.monotonic()
            if left <= 0:
                return
            lane.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await lane.wake.wait()

    async def _deliver(self, lane: _Lane, batch: list[UserUpdate]) -> None:
        dest, n = lane.dest, len(batch)
        self._count(dest.id, "attempted", n)
        outcome = "failed"
        try:
            outcome = await self._post(dest, self._body(dest, batch), n)
        except asyncio.CancelledError:
            log.error("s2s message abandoned at close", extra={"destination": dest.id, "users": n})
            raise
        except Exception as exc:  # a bad update or partner must never kill the sender
            log.error(
                "s2s message failed",
                extra={"destination": dest.id, "error": type(exc).__name__, "users": n},
            )
        finally:
            lane.slots.release()
            self._count(dest.id, outcome, n)

    async def _post(self, dest: S2SDestination, body: bytes, n: int) -> str:
        """Try a message up to 1 + retries times; answers "delivered" or "failed"."""
        headers = {"Content-Type": "application/json"}
        if dest.hmac_secret is not None:
            digest = hmac.new(dest.hmac_secret, body, hashlib.sha256).hexdigest()
            headers["X-Signature"] = f"sha256={digest}"
        timeout = dest.timeout_ms / 1000
        tries = 1 + dest.retries
        trouble: dict[str, object] = {}
        for attempt in range(tries):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
                self._count(dest.id, "retried", n)
            try:
                # httpx's timeout is per read; a partner trickling bytes must not hold us.
                async with asyncio.timeout(timeout):
                    response = await self._client.post(
                        dest.url, content=body, headers=headers, timeout=timeout
                    )
            except Exception as exc:  # whatever the partner or network did: try again
                trouble = {"error": type(exc).__name__}
                continue
            if response.is_success:
                return "delivered"
            trouble = {"status": response.status_code}
        log.error(
            "s2s message failed",
            extra={"destination": dest.id, "attempts": tries, "users": n, **trouble},
        )
        return "failed"

    def _body(self, dest: S2SDestination, batch: Sequence[UserUpdate]) -> bytes:
        message = {
            "ProcessTime": _iso(self._clock()),
            "User_DPID": dest.partner,
            "Client_ID": self._client_id,
            "AAM_Destination_Id": dest.id,
            "User_count": len(batch),
            "Users": [
                {
                    "AAM_UUID": u.uuid,
                    "DataPartner_UUID": u.dp_uuid,
                    "AAM_Regions": [str(u.region)],
                    "Segments": [
                        {
                            "Segment_ID": c.alias,
                            "Status": "1" if c.entered else "0",
                            "DateTime": _iso(c.at),
                        }
                        for c in u.changes
                    ],
                }
                for u in batch
            ],
        }
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

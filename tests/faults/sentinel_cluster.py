"""A real Redis master, one replica and one sentinel, started (and killed) by a test.

All three are redis-server processes (the sentinel is `redis-server --sentinel`, what
the Debian package calls redis-sentinel) on free ports of 127.0.0.1, never the machine's
own Redis. One sentinel with a quorum of one is enough to promote the replica.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from app.ops.embedded import redis_server_binary
from app.ops.supervisor import free_port, stop_process

MASTER_NAME = "babelq"
#: How long the sentinel waits before it calls a silent master down.
DOWN_AFTER_MS = 1000


def wait_until(what: str, check: object, timeout: float) -> None:
    """Poll check() until truthy; hang protection only, never a performance bound."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class SentinelCluster:
    """Master, replica and sentinel in base; the URL the app is given is `url`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        master, replica = free_port(), free_port()
        self._server(master)
        self._server(replica, "--replicaof", "127.0.0.1", str(master))
        self.sentinel_port = free_port()
        self._sentinel(master)
        wait_until("the replica to sync", lambda: self._synced(replica), 30)
        wait_until("the sentinel to see the replica", self._sentinel_sees_replica, 30)

    @property
    def url(self) -> str:
        """BABELQ_REDIS_URL for the app: the sentinel, in kombu's form."""
        return f"sentinel://127.0.0.1:{self.sentinel_port}/0"

    def master_port(self) -> int:
        """The port the sentinel currently names as master."""
        with self._sentinel_client() as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def kill_master(self) -> int:
        """SIGKILL the current master, as a lost machine would; its port."""
        port = self.master_port()
        os.kill(self.procs[port].pid, signal.SIGKILL)
        self.procs[port].wait()
        return port

    def wait_promoted(self, old_port: int, timeout: float = 60) -> None:
        """Wait until the sentinel names another master, and that master takes writes."""
        wait_until("the sentinel to promote the replica",
                   lambda: self.master_port() != old_port and self._writable(), timeout)

    def close(self) -> None:
        """Stop every process of the cluster."""
        for process in self.procs.values():
            stop_process(process, 5.0)

    def _spawn(self, port: int, args: list[str]) -> None:
        log = self.base / f"redis-{port}.log"
        self.procs[port] = subprocess.Popen(
            [str(redis_server_binary()), *args, "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd=self.base,
        )  # fmt: skip
        wait_until(f"redis on {port}", lambda: self._answers(port), 30)

    def _server(self, port: int, *extra: str) -> None:
        self._spawn(port, ["--bind", "127.0.0.1", "--port", str(port), "--save", "",
                           "--appendonly", "no", "--dir", str(self.base), *extra])

    def _sentinel(self, master: int) -> None:
        conf = self.base / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.base}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
        )
        self._spawn(self.sentinel_port, [str(conf), "--sentinel"])

    def _sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_port, socket_timeout=2, decode_responses=True)

    def _answers(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _synced(self, replica: int) -> bool:
        with redis.Redis(port=replica, socket_timeout=1, decode_responses=True) as client:
            return client.info("replication").get("master_link_status") == "up"

    def _sentinel_sees_replica(self) -> bool:
        with self._sentinel_client() as client:
            return bool(client.sentinel_slaves(MASTER_NAME))

    def _writable(self) -> bool:
        try:
            with redis.Redis(port=self.master_port(), socket_timeout=1) as client:
                return bool(client.set("babelq:sentinel-probe", "1"))
        except redis.RedisError:
            return False

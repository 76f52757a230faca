"""Real Redis servers for tests: the shared one (REDIS_URL or 127.0.0.1:6379, never flushed)
and private redis-server processes on free loopback ports (to kill, or to form a Cluster)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis

from tests.support.ports import REDIS_PORTS, free_port
from tests.support.waiting import block_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def shared_redis_url() -> str:
    """The shared Redis; under CI a missing one is an error, elsewhere the test is skipped."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        message = f"Redis at {url} is not reachable ({exc}); start one or set REDIS_URL"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


def _real_clock_env() -> dict[str, str]:
    """The environment for a redis-server child: on the real clock even when the tests run under
    libfaketime (the suite's year-ahead check), as the shared Redis does; the product must not
    need the two clocks to agree (and redis-server and redis-cli do not start under libfaketime)."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FAKETIME")}


class RedisProcess:
    """One redis-server of our own: no persistence, loopback only."""

    def __init__(self, port: int | None = None, *extra: str, cluster: bool = False) -> None:
        if not Path(REDIS_SERVER).exists():
            message = "redis-server is not installed (apt-get install redis-server)"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        self.port = port or free_port(REDIS_PORTS, with_bus=cluster)
        self.dir = tempfile.mkdtemp(prefix="fairgate-redis-")
        self._extra = extra
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, *self._extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_real_clock_env(),
        )

        def answers() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
            except redis.RedisError:
                return False

        block_until(answers, 10, f"redis-server on {self.port} did not start", interval=0.02)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """Three masters on loopback, slots spread by redis-cli."""

    def __init__(self) -> None:
        self.nodes = [RedisProcess(None, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                                   "--cluster-config-file", f"nodes-{i}.conf", cluster=True) for i in range(3)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, env=_real_clock_env(),
        )
        info: object = None

        def ok() -> bool:
            # Every node, not only the first: a node that has not yet heard of all slots answers
            # CLUSTERDOWN, and the first requests routed to it fail.
            nonlocal info
            for node in self.nodes:
                info = redis.Redis(port=node.port).cluster("info")
                if not (isinstance(info, dict) and info.get("cluster_state") == "ok"
                        and int(info.get("cluster_slots_ok", 0)) == 16384
                        and int(info.get("cluster_known_nodes", 0)) == len(self.nodes)):
                    return False
            return True

        block_until(ok, 15, lambda: f"cluster did not become ok: {info}")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinel:
    """A master and one Sentinel watching it as `mymaster`."""

    def __init__(self) -> None:
        self.master = RedisProcess()
        self.port = free_port(REDIS_PORTS)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster/0"

    def start(self) -> RedisSentinel:
        self.master.start()
        config = Path(self.master.dir) / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.master.dir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 5000\n"
        )
        self.process = subprocess.Popen([REDIS_SERVER, str(config), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_real_clock_env())

        def watching() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2)
                            .sentinel_get_master_addr_by_name("mymaster"))
            except redis.RedisError:
                return False

        block_until(watching, 10, "sentinel did not start")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.master.stop()

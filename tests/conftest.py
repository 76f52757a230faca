"""Fixtures: a real test upstream and real gateways on loopback ports."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import load_config
from gateway.server.lifecycle import GatewayServer, ServeOptions
from tests.support.paths import ROOT
from tests.support.tokens import ADMIN_TOKEN
from tests.support.upstream_app import UpstreamState, build_upstream_app
from tests.support.waiting import block_until



@dataclass
class Upstream:
    url: str
    port: int
    state: UpstreamState


@dataclass
class RunningGateway:
    server: GatewayServer
    config_path: Path
    url: str
    admin_url: str


def gateway_config(upstream_url: str, *, routes: list[dict] | None = None, auth: dict | None = None,
                   **server: Any) -> dict:
    """A minimal config in front of `upstream_url`, listening on free ports.

    Without an `auth` section the routes default to `auth: none`.
    """
    routes = routes or [{"name": "all", "path_prefix": "/", "upstream": "app"}]
    if auth is None:
        routes = [{"auth": "none", **route} for route in routes]
    config = {
        "server": {"listen": "127.0.0.1:0", "access_log": False, "drain_timeout": "5s", **server},
        "admin": {"listen": "127.0.0.1:0"},
        "upstreams": {"app": {"url": upstream_url, "read_timeout": "5s", "connect_timeout": "1s"}},
        "routes": routes,
    }
    if auth is not None:
        config["auth"] = auth
    return config


@pytest.fixture(scope="session")
def redis_url() -> str:
    from tests.support.redis_servers import shared_redis_url

    return shared_redis_url()


@pytest.fixture(scope="session")
def key_prefix(redis_url: str):
    """A key prefix of this test run; its keys are deleted afterwards (the shared Redis is never flushed)."""
    import secrets

    import redis

    prefix = f"fgtest-{secrets.token_hex(4)}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = UpstreamState()
    runner = web.AppRunner(
        build_upstream_app(state), handler_cancellation=True, access_log=None, auto_decompress=False
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield Upstream(f"http://127.0.0.1:{port}", port, state)
    state.release_stall.set()
    await runner.cleanup()


StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[StartGateway]:
    started: list[GatewayServer] = []

    async def start(config: dict, clock: Clock = SYSTEM_CLOCK, **options: Any) -> RunningGateway:
        path = tmp_path / f"gateway-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        server = GatewayServer(
            load_config(path), ServeOptions(str(path), admin_token=ADMIN_TOKEN, clock=clock, **options)
        )
        await server.start()
        started.append(server)
        host, port = server.proxy_address
        admin_host, admin_port = server.admin_address
        return RunningGateway(server, path, f"http://{host}:{port}", f"http://{admin_host}:{admin_port}")

    yield start
    for server in started:
        await server.drain()


@pytest.fixture
async def gateway(start_gateway: StartGateway, upstream: Upstream) -> RunningGateway:
    return await start_gateway(gateway_config(upstream.url))


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


class GatewayProcess:
    """`fairgate run` in a child process, for signals, exit codes and memory."""

    def __init__(self, config_path: Path, *extra_args: str, env: dict | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config_path), *extra_args],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,  # e.g. resource limits of the child
        )

    def wait_ready(self, admin_url: str, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{admin_url}/readyz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        block_until(ready, timeout, "gateway did not become ready")

    def output(self) -> str:
        if self.process.poll() is None:
            return ""
        return self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def gateway_process():
    processes: list[GatewayProcess] = []

    def start(config_path: Path, *extra_args: str, env: dict | None = None,
              preexec_fn: Callable[[], None] | None = None) -> GatewayProcess:
        process = GatewayProcess(config_path, *extra_args, env=env, preexec_fn=preexec_fn)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()



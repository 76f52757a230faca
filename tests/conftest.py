"""Fixtures: a real test upstream and real gateways on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import load_config
from gateway.server.lifecycle import GatewayServer, ServeOptions
from tests.support.browser import start_browser
from tests.support.configs import gateway_config
from tests.support.gateways import GatewayProcess, RunningGateway, StartGateway, Upstream
from tests.support.redis_servers import RedisProcess
from tests.support.tokens import ADMIN_TOKEN
from tests.support.upstream_app import UpstreamState, build_upstream_app
from tests.support.webhooks import Receiver


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


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback."""
    state = await Receiver().start()
    yield state
    await state.stop()


@pytest.fixture(scope="module")
def browser():
    """A headless browser for the admin console, one per module."""
    driver = start_browser()
    yield driver
    driver.quit()


@pytest.fixture
def private_redis():
    """A Redis server of the test's own, to stop and start (outages) without touching the shared one."""
    server = RedisProcess().start()
    yield server
    server.stop()

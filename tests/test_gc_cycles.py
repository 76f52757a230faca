"""A request of each common kind leaves no cyclic garbage in the gateway.

Under the generational freeze (gateway/server/garbage.py) an object frozen while in use that
later becomes garbage held only by a reference cycle is never freed: every cycle a request makes
is a leak. Each test runs a real gateway and a real upstream on loopback in its own event loop
(uvloop, what `fairgate run` uses), sends a first request of the kind (imports, caches and pools
warm), collects, turns the automatic collector off, sends a few more, and expects a collection to
find nothing. bench/gc_cycles.py counts the same per 1,000 requests, kind by kind.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import uvloop
import yaml
from aiohttp import web

from gateway.clock import SYSTEM_CLOCK
from gateway.config import load_config
from gateway.server.lifecycle import GatewayServer, ServeOptions
from tests.support.configs import limits_config
from tests.support.gateways import Upstream
from tests.support.ports import free_port
from tests.support.tokens import ADMIN_TOKEN, bearer, hs_token
from tests.support.upstream_app import UpstreamState, build_upstream_app

PLANS = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/min", "burst": 1}]}}
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


async def _request(client: aiohttp.ClientSession, url: str, n: int, kind: str) -> int:
    """One request of `kind` (the n-th): the status the client saw, 0 if it left mid-answer."""
    if kind == "gone":
        host, _, port = url.removeprefix("http://").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        token = hs_token(SYSTEM_CLOCK, sub=f"u{n}", org_id=f"c{n}")
        writer.write(f"GET /bytes/8000000 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(1024)
        writer.close()
        await writer.wait_closed()
        return 0
    headers = {}
    if kind != "401":
        # 429: the same customer each time, its one request a minute used up by the first.
        headers = bearer(hs_token(SYSTEM_CLOCK) if kind == "429" else hs_token(SYSTEM_CLOCK, sub=f"u{n}",
                                                                              org_id=f"c{n}"))
    path = {"502": "/down/x", "504": "/stall"}.get(kind, f"/echo/{n}")
    async with client.get(f"{url}{path}", headers=headers) as response:
        await response.read()
        return response.status


async def _garbage_after(kind: str, tmp_path: Path) -> tuple[list[int], int, collections.Counter[str]]:
    state = UpstreamState()
    upstream_runner = web.AppRunner(build_upstream_app(state), handler_cancellation=True, access_log=None,
                                    auto_decompress=False)
    await upstream_runner.setup()
    await web.TCPSite(upstream_runner, "127.0.0.1", 0).start()
    port = upstream_runner.addresses[0][1]
    config = limits_config(Upstream(f"http://127.0.0.1:{port}", port, state), PLANS,
                           routes=[{"name": "down", "path_prefix": "/down/", "upstream": "down"},
                                   {"name": "api", "path_prefix": "/", "upstream": "app"}])
    config["upstreams"]["app"]["read_timeout"] = "200ms"
    config["upstreams"]["down"] = {"url": f"http://127.0.0.1:{free_port()}", "connect_timeout": "1s"}  # nobody
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    server = GatewayServer(load_config(path), ServeOptions(str(path), admin_token=ADMIN_TOKEN))
    await server.start()
    host, proxy_port = server.proxy_address
    url = f"http://{host}:{proxy_port}"
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            await _request(client, url, 0, kind)
            await _quiet(server)
            gc.collect()
            gc.disable()  # every cycle the requests make stays for the collection below to count
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                statuses = [await _request(client, url, n, kind) for n in range(1, 6)]
                await _quiet(server)
                found = gc.collect()
                kinds = collections.Counter(type(obj).__qualname__ for obj in gc.garbage)
            finally:
                gc.garbage.clear()
                gc.set_debug(0)
                gc.enable()
    finally:
        await server.drain()
        await upstream_runner.cleanup()
    return statuses, found, kinds


async def _quiet(server: GatewayServer) -> None:
    """Until no request is in flight (a client that left: its handler ends after it) and the
    detectors have seen what was sent."""
    for _ in range(500):
        if server.metrics.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert server.metrics.in_flight == 0, "a request is still in flight"
    await server.state.detection.drain()


def _run(loop_factory: LoopFactory | None, scenario: Callable[[], Awaitable[tuple[list[int], int, collections.Counter[str]]]]):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(scenario())


EXPECTED = {"200": 200, "429": 429, "401": 401, "502": 502, "504": 504, "gone": 0}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_request_of_each_kind_leaves_no_cyclic_garbage(kind, tmp_path):
    statuses, found, kinds = _run(uvloop.new_event_loop, lambda: _garbage_after(kind, tmp_path))
    assert statuses == [EXPECTED[kind]] * 5
    assert found == 0, f"{found} objects in reference cycles: {kinds.most_common(10)}"


@pytest.mark.xfail(sys.version_info < (3, 12), strict=True,
                   reason="asyncio's own loop on 3.11: a closed connection's _SelectorSocketTransport keeps "
                          "itself in a cycle through its bound _read_ready_cb (CPython gh-100348, fixed in 3.12); "
                          "uvloop, what `fairgate run` uses, has none")
def test_on_asyncio_s_own_loop_a_client_gone_mid_answer_leaves_no_cyclic_garbage(tmp_path):
    statuses, found, kinds = _run(None, lambda: _garbage_after("gone", tmp_path))
    assert statuses == [0] * 5
    assert found == 0, f"{found} objects in reference cycles: {kinds.most_common(10)}"

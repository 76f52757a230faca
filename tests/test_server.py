"""Server life: admin endpoints, reload, graceful drain, workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import aiohttp
import pytest
import yaml

from tests.support.configs import gateway_config
from tests.support.gateways import write_config, write_process_config
from tests.support.ports import free_port
from tests.support.tokens import ADMIN_TOKEN
from tests.support.waiting import wait_until

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_health_ready_and_metrics(gateway, client):
    async with client.get(f"{gateway.admin_url}/healthz") as response:
        assert response.status == 200
    async with client.get(f"{gateway.admin_url}/readyz") as response:
        assert response.status == 200
    async with client.get(f"{gateway.url}/echo") as response:
        assert response.status == 200
    async with client.get(f"{gateway.admin_url}/metrics") as response:
        text = await response.text()
        assert response.content_type == "text/plain"
    assert 'fairgate_requests_total{code="2xx",route="all"} 1.0' in text
    assert 'fairgate_request_duration_seconds_count{route="all"} 1.0' in text


async def test_admin_api_requires_the_token(gateway, client):
    async with client.post(f"{gateway.admin_url}/admin/reload") as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
    async with client.post(f"{gateway.admin_url}/admin/reload", headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_admin_api_takes_the_bearer_scheme_in_any_case(gateway, client, scheme):
    # RFC 7235: the scheme is case-insensitive, as the proxy already treats it.
    headers = {"Authorization": f"{scheme} {ADMIN_TOKEN}"}
    async with client.get(f"{gateway.admin_url}/admin/customers", headers=headers) as response:
        assert response.status == 200
    async with client.get(f"{gateway.admin_url}/admin/customers", headers={"Authorization": f"{scheme} wrong"}) as response:
        assert response.status == 401


async def test_reload_swaps_config_and_rejects_a_bad_one(gateway, upstream, client):
    routes = [{"name": "only-echo", "path_prefix": "/echo/", "upstream": "app"}]
    config = gateway_config(upstream.url, routes=routes)
    config["server"] = yaml.safe_load(gateway.config_path.read_text())["server"]
    config["admin"] = yaml.safe_load(gateway.config_path.read_text())["admin"]
    gateway.config_path.write_text(yaml.safe_dump(config))

    async with client.post(f"{gateway.admin_url}/admin/reload", headers=AUTH) as response:
        assert response.status == 200
    async with client.get(f"{gateway.url}/status/200") as response:
        assert response.status == 404  # the new routes are in force
        assert response.content_type == "application/problem+json"
    async with client.get(f"{gateway.url}/echo/x") as response:
        assert response.status == 200

    gateway.config_path.write_text("routes: [{name: r, path_prefix: /, upstream: ghost}]\nupstreams: {}\n")
    async with client.post(f"{gateway.admin_url}/admin/reload", headers=AUTH) as response:
        assert response.status == 422
        problem = await response.json()
    assert any("upstreams" in error for error in problem["errors"])
    async with client.get(f"{gateway.url}/echo/x") as response:
        assert response.status == 200  # still the last good config
    async with client.get(f"{gateway.url}/status/200") as response:
        assert response.status == 404
    async with client.get(f"{gateway.admin_url}/metrics") as response:
        text = await response.text()
    assert 'fairgate_config_reloads_total{result="failure"} 1.0' in text
    assert 'fairgate_config_reloads_total{result="success"} 1.0' in text
    assert "fairgate_config_last_reload_successful 0.0" in text


async def test_admin_api_is_disabled_without_a_token(start_gateway, upstream, client, tmp_path):
    from gateway.config import load_config
    from gateway.server.lifecycle import GatewayServer, ServeOptions

    path = tmp_path / "no-token.yaml"
    path.write_text(yaml.safe_dump(gateway_config(upstream.url)))
    server = GatewayServer(load_config(path), ServeOptions(str(path), admin_token=None))
    await server.start()
    try:
        host, port = server.admin_address
        async with client.post(f"http://{host}:{port}/admin/reload") as response:
            assert response.status == 503
            assert "FAIRGATE_ADMIN_TOKEN" in (await response.json())["detail"]
    finally:
        await server.drain()


async def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path, upstream, client, gateway_process):
    path, url, admin_url = write_config(tmp_path, upstream.url)
    process = gateway_process(path)
    await asyncio.to_thread(process.wait_ready, admin_url)

    in_flight = asyncio.create_task(client.get(f"{url}/stall"))
    await asyncio.wait_for(upstream.state.stall_started.wait(), 5)
    process.process.send_signal(signal.SIGTERM)

    async def refused() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
        except OSError:
            return True
        writer.close()
        return False

    await wait_until(refused, message="listener still accepting after SIGTERM", interval=0.02)
    assert process.process.poll() is None  # still finishing the in-flight request

    upstream.state.release_stall.set()
    response = await asyncio.wait_for(in_flight, 5)
    assert response.status == 200
    assert await response.json() == {"released": True}
    assert await asyncio.to_thread(process.process.wait, 10) == 0


async def test_sighup_reloads_and_a_bad_file_keeps_the_old_config(tmp_path, upstream, client, gateway_process):
    path, url, admin_url = write_config(tmp_path, upstream.url)
    process = gateway_process(path)
    await asyncio.to_thread(process.wait_ready, admin_url)
    original = path.read_text()

    path.write_text("this: is: not yaml")
    process.process.send_signal(signal.SIGHUP)

    async def wait_for_reload(result: str) -> None:
        metric = f'fairgate_config_reloads_total{{result="{result}"}} 1.0'
        async def counted() -> bool:
            async with client.get(f"{admin_url}/metrics") as response:
                return metric in await response.text()
        await wait_until(counted, message=f"no {metric}", interval=0.02)

    await wait_for_reload("failure")
    async with client.get(f"{url}/echo") as response:
        assert response.status == 200

    config = yaml.safe_load(original)
    config["routes"] = [{"name": "api", "path_prefix": "/api/", "upstream": "app", "auth": "none"}]
    path.write_text(yaml.safe_dump(config))
    process.process.send_signal(signal.SIGHUP)
    await wait_for_reload("success")
    async with client.get(f"{url}/echo") as response:
        assert response.status == 404
    process.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.process.wait, 10) == 0


async def test_listen_flags_override_the_config(tmp_path, upstream, client, gateway_process):
    path, _, _ = write_config(tmp_path, upstream.url)
    port, admin_port = free_port(), free_port()
    process = gateway_process(path, "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}")
    await asyncio.to_thread(process.wait_ready, f"http://127.0.0.1:{admin_port}")
    async with client.get(f"http://127.0.0.1:{port}/echo") as response:
        assert response.status == 200


async def test_port_in_use_fails_with_exit_1(tmp_path, upstream, gateway_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path, _, _ = write_config(tmp_path, upstream.url)
        process = gateway_process(path, "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
        assert await asyncio.to_thread(process.process.wait, 20) == 1
        assert "cannot listen" in process.output()


async def test_workers_share_one_port_and_stop_together(tmp_path, upstream, client, gateway_process):
    path, url, admin_url = write_config(tmp_path, upstream.url)
    process = gateway_process(path, "--workers", "2")
    await asyncio.to_thread(process.wait_ready, admin_url)
    pids: set[int] = set()

    async def both_answered() -> bool:
        try:
            async with aiohttp.ClientSession() as fresh:  # new connections spread over the workers
                async with fresh.get(f"{admin_url}/healthz") as response:
                    pids.add((await response.json())["pid"])
                async with fresh.get(f"{url}/echo") as response:
                    assert response.status == 200
        except aiohttp.ClientConnectionError:
            pass  # a worker still binding
        return len(pids) >= 2
    await wait_until(both_answered, timeout=15, message=lambda: f"only workers {pids} answered", interval=0.05)
    assert process.process.pid not in pids
    process.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.process.wait, 20)
    output = process.output()
    assert code == 0, output
    assert "keeps its own limits" in output


async def test_workers_that_cannot_start_end_the_supervisor_with_exit_1(tmp_path, upstream, gateway_process):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path, _, _ = write_config(tmp_path, upstream.url)
        process = gateway_process(path, "--workers", "2", "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
        assert await asyncio.to_thread(process.process.wait, 30) == 1  # not restarted forever
        output = process.output()
    assert "cannot listen" in output  # the worker's own message
    assert "failed at start-up" in output
    assert "restarting" not in output


async def test_workers_with_a_detector_on_and_no_salt_refuse_to_start(tmp_path, upstream, gateway_process):
    """Each worker would sign browser passes with its own random key: one passed on one worker
    would be a forgery to the next."""
    config = gateway_config(upstream.url)
    config["detection"] = {"scraping": {"actions": {"portal": "challenge"}}}
    path, _, _ = write_process_config(tmp_path, "gateway", config)
    process = gateway_process(path, "--workers", "2")
    assert await asyncio.to_thread(process.process.wait, 30) == 2
    assert "detection.hash_salt: required with --workers 2" in process.output()


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return {int(child) for child in file.read().split()}


async def _wait_serving(admin_url: str, pid: int) -> None:
    """Until worker `pid` answers (new connections spread over the workers)."""
    async def answered() -> bool:
        try:
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{admin_url}/healthz") as response:
                return (await response.json())["pid"] == pid
        except aiohttp.ClientConnectionError:
            return False
    await wait_until(answered, timeout=15, message=f"worker {pid} never answered", interval=0.05)


async def test_a_crashed_worker_is_restarted_later_each_time(tmp_path, upstream, client, gateway_process):
    path, url, admin_url = write_config(tmp_path, upstream.url)
    process = gateway_process(path, "--workers", "2")
    await asyncio.to_thread(process.wait_ready, admin_url)
    supervisor = process.process.pid
    await wait_until(lambda: len(_children(supervisor)) == 2, timeout=15)
    victim = min(_children(supervisor))
    await _wait_serving(admin_url, victim)
    for _ in range(2):  # the same worker crashes twice
        before = _children(supervisor)
        os.kill(victim, signal.SIGKILL)
        # A new worker takes its place and serves.
        await wait_until(lambda before=before: len(_children(supervisor) - before) == 1, timeout=15)
        (victim,) = _children(supervisor) - before
        await _wait_serving(admin_url, victim)
    async with client.get(f"{url}/echo") as response:
        assert response.status == 200
    process.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.process.wait, 20)
    output = process.output()
    assert code == 0, output  # SIGTERM still reaches every worker
    restarts = [line for line in output.splitlines() if "restarting in" in line]
    assert len(restarts) == 2, output
    assert "restarting in 0.5 s" in restarts[0] and "restarting in 1.0 s" in restarts[1]

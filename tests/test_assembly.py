"""A reload builds the new Runtime and the new settings of the long-lived state before it
applies either: one that cannot be built leaves the old config in force everywhere."""

from __future__ import annotations

import asyncio

import yaml

from gateway.config import GatewayConfig
from tests.support.clock import T0, ManualClock
from tests.support.configs import enforcement_config, gateway_config
from tests.support.tokens import ADMIN, bearer, hs_issuer, hs_token


async def test_a_reload_that_cannot_build_the_state_leaves_the_old_runtime_and_state(start_gateway, upstream, client):
    breaks = False

    def transform(config: GatewayConfig) -> GatewayConfig:
        # model_copy skips validation, as the CLI's overrides do: a zone only building can reject,
        # after the failed-login, detection and enforcement settings would have been taken.
        if not breaks:
            return config
        return config.model_copy(update={"limits": config.limits.model_copy(update={"time_zone": "Nowhere/Atlantis"})})

    config = enforcement_config(upstream)
    gateway = await start_gateway(config, clock=ManualClock(T0), transform=transform)
    server = gateway.server
    state = server.state
    runtime = server.runtimes.current
    old = (state.failed_logins.settings, state.detection.settings, state.enforcement.settings, state.alerts.settings,
           state.usage.settings)

    config["auth"]["failed_logins"] = {"max_failures": 3}
    config["detection"] = {"max_tracked": 500}
    config["enforcement"]["ladder"] = {**config["enforcement"]["ladder"], "warn_at": 3}
    config["usage"] = {"flush_interval": "2s"}
    gateway.config_path.write_text(yaml.safe_dump(config))
    breaks = True
    async with client.post(f"{gateway.admin_url}/admin/reload", headers=ADMIN) as response:
        assert response.status == 422
        assert "Nowhere/Atlantis" in " ".join((await response.json())["errors"])
    assert server.runtimes.current is runtime
    assert (state.failed_logins.settings, state.detection.settings, state.enforcement.settings, state.alerts.settings,
            state.usage.settings) == old

    breaks = False  # the same file, buildable: every part takes it
    async with client.post(f"{gateway.admin_url}/admin/reload", headers=ADMIN) as response:
        assert response.status == 200
    assert server.runtimes.current is not runtime
    assert state.failed_logins.settings.max_failures == 3
    assert state.detection.settings.max_tracked == 500
    assert state.enforcement.settings.ladder.warn_at == 3


async def test_a_request_is_answered_under_the_config_it_started_with(start_gateway, client):
    """Its rejection is counted as the config it ran under says, though a reload landed meanwhile."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await release.wait()
        writer.close()  # no answer: the gateway says 502

    upstream = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        clock = ManualClock(T0)
        config = gateway_config(f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}",
                                auth={"issuers": [hs_issuer()]})
        config["usage"] = {"enabled": False}
        gateway = await start_gateway(config, clock=clock)
        token = bearer(hs_token(clock))
        started = asyncio.get_running_loop().create_task(client.get(f"{gateway.url}/x", headers=token))
        await asyncio.wait_for(arrived.wait(), 5)
        config["usage"] = {"enabled": True}  # rejections are metered from now on
        gateway.config_path.write_text(yaml.safe_dump(config))
        assert (await gateway.server.runtimes.reload()).ok
        release.set()
        async with await started as response:
            assert response.status == 502  # started when nothing was metered
        async with client.get(f"{gateway.url}/x", headers=token) as response:
            assert response.status == 502  # started under the new config
        usage = gateway.server.state.usage
        await usage.flush()
        stored = await usage.month(usage.calendar.period("month", clock.time())[0])
        rejected = {name: amount for name, amount in stored.get("acme", {}).items() if "rejected" in name}
        assert list(rejected.values()) == [1]
    finally:
        upstream.close()
        await upstream.wait_closed()


async def test_a_reload_that_moves_the_sightings_bound_says_it_waits_for_a_restart(start_gateway, upstream, client,
                                                                                    caplog):
    """The bound follows detection.max_tracked but is the store's: re-spreading a full table
    over new shards on a reload would hold the loop, so it is read at start and the log says so."""
    config = enforcement_config(upstream)
    config["detection"] = {**config.get("detection", {}), "max_tracked": 500}
    gateway = await start_gateway(config, clock=ManualClock(T0))
    limit = gateway.server.state.store.sightings().table.limit
    config["detection"]["max_tracked"] = 800
    gateway.config_path.write_text(yaml.safe_dump(config))
    with caplog.at_level("WARNING", logger="fairgate.reload"):
        async with client.post(f"{gateway.admin_url}/admin/reload", headers=ADMIN) as response:
            assert response.status == 200
    assert gateway.server.state.detection.settings.max_tracked == 800
    assert (limit, gateway.server.state.store.sightings().table.limit) == (3000, 3000)
    assert any("sightings bound" in record.getMessage() for record in caplog.records)

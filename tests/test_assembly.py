"""A reload builds the new Runtime and the new settings of the long-lived state before it
applies either: one that cannot be built leaves the old config in force everywhere."""

from __future__ import annotations

import yaml

from gateway.config import GatewayConfig
from tests.conftest import ManualClock
from tests.test_enforcement import ADMIN, T0, enforcement_config


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

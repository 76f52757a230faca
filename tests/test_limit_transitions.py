"""When the rate in force changes (a throttle, a reinstatement, an exception, a reload), what a
customer already took carries over exactly: no burst is released, none is withheld. Through a
real gateway on an injected clock, on memory and on Redis."""

from __future__ import annotations

import secrets

import pytest
import yaml

from gateway.enforce.ladder import THROTTLED
from tests.support.clock import T0, ManualClock
from tests.support.configs import LADDER, gateway_config
from tests.support.tokens import ADMIN, bearer, hs_issuer, hs_token
from tests.support.traffic import statuses

SUSTAINED = {"name": "sustained", "kind": "rate", "rate": "1/s", "burst": 10}


@pytest.fixture(params=["memory", "redis"])
def state(request) -> dict:
    if request.param == "memory":
        return {"url": "memory://"}
    prefix = f"{request.getfixturevalue('key_prefix')}-transitions-{secrets.token_hex(4)}"
    return {"url": request.getfixturevalue("redis_url"), "key_prefix": prefix}


def transitions_config(upstream, state: dict, limit: dict = SUSTAINED) -> dict:
    config = gateway_config(upstream.url, auth={"issuers": [hs_issuer()]})
    config["limits"] = {"default_plan": "standard"}
    config["plans"] = {"standard": {"limits": [limit]}}
    config["enforcement"] = {"mode": "enforce", "policy": "https://example.com/fair-use", "ladder": LADDER}
    config["state"] = state
    return config


async def refused(client, gateway, token: str) -> tuple[int, str | None]:
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        return response.status, response.headers.get("Retry-After")


async def throttle(client, gateway, token: str) -> None:
    """Empty the bucket and go on until the ladder throttles the customer."""
    assert await statuses(client, gateway, token, 14) == [200] * 10 + [429] * 4
    await gateway.server.state.enforcement.judge_queued()
    assert gateway.server.state.enforcement.standings.latest("customer:acme").state == THROTTLED


async def test_throttling_releases_no_capacity(start_gateway, upstream, client, state):
    clock = ManualClock(T0)
    gateway = await start_gateway(transitions_config(upstream, state), clock=clock)
    token = hs_token(clock)
    await throttle(client, gateway, token)
    # Half the rate, the same burst: the bucket is as empty as it was a moment ago, and refills
    # at the throttled rate.
    assert await refused(client, gateway, token) == (429, "2")
    clock.advance(2)
    assert await statuses(client, gateway, token, 2) == [200, 429]  # the plan's rate would have given two
    clock.advance(20)
    assert await statuses(client, gateway, token, 11) == [200] * 10 + [429]  # a full bucket is still ten


async def test_reinstating_restores_the_plan_at_once(start_gateway, upstream, client, state):
    clock = ManualClock(T0)
    gateway = await start_gateway(transitions_config(upstream, state), clock=clock)
    token = hs_token(clock)
    await throttle(client, gateway, token)
    clock.advance(20)  # ten units back at the throttled rate, taken at once
    assert await statuses(client, gateway, token, 11) == [200] * 10 + [429]
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/reinstate", headers=ADMIN) as response:
        assert response.status == 200
    # What the plan's own bucket allows after those ten: the next unit in one second.
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "1"
        assert response.headers["RateLimit-Policy"] == '"sustained";q=10;w=10'
    clock.advance(1)
    assert await statuses(client, gateway, token, 2) == [200, 429]
    clock.advance(10)
    assert await statuses(client, gateway, token, 11) == [200] * 10 + [429]


async def test_an_exception_raising_a_rate_applies_to_an_empty_bucket_at_once(start_gateway, upstream, client,
                                                                               state):
    clock = ManualClock(T0)
    gateway = await start_gateway(transitions_config(upstream, state), clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 11) == [200] * 10 + [429]
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/exceptions", headers=ADMIN,
                           json={"limit": "sustained", "rate": "10/s", "for": "1h", "reason": "launch day"}) as response:
        assert response.status == 201
    assert await refused(client, gateway, token) == (429, "1")  # 0.1 s, rounded up
    clock.advance(0.5)
    assert await statuses(client, gateway, token, 6) == [200] * 5 + [429]


async def test_an_exception_lowering_a_rate_releases_nothing(start_gateway, upstream, client, state):
    clock = ManualClock(T0)
    gateway = await start_gateway(transitions_config(upstream, state), clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 5) == [200] * 5
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/exceptions", headers=ADMIN,
                           json={"limit": "sustained", "rate": "6/min", "for": "1h", "reason": "abuse review"}) as response:
        assert response.status == 201
    assert await statuses(client, gateway, token, 6) == [200] * 5 + [429]  # the five left, no more
    clock.advance(10)
    assert await statuses(client, gateway, token, 2) == [200, 429]


@pytest.mark.parametrize(("rate", "then"), [
    ("10/s", [(0.5, [200] * 5 + [429])]),
    ("6/min", [(0.5, [429]), (10, [200, 429])]),
], ids=["raised", "lowered"])
async def test_a_reload_changing_the_plan_rate_carries_the_bucket_over(start_gateway, upstream, client, state, rate,
                                                                        then):
    clock = ManualClock(T0)
    config = transitions_config(upstream, state)
    gateway = await start_gateway(config, clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 11) == [200] * 10 + [429]
    reloaded = transitions_config(upstream, state, {**SUSTAINED, "rate": rate})
    on_disk = yaml.safe_load(gateway.config_path.read_text())
    reloaded["server"], reloaded["admin"] = on_disk["server"], on_disk["admin"]
    gateway.config_path.write_text(yaml.safe_dump(reloaded))
    async with client.post(f"{gateway.admin_url}/admin/reload", headers=ADMIN) as response:
        assert response.status == 200
    for seconds, expected in then:
        clock.advance(seconds)
        assert await statuses(client, gateway, token, len(expected)) == expected

"""Webhook alerts against a real receiver: one per cooldown for a sustained problem, signed,
retried, and a dead receiver never slowing requests."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import aiohttp

from gateway.alerts.webhooks import Alerts
from gateway.config.alerts import AlertSettings
from tests.support.clock import T0, ManualClock
from tests.support.configs import enforcement_config
from tests.support.tokens import ADMIN, hs_token
from tests.support.traffic import statuses

SECRET = "alert-signing-secret"


def settings(url: str, **extra) -> AlertSettings:
    return AlertSettings(webhooks=[{"name": "ops", "url": url, "secret": SECRET}], cooldown="5min",
                         backoff="1s", **extra)


async def test_a_sustained_problem_alerts_once_per_cooldown(receiver):
    clock = ManualClock(T0)
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    alerts = Alerts(clock, sleep=no_wait)
    alerts.configure(settings(receiver.url))
    receiver.fail_next = 2  # the first alert needs two retries
    for _ in range(61):  # a scraping finding every 10 s for ten minutes
        alerts.on_event({"kind": "finding", "customer": "acme", "detector": "scraping", "at": clock.time()})
        alerts.on_event({"kind": "violation", "customer": "acme"})  # not an alerting kind
        clock.advance(10)
        await asyncio.sleep(0)
    await alerts.close(grace=5)

    bodies = [body for _, body in receiver.received]
    assert [body["at"] - T0 for body in bodies] == [0, 300, 600]
    assert [body["held_back"] for body in bodies] == [0, 29, 29]
    assert all(body["alert"] == "finding:scraping" and body["customer"] == "acme" for body in bodies)
    assert waits == [1.0, 2.0]  # backoff doubles
    headers, _ = receiver.received[-1]
    expected = hmac.new(SECRET.encode(), headers["Fairgate-Timestamp"].encode() + b"." + receiver.raw,
                        hashlib.sha256).hexdigest()
    assert headers["Fairgate-Signature"] == f"sha256={expected}"


async def test_other_customers_and_kinds_are_not_held_back(receiver):
    clock = ManualClock(T0)
    alerts = Alerts(clock)
    alerts.configure(settings(receiver.url))
    for event in ({"kind": "state_change", "customer": "acme", "state": "warned"},
                  {"kind": "state_change", "customer": "acme", "state": "throttled"},
                  {"kind": "state_change", "customer": "globex", "state": "warned"},
                  {"kind": "state_change", "customer": "acme", "state": "warned"}):
        alerts.on_event(event)
    await alerts.close(grace=5)
    assert [(b["customer"], b["alert"]) for _, b in receiver.received] == [
        ("acme", "state_change:warned"), ("acme", "state_change:throttled"), ("globex", "state_change:warned")]


async def test_a_dead_receiver_never_slows_requests(start_gateway, upstream, receiver):
    receiver.stall = True
    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["alerts"] = {"webhooks": [{"name": "ops", "url": receiver.url, "events": ["state_change", "finding",
                                                                                    "admin_action"]}],
                        "cooldown": "1s", "timeout": "1h", "retries": 0}
    gateway = await start_gateway(config, clock=clock)
    token = hs_token(clock)
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        for step in range(5):
            async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                                   json={"for": "1s", "reason": f"test {step}"}) as response:
                assert response.status == 201
            clock.advance(2)  # past the suspension and the cooldown: every step alerts again
            assert await statuses(client, gateway, token, 1) == [200]
    alerts = gateway.server.state.alerts
    assert alerts.pending("ops") >= 5  # stuck behind the stalled receiver, in their own queue

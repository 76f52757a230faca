"""Every change a fleet shares goes through one publisher: audited once on the gateway that made
it, written once to the shared store, and taken by every other gateway on the same Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.enforce.ladder import SUSPENDED, WARNED
from gateway.fleet.topics import Topic
from gateway.proxy.runtime import GatewayState
from tests.support.admin import events
from tests.support.clock import T0, ManualClock
from tests.support.configs import detection_config, enforcement_config
from tests.support.tokens import ADMIN, bearer, hs_token
from tests.support.traffic import browse_headless, statuses
from tests.support.waiting import wait_until


async def post(client, gateway, path: str, body: dict) -> tuple[int, dict]:
    async with client.post(f"{gateway.admin_url}{path}", headers=ADMIN, json=body) as response:
        return response.status, await response.json()


async def revoke_token(client, first, second, clock) -> None:
    body = {"issuer": "test", "jti": "t-1", "exp": T0 + 600}
    assert (await post(client, first, "/admin/revocations", body))[0] == 201


async def scrape(client, first, second, clock) -> None:
    assert await browse_headless(client, first, bearer(hs_token(clock)), clock, 3) == [200] * 3


async def climb_the_ladder(client, first, second, clock) -> None:
    assert await statuses(client, first, hs_token(clock), 3) == [200, 429, 429]
    await first.server.state.enforcement.judge_queued()


async def suspend(client, first, second, clock) -> None:
    body = {"for": "1h", "reason": "abuse report"}
    assert (await post(client, first, "/admin/customers/acme/suspend", body))[0] == 201


async def raise_a_limit(client, first, second, clock) -> None:
    body = {"limit": "sustained", "burst": 3, "for": "1h", "reason": "agreed"}
    assert (await post(client, first, "/admin/customers/acme/exceptions", body))[0] == 201


async def allow_a_user(client, first, second, clock) -> None:
    body = {"customer": "acme", "user": "ann", "for": "1h", "reason": "the customer's test rig"}
    assert (await post(client, first, "/admin/allow-list", body))[0] == 201


async def end_a_grant(client, first, second, clock) -> None:
    body = {"limit": "sustained", "burst": 3, "for": "1h", "reason": "agreed"}
    _, made = await post(client, first, "/admin/customers/acme/exceptions", body)
    await wait_until(lambda: len(second.server.state.grants) == 1)
    async with client.delete(f"{first.admin_url}/admin/exceptions/{made['grant']['id']}", headers=ADMIN) as response:
        assert response.status == 200


@dataclass(frozen=True)
class Kind:
    config: Callable[[Any], dict]
    act: Callable[..., Awaitable[None]]
    topic: Topic
    event: dict[str, Any]  # the audit event's kind and the fields that tell it apart
    taken: Callable[[GatewayState], bool]  # the second gateway has it


KINDS = {
    "revocation": Kind(enforcement_config, revoke_token, Topic.REVOCATIONS,
                       {"kind": "admin_action", "action": "revoke_token", "jti": "t-1"},
                       lambda state: state.revocations.active() == 1),
    "sanction": Kind(detection_config, scrape, Topic.SANCTIONS, {"kind": "sanction"},
                     lambda state: bool(state.detection.sanctions)),
    "standing by the ladder": Kind(enforcement_config, climb_the_ladder, Topic.STANDINGS,
                                   {"kind": "state_change", "state": WARNED},
                                   lambda state: getattr(state.enforcement.standings.latest("customer:acme"),
                                                         "state", None) == WARNED),
    "standing by an account manager": Kind(enforcement_config, suspend, Topic.STANDINGS,
                                           {"kind": "state_change", "state": SUSPENDED, "by": "admin"},
                                           lambda state: getattr(state.enforcement.standings.latest("customer:acme"),
                                                                 "state", None) == SUSPENDED),
    "grant": Kind(enforcement_config, raise_a_limit, Topic.GRANTS, {"kind": "admin_action", "action": "override"},
                  lambda state: len(state.grants) == 1),
    "allow-list": Kind(enforcement_config, allow_a_user, Topic.GRANTS, {"kind": "admin_action", "action": "allow_user"},
                       lambda state: len(state.grants) == 1),
    "grant revocation": Kind(enforcement_config, end_a_grant, Topic.REVOKED_GRANTS,
                             {"kind": "admin_action", "action": "revoke_grant"},
                             lambda state: len(state.grants) == 0),
}


def matching(found: list[dict], event: dict[str, Any]) -> list[dict]:
    return [e for e in found if all(e.get(key) == value for key, value in event.items())]


@pytest.mark.parametrize("name", list(KINDS))
async def test_a_fleet_change_is_audited_once_shared_once_and_taken_by_another_gateway(
        name, start_gateway, upstream, client, redis_url, key_prefix):
    kind = KINDS[name]
    clock = ManualClock(T0)
    config = kind.config(upstream)
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}-fleet-{name.replace(' ', '-')}"}
    first = await start_gateway(config, clock=clock)
    second = await start_gateway(config, clock=clock)
    await kind.act(client, first, second, clock)
    await wait_until(lambda: kind.taken(second.server.state))
    await first.server.state.fleet.drain()
    assert len(matching(await events(client, first), kind.event)) == 1
    assert matching(await events(client, second), kind.event) == []  # taken, not recorded again
    assert len(await first.server.state.store.shared(kind.topic, clock.time()) or []) == 1


@pytest.mark.parametrize("name", ["revocation", "grant", "allow-list", "standing by an account manager"])
async def test_a_change_the_fleet_cannot_hear_of_is_applied_audited_and_answered_503(
        name, start_gateway, upstream, client, private_redis):
    kind = KINDS[name]
    clock = ManualClock(T0)
    config = kind.config(upstream)
    config["state"] = {"url": private_redis.url, "timeout": "100ms"}
    gateway = await start_gateway(config, clock=clock)
    private_redis.kill()
    with pytest.raises(AssertionError):  # the act expects 201
        await kind.act(client, gateway, None, clock)
    assert len(matching(await events(client, gateway), kind.event)) == 1
    assert kind.taken(gateway.server.state)  # this gateway applies it all the same

"""Every change a fleet shares goes through one publisher: audited once on the gateway that made
it, written once to the shared store, and taken by every other gateway on the same Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from gateway.clock import SYSTEM_CLOCK
from gateway.enforce.ladder import SUSPENDED, WARNED
from gateway.fleet.topics import Topic
from gateway.proxy.runtime import GatewayState
from tests.support.admin import events
from tests.support.clock import T0, ManualClock
from tests.support.configs import detection_config, enforcement_config
from tests.support.gateways import write_process_config
from tests.support.tokens import ADMIN, ADMIN_TOKEN, bearer, hs_token
from tests.support.traffic import BROWSER, HEADLESS, browse_headless, statuses
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
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}:fleet-{name.replace(' ', '-')}"}
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


# The same changes across two `fairgate run` processes on one Redis, on the system clock: each
# process keeps its own audit file, and B learns of A's change only through Redis.

@dataclass(frozen=True)
class GatewayAt:
    """A gateway child process, as a client and an auditor see it."""

    url: str
    admin_url: str
    audit: Path


def audited(gateway: GatewayAt, event: dict[str, Any]) -> list[dict]:
    """The events of `gateway`'s audit file that match `event`."""
    if not gateway.audit.exists():
        return []
    return matching([json.loads(line) for line in gateway.audit.read_text().splitlines() if line], event)


def now_token(**claims) -> str:
    return hs_token(SYSTEM_CLOCK, **claims)


async def admin_view(client, gateway: GatewayAt, path: str) -> dict:
    async with client.get(f"{gateway.admin_url}{path}", headers=ADMIN) as response:
        assert response.status == 200
        return await response.json()


async def status_of(client, url: str, token: str, headers: dict | None = None) -> int:
    async with client.get(url, headers={**bearer(token), **(headers or {})}) as response:
        return response.status


async def revoke_on_a(client, a, b) -> Callable[[], Awaitable[bool]]:
    token = now_token(jti="t-1")
    assert await status_of(client, f"{b.url}/echo/x", token) == 200
    body = {"issuer": "test", "jti": "t-1", "exp": int(time.time()) + 600}
    assert (await post(client, a, "/admin/revocations", body))[0] == 201
    return lambda: _is(status_of(client, f"{b.url}/echo/x", token), 401)


async def scrape_on_a(client, a, b) -> Callable[[], Awaitable[bool]]:
    token = now_token()
    assert await status_of(client, f"{b.url}/echo/portal/q", token, BROWSER) == 200
    for n in range(3):
        async with client.get(f"{a.url}/echo/portal/p{n}", headers={**bearer(token), **HEADLESS}) as response:
            assert response.status in (200, 403)
    # B is asked by a person's browser, so nothing B sees itself could block this user.
    return lambda: _is(status_of(client, f"{b.url}/echo/portal/q", token, BROWSER), 403)


async def climb_on_a(client, a, b) -> Callable[[], Awaitable[bool]]:
    assert await statuses(client, a, now_token(), 3) == [200, 429, 429]
    # Asked through the admin API: a request to B would spend the shared bucket and add a violation of B's.
    return lambda: _state_on(client, b, WARNED)


async def suspend_on_a(client, a, b) -> Callable[[], Awaitable[bool]]:
    await suspend(client, a, b, SYSTEM_CLOCK)
    return lambda: _state_on(client, b, SUSPENDED)


async def grant_on_a(client, a, b) -> Callable[[], Awaitable[bool]]:
    await raise_a_limit(client, a, b, SYSTEM_CLOCK)

    async def taken() -> bool:
        if not await _grants_on(client, b, 1):
            return False  # asked once it is there: each request to B spends the shared bucket
        async with client.get(f"{b.url}/echo/x", headers=bearer(now_token())) as response:
            return response.headers.get("RateLimit-Policy") == '"sustained";q=3;w=180'
    return taken


async def allow_on_a(client, a, b) -> Callable[[], Awaitable[bool]]:
    await allow_a_user(client, a, b, SYSTEM_CLOCK)
    return lambda: _grants_on(client, b, 1)


async def end_a_grant_on_a(client, a, b) -> Callable[[], Awaitable[bool]]:
    body = {"limit": "sustained", "burst": 3, "for": "1h", "reason": "agreed"}
    _, made = await post(client, a, "/admin/customers/acme/exceptions", body)
    await wait_until(lambda: _grants_on(client, b, 1), message="the grant never reached gateway B")
    async with client.delete(f"{a.admin_url}/admin/exceptions/{made['grant']['id']}", headers=ADMIN) as response:
        assert response.status == 200
    return lambda: _grants_on(client, b, 0)


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


async def _state_on(client, gateway: GatewayAt, state: str) -> bool:
    return (await admin_view(client, gateway, "/admin/customers/acme"))["state"] == state


async def _grants_on(client, gateway: GatewayAt, count: int) -> bool:
    return len((await admin_view(client, gateway, "/admin/exceptions"))["grants"]) == count


ACROSS_PROCESSES = {  # what A is made to do, answering how to tell B has taken it
    "revocation": revoke_on_a, "sanction": scrape_on_a, "standing by the ladder": climb_on_a,
    "standing by an account manager": suspend_on_a, "grant": grant_on_a, "allow-list": allow_on_a,
    "grant revocation": end_a_grant_on_a,
}


async def start_processes(tmp_path, gateway_process, config: dict) -> list[GatewayAt]:
    gateways, processes = [], []
    for name in ("a", "b"):
        audit = tmp_path / f"audit-{name}.jsonl"
        own = {**config, "enforcement": {**config.get("enforcement", {}),
                                         "audit": {"path": str(audit), "flush_interval": "20ms"}}}
        path, url, admin_url = write_process_config(tmp_path, name, own)
        processes.append((gateway_process(path, env={"FAIRGATE_ADMIN_TOKEN": ADMIN_TOKEN}), admin_url))
        gateways.append(GatewayAt(url, admin_url, audit))
    await asyncio.gather(*(asyncio.to_thread(process.wait_ready, admin_url) for process, admin_url in processes))
    return gateways


@pytest.mark.parametrize("name", list(ACROSS_PROCESSES))
async def test_a_fleet_change_is_audited_once_shared_once_and_taken_by_another_gateway_process(
        name, tmp_path, gateway_process, upstream, client, redis_url, key_prefix):
    kind = KINDS[name]
    prefix = f"{key_prefix}:processes-{name.replace(' ', '-')}"
    config = kind.config(upstream)
    config["state"] = {"url": redis_url, "key_prefix": prefix}
    for limit in config.get("plans", {}).get("standard", {}).get("limits", []):
        limit["rate"] = "1/min"  # on the system clock: three quick requests meet a spent bucket, however slow the run
    a, b = await start_processes(tmp_path, gateway_process, config)
    taken = await ACROSS_PROCESSES[name](client, a, b)
    await wait_until(taken, message=f"the {name} made on gateway A never took effect on gateway B")
    await wait_until(lambda: audited(a, kind.event), message=f"gateway A's audit file has no {name}")
    assert len(audited(a, kind.event)) == 1
    assert matching(await events(client, b), kind.event) == []  # taken, not recorded again
    assert audited(b, kind.event) == []
    shared = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await shared.zcard(f"{prefix}:{{{kind.topic}}}") == 1
    finally:
        await shared.aclose()

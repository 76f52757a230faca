"""The enforcement ladder as clients and account managers see it: warnings, throttling,
suspension, reinstatement, events; the rule itself; a fleet sharing standings through Redis."""

from __future__ import annotations

import pytest

from gateway.config.enforcement import Ladder
from gateway.enforce.ladder import OK, SUSPENDED, THROTTLED, WARNED, Counts, Standing, judge
from tests.support.admin import events
from tests.support.clock import T0, ManualClock
from tests.support.configs import LADDER, enforcement_config
from tests.support.tokens import ADMIN, ADMIN_TOKEN, bearer, hs_token
from tests.support.traffic import statuses
from tests.support.waiting import wait_until


async def test_a_customer_climbs_the_ladder_and_is_reinstated(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream, judged_by_hand=True), clock=clock)
    enforcement = gateway.server.state.enforcement
    token = hs_token(clock)

    assert await statuses(client, gateway, token, 3) == [200, 429, 429]
    await enforcement.judge_queued()
    clock.advance(1)
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 200
        warning = response.headers["Fair-Use-Warning"]
    assert "state=warned" in warning and "next=throttled" in warning and "https://example.com/fair-use" in warning
    (change,) = await events(client, gateway, customer="acme", kind="state_change")
    assert (change["previous"], change["state"], change["subject"]) == ("ok", "warned", "customer:acme")
    (violations,) = await events(client, gateway, customer="acme", kind="violation")  # one event per batch
    assert (violations["count"], violations["violation"], violations["severity"]) == (2, "limit", "minor")

    # Two more rejections make four within the hour: throttled, every rate halved.
    assert await statuses(client, gateway, token, 2) == [429, 429]
    await enforcement.judge_queued()
    clock.advance(2)
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 200
        assert "state=throttled" in response.headers["Fair-Use-Warning"]
        assert response.headers["RateLimit-Policy"] == '"sustained";q=1;w=2'
    clock.advance(1)
    assert await statuses(client, gateway, token, 1) == [429]  # 1/s would allow it; 0.5/s does not

    # After the throttle, four more violations are a second throttle within a day: suspended.
    clock.advance(600)
    assert await statuses(client, gateway, token, 5) == [200, 429, 429, 429, 429]
    await enforcement.judge_queued()
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 403
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert int(response.headers["Retry-After"]) == 3600
        problem = await response.json()
    assert problem["type"] == "urn:fairgate:problem:suspended" and problem["until"] == "2027-01-15T09:10:04Z"  # T0 + 604 s + 1 h
    assert "2 throttles within 1d" in problem["reason"]

    async with client.get(f"{gateway.admin_url}/admin/customers/acme", headers=ADMIN) as response:
        assert (await response.json())["state"] == SUSPENDED
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/reinstate", headers=ADMIN,
                           json={"by": "am@vendor.example", "note": "agreed on a call"}) as response:
        assert response.status == 200
    clock.advance(1)
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 200 and "Fair-Use-Warning" not in response.headers
    states = [(e["previous"], e["state"], e["by"]) for e in await events(client, gateway, kind="state_change")]
    assert states == [("ok", "warned", "ladder"), ("warned", "throttled", "ladder"), ("ok", "suspended", "ladder"),
                      ("suspended", "ok", "am@vendor.example")]
    (action,) = await events(client, gateway, kind="admin_action")
    assert (action["action"], action["note"]) == ("reinstate", "agreed on a call")


async def test_rejections_from_before_a_reinstatement_do_not_throttle_again(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream, judged_by_hand=True), clock=clock)
    token = hs_token(clock)
    # A flood of 429s, and support reinstates the customer before the gateway judged them.
    assert await statuses(client, gateway, token, 6) == [200] + [429] * 5
    clock.advance(1)
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/reinstate", headers=ADMIN) as response:
        assert response.status == 200
    clock.advance(1)
    await gateway.server.state.enforcement.judge_queued()
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 200 and "Fair-Use-Warning" not in response.headers
    states = [(e["previous"], e["state"], e["by"]) for e in await events(client, gateway, kind="state_change")]
    assert states == [("ok", "ok", "admin")]
    (violations,) = await events(client, gateway, customer="acme", kind="violation")
    assert violations["count"] == 5  # recorded all the same


async def test_a_suspension_ends_by_itself(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream), clock=clock)
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "2h", "reason": "invoice unpaid"}) as response:
        assert response.status == 201
    token = hs_token(clock)
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 403
        assert "invoice unpaid" in (await response.json())["detail"]
    clock.advance(7200)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 1) == [200]


async def test_shadow_mode_records_standings_without_applying_them(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream, mode="shadow", judged_by_hand=True), clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 6) == [200, 429, 429, 429, 429, 429]
    await gateway.server.state.enforcement.judge_queued()
    clock.advance(1)
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 200 and "Fair-Use-Warning" not in response.headers
    (change,) = await events(client, gateway, kind="state_change")
    assert change["state"] == THROTTLED and change["shadow"] is True


async def test_admin_actions_need_the_token_and_a_reason(start_gateway, upstream, client):
    gateway = await start_gateway(enforcement_config(upstream))
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/reinstate") as response:
        assert response.status == 401
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "1h"}) as response:
        assert response.status == 400 and "reason" in (await response.json())["detail"]
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "soon", "reason": "x"}) as response:
        assert response.status == 400 and (await response.json())["detail"].startswith("for:")
    async with client.post(f"{gateway.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           data="[1]") as response:
        assert response.status == 400
    async with client.get(f"{gateway.admin_url}/admin/events?since=yesterday", headers=ADMIN) as response:
        assert response.status == 400 and "epoch seconds" in (await response.json())["detail"]
    async with client.get(f"{gateway.admin_url}/admin/usage?month=2026-13", headers=ADMIN) as response:
        assert response.status == 400 and "YYYY-MM" in (await response.json())["detail"]


async def test_reinstating_on_one_gateway_frees_the_customer_on_another(start_gateway, upstream, client, redis_url,
                                                                       key_prefix):
    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}-enforce"}
    first = await start_gateway(config, clock=clock)
    second = await start_gateway(config, clock=clock)
    token = hs_token(clock)
    # Violations on both gateways count together: 1 + 1 reach warn_at only in the shared count.
    assert await statuses(client, first, token, 2) == [200, 429]
    await first.server.state.enforcement.judge_queued()
    assert await statuses(client, second, token, 1) == [429]
    await second.server.state.enforcement.judge_queued()
    assert second.server.state.enforcement.standings.latest("customer:acme").state == WARNED

    clock.advance(1)
    async with client.post(f"{first.admin_url}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "1h", "reason": "abuse report"}) as response:
        assert response.status == 201
    await wait_until(lambda: second.server.state.enforcement.standings.latest("customer:acme").state == SUSPENDED)
    assert await statuses(client, second, token, 1) == [403]

    clock.advance(1)
    async with client.post(f"{first.admin_url}/admin/customers/acme/reinstate", headers=ADMIN) as response:
        assert response.status == 200
    await wait_until(lambda: second.server.state.enforcement.standings.latest("customer:acme").state == OK)
    # No longer suspended, and the bucket refilled meanwhile (a gateway with its own clock decides on it).
    assert await statuses(client, second, token, 1) == [200]


# -- the rule ------------------------------------------------------------------------------

RULE = Ladder(**{**LADDER, "egregious": ("scraping",)})


def standing(state: str, until: float = T0 + 600, counts_from: float = 0.0) -> Standing:
    return Standing("customer:acme", state, T0 - 1, until, "earlier", counts_from=counts_from)


@pytest.mark.parametrize("current, counts, expected", [
    (None, Counts(1, 0, 0), None),
    (None, Counts(2, 0, 0), WARNED),
    (standing(WARNED), Counts(3, 0, 0), WARNED),  # extended
    (standing(WARNED), Counts(4, 0, 0), THROTTLED),
    (None, Counts(9, 0, 0), THROTTLED),  # straight to throttled when the count says so
    (standing(THROTTLED), Counts(9, 0, 0), None),  # a throttle runs its term
    (standing(THROTTLED, until=T0 - 1), Counts(4, 1, 0), SUSPENDED),  # the second throttle within a day
    (standing(SUSPENDED), Counts(50, 5, 0), None),
    (standing(SUSPENDED, until=T0 - 1), Counts(1, 0, 1), None),  # served: back to ok, counting afresh
])
def test_the_ladder_moves_by_counts(current, counts, expected):
    decided = judge(RULE, current, "customer:acme", counts, False, "limit", T0)
    assert (decided.state if decided else None) == expected


def test_terms_end_by_themselves_and_double_for_repeat_offenders_up_to_a_cap():
    first = judge(RULE, None, "customer:acme", Counts(1, 0, 0), True, "scraping", T0)
    assert first.state == SUSPENDED and first.until == T0 + 3600
    assert not first.in_force(T0 + 3600)
    second = judge(RULE, None, "customer:acme", Counts(1, 0, 1), True, "scraping", T0)
    assert second.until == T0 + 7200
    capped = judge(RULE, None, "customer:acme", Counts(1, 0, 5), True, "scraping", T0)
    assert capped.until == T0 + 7200  # max_suspension
    throttle = judge(RULE, None, "customer:acme", Counts(4, 0, 0), False, "limit", T0)
    assert throttle.until == T0 + 600 and throttle.counts_from == T0


def test_ladder_config_is_checked():
    with pytest.raises(ValueError, match="throttle_at"):
        Ladder(warn_at=5, throttle_at=3)
    with pytest.raises(ValueError, match="unknown violation kind"):
        Ladder(egregious=("spam",))


async def test_two_gateway_processes_share_decisions_through_redis(tmp_path, upstream, client, gateway_process,
                                                                    redis_url, key_prefix):
    import asyncio
    import time

    from gateway.clock import SYSTEM_CLOCK
    from tests.support.gateways import write_process_config

    config = enforcement_config(upstream)
    config["plans"]["standard"]["limits"][0].update(rate="100/s", burst=100)
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}-processes"}
    gateways = []
    for name in ("a", "b"):
        path, url, admin_url = write_process_config(tmp_path, name, config)
        process = gateway_process(path, env={"FAIRGATE_ADMIN_TOKEN": ADMIN_TOKEN})
        await asyncio.to_thread(process.wait_ready, admin_url)
        gateways.append((url, admin_url))
    (_a_url, a_admin), (b_url, b_admin) = gateways
    token = bearer(hs_token(SYSTEM_CLOCK, exp=int(time.time()) + 600))

    async def b_sees(predicate) -> None:
        """Poll gateway B's admin API (not its proxy) until the decision made on A has arrived."""
        async def state() -> dict:
            async with client.get(f"{b_admin}/admin/customers/acme", headers=ADMIN) as response:
                return await response.json()
        async def arrived() -> bool:
            return predicate(await state())
        await wait_until(arrived, message="the decision never reached gateway B", interval=0.02)

    async with client.post(f"{a_admin}/admin/customers/acme/suspend", headers=ADMIN,
                           json={"for": "1h", "reason": "abuse report"}) as response:
        assert response.status == 201
    await b_sees(lambda customer: customer["state"] == SUSPENDED)
    async with client.get(f"{b_url}/echo/x", headers=token) as response:
        assert response.status == 403

    async with client.post(f"{a_admin}/admin/customers/acme/reinstate", headers=ADMIN) as response:
        assert response.status == 200
    await b_sees(lambda customer: customer["state"] == OK)
    async with client.get(f"{b_url}/echo/x", headers=token) as response:
        assert response.status == 200

    async with client.post(f"{a_admin}/admin/customers/acme/exceptions", headers=ADMIN,
                           json={"limit": "sustained", "burst": 500, "for": "1d", "reason": "agreed"}) as response:
        assert response.status == 201
    async def granted_on_b() -> bool:
        async with client.get(f"{b_admin}/admin/exceptions", headers=ADMIN) as response:
            return bool((await response.json())["grants"])
    await wait_until(granted_on_b, message="the exception never reached gateway B", interval=0.02)
    async with client.get(f"{b_url}/echo/x", headers=token) as response:
        assert response.headers["RateLimit-Policy"] == '"sustained";q=500;w=5'


async def test_a_blocking_finding_is_a_major_violation_of_the_user(start_gateway, upstream, client):
    from tests.support.configs import detection_config
    from tests.support.traffic import browse_headless

    clock = ManualClock(T0)
    config = detection_config(upstream)
    config["enforcement"] = {"mode": "enforce", "ladder": LADDER}
    gateway = await start_gateway(config, clock=clock)
    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 3) == [200] * 3
    await gateway.server.state.enforcement.judge_queued()
    (violation,) = await events(client, gateway, kind="violation")
    assert (violation["violation"], violation["severity"], violation["subject"]) == ("scraping", "major",
                                                                                   "user:acme/alice")
    # One major violation weighs two: the user (not the whole customer) is warned at once.
    standings = gateway.server.state.enforcement.standings
    assert standings.latest("user:acme/alice").state == WARNED and standings.latest("customer:acme") is None
    (finding,) = await events(client, gateway, kind="finding")
    assert finding["detector"] == "scraping" and finding["evidence"]["offences"] == 1

"""Fair-use limits through the gateway, on the embedded memory store and an injected clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo

import pytest

from tests.support.clock import ManualClock
from tests.support.configs import limits_config
from tests.support.tokens import ADMIN_TOKEN, bearer, hs_issuer, hs_token
from tests.support.traffic import statuses_at as statuses
from tests.support.waiting import wait_until

STANDARD = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/s", "burst": 5}]}}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall=dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC).timestamp())


async def test_one_per_second_burst_five_exactly(start_gateway, upstream, client, clock):
    gw = await start_gateway(limits_config(upstream, STANDARD), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", token, 6) == [200] * 5 + [429]
    clock.advance(1)
    assert await statuses(client, f"{gw.url}/echo", token, 2) == [200, 429]
    clock.advance(3)
    assert await statuses(client, f"{gw.url}/echo", token, 4) == [200] * 3 + [429]


async def test_429_is_a_problem_with_retry_after_and_headers(start_gateway, upstream, client, clock):
    gw = await start_gateway(limits_config(upstream, STANDARD), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.headers["RateLimit-Policy"] == '"sustained";q=5;w=5'
        assert response.headers["RateLimit"] == '"sustained";r=4;t=1'
    await statuses(client, f"{gw.url}/echo", token, 4)
    clock.advance(0.3)
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status == 429
        assert response.content_type == "application/problem+json"
        assert response.headers["Retry-After"] == "1"  # 0.7 s, rounded up to whole seconds
        assert response.headers["RateLimit"] == '"sustained";r=0;t=5'
        problem = await response.json()
    assert problem["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert problem["violated-policies"] == ["sustained"]
    assert "standard" in problem["detail"]


async def test_retry_after_is_exact_to_the_second(start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [{"name": "slow", "kind": "rate", "rate": "1/min", "burst": 1}]}}
    gw = await start_gateway(limits_config(upstream, plans), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    await statuses(client, f"{gw.url}/echo", token, 1)
    clock.advance(17)
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "43"


async def test_route_cost_is_honoured(start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/s", "burst": 10}]}}
    gw = await start_gateway(limits_config(upstream, plans), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo/report", token, 4) == [200, 200, 200, 429]
    assert await statuses(client, f"{gw.url}/echo", token, 2) == [200, 429]  # 9 of 10 used by three reports


async def test_a_limit_keyed_on_the_route_counts_each_route_of_the_same_cost_apart(start_gateway, upstream, client,
                                                                                   clock):
    # One template serves every route of the same cost, unless a limit is keyed on the route.
    plans = {"standard": {"limits": [
        {"name": "per-route", "kind": "rate", "rate": "1/s", "burst": 2, "key": "customer+route"},
        {"name": "overall", "kind": "rate", "rate": "1/s", "burst": 5},
    ]}}
    routes = [{"name": "one", "path_prefix": "/echo/one", "upstream": "app"},
              {"name": "two", "path_prefix": "/echo/two", "upstream": "app"}]
    gw = await start_gateway(limits_config(upstream, plans, routes=routes), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo/one", token, 3) == [200, 200, 429]
    assert await statuses(client, f"{gw.url}/echo/two", token, 3) == [200, 200, 429]
    async with client.get(f"{gw.url}/echo/two", headers=bearer(token)) as response:
        assert response.headers["RateLimit"] == '"per-route";r=0;t=2, "overall";r=0;t=5'


async def test_an_exception_granted_to_one_unlisted_customer_leaves_the_others_on_the_plan(start_gateway, upstream,
                                                                                          client, clock):
    # Unlisted customers share their plan's compiled limits until one of them is granted an exception.
    gw = await start_gateway(limits_config(upstream, STANDARD), clock=clock)
    acme = hs_token(clock, exp=int(clock.time()) + 3600)
    other = hs_token(clock, org_id="other-co", exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", other, 1) == [200]
    async with client.post(f"{gw.admin_url}/admin/customers/acme/exceptions",
                           headers=bearer(ADMIN_TOKEN),
                           json={"limit": "sustained", "burst": 8, "for": "1h", "reason": "agreed"}) as response:
        assert response.status == 201
    assert await statuses(client, f"{gw.url}/echo", acme, 9) == [200] * 8 + [429]
    assert await statuses(client, f"{gw.url}/echo", other, 5) == [200] * 4 + [429]
    async with client.get(f"{gw.url}/echo", headers=bearer(other)) as response:
        assert response.headers["RateLimit-Policy"] == '"sustained";q=5;w=5'


async def test_customers_are_limited_separately_and_unknown_ones_get_the_default_plan(start_gateway, upstream,
                                                                                         client, clock):
    plans = {**STANDARD, "business": {"limits": [{"name": "sustained", "kind": "rate", "rate": "10/s", "burst": 8}]}}
    gw = await start_gateway(limits_config(upstream, plans, customers={"acme": {"plan": "business"}}), clock=clock)
    acme = hs_token(clock, exp=int(clock.time()) + 3600)
    stranger = hs_token(clock, org_id="unknown-co", exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", acme, 9) == [200] * 8 + [429]
    assert await statuses(client, f"{gw.url}/echo", stranger, 6) == [200] * 5 + [429]


async def test_exceptions_apply_until_their_date(start_gateway, upstream, client, clock):
    customers = {"acme": {"plan": "standard",
                          "overrides": [{"limit": "sustained", "rate": "10/s", "burst": 20, "until": "2026-12-01"}]}}
    gw = await start_gateway(limits_config(upstream, STANDARD, customers=customers), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", token, 21) == [200] * 20 + [429]
    clock.advance(86400)  # 2026-12-01 12:00 UTC: the exception has ended
    # (a fresh token: the issuer's default max lifetime is a day)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", token, 6) == [200] * 5 + [429]


async def test_monthly_quota_rolls_over_at_the_boundary_in_the_zone(start_gateway, upstream, client):
    zone = zoneinfo.ZoneInfo("Pacific/Auckland")
    # 23:59:00 on Nov 30 in Auckland is still November there (and already Nov 30 10:59 UTC).
    clock = ManualClock(wall=dt.datetime(2026, 11, 30, 23, 59, tzinfo=zone).timestamp())
    plans = {"standard": {"limits": [{"name": "monthly", "kind": "quota", "metric": "requests", "period": "month",
                                      "limit": 3}]}}
    gw = await start_gateway(limits_config(upstream, plans, time_zone="Pacific/Auckland"), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", token, 4) == [200, 200, 200, 429]
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.headers["Retry-After"] == "60"  # until midnight in Auckland
    clock.advance(60)
    assert await statuses(client, f"{gw.url}/echo", token, 4) == [200, 200, 200, 429]


async def test_daily_bytes_quota_meters_after_the_response(start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [{"name": "bytes", "kind": "quota", "metric": "bytes", "period": "day",
                                      "limit": 3000}]}}
    gw = await start_gateway(limits_config(upstream, plans), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    async with client.post(f"{gw.url}/echo", data=b"x" * 2000, headers=bearer(token)) as response:
        assert response.status == 200
        await response.read()
    await gw.server.runtimes.current.limiter.drain()  # usage is written back right after the response
    async with client.post(f"{gw.url}/echo", data=b"x" * 100, headers=bearer(token)) as response:
        assert response.status == 200  # 2000+ bytes used, budget left
    for _ in range(20):
        async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
            if response.status == 429:
                problem = await response.json()
                break
    assert problem["violated-policies"] == ["bytes"]


async def test_flag_only_quota_counts_overage_without_blocking(start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [{"name": "daily", "kind": "quota", "metric": "requests", "period": "day",
                                      "limit": 2, "action": "flag"}]}}
    gw = await start_gateway(limits_config(upstream, plans), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", token, 4) == [200] * 4
    async with client.get(f"{gw.admin_url}/metrics") as response:
        text = await response.text()
    assert 'fairgate_limit_decisions_total{limit="daily",plan="standard",result="over_quota"} 2.0' in text


async def test_shadow_mode_sends_headers_and_never_blocks(start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [{"name": "trial", "kind": "rate", "rate": "1/s", "burst": 2, "mode": "shadow"}]}}
    gw = await start_gateway(limits_config(upstream, plans), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", token, 5) == [200] * 5
    async with client.get(f"{gw.admin_url}/metrics") as response:
        text = await response.text()
    assert 'fairgate_limit_decisions_total{limit="trial",plan="standard",result="shadow_rejected"} 3.0' in text


async def test_delay_mode_holds_the_request_then_rejects(start_gateway, upstream, client, clock):
    held: list[float] = []

    async def record(seconds: float) -> None:
        held.append(seconds)

    plans = {"standard": {"limits": [{"name": "smooth", "kind": "rate", "rate": "2/s", "burst": 1, "mode": "delay",
                                      "max_delay": "1s"}]}}
    gw = await start_gateway(limits_config(upstream, plans), clock=clock, sleep=record)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", token, 4) == [200, 200, 200, 429]
    assert held == [0.5, 1.0]


async def test_concurrency_is_released_on_client_abort_and_upstream_error(start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [{"name": "parallel", "kind": "concurrency", "max": 1}]}}
    config = limits_config(upstream, plans, upstream_settings={"read_timeout": "300ms"})
    gw = await start_gateway(config, clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)

    # A client that gives up while its request is held upstream.
    _reader, writer = await asyncio.open_connection(*gw.server.proxy_address)
    writer.write(f"GET /stall HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    await asyncio.wait_for(upstream.state.stall_started.wait(), 5)
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status == 429  # the slot is taken
    writer.close()
    await asyncio.wait_for(upstream.state.cancelled.wait(), 5)
    async def slot_back() -> bool:
        async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
            return response.status == 200
    await wait_until(slot_back, message="the slot was never given back")

    # An upstream that times out (504) gives the slot back as well.
    async with client.get(f"{gw.url}/stall", headers=bearer(token)) as response:
        assert response.status == 504
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status == 200


async def test_anonymous_callers_are_limited_by_address(start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [
        {"name": "per-customer", "kind": "rate", "rate": "1/s", "burst": 100},
        {"name": "per-address", "kind": "rate", "rate": "1/s", "burst": 2, "key": "client_ip"},
    ]}}
    gw = await start_gateway(limits_config(upstream, plans), clock=clock)
    results = []
    for _ in range(3):
        async with client.get(f"{gw.url}/status/200") as response:
            results.append(response.status)
            policy = response.headers.get("RateLimit-Policy")
    assert results == [200, 200, 429]
    assert '"per-address";q=2;w=2' in policy


async def test_low_priority_plans_are_shed_first_when_the_upstream_is_saturated(start_gateway, upstream, client, clock):
    plans = {"free": {"priority": 0}, "enterprise": {"priority": 1}}
    config = limits_config(upstream, plans, customers={"acme": {"plan": "enterprise"}}, default_plan="free",
                           upstream_settings={"max_in_flight": 2})
    gw = await start_gateway(config, clock=clock)
    free = hs_token(clock, org_id="freeloader", exp=int(clock.time()) + 3600)
    acme = hs_token(clock, exp=int(clock.time()) + 3600)
    held = asyncio.create_task(client.get(f"{gw.url}/stall", headers=bearer(acme)))
    await asyncio.wait_for(upstream.state.stall_started.wait(), 5)
    async with client.get(f"{gw.url}/echo", headers=bearer(free)) as response:
        assert response.status == 503  # free may fill half the cap: one request, taken
        assert response.headers["Retry-After"] == "1"
        problem = await response.json()
    assert problem["type"] == "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
    async with client.get(f"{gw.url}/echo", headers=bearer(acme)) as response:
        assert response.status == 200  # enterprise may use the whole cap
    upstream.state.release_stall.set()
    assert (await held).status == 200
    async with client.get(f"{gw.url}/echo", headers=bearer(free)) as response:
        assert response.status == 200


async def test_stalled_anonymous_requests_cannot_starve_logged_in_customers(start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "100/s", "burst": 100}]}}
    routes = [{"name": "open", "path_prefix": "/echo/open", "upstream": "app", "auth": "optional"},
              {"name": "api", "path_prefix": "/", "upstream": "app"}]
    gw = await start_gateway(limits_config(upstream, plans, routes=routes, upstream_settings={"max_in_flight": 20}),
                             clock=clock)
    gate = gw.server.runtimes.current.gates["app"]
    registry = gw.server.metrics.registry

    def shed() -> float:
        return registry.get_sample_value("fairgate_rejections_total", {"reason": "temporary-reduced-capacity"}) or 0

    writers = []
    for n in range(25):  # bodies that never finish, from callers without a login on two networks
        _, writer = await asyncio.open_connection(*gw.server.proxy_address, local_addr=(f"127.0.{1 + n % 2}.1", 0))
        writer.write(b"POST /echo/open HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        writers.append(writer)
    await wait_until(lambda: gate.in_flight + shed() == 25)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", token, 5) == [200] * 5
    assert gate.in_flight == 2  # the anonymous share: 10% of max_in_flight
    for writer in writers:
        writer.close()
    await wait_until(lambda: gate.in_flight == 0)


async def test_stalled_anonymous_uploads_from_one_address_do_not_shed_everyone_elses_assets(
        start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "100/s", "burst": 100}]}}
    routes = [{"name": "assets", "path_prefix": "/echo/static/", "upstream": "app", "auth": "none"},
              {"name": "portal", "path_prefix": "/echo/", "upstream": "app", "auth": "optional"},
              {"name": "api", "path_prefix": "/", "upstream": "app"}]
    gw = await start_gateway(limits_config(upstream, plans, routes=routes, upstream_settings={"max_in_flight": 20}),
                             clock=clock)
    gate = gw.server.runtimes.current.gates["app"]
    writers = []
    readers = []
    for _ in range(2):  # bodies that never finish, from one address: as many as the anonymous share (10% of 20)
        reader, writer = await asyncio.open_connection(*gw.server.proxy_address, local_addr=("127.0.0.2", 0))
        writer.write(b"POST /echo/form HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        writers.append(writer)
        readers.append(reader)
    # One network holds half the anonymous share at most: the second stalled request is shed at once.
    answers = [asyncio.ensure_future(reader.readline()) for reader in readers]
    done, waiting = await asyncio.wait(answers, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in waiting:
        task.cancel()
    assert [task.result()[:13] for task in done] == [b"HTTP/1.1 503 "] and gate.in_flight == 1
    try:
        # A customer's browser fetching the portal's stylesheet (assets carry no token), from another network.
        reader, writer = await asyncio.open_connection(*gw.server.proxy_address, local_addr=("127.0.1.3", 0))
        writer.write(b"GET /echo/static/app.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    finally:
        for stalled in writers:
            stalled.close()
        await wait_until(lambda: gate.in_flight == 0)


async def test_legacy_headers_when_configured(start_gateway, upstream, client, clock):
    gw = await start_gateway(limits_config(upstream, STANDARD, legacy_headers=True), clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == "4"
        assert response.headers["X-RateLimit-Reset"] == "1"


def plan_claim_config(upstream) -> dict:
    plans = {**STANDARD, "gold": {"limits": [{"name": "sustained", "kind": "rate", "rate": "10/s", "burst": 20}]}}
    config = limits_config(upstream, plans, customers={"listed-co": {"plan": "standard"}})
    config["auth"] = {"issuers": [hs_issuer(claims={"plan": "plan"})]}
    return config


async def test_the_token_plan_claim_picks_the_plan_of_an_unlisted_customer(start_gateway, upstream, client, clock):
    gw = await start_gateway(plan_claim_config(upstream), clock=clock)
    gold = hs_token(clock, org_id="claimed-co", plan="gold", exp=int(clock.time()) + 3600)
    async with client.get(f"{gw.url}/echo", headers=bearer(gold)) as response:
        assert response.headers["RateLimit-Policy"] == '"sustained";q=20;w=2'
    assert await statuses(client, f"{gw.url}/echo", gold, 20) == [200] * 19 + [429]
    clock.advance(0.5)
    assert await statuses(client, f"{gw.url}/echo", gold, 6) == [200] * 5 + [429]  # 10/s


async def test_the_usage_report_and_customer_list_show_the_plan_a_token_claimed(start_gateway, upstream, client,
                                                                                 clock):
    gw = await start_gateway(plan_claim_config(upstream), clock=clock)
    gold = hs_token(clock, org_id="claimed-co", plan="gold", exp=int(clock.time()) + 3600)
    listed = hs_token(clock, org_id="listed-co", plan="gold", exp=int(clock.time()) + 3600)
    for token in (gold, listed):
        assert await statuses(client, f"{gw.url}/echo", token, 2) == [200, 200]
    async with client.get(f"{gw.admin_url}/admin/usage", headers=bearer(ADMIN_TOKEN)) as response:
        report = {row["customer"]: row["plan"] for row in (await response.json())["customers"]}
    async with client.get(f"{gw.admin_url}/admin/customers", headers=bearer(ADMIN_TOKEN)) as response:
        customers = {row["id"]: row["plan"] for row in (await response.json())["customers"]}
    assert report == customers == {"claimed-co": "gold", "listed-co": "standard"}


async def test_a_listed_customer_keeps_its_plan_whatever_the_token_says(start_gateway, upstream, client, clock):
    gw = await start_gateway(plan_claim_config(upstream), clock=clock)
    token = hs_token(clock, org_id="listed-co", plan="gold", exp=int(clock.time()) + 3600)
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.headers["RateLimit-Policy"] == '"sustained";q=5;w=5'
    assert await statuses(client, f"{gw.url}/echo", token, 5) == [200] * 4 + [429]


async def test_an_unknown_plan_claim_falls_back_to_the_default_and_is_counted(start_gateway, upstream, client, clock,
                                                                              caplog):
    gw = await start_gateway(plan_claim_config(upstream), clock=clock)
    token = hs_token(clock, org_id="typo-co", plan="platinum", exp=int(clock.time()) + 3600)
    with caplog.at_level("WARNING", logger="fairgate.limits"):
        async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
            assert response.status == 200
            assert response.headers["RateLimit-Policy"] == '"sustained";q=5;w=5'
        assert await statuses(client, f"{gw.url}/echo", token, 5) == [200] * 4 + [429]
    assert [r.plan for r in caplog.records if "does not define" in r.getMessage()] == ["platinum"]  # once
    async with client.get(f"{gw.admin_url}/metrics") as response:
        text = await response.text()
    assert 'fairgate_unknown_plan_claims_total{issuer="test"} 6.0' in text

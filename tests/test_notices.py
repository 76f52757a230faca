"""Warnings with recommendations (StackCX 6a): the Fair-Use-Warning header, the refusals' bodies
while warned, the alert and the console's customer view name the limit or detector, what was
seen against what is allowed, how to comply, and the policy clause."""

from __future__ import annotations

import asyncio
import re

from hypothesis import given
from hypothesis import strategies as st

from tests.support.clock import T0, ManualClock
from tests.support.configs import LADDER, enforcement_config
from tests.support.tokens import ADMIN, bearer, hs_token
from tests.support.traffic import statuses
from tests.support.waiting import wait_until

RATE_TEXT = ("sustained: 2 requests refused (allowed: 1 per second sustained, bursts of up to 1). "
             "Spread calls to at most 1 per second. Policy: https://example.com/fair-use")


async def test_a_rate_violation_warns_with_the_rate_that_complies(start_gateway, upstream, client, receiver):
    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["alerts"] = {"webhooks": [{"name": "ops", "url": receiver.url}]}
    gateway = await start_gateway(config, clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 3) == [200, 429, 429]
    await gateway.server.state.enforcement.judge_queued()

    clock.advance(1)
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 200
        header = response.headers["Fair-Use-Warning"]
    assert header.endswith('reasons=("sustained"), advice="spread calls to at most 1 per second", '
                           'policy="https://example.com/fair-use"')
    assert header.startswith("state=warned, next=throttled, until=")
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 429  # the bucket is empty again: the refusal says the same, in full
        problem = await response.json()
    warning = problem["fair-use-warning"]
    assert (warning["state"], warning["next"]) == ("warned", "throttled")
    (notice,) = warning["notices"]
    assert notice["text"] == RATE_TEXT
    assert (notice["observed"], notice["allowed"]) == ("2 requests refused", "1 per second sustained, bursts of up to 1")

    await asyncio.wait_for(receiver.arrived.wait(), 5)
    (_, alert), *_ = receiver.received
    assert alert["alert"] == "state_change:warned" and alert["event"]["notices"][0]["text"] == RATE_TEXT
    async with client.get(f"{gateway.admin_url}/admin/customers", headers=ADMIN) as response:
        (listed,) = (await response.json())["customers"]
    assert listed["advice"] == [RATE_TEXT]


async def test_the_fleet_warns_with_the_same_words(start_gateway, upstream, client, redis_url, key_prefix):
    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}-notices"}
    first, second = await start_gateway(config, clock=clock), await start_gateway(config, clock=clock)
    token = hs_token(clock)
    assert await statuses(client, first, token, 3) == [200, 429, 429]
    await first.server.state.enforcement.judge_queued()
    await wait_until(lambda: second.server.state.enforcement.standings.latest("customer:acme") is not None)
    clock.advance(2)
    async with client.get(f"{second.url}/echo/x", headers=bearer(token)) as response:
        assert 'advice="spread calls to at most 1 per second"' in response.headers["Fair-Use-Warning"]


async def test_a_throttle_recommends_the_throttled_rate(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream, judged_by_hand=True), clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 5) == [200, 429, 429, 429, 429]  # throttle_at: 4
    await gateway.server.state.enforcement.judge_queued()
    clock.advance(2)
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        header = response.headers["Fair-Use-Warning"]
    assert "state=throttled" in header and 'advice="spread calls to at most 30 per minute"' in header
    async with client.get(f"{gateway.admin_url}/admin/customers/acme", headers=ADMIN) as response:
        (standing,) = (await response.json())["standings"]
    assert standing["notices"][0]["allowed"] == ("30 per minute sustained while throttled (normally 1 per second), "
                                                 "bursts of up to 1")


async def test_the_warning_counts_refusals_judged_before_it_in_other_batches(start_gateway, upstream, client):
    # The first 429 is judged alone (not enough to warn); the next one warns. The warning's count
    # is every refusal of the window, not only those of the batch that decided it.
    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream, judged_by_hand=True), clock=clock)
    enforcement = gateway.server.state.enforcement
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 2) == [200, 429]
    await enforcement.judge_queued()
    assert enforcement.standings.latest("customer:acme") is None  # one violation: still ok
    assert await statuses(client, gateway, token, 2) == [429, 429]
    await enforcement.judge_queued()
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 429
        (notice,) = (await response.json())["fair-use-warning"]["notices"]
    assert notice["observed"] == "3 requests refused"


async def test_a_sharing_finding_warns_to_use_one_login_per_person(start_gateway, upstream, client):
    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["plans"] = {"standard": {"limits": []}}
    config["enforcement"]["ladder"] = {**LADDER, "warn_at": 1}
    config["detection"] = {"hash_salt": "test-salt-of-16-bytes",
                           "sharing": {"action": "flag", "clause": "https://example.com/fair-use#logins",
                                       "device_header": "X-Device-Id"}}
    gateway = await start_gateway(config, clock=clock)
    state = gateway.server.state
    for n in range(4):  # four devices within minutes: more than one person carries
        headers = {**bearer(hs_token(clock, sid=f"s{n}")), "X-Device-Id": f"device-{n}"}
        async with client.get(f"{gateway.url}/echo/x", headers=headers) as response:
            assert response.status == 200
        await state.detection.drain()
    await state.enforcement.judge_queued()

    async with client.get(f"{gateway.url}/echo/x", headers=bearer(hs_token(clock))) as response:
        header = response.headers["Fair-Use-Warning"]
    assert header.endswith('reasons=("sharing"), advice="use one login per person: give everyone who uses it a '
                           'login of their own", policy="https://example.com/fair-use#logins"')
    async with client.get(f"{gateway.admin_url}/admin/customers/acme", headers=ADMIN) as response:
        (standing,) = (await response.json())["standings"]
    (notice,) = standing["notices"]
    assert notice["text"] == ("sharing: 4 devices within 10min (allowed: computers in use from 1 network at once, "
                              "3 devices within 10min, 3 network changes of one session within 1min per login). Use one login per person: give everyone who uses it a "
                              "login of their own. Policy: https://example.com/fair-use#logins")


async def test_a_configured_recommendation_and_clause_replace_the_written_ones(start_gateway, upstream, client):
    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["plans"]["standard"]["limits"][0].update(
        recommendation="batch your updates: one call may carry 100 tickets", clause="https://example.com/aup#api")
    gateway = await start_gateway(config, clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 3) == [200, 429, 429]
    await gateway.server.state.enforcement.judge_queued()
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        header = response.headers["Fair-Use-Warning"]
        problem = await response.json()
    assert 'advice="batch your updates: one call may carry 100 tickets", policy="https://example.com/aup#api"' in header
    assert problem["fair-use-warning"]["notices"][0]["policy"] == "https://example.com/aup#api"
    assert len(header) < 300  # a header, not a letter


def test_the_header_stays_a_structured_field_whatever_the_advice_says():
    from gateway.enforce.notices import header_params

    notice = {"source": "sustained", "recommendation": 'say "hi" \\ to ünïcode ' + "x" * 300}
    params = header_params((notice,), "https://example.com/fair-use")
    advice = params.split("advice=", 1)[1].split(", policy=")[0]
    assert advice.startswith('"say \\"hi\\" \\\\ to ?n?code') and advice.endswith('"')
    assert all(" " <= ch <= "~" for ch in params) and len(advice) < 140



async def test_the_console_shows_the_warning_text_with_the_standing(browser, start_gateway, upstream, client):
    from selenium.webdriver.common.by import By

    from tests.support.browser import wait_for
    from tests.support.tokens import ADMIN_TOKEN

    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream), clock=clock)
    assert await statuses(client, gateway, hs_token(clock), 3) == [200, 429, 429]
    await gateway.server.state.enforcement.judge_queued()

    def advice_of_acme() -> str:
        browser.get(f"{gateway.admin_url}/console")
        browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#sign-in button").click()
        return wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-customer="acme"] .advice'))[0].text

    assert await asyncio.to_thread(advice_of_acme) == RATE_TEXT


# RFC 8941 sf-string: printable ASCII in quotes, with only \\ and \" escaped.
_SF_STRING = r'"(?:[ !#-\[\]-~]|\\["\\])*"'


@given(st.text(), st.text(min_size=1))
def test_any_recommendation_makes_a_parsable_header(recommendation, source):
    from gateway.enforce.notices import header_params

    params = header_params(({"source": source, "recommendation": recommendation, "policy": recommendation},), "p")
    assert re.fullmatch(rf', reasons=\(({_SF_STRING})\), advice=({_SF_STRING}), policy=({_SF_STRING})', params)
    assert len(params) < 40 + 2 * (len(source) + 120 + len(recommendation))


def notice_book():
    from gateway.config import GatewayConfig
    from gateway.enforce.notices import NoticeBook

    config = GatewayConfig.model_validate({
        "upstreams": {"app": {"url": "http://127.0.0.1:9"}},
        "routes": [{"name": "all", "path_prefix": "/", "upstream": "app", "auth": "none"}],
        "plans": {"velocity": {"limits": [
            {"name": "parallel", "kind": "concurrency", "max": 5},
            {"name": "minutes", "kind": "quota", "metric": "upstream_seconds", "period": "month", "limit": 30000,
             "per": "ports"},
            {"name": "data", "kind": "quota", "metric": "bytes", "period": "day", "limit": 2_000_000_000}]}},
        "enforcement": {"policy": "https://example.com/aup"},
        "detection": {"scraping": {"threshold": 12}, "seats": {"clause": "https://example.com/aup#seats"}},
    })
    return NoticeBook(config), config


def test_concurrency_and_quota_notices_say_what_the_plan_allows():
    from gateway.limits.policy import compile_limit, per_unit

    book, config = notice_book()
    parallel, minutes, data = (compile_limit("velocity", limit) for limit in config.plans["velocity"].limits)
    assert book.for_limit(parallel, 3).text == (
        "parallel: 3 requests refused (allowed: 5 requests in flight at once). Keep at most 5 in flight: wait for "
        "answers before sending more. Policy: https://example.com/aup")
    twelve = book.for_limit(per_unit(minutes, 12), 1)
    assert (twelve.observed, twelve.allowed) == ("the month's 6,000 minutes used up, 1 request refused",
                                                 "6,000 minutes per month (500 minutes x 12 ports)")
    assert book.for_limit(data, 1).allowed == "2 GB per day"


def test_scraping_and_seats_notices_read_the_finding():
    from gateway.detect.findings import Finding

    book, _ = notice_book()
    scraping = book.for_finding(Finding("scraping", "user:acme/ann", "acme", "ann", "block", False, T0,
                                        ("automation_agent", "regular_cadence"), score=14.5))
    assert scraping.text == (
        "scraping: automation score 14.5 from an automation user agent, machine-regular timing (allowed: a score "
        "below 12, as people in browsers and declared integrations keep). Use the API under your plan instead of automating "
        "the portal, and declare an integration's user agent to us. Policy: https://example.com/aup")
    seats = book.for_finding(Finding("seats", "customer:acme", "acme", None, "flag", False, T0, ("seats",),
                                     evidence={"month": "2026-11", "seats": 25, "active_users": 31}))
    assert (seats.observed, seats.allowed, seats.clause) == ("31 active users in 2026-11", "25 seats",
                                                             "https://example.com/aup#seats")

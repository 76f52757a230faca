"""Detectors in a running gateway: the traffic simulator, refusals as clients see them, the
admin API and metrics, and a fleet sharing sanctions through Redis."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.clock import ManualClock
from tests.support.configs import detection_config
from tests.support.tokens import ADMIN_TOKEN, bearer, hs_token
from tests.support.traffic import HEADLESS, browse_headless
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def simulate():
    sys.path.insert(0, str(ROOT / "loadtest"))
    import simulate

    yield simulate
    sys.path.remove(str(ROOT / "loadtest"))


async def test_simulator_people_pass_scrapers_and_the_shared_login_are_found(simulate, monkeypatch):
    monkeypatch.setenv("FAIRGATE_DEMO_SECRET", "a-demo-secret-of-at-least-32-bytes!!")
    monkeypatch.setenv("FAIRGATE_HASH_SALT", "test-salt-of-16-bytes")
    rows = await simulate.run_virtual(ROOT / "config" / "gateway.yaml", seconds=240, seed=3)
    by_kind: dict[str, list[dict]] = {}
    for row in rows.values():
        by_kind.setdefault(row["kind"], []).append(row)

    for row in by_kind["person"] + by_kind["integration"]:
        assert row["requests"] > 10 and row["finding"] is None and row["refused"] == 0, row
    for kind in ("headless scraper", "requests scraper", "polite scraper"):
        (row,) = by_kind[kind]
        assert row["flagged_after"] is not None and row["flagged_after"] <= 100, (kind, row)
    # config/gateway.yaml blocks scraping on portal routes, flags it on the API.
    assert by_kind["headless scraper"][0]["refused"] > 0 and by_kind["polite scraper"][0]["refused"] > 0
    assert by_kind["requests scraper"][0]["refused"] == 0
    shared = by_kind["shared login"]
    second_arrival = sorted(row["arrived"] for row in shared)[1]
    finding = shared[0]["finding"]
    assert finding["detector"] == "sharing" and finding["at"] - second_arrival <= 60
    assert all(row["refused"] == 0 for row in shared)  # sharing: flag only


async def test_requests_refused_by_the_rate_limit_still_count_as_sharing_evidence(start_gateway, upstream, client):
    clock = ManualClock()
    config = detection_config(upstream, sharing={"action": "flag", "device_header": "X-Device-Id"})
    config["limits"] = {"default_plan": "standard"}
    config["plans"] = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/min", "burst": 1}]}}
    gateway = await start_gateway(config, clock=clock)
    statuses = []
    for n in range(4):  # four devices on one login within a minute; all but the first over the plan's rate
        headers = {**bearer(hs_token(clock, sid=f"s{n}")), "X-Device-Id": f"device-{n}"}
        async with client.get(f"{gateway.url}/echo/x", headers=headers) as response:
            statuses.append(response.status)
        await gateway.server.state.detection.drain()
    assert statuses == [200, 429, 429, 429]
    async with client.get(f"{gateway.admin_url}/admin/findings?detector=sharing",
                          headers=bearer(ADMIN_TOKEN)) as response:
        (finding,) = (await response.json())["findings"]
    assert finding["signals"] == ["devices"] and len(finding["evidence"]["devices"]["seen"]) == 4


async def test_blocked_client_gets_problem_json_and_the_finding_is_listed_and_counted(start_gateway, upstream, client):
    clock = ManualClock()
    gateway = await start_gateway(detection_config(upstream), clock=clock)
    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 3) == [200] * 3

    async with client.get(f"{gateway.url}/echo/portal/next", headers={**token, **HEADLESS}) as response:
        assert response.status == 403  # a page navigation: the HTML block page (tests/test_challenge.py)
        assert 'data-fairgate-outcome="block"' in await response.text()
    json_accept = {**token, **HEADLESS, "Accept": "application/json"}
    async with client.get(f"{gateway.url}/echo/portal/next", headers=json_accept) as response:
        assert response.status == 403
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert int(response.headers["Retry-After"]) > 800
        problem = await response.json()
    assert problem["type"].endswith("automation-blocked") and "screen-scraping" in problem["detail"]
    async with client.get(f"{gateway.url}/echo/api", headers={**token, **HEADLESS}) as response:
        assert response.status == 200  # the API only flags

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def findings() -> list | None:
        async with client.get(f"{gateway.admin_url}/admin/findings?detector=scraping", headers=admin) as response:
            listed = (await response.json())["findings"]
        return listed if len(listed) == 2 else None

    # The block, and on the API (set to flag) one finding naming it: the block follows the login.
    finding, elsewhere = await wait_until(findings, message="the block and the API's finding naming it")
    assert finding["subject"] == "user:acme/alice" and finding["action"] == "block"
    assert "automation_agent" in finding["signals"]
    assert elsewhere["signals"] == ["blocked_elsewhere"] and elsewhere["action"] == "flag"
    assert elsewhere["until"] == finding["until"] and elsewhere["evidence"]["route_class"] == "api"
    async with client.get(f"{gateway.admin_url}/admin/findings") as response:
        assert response.status == 401
    async with client.get(f"{gateway.admin_url}/metrics") as response:
        text = await response.text()
    assert 'fairgate_findings_total{action="block",detector="scraping"} 1.0' in text
    assert 'fairgate_findings_total{action="flag",detector="scraping"} 1.0' in text


async def test_the_gateways_own_refusals_are_never_observed(start_gateway, upstream, client):
    clock = ManualClock()
    gateway = await start_gateway(detection_config(upstream), clock=clock)
    for n in range(40):  # 401s: no token on an auth-required route
        async with client.get(f"{gateway.url}/echo/api/{n}", headers={"User-Agent": "Scrapy/2"}) as response:
            assert response.status == 401
    detection = gateway.server.state.detection
    assert detection.backlog == 0
    await detection.drain()
    assert not detection.findings.recent()


async def test_a_sanction_reaches_the_whole_fleet_through_redis(start_gateway, upstream, client, redis_url, key_prefix):
    clock = ManualClock()
    config = detection_config(upstream)
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}-fleet"}
    first = await start_gateway(config, clock=clock)
    second = await start_gateway(config, clock=clock)
    token = bearer(hs_token(clock))
    assert await browse_headless(client, first, token, clock, 3) == [200] * 3
    await wait_until(lambda: bool(second.server.state.detection.sanctions), timeout=5)
    async with client.get(f"{second.url}/echo/portal/p9", headers={**token, **HEADLESS}) as response:
        assert response.status == 403

"""Exceptions and the allow-list through the admin API: they take effect on the next request,
on every gateway of a fleet, lift decisions already made, and end by themselves."""

from __future__ import annotations

from tests.support.clock import T0, ManualClock
from tests.support.configs import detection_config, enforcement_config
from tests.support.tokens import ADMIN, SECRET, bearer, hs_token
from tests.support.traffic import HEADLESS, browse_headless, statuses
from tests.support.waiting import wait_until


async def post(client, gateway, path: str, body: dict) -> tuple[int, dict]:
    async with client.post(f"{gateway.admin_url}{path}", headers=ADMIN, json=body) as response:
        return response.status, await response.json()


async def test_an_exception_raises_a_limit_until_it_ends(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream), clock=clock)
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 2) == [200, 429]
    status, body = await post(client, gateway, "/admin/customers/acme/exceptions",
                              {"limit": "sustained", "burst": 5, "for": "1h", "reason": "migration, agreed by AM"})
    assert status == 201 and body["grant"]["override"] == {"limit": "sustained", "burst": 5}
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.status == 200
        assert response.headers["RateLimit-Policy"] == '"sustained";q=5;w=5'
    assert await statuses(client, gateway, token, 4) == [200, 200, 200, 429]
    clock.advance(3601)  # the exception has ended: the plan's own numbers again
    token = hs_token(clock)
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(token)) as response:
        assert response.headers["RateLimit-Policy"] == '"sustained";q=1;w=1'
    async with client.get(f"{gateway.admin_url}/admin/exceptions", headers=ADMIN) as response:
        assert (await response.json())["grants"] == []


async def test_a_customer_exempt_from_the_ladder_is_never_warned(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream), clock=clock)
    status, _ = await post(client, gateway, "/admin/customers/acme/exceptions",
                           {"exempt": "ladder", "until": "2027-02-01", "reason": "load test week"})
    assert status == 201
    token = hs_token(clock)
    assert await statuses(client, gateway, token, 6) == [200] + [429] * 5
    await gateway.server.state.enforcement.judge_queued()
    assert gateway.server.state.enforcement.standings.latest("customer:acme") is None


async def test_allow_listing_a_user_lifts_a_scraping_block(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(detection_config(upstream), clock=clock)
    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 3) == [200] * 3
    async with client.get(f"{gateway.url}/echo/portal/next", headers={**token, **HEADLESS}) as response:
        assert response.status == 403

    status, _ = await post(client, gateway, "/admin/allow-list",
                           {"customer": "acme", "user": "alice", "for": "30d", "reason": "QA automation, agreed"})
    assert status == 201
    assert await browse_headless(client, gateway, token, clock, 5, prefix="q") == [200] * 5
    assert len(gateway.server.state.findings.recent(detector="scraping")) == 1  # no new one


async def test_an_allow_listed_user_agent_is_not_scored(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(detection_config(upstream), clock=clock)
    status, _ = await post(client, gateway, "/admin/allow-list",
                           {"user_agent": "HeadlessChrome", "for": "7d", "reason": "the customer's own test rig"})
    assert status == 201
    token = bearer(hs_token(clock))
    assert await browse_headless(client, gateway, token, clock, 8) == [200] * 8
    assert gateway.server.state.findings.recent(detector="scraping") == []


async def test_an_exception_reaches_another_gateway(start_gateway, upstream, client, redis_url, key_prefix):
    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}-grants"}
    first = await start_gateway(config, clock=clock)
    second = await start_gateway(config, clock=clock)
    status, _body = await post(client, first, "/admin/customers/acme/exceptions",
                              {"limit": "sustained", "burst": 3, "for": "1h", "reason": "agreed"})
    assert status == 201
    await wait_until(lambda: len(second.server.state.grants) == 1)
    async with client.get(f"{second.url}/echo/x", headers=bearer(hs_token(clock))) as response:
        assert response.headers["RateLimit-Policy"] == '"sustained";q=3;w=3'


async def test_bad_grants_are_explained(start_gateway, upstream, client):
    gateway = await start_gateway(enforcement_config(upstream))
    path = "/admin/customers/acme/exceptions"
    cases = [
        ({"limit": "nope", "burst": 5, "for": "1h", "reason": "x"}, "not a limit of this customer's plan"),
        ({"limit": "sustained", "for": "1h", "reason": "x"}, "at least one of"),
        ({"limit": "sustained", "burst": 0, "for": "1h", "reason": "x"}, "burst"),
        ({"limit": "sustained", "burst": 5, "reason": "x"}, "exactly one of 'until'"),
        ({"limit": "sustained", "burst": 5, "until": "2001-01-01", "reason": "x"}, "in the past"),
        ({"limit": "sustained", "burst": 5, "for": "1h"}, "'reason' is required"),
        ({"exempt": "everything", "for": "1h", "reason": "x"}, "exempt: expected one of"),
        # A calendar-month token bucket, or numbers a token bucket has no use for, are refused as in the file.
        ({"limit": "sustained", "rate": "100/month", "for": "1h", "reason": "x"}, "rate:"),
        ({"limit": "sustained", "max": 3, "for": "1h", "reason": "x"}, "max: does not apply to a rate limit"),
    ]
    for body, expected in cases:
        status, problem = await post(client, gateway, path, body)
        assert status == 400 and expected in problem["detail"], (body, problem)
    status, problem = await post(client, gateway, "/admin/allow-list", {"user_agent": "x", "for": "1d", "reason": "r"})
    assert status == 400 and "user_agent" in problem["detail"]


async def test_the_openapi_document_describes_every_admin_route(start_gateway, upstream, client):
    gateway = await start_gateway(enforcement_config(upstream))
    async with client.get(f"{gateway.admin_url}/admin/openapi.json", headers=ADMIN) as response:
        assert response.status == 200
        document = await response.json()
    assert document["openapi"].startswith("3.1")
    app = gateway.server._admin.app
    served = {(resource.canonical, route.method.lower()) for resource in app.router.resources()
              for route in resource if resource.canonical.startswith("/admin/") and route.method != "HEAD"}
    described = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert served == described


async def test_the_effective_config_hides_secrets(start_gateway, upstream, client):
    config = enforcement_config(upstream)
    config["alerts"] = {"webhooks": [{"name": "ops", "url": "https://hooks.example/x", "secret": "webhook-secret-1"}]}
    gateway = await start_gateway(config)
    async with client.get(f"{gateway.admin_url}/admin/config", headers=ADMIN) as response:
        text = await response.text()
        effective = await response.json()
    assert "webhook-secret-1" not in text and SECRET not in text
    assert effective["alerts"]["webhooks"][0]["secret"] == "**********"
    assert effective["auth"]["issuers"][0]["hmac_secret"] == "**********"
    assert effective["enforcement"]["ladder"]["warn_at"] == 2
    assert effective["plans"]["standard"]["limits"][0]["name"] == "sustained"  # inside a frozen mapping


async def revoke(client, gateway, grant_id: str, body: dict | None = None) -> tuple[int, dict]:
    async with client.delete(f"{gateway.admin_url}/admin/exceptions/{grant_id}", headers=ADMIN,
                             json=body or {}) as response:
        return response.status, await response.json()


async def test_revoking_an_exception_ends_it_now_and_is_audited(start_gateway, upstream, client):
    clock = ManualClock(T0)
    gateway = await start_gateway(enforcement_config(upstream), clock=clock)
    _, body = await post(client, gateway, "/admin/customers/acme/exceptions",
                         {"limit": "sustained", "burst": 5, "for": "1h", "reason": "migration"})
    grant_id = body["grant"]["id"]
    status, ended = await revoke(client, gateway, grant_id, {"by": "dana", "note": "migration done"})
    assert status == 200 and ended["revoked"]["id"] == grant_id
    async with client.get(f"{gateway.url}/echo/x", headers=bearer(hs_token(clock))) as response:
        assert response.headers["RateLimit-Policy"] == '"sustained";q=1;w=1'  # the plan's own numbers
    async with client.get(f"{gateway.admin_url}/admin/exceptions", headers=ADMIN) as response:
        assert (await response.json())["grants"] == []
    async with client.get(f"{gateway.admin_url}/admin/events?kind=admin_action", headers=ADMIN) as response:
        actions = [(e["action"], e["by"], e.get("note")) for e in (await response.json())["events"]]
    assert ("revoke_grant", "dana", "migration done") in actions
    status, _again = await revoke(client, gateway, grant_id)
    assert status == 200  # a retry (say, after a 503 from the store) is answered the same
    status, problem = await revoke(client, gateway, "no-such-id")
    assert status == 404 and problem["type"].endswith("no-such-grant")


async def test_a_revoked_exception_ends_on_every_gateway(start_gateway, upstream, client, redis_url, key_prefix):
    clock = ManualClock(T0)
    config = enforcement_config(upstream)
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}-revoke"}
    first = await start_gateway(config, clock=clock)
    second = await start_gateway(config, clock=clock)
    _, body = await post(client, first, "/admin/customers/acme/exceptions",
                         {"limit": "sustained", "burst": 3, "for": "1h", "reason": "agreed"})
    await wait_until(lambda: len(second.server.state.grants) == 1)
    status, _ = await revoke(client, first, body["grant"]["id"])
    assert status == 200
    await wait_until(lambda: len(second.server.state.grants) == 0)
    async with client.get(f"{second.url}/echo/x", headers=bearer(hs_token(clock))) as response:
        assert response.headers["RateLimit-Policy"] == '"sustained";q=1;w=1'
    # Withdrawn from the fleet's list too, so a gateway started later never takes it.
    assert await first.server.state.store.shared("grants", clock.time()) == []

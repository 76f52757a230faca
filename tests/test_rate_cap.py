"""The upstream rate cap (`upstreams.<name>.max_rate`): bursts are held and sent at the cap's
rate, a wait beyond max_rate_delay is a 503 at once, and plan limits and the in-flight cap
still apply in front of it.

aiolimiter keeps time on the event loop's clock and takes no other, so the spreading is read
from the upstream's arrival times, which can only be further apart than the cap makes them.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from aiohttp import web

from tests.support.clock import ManualClock
from tests.support.configs import gateway_config, limits_config
from tests.support.tokens import hs_token
from tests.support.traffic import statuses_at as statuses
from tests.support.waiting import wait_until


@pytest.fixture
async def arrivals():
    """An upstream that notes the loop time of each request it receives."""
    seen: list[float] = []
    loop = asyncio.get_running_loop()

    async def note(request: web.Request) -> web.Response:
        seen.append(loop.time())
        return web.json_response({"n": len(seen)})

    app = web.Application()
    app.router.add_get("/{tail:.*}", note)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


def capped(url: str, **cap) -> dict:
    config = gateway_config(url)
    config["upstreams"]["app"].update(cap)
    return config


async def get_all(client, urls: list[str], headers: dict | None = None) -> list:
    async def one(url: str):
        async with client.get(url, headers=headers) as response:
            return response.status, dict(response.headers), await response.read()

    return await asyncio.gather(*(one(url) for url in urls))


async def test_a_burst_is_held_and_reaches_the_upstream_at_the_cap_rate(start_gateway, arrivals, client):
    url, seen = arrivals
    gw = await start_gateway(capped(url, max_rate="10/s", max_rate_burst=1, max_rate_delay="5s"))
    async with client.get(f"{gw.url}/warm") as response:  # a pooled connection, and the bucket full
        assert response.status == 200
    seen.clear()
    answers = await get_all(client, [f"{gw.url}/burst/{n}" for n in range(6)])
    assert [status for status, _, _ in answers] == [200] * 6  # delayed, none refused
    assert len(seen) == 6
    # Six requests at 10/s after the bucket was used: at least 0.5 s from first to last, less
    # the jitter of one forwarding (a tenth of a second is far more than loopback needs).
    assert seen[-1] - seen[0] >= 0.5 - 0.1


async def test_a_wait_beyond_max_rate_delay_is_503_at_once_with_retry_after(start_gateway, arrivals, client):
    url, seen = arrivals
    gw = await start_gateway(capped(url, max_rate="1/s", max_rate_delay="1s"))
    async with client.get(f"{gw.url}/warm") as response:
        assert response.status == 200
    answers = await get_all(client, [f"{gw.url}/burst/{n}" for n in range(4)])
    got = sorted(status for status, _, _ in answers)
    # One request may wait its second; the next in line would wait two, more than max_rate_delay.
    assert got.count(200) >= 1 and got.count(503) >= 2
    assert set(got) == {200, 503}
    for status, headers, body in answers:
        if status == 503:
            assert headers["Content-Type"] == "application/problem+json"
            assert headers["Retry-After"] == "2"
            assert b"urn:fairgate:problem:upstream-rate-capped" in body
    assert len(seen) == 1 + got.count(200)  # refused ones never reached the upstream


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall=dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC).timestamp())


async def test_plan_limits_still_refuse_in_front_of_the_cap(start_gateway, upstream, client, clock):
    plans = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/s", "burst": 3}]}}
    config = limits_config(upstream, plans, upstream_settings={"max_rate": "50/s", "max_rate_delay": "5s"})
    gw = await start_gateway(config, clock=clock)
    token = hs_token(clock, exp=int(clock.time()) + 3600)
    assert await statuses(client, f"{gw.url}/echo", token, 5) == [200, 200, 200, 429, 429]
    assert upstream.state.requests == 3  # a 429 takes nothing from the upstream's cap


async def test_requests_held_at_the_cap_count_against_max_in_flight(start_gateway, arrivals, client):
    url, seen = arrivals
    # These anonymous requests from one address may fill the whole cap (by default a tenth of it, half that each network)
    gw = await start_gateway(capped(url, max_rate="1/s", max_rate_delay="5s", max_in_flight=2, anonymous_share=1,
                                    anonymous_network_share=1))
    cap = gw.server.runtimes.current.rate_caps["app"]
    async with client.get(f"{gw.url}/warm") as response:
        assert response.status == 200
    held = [asyncio.create_task(get_all(client, [f"{gw.url}/held/{n}"])) for n in range(2)]
    await wait_until(lambda: cap.waiting == 2)
    async with client.get(f"{gw.url}/one-more") as response:
        assert response.status == 503  # the in-flight cap is full of requests waiting for the rate cap
        assert (await response.json())["type"].endswith("#temporary-reduced-capacity")
    assert [answer[0][0] for answer in await asyncio.gather(*held)] == [200, 200]
    assert len(seen) == 3

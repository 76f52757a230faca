"""Limits shared through Redis: a fleet enforces one limit, a Cluster works, an outage is survived."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time

import aiohttp
import pytest
import redis

from gateway.clock import SYSTEM_CLOCK
from gateway.config.limits import StateSettings
from gateway.state.redis_store import RedisStore, connect
from gateway.state.sightings import Query, Sighting
from gateway.state.store import QUOTA, RATE, Check, StoreUnavailable
from tests.support.clock import ManualClock
from tests.support.configs import limits_config
from tests.support.gateways import write_process_config
from tests.support.redis_servers import RedisCluster
from tests.support.tokens import ADMIN_TOKEN, bearer, hs_token
from tests.support.waiting import wait_until


@pytest.mark.parametrize(("limit", "allowed"), [
    ({"name": "slow", "kind": "rate", "rate": "1/min", "burst": 10}, 10),
    ({"name": "daily", "kind": "quota", "metric": "requests", "period": "day", "limit": 25}, 25),
], ids=["rate", "quota"])
async def test_a_fleet_of_two_enforces_one_limit(tmp_path, upstream, client, gateway_process, redis_url, key_prefix,
                                                 limit, allowed):
    config = limits_config(upstream, {"standard": {"limits": [limit]}})
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}:fleet"}
    urls = []
    for name in ("a", "b"):
        path, url, admin_url = write_process_config(tmp_path, name, config)
        await asyncio.to_thread(gateway_process(path).wait_ready, admin_url)
        urls.append(url)
    token = hs_token(SYSTEM_CLOCK, org_id=f"fleet-{limit['name']}", exp=int(time.time()) + 600)
    statuses = []
    for n in range(allowed * 2 + 10):  # alternate: each gateway alone would allow `allowed` more
        async with client.get(f"{urls[n % 2]}/echo", headers=bearer(token)) as response:
            statuses.append(response.status)
    assert statuses.count(200) == allowed, statuses
    assert statuses[:allowed] == [200] * allowed


@pytest.fixture(scope="module")
def cluster():
    nodes = RedisCluster().start()
    yield nodes
    nodes.stop()


async def test_limits_on_a_redis_cluster_without_crossslot_errors(cluster):
    settings = StateSettings(url=cluster.url, timeout="2s")
    client, is_cluster = connect(settings)
    assert is_cluster
    store = RedisStore(client, settings, cluster=True, use_redis_time=True)
    try:
        now = time.time()

        run = secrets.token_hex(4)  # keys of this run alone, whatever else the cluster holds

        def checks(customer: int) -> list[Check]:
            tag = f"c:cust-{customer}"
            return [
                Check(RATE, f"fg{run}:{{{tag}}}:sustained:cust-{customer}", interval=60.0, burst=2, cost=1),
                Check(QUOTA, f"fg{run}:{{{tag}}}:daily:cust-{customer}:2026-11-21", limit=100, cost=1,
                      expires_at=now + 3600),
            ]

        # Many customers land on all three masters; each request's keys share its hash tag. The
        # requests arrive together, so the store splits one batch into one script call per tag.
        customers = range(30)
        answers = await asyncio.gather(*(store.evaluate(f"c:cust-{customer}", checks(customer), now)
                                         for _ in range(3) for customer in customers))
        for customer in customers:
            results = [all(o.allowed for o in answers[customer + 30 * i]) for i in range(3)]
            assert results == [True, True, False], customer
        assert store.breaker.state == "closed"
    finally:
        await store.close()


async def test_sightings_on_a_redis_cluster_span_every_slot(cluster):
    """A Cluster spreads the detectors' keys over slots one script cannot span: the same answers
    come back through the pipeline there."""
    settings = StateSettings(url=cluster.url, timeout="2s")
    client, _ = connect(settings)
    store = RedisStore(client, settings, cluster=True, use_redis_time=True)
    try:
        run, now = secrets.token_hex(4), time.time()
        keys = [f"fg{run}:d:{{user:c-{n}/u}}:uses" for n in range(30)]
        seen = [Sighting(key, member, now + i, 60.0, 2) for key in keys for i, member in enumerate("abc")]
        queries = [Query(key, now - 1) for key in keys]
        answers = await store.sightings().exchange(seen, queries)
        assert answers is not None
        assert all(answers[query] == {"b": now + 1, "c": now + 2} for query in queries)
    finally:
        await store.close()


async def test_limits_decide_on_a_restarted_redis_from_the_call_after_the_one_that_found_it_gone(private_redis):
    """The limits keep a connection between calls (redis_wire.Line). A restart between calls
    costs at most the one call that finds the old connection dead, as with the pool's own
    connections; the next calls go on a new connection to the restarted Redis (its scripts gone)."""
    settings = StateSettings(url=private_redis.url, timeout="2s", on_failure="closed", breaker_failures=5)
    client, _ = connect(settings)
    store = RedisStore(client, settings, cluster=False, use_redis_time=True)
    check = [Check(RATE, "fg:{c:n-1}:sustained", interval=60.0, burst=2, cost=1)]

    async def allowed() -> bool | None:
        try:
            return (await store.evaluate("c:n-1", check, time.time()))[0].allowed
        except StoreUnavailable:
            return None

    try:
        assert [await allowed(), await allowed()] == [True, True]
        private_redis.kill()
        private_redis.start()  # empty: the bucket is full again
        decided = [await allowed() for _ in range(4)]
        # At most the first found the old connection gone; the restarted Redis counted the rest.
        assert decided in ([True, True, False, False], [None, True, True, False])
    finally:
        await store.close()


async def test_a_node_that_lost_its_scripts_does_not_charge_the_other_nodes_twice(cluster):
    """A node restarted or flushed answers NOSCRIPT; only its calls are sent again, not the calls the
    other nodes already ran (those took their units once: running them again would refuse paying
    customers)."""
    settings = StateSettings(url=cluster.url, timeout="2s")
    client, _ = connect(settings)
    store = RedisStore(client, settings, cluster=True, use_redis_time=True)
    try:
        now = time.time()
        run = secrets.token_hex(4)

        def checks(customer: int) -> list[Check]:
            return [Check(RATE, f"fg{run}:{{c:n-{customer}}}:sustained", interval=60.0, burst=2, cost=1)]

        customers = range(30)
        await store.evaluate("c:n-warm", [Check(RATE, f"fg{run}:{{c:n-warm}}:x", interval=60.0, burst=1)], now)
        redis.Redis(port=cluster.nodes[1].port).script_flush()  # one node forgets the script
        answers = await asyncio.gather(*(store.evaluate(f"c:n-{customer}", checks(customer), now)
                                         for customer in customers))
        assert all(answer[0].allowed for answer in answers)
        for customer in customers:
            # One unit taken each, whichever node holds the customer: one left.
            second = await store.evaluate(f"c:n-{customer}", checks(customer), now)
            assert second[0].allowed, customer
    finally:
        await store.close()


async def test_gateway_on_a_redis_cluster(start_gateway, upstream, client, cluster):
    plans = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1/min", "burst": 3}]}}
    config = limits_config(upstream, plans)
    config["state"] = {"url": cluster.url, "timeout": "2s"}
    gw = await start_gateway(config)
    for customer in ("acme", "globex", "initech", "umbrella"):
        token = hs_token(SYSTEM_CLOCK, org_id=customer, exp=int(time.time()) + 600)
        statuses = []
        for _ in range(4):
            async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
                statuses.append(response.status)
        assert statuses == [200, 200, 200, 429], customer


@pytest.mark.parametrize("mode", ["open", "local", "closed"])
async def test_redis_outage_and_recovery(start_gateway, upstream, client, private_redis, mode, caplog):
    plans = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1000/s", "burst": 1000}]}}
    config = limits_config(upstream, plans)
    config["state"] = {"url": private_redis.url, "timeout": "100ms", "on_failure": mode,
                       "breaker_failures": 3, "breaker_cooldown": "200ms"}
    gw = await start_gateway(config)
    token = hs_token(SYSTEM_CLOCK, exp=int(time.time()) + 600)

    async def load(rounds: int) -> list[tuple[int, float]]:
        results = []
        for _ in range(rounds):
            started = time.monotonic()
            async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
                await response.read()
                results.append((response.status, time.monotonic() - started))
        return results

    assert {status for status, _ in await load(5)} == {200}
    with caplog.at_level(logging.WARNING, logger="fairgate.state"):
        private_redis.kill()
        during = await load(30)
        statuses = {status for status, _ in during}
        if mode == "closed":
            assert statuses == {503}
            async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
                assert response.content_type == "application/problem+json"
                assert (await response.json())["type"] == "urn:fairgate:problem:limits-unavailable"
        else:
            assert statuses == {200}  # no 5xx while Redis is down
        # Nobody waits on the dead Redis: the 100 ms timeout bounds every request (with room for a busy CI box).
        assert max(seconds for _, seconds in during) < 1.0

        private_redis.start()
        metrics = ""

        async def recovered() -> bool:
            nonlocal metrics
            async with client.get(f"{gw.admin_url}/metrics") as response:
                metrics = await response.text()
            if 'fairgate_state_store_circuit{state="closed"} 1.0' in metrics and (
                    {status for status, _ in await load(3)} == {200}):
                return True
            await load(1)
            return False
        await wait_until(recovered, timeout=10, message="no recovery after Redis came back", interval=0.05)
    transitions = [record.getMessage() for record in caplog.records if record.name == "fairgate.state"]
    assert "state store circuit open" in transitions
    assert "state store circuit closed" in transitions
    assert f'fairgate_state_store_fallbacks_total{{mode="{mode}"}}' in metrics


async def test_concurrency_slots_are_shared_and_released_through_redis(start_gateway, upstream, client, redis_url,
                                                                      key_prefix):
    plans = {"standard": {"limits": [{"name": "parallel", "kind": "concurrency", "max": 1}]}}
    config = limits_config(upstream, plans)
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}:conc", "timeout": "1s"}
    gw = await start_gateway(config)
    token = hs_token(SYSTEM_CLOCK, org_id="conc-co", exp=int(time.time()) + 600)
    held = asyncio.create_task(client.get(f"{gw.url}/stall", headers=bearer(token)))
    await asyncio.wait_for(upstream.state.stall_started.wait(), 5)
    for _ in range(2):  # the request template is reused; each request still gets its own slot
        async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
            assert response.status == 429
    upstream.state.release_stall.set()
    assert (await held).status == 200
    async def slot_free() -> bool:  # the slot goes back to Redis right after the response
        async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
            return response.status == 200
    await wait_until(slot_free, message="slot never released")


async def test_limits_through_redis_sentinel():
    from tests.support.redis_servers import RedisSentinel

    sentinel = RedisSentinel().start()
    try:
        settings = StateSettings(url=sentinel.url, timeout="2s")
        client, is_cluster = connect(settings)
        assert not is_cluster
        store = RedisStore(client, settings, cluster=False)
        now = time.time()
        results = []
        for _ in range(3):
            outcomes = await store.evaluate("t", [Check(RATE, "fg:{c:s}:sustained:s", interval=60.0, burst=2)], now)
            results.append(outcomes[0].allowed)
        assert results == [True, True, False]
        await store.close()
    finally:
        sentinel.stop()


async def test_a_revocation_reaches_the_whole_fleet(start_gateway, upstream, client, redis_url, key_prefix):
    config = limits_config(upstream, {"standard": {"limits": []}})
    config["state"] = {"url": redis_url, "key_prefix": f"{key_prefix}:revocations"}
    first, second = await start_gateway(config), await start_gateway(config)
    token = hs_token(SYSTEM_CLOCK, jti="fleet-token", exp=int(time.time()) + 600)
    async with client.get(f"{second.url}/echo", headers=bearer(token)) as response:
        assert response.status == 200  # verified and cached on the second gateway
    async with client.post(f"{first.admin_url}/admin/revocations", json={"issuer": "test", "jti": "fleet-token"},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
        assert response.status == 201
    async def revoked_on_second() -> bool:  # the second gateway merges the shared list every second
        async with client.get(f"{second.url}/echo", headers=bearer(token)) as response:
            if response.status == 401:
                assert "revoked" in response.headers["WWW-Authenticate"]
            return response.status == 401
    await wait_until(revoked_on_second, message="the revocation never reached the other gateway", interval=0.05)


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_state_flag_and_environment_point_a_config_at_redis(tmp_path, upstream, client, gateway_process,
                                                                redis_url, key_prefix, how):
    import redis.asyncio

    config = limits_config(upstream, {"standard": {"limits": [
        {"name": "sustained", "kind": "rate", "rate": "1/s", "burst": 5}]}})
    prefix = f"{key_prefix}:{how}"
    config["state"] = {"key_prefix": prefix}  # the file says memory://
    path, url, admin_url = write_process_config(tmp_path, how, config)
    if how == "flag":
        process = gateway_process(path, "--state", redis_url)
    else:
        process = gateway_process(path, env={"FAIRGATE_STATE": redis_url})
    await asyncio.to_thread(process.wait_ready, admin_url)
    token = hs_token(SYSTEM_CLOCK, org_id=f"state-{how}", exp=int(time.time()) + 600)
    async with client.get(f"{url}/echo", headers=bearer(token)) as response:
        assert response.status == 200
    shared = redis.asyncio.Redis.from_url(redis_url)
    keys = [key async for key in shared.scan_iter(match=f"{prefix}:*")]
    await shared.aclose()
    assert keys == [f"{prefix}:{{c:state-{how}}}:sustained:state-{how}".encode()]


def test_a_bad_state_url_is_a_usage_error(tmp_path):
    import subprocess
    import sys

    from tests.support.paths import ROOT

    result = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", "config/gateway.yaml", "--state", "mysql://x"],
                            cwd=ROOT, capture_output=True, text=True, env={"FAIRGATE_DEMO_SECRET": "x" * 40, "FAIRGATE_HASH_SALT": "test-salt-of-16-bytes",
                                                                         "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "state URL must start with" in result.stderr


def test_a_bad_state_url_from_the_environment_names_the_variable():
    import subprocess
    import sys

    from tests.support.paths import ROOT

    result = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", "config/gateway.yaml"], cwd=ROOT,
                            capture_output=True, text=True,
                            env={"FAIRGATE_DEMO_SECRET": "x" * 40, "FAIRGATE_HASH_SALT": "test-salt-of-16-bytes",
                                 "FAIRGATE_STATE": "redis+sentinal://127.0.0.1:26379/mymaster",
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "FAIRGATE_STATE: state URL must start with" in result.stderr
    assert "redis+sentinel://" in result.stderr  # the schemes it could have meant


async def test_requests_arriving_while_a_call_is_in_flight_are_decided_together_by_the_next(private_redis):
    """One limits call at a time: the requests that arrive while one is in flight (here held by a
    paused Redis) go in the next call together, in arrival order, instead of one call each."""
    settings = StateSettings(url=private_redis.url, timeout="5s")
    client, _ = connect(settings)
    store = RedisStore(client, settings, cluster=False, use_redis_time=False)
    admin = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        now = time.time()
        await store.evaluate("c:x", [Check(RATE, "fg:{c:x}:warm", interval=1.0, burst=5)], now)  # loads the script
        before = (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"]
        await admin.client_pause(1000, all=True)  # the commands sent from now on wait a second

        def request() -> asyncio.Task:
            return asyncio.ensure_future(store.evaluate("c:x", [Check(RATE, "fg:{c:x}:b", interval=60.0, burst=2)],
                                                        now))

        first = request()
        for _ in range(3):  # its evaluate, the batch's flush, the call's write: the first call is in flight
            await asyncio.sleep(0)
        later = []
        for _ in range(3):  # one an event-loop turn: without the gate, each would be a call of its own
            later.append(request())
            await asyncio.sleep(0)
        answers = [await first] + [await task for task in later]
        assert [outcomes[0].allowed for outcomes in answers] == [True, True, False, False]
        assert (await admin.info("commandstats"))["cmdstat_evalsha"]["calls"] - before == 2
    finally:
        await admin.aclose()
        await store.close()


async def test_the_local_over_limit_cache_is_per_cost(redis_url, key_prefix):
    settings = StateSettings(url=redis_url, timeout="2s")
    client, _ = connect(settings)
    store = RedisStore(client, settings, cluster=False, use_redis_time=False)
    key = f"{key_prefix}:{{c:cost}}:sustained:cost"
    now = 1_800_000_000.0
    try:
        first = await store.evaluate("t", [Check(RATE, key, interval=1.0, burst=10, cost=10)], now)
        assert first[0].allowed
        expensive = await store.evaluate("t", [Check(RATE, key, interval=1.0, burst=10, cost=10)], now + 1)
        assert not expensive[0].allowed and expensive[0].retry_after == pytest.approx(9)
        # A cheap request fits a second later, though the expensive one is cached as over the limit.
        cheap = store.evaluate_now([Check(RATE, key, interval=1.0, burst=10, cost=1)], now + 1) or \
            await store.evaluate("t", [Check(RATE, key, interval=1.0, burst=10, cost=1)], now + 1)
        assert cheap[0].allowed
        assert store.evaluate_now([Check(RATE, key, interval=1.0, burst=10, cost=10)], now + 2)[0].allowed is False
    finally:
        await store.close()


async def test_a_bucket_written_by_an_earlier_version_carries_on(redis_url, key_prefix):
    # Earlier versions kept a theoretical arrival time; during a rolling upgrade it reads as
    # the seconds the bucket still owes.
    settings = StateSettings(url=redis_url, timeout="2s")
    client, _ = connect(settings)
    store = RedisStore(client, settings, cluster=False, use_redis_time=False)
    key = f"{key_prefix}:{{c:upgrade}}:sustained:upgrade"
    now = 1_800_000_000.0
    try:
        await client.set(key, f"{now + 8:.6f}", px=60_000)  # 8 of 10 units taken at 1/s
        answers = [(await store.evaluate("t", [Check(RATE, key, interval=1.0, burst=10, cost=1)], now))[0]
                   for _ in range(3)]
        assert [o.allowed for o in answers] == [True, True, False]
        assert answers[2].retry_after == pytest.approx(1.0)
    finally:
        await store.close()


async def test_a_slot_taken_for_a_cancelled_request_goes_back(redis_url, key_prefix):
    from gateway.auth.identity import Identity
    from gateway.config import Route
    from gateway.config.limits import LimitSettings, Plan
    from gateway.limits.limiter import Limiter
    from gateway.limits.policy import PlanBook
    from gateway.limits.stats import LimitStats

    settings = StateSettings(url=redis_url, timeout="2s", key_prefix=f"{key_prefix}:cancel")
    client, _ = connect(settings)
    store = RedisStore(client, settings, cluster=False)
    plans = {"standard": Plan.model_validate({"limits": [{"name": "parallel", "kind": "concurrency", "max": 1}]})}
    limiter = Limiter(PlanBook(LimitSettings(default_plan="standard"), plans, {}), store, LimitStats(), SYSTEM_CLOCK,
                      key_prefix=settings.key_prefix, ratelimit_headers=False, legacy_headers=False)
    route = Route.model_validate({"name": "api", "path_prefix": "/", "upstream": "app"})
    who = Identity("cancel-co", "u", None, None, None, "test", None, frozenset(), 0.0, 0.0)
    try:
        admitting = asyncio.create_task(limiter.admit(who, route, "127.0.0.1", "first"))
        await asyncio.sleep(0)  # the script is queued for Redis
        admitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admitting
        async def slot_given_back() -> bool:
            # Without the give-back the slot would stay taken for its whole 10-minute lease.
            return not (await limiter.admit(who, route, "127.0.0.1", f"next-{time.monotonic()}")).rejected
        await wait_until(slot_given_back, message="the abandoned slot was never given back")
    finally:
        await store.close()


async def test_a_revocation_the_fleet_cannot_see_is_a_503(start_gateway, upstream, client, private_redis):
    config = limits_config(upstream, {"standard": {"limits": []}})
    config["state"] = {"url": private_redis.url, "timeout": "100ms"}
    gw = await start_gateway(config)
    token = hs_token(SYSTEM_CLOCK, jti="lonely", exp=int(time.time()) + 600)
    private_redis.kill()
    async with client.post(f"{gw.admin_url}/admin/revocations", json={"issuer": "test", "jti": "lonely"},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
        assert response.status == 503
        assert (await response.json())["type"] == "urn:fairgate:problem:state-unavailable"
    async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
        assert response.status == 401  # this gateway enforces it all the same


@pytest.mark.parametrize("offset_days", [-400, 365], ids=["clock-in-the-past", "clock-a-year-ahead"])
async def test_quota_keys_expire_with_their_period_whatever_redis_clock_says(start_gateway, upstream, client,
                                                                               redis_url, key_prefix, offset_days):
    # Redis expires keys by its own (real) clock; this gateway lives more than a year away from it.
    clock = ManualClock(time.time() + offset_days * 86400)
    plans = {"standard": {"limits": [
        {"name": "daily", "kind": "quota", "metric": "requests", "period": "day", "limit": 3},
        {"name": "monthly-bytes", "kind": "quota", "metric": "bytes", "period": "month", "limit": 10**9},
    ]}}
    config = limits_config(upstream, plans)
    prefix = f"{key_prefix}:clocks{offset_days}"
    config["state"] = {"url": redis_url, "key_prefix": prefix}
    gw = await start_gateway(config, clock=clock)
    token = hs_token(clock, org_id="far-away", exp=int(clock.time()) + 600)
    statuses = []
    for _ in range(5):
        async with client.post(f"{gw.url}/echo", data=b"x" * 100, headers=bearer(token)) as response:
            statuses.append(response.status)
    assert statuses == [200, 200, 200, 429, 429]  # the daily quota fills
    await gw.server.runtimes.current.limiter.drain()  # measured bytes written
    await gw.server.state.usage.flush()
    redis_client = redis.Redis.from_url(redis_url)
    ttls = {key.decode(): redis_client.pttl(key) for key in redis_client.scan_iter(match=f"{prefix}:*")}
    day, month = 86400_000, 31 * 86400_000
    daily = [ttl for key, ttl in ttls.items() if ":daily:" in key]
    monthly = [ttl for key, ttl in ttls.items() if ":monthly-bytes:" in key]
    usage = [ttl for key, ttl in ttls.items() if ":u:" in key]
    assert len(daily) == len(monthly) == 1 and usage, ttls
    assert 0 < daily[0] <= day + 60_000  # the end of the gateway's day, and a minute
    assert 0 < monthly[0] <= month + 60_000
    assert all(0 < ttl <= month + 400 * day for ttl in usage)  # the month and its retention


async def test_after_an_outage_one_probe_closes_the_circuit_for_good(start_gateway, upstream, client, private_redis,
                                                                     caplog):
    clock = ManualClock()  # the breaker's cooldown and the limits run on it
    plans = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "1000/s", "burst": 1000}]}}
    config = limits_config(upstream, plans)
    # A long state.timeout: the probe sent to the stopped Redis below must still be waiting when
    # Redis resumes. With the default 500 ms, a loaded machine could let it time out first and
    # reopen the circuit (a second "open", correct but not what this test is about).
    config["state"] = {"url": private_redis.url, "on_failure": "closed", "breaker_failures": 2,
                       "breaker_cooldown": "2s", "timeout": "30s"}
    gw = await start_gateway(config, clock=clock)
    token = hs_token(clock)

    async def status() -> int:
        async with client.get(f"{gw.url}/echo", headers=bearer(token)) as response:
            await response.read()
            return response.status

    async def circuit(state: str) -> bool:
        async with client.get(f"{gw.admin_url}/metrics") as response:
            return f'fairgate_state_store_circuit{{state="{state}"}} 1.0' in await response.text()

    assert await status() == 200
    with caplog.at_level(logging.WARNING, logger="fairgate.state"):
        private_redis.kill()
        assert [await status() for _ in range(5)] == [503] * 5
        assert await circuit("open")

        # Redis comes back hung (SIGSTOP): the first request after the cooldown probes it and its
        # client gives up. That probe has not reported back; it must not hold the circuit half-open.
        private_redis.start()
        assert await status() == 503  # still within the cooldown: nobody asks Redis
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        try:
            clock.advance(2.0)
            async with aiohttp.ClientSession() as impatient:
                probe = asyncio.create_task(impatient.get(f"{gw.url}/echo", headers=bearer(token)))
                await wait_until(lambda: circuit("half_open"), timeout=10, message="no probe went to Redis")
                assert await status() == 503  # one probe at a time: the others fail fast
                probe.cancel()
        finally:
            os.kill(private_redis.process.pid, signal.SIGCONT)

        # Redis answers again: after the open interval the next request probes, succeeds and
        # closes the circuit; everything after it is served, a crowd at once included.
        clock.advance(2.0)
        assert await status() == 200
        assert await circuit("closed")
        crowd = await asyncio.gather(*(status() for _ in range(50)))
        assert crowd == [200] * 50
        assert [await status() for _ in range(20)] == [200] * 20
    transitions = [record.getMessage() for record in caplog.records if record.name == "fairgate.state"]
    assert transitions.count("state store circuit open") == 1, transitions
    assert transitions[-1] == "state store circuit closed"

"""Per-customer memory: every table has a bound and a metric of its fill and evictions, and the
background sweep forgets what went idle, on an injected clock, without changing a decision.

The limiter's rule is the one that matters most: a rate bucket forgotten while its customer
still owes units would read as full and hand out a fresh burst beyond the plan, so a bucket is
forgotten only once it has drained (at the slowest rate seen), and quota counts only once their
period ended.
"""

from __future__ import annotations

import re
import sys

import pytest

from gateway.auth.identity import Identity
from gateway.auth.token_cache import TokenCache
from gateway.metrics import Metrics
from gateway.state.bounded import SHARD_ENTRIES, BoundedTable
from gateway.state.counters import PACK_AFTER, CounterSet
from gateway.state.memory import MemoryStore
from gateway.state.sightings import MemorySightings, Query, Sighting
from gateway.state.store import QUOTA, RATE, Check
from gateway.state.tables import Sweeper, Tables
from tests.support.clock import T0, ManualClock
from tests.support.configs import limits_config
from tests.support.tokens import bearer, hs_token


def slow_rate(key: str, interval: float = 100.0) -> Check:
    """5 units, one back every `interval` seconds."""
    return Check(RATE, key, False, interval=interval, burst=5, cost=1, max_delay=0.0)


def identity(customer: str, expires_at: float) -> Identity:
    return Identity(customer, "u", None, None, None, "test", None, frozenset(), T0, expires_at)


def test_a_sweep_forgets_expired_entries_and_keeps_the_rest_whatever_their_order():
    table: BoundedTable[int, float] = BoundedTable(1000, lambda until, now: until <= now)
    for n in range(100):
        table.put(n, T0 + (10 if n % 2 else 1000))  # odd ones end soon, even ones much later
    assert table.sweep(T0 + 20, 30) == 15  # 30 looked at: the odd 15 of them go
    assert len(table) == 85 and table.expirations == 15
    while table.sweep(T0 + 20, 30):
        pass
    assert sorted(table) == list(range(0, 100, 2))  # a long-lived entry never hid an idle one
    assert table.evictions == 0


def test_evictions_by_the_bound_are_counted():
    table: BoundedTable[int, int] = BoundedTable(10)
    for n in range(25):
        table.put(n, n)
    assert len(table) == 10 and table.evictions == 15 and table.expirations == 0


def test_a_bucket_idle_past_the_ttl_is_kept_until_it_has_drained():
    store = MemoryStore(max_keys=1000, idle_ttl=60.0)
    for _ in range(5):
        assert store.evaluate_now([slow_rate("c")], T0)[0].allowed
    assert not store.evaluate_now([slow_rate("c")], T0 + 1)[0].allowed
    buckets = store.tables()["rate_buckets"]
    # Idle for twice the TTL, but 5 units at 100 s each are not paid back yet: kept.
    assert buckets.sweep(T0 + 120, 100) == 0
    outcome = store.evaluate_now([slow_rate("c")], T0 + 120)[0]
    assert outcome.allowed and outcome.remaining == 0  # one unit back, not a fresh burst of five
    # Drained (600 s after the last unit): forgotten, and a forgotten bucket is what it would be.
    assert buckets.sweep(T0 + 120 + 600, 100) == 1
    assert store.evaluate_now([slow_rate("c")], T0 + 720)[0].remaining == 4


def test_a_throttled_rate_counts_as_the_slowest_seen_so_its_buckets_wait_for_it():
    store = MemoryStore(max_keys=1000, idle_ttl=60.0)
    store.evaluate_now([slow_rate("throttled", interval=1000.0)], T0)
    for _ in range(5):
        store.evaluate_now([slow_rate("fast", interval=1.0)], T0)
    buckets = store.tables()["rate_buckets"]
    # "fast" drained at its own rate after 5 s, but a throttle could slow its next check down
    # to the slowest rate seen: it stays until drained at that one too (5 units, 5,000 s).
    assert buckets.sweep(T0 + 3600, 100) == 1 and list(buckets) == ["fast"]
    assert buckets.sweep(T0 + 4999, 100) == 0
    assert buckets.sweep(T0 + 5000, 100) == 1


def test_quota_counts_outlive_idleness_and_go_when_their_period_ends():
    store = MemoryStore(max_keys=1000, idle_ttl=60.0)
    end = T0 + 86400
    quota = Check(QUOTA, "q", False, cost=1.0, limit=10.0, expires_at=end)
    for _ in range(10):
        store.evaluate_now([quota], T0)
    counts = store.tables()["quota_counts"]
    assert counts.sweep(T0 + 7200, 100) == 0
    assert not store.evaluate_now([quota], T0 + 7200)[0].allowed  # idle for hours, still used up
    assert counts.sweep(end, 100) == 1


@pytest.mark.parametrize("limit", [SHARD_ENTRIES, 100_000])  # one shard, and many
def test_a_table_swept_nearly_empty_gives_back_its_hash_table_and_keeps_its_order(limit: int):
    table: BoundedTable[str, float] = BoundedTable(limit, lambda until, now: until <= now)
    for n in range(4_000):
        table.put(f"k{n}", T0 + (6000 if n % 1000 == 0 else 60))
    full = sys.getsizeof(table)
    while table.sweep(T0 + 60, 500):
        pass
    kept = ["k0", "k1000", "k2000", "k3000"]
    # One shard keeps the global order; many keep each shard's.
    assert (list(table) if limit == SHARD_ENTRIES else sorted(table)) == kept
    assert sys.getsizeof(table) * 20 < full  # a dict keeps the table of its largest size until rebuilt
    table.put("k1", T0)
    assert "k1" in table and table.sweep(T0 + 6000, 500) == 5 and len(table) == 0


def test_token_cache_sweeps_its_segments_small_again_once_tokens_expired():
    cache = TokenCache(50_000)
    for n in range(20_000):
        cache.put(f"t{n}", identity("x", T0 + 60), T0 + 60)
        if n % 2:
            assert cache.get(f"t{n}", T0) is not None  # seen twice: protected
    cache.put("long", identity("y", T0 + 6000), T0 + 6000)
    full = sys.getsizeof(cache)
    while cache.sweep(T0 + 60, 500):
        pass
    assert len(cache) == 1 and cache.get("long", T0 + 60).customer == "y"
    assert sys.getsizeof(cache) * 50 < full


async def test_usage_counters_of_idle_customers_are_packed_and_still_add_up():
    store = MemoryStore()
    counters = store.tables()["usage_counters"]
    month = T0 + 40 * 86400
    await store.add_counters("u", {f"c{n}": {"01:requests": 1, "01:upstream_seconds": 0.25} for n in range(1000)}, month)
    await store.add_counters("u", {"c0": {"01:requests": 2}}, month)
    expected = {f"c{n}": {"01:requests": 1.0, "01:upstream_seconds": 0.25} for n in range(1000)}
    expected["c0"]["01:requests"] = 3.0
    assert counters.sweep(T0, 300) == 0 and len(counters) == 1000  # written before any sweep: from now
    await store.add_counters("u", {"c1": {"01:requests": 1}}, month)  # written again: waits longer
    expected["c1"]["01:requests"] = 2.0
    assert counters.sweep(T0 + PACK_AFTER - 1, 300) == 0
    assert [counters.sweep(T0 + PACK_AFTER, 300) for _ in range(4)] == [300, 300, 300, 99]
    assert len(counters) == 1 and counters.expirations == 999
    assert await store.read_counters("u") == expected
    assert counters.sweep(T0 + PACK_AFTER, 300) == 1 and len(counters) == 0  # c1: written at T0 too
    # Back after being packed: a new record of what it adds, summed with the packed one.
    await store.add_counters("u", {"c0": {"01:requests": 1, "02:requests": 4}}, month)
    expected["c0"] |= {"01:requests": 4.0, "02:requests": 4.0}
    assert await store.read_counters("u") == expected
    assert counters.sweep(T0 + 2 * PACK_AFTER - 1, 300) == 0  # written at the sweep of T0 + PACK_AFTER
    assert counters.sweep(T0 + 2 * PACK_AFTER, 300) == 1 and len(counters) == 0
    assert await store.read_counters("u") == expected
    assert await store.read_counters("other") == {}


def test_a_customer_packed_again_and_again_reads_as_one_and_its_records_are_merged():
    counters = CounterSet(T0 + 86400)
    for day in range(1, 6):
        at = T0 + day * PACK_AFTER
        counters.add({"acme": {f"{day:02}:requests": 1.0, "total": 0.1}}, at)
        assert counters.pack(at + PACK_AFTER - 1, 100) == 0 and counters.pack(at + PACK_AFTER, 100) == 1
    once = counters.read()
    assert once == {"acme": {"01:requests": 1.0, "02:requests": 1.0, "03:requests": 1.0, "04:requests": 1.0,
                             "05:requests": 1.0, "total": 0.1 + 0.1 + 0.1 + 0.1 + 0.1}}
    assert counters.read() == once  # the merged pages read the same


def test_customers_that_share_their_first_fields_keep_their_own_later_ones_in_the_order_written():
    counters = CounterSet(T0 + 40 * 86400)
    day = {"01:requests": 1, "01:bytes_in": 100}
    counters.add({"a": dict(day), "b": dict(day), "c": dict(day)}, None)
    counters.add({"a": {"02:requests": 2, "01:requests": 1}, "b": {"01:rejected:rate": 1}}, None)
    counters.add({"a": {"02:requests": 0.5}, "c": {"02:requests": 7}}, None)
    read = counters.read()
    assert read == {"a": {"01:requests": 2.0, "01:bytes_in": 100.0, "02:requests": 2.5},
                    "b": {"01:requests": 1.0, "01:bytes_in": 100.0, "01:rejected:rate": 1.0},
                    "c": {"01:requests": 1.0, "01:bytes_in": 100.0, "02:requests": 7.0}}
    assert [list(fields) for fields in read.values()] == [
        ["01:requests", "01:bytes_in", "02:requests"], ["01:requests", "01:bytes_in", "01:rejected:rate"],
        ["01:requests", "01:bytes_in", "02:requests"]]


def test_token_cache_keys_by_digest_and_sweeps_expired_tokens():
    cache = TokenCache(100)
    cache.put("token-a", identity("a", T0 + 60), T0 + 60)
    cache.put("token-b", identity("b", T0 + 6000), T0 + 6000)
    assert cache.get("token-a", T0) is not None and cache.get("token-b", T0) is not None
    assert cache.get("token-c", T0) is None
    assert cache.sweep(T0 + 30, 10) == 0
    assert cache.sweep(T0 + 60, 10) == 1 and len(cache) == 1 and cache.expirations == 1
    assert cache.get("token-b", T0 + 60).customer == "b"
    for n in range(200):
        cache.put(f"t{n}", identity("x", T0 + 6000), T0 + 6000)
    assert len(cache) == 100 and cache.evictions == 101


async def test_sightings_answer_the_same_with_one_member_or_many_and_are_swept_after_their_window():
    store = MemorySightings(max_keys=1000)
    await store.exchange([Sighting("k", "m1", T0, 60.0, 8)], [])
    answers = await store.exchange([], [Query("k", T0 - 1), Query("k", T0 + 1)])
    assert answers == {Query("k", T0 - 1): {"m1": T0}, Query("k", T0 + 1): {}}
    await store.exchange([Sighting("k", "m1", T0 + 5, 60.0, 8), Sighting("k", "m2", T0 + 10, 60.0, 8)], [])
    assert (await store.exchange([], [Query("k", T0)]))[Query("k", T0)] == {"m1": T0 + 5, "m2": T0 + 10}
    for n in range(3, 12):  # past the cap of 8, the least recently seen go
        await store.exchange([Sighting("k", f"m{n}", T0 + 10 + n, 60.0, 8)], [])
    assert len((await store.exchange([], [Query("k", T0)]))[Query("k", T0)]) == 8
    await store.exchange([Sighting("short", "m", T0, 10.0, 8)], [])
    assert store.table.sweep(T0 + 30, 10) == 1  # "short" left its window; "k" has not
    assert store.table.sweep(T0 + 10 + 11 + 60, 10) == 1
    assert len(store) == 0


def test_the_sweep_ticks_through_every_table_and_metrics_show_fill_evictions_and_expirations():
    clock = ManualClock()
    store = MemoryStore(max_keys=1000, idle_ttl=60.0)
    for n in range(1500):  # 500 evictions
        store.evaluate_now([slow_rate(f"c{n}", interval=1.0)], clock.time())
    tables = Tables()
    for name, table in store.tables().items():
        tables.add(name, table, clock.time)
    metrics = Metrics()
    metrics.watch_tables(tables)
    sweeper = Sweeper(tables, budget=100, interval=0.1, full_pass=1.0)
    assert sweeper.tick() == 0  # nothing idle yet
    clock.advance(61)
    ticks = 0
    while store.tables()["rate_buckets"]:
        assert sweeper.tick() <= 100  # never more than the budget per table and tick
        ticks += 1
    assert ticks <= 1000 // 64 + 1  # a pass paced over the ticks, at least 64 entries each
    text = metrics.render().decode()
    assert _sample(text, 'fairgate_table_entries{table="rate_buckets"}') == 0
    assert _sample(text, 'fairgate_table_limit{table="rate_buckets"}') == 1000
    assert _sample(text, 'fairgate_table_evictions_total{table="rate_buckets"}') == 500
    assert _sample(text, 'fairgate_table_expirations_total{table="rate_buckets"}') == 1000


async def test_a_gateway_bounds_its_limit_templates_and_sweeps_idle_customers(start_gateway, upstream, client):
    clock = ManualClock()
    plans = {"standard": {"limits": [{"name": "sustained", "kind": "rate", "rate": "10/s", "burst": 10}]}}
    config = limits_config(upstream, plans, max_templates=100)
    gateway = await start_gateway(config, clock=clock)
    for n in range(150):
        async with client.get(f"{gateway.url}/echo", headers=bearer(hs_token(clock, org_id=f"c{n}"))) as response:
            assert response.status == 200
    text = await _metrics(client, gateway.admin_url)
    assert _sample(text, 'fairgate_table_entries{table="limit_templates"}') == 100
    assert _sample(text, 'fairgate_table_evictions_total{table="limit_templates"}') == 50
    assert _sample(text, 'fairgate_table_entries{table="rate_buckets"}') == 150
    assert _sample(text, 'fairgate_table_entries{table="token_cache"}') == 150
    clock.advance(3601)  # past the idle TTL, every token's expiry and the templates' lifetime
    while gateway.server.sweeper.tick():
        pass
    text = await _metrics(client, gateway.admin_url)
    for table in ("limit_templates", "rate_buckets", "token_cache"):
        assert _sample(text, f'fairgate_table_entries{{table="{table}"}}') == 0, table
    # A customer back after the sweep gets what its drained bucket held: a full burst, no more.
    token = hs_token(clock, org_id="c0")
    statuses = []
    for _ in range(11):
        async with client.get(f"{gateway.url}/echo", headers=bearer(token)) as response:
            statuses.append(response.status)
    assert statuses == [200] * 10 + [429]


@pytest.mark.parametrize(("state", "bound"), [({}, 6 * 500), ({"max_sighting_keys": 1000}, 1000)])
async def test_the_sightings_hold_every_tracked_identitys_keys_unless_set(start_gateway, upstream, client, state,
                                                                           bound):
    """A smaller bound than the tracks' would forget the devices and agents of logins still
    tracked, so unset it follows detection.max_tracked."""
    config = limits_config(upstream, {"standard": {"limits": []}})
    config["detection"] = {"max_tracked": 500}
    config["state"] = {**config.get("state", {}), **state}
    gateway = await start_gateway(config)
    text = await _metrics(client, gateway.admin_url)
    assert _sample(text, 'fairgate_table_limit{table="detection_tracks"}') == 500
    assert _sample(text, 'fairgate_table_limit{table="sightings"}') == bound


async def _metrics(client, admin_url: str) -> str:
    async with client.get(f"{admin_url}/metrics") as response:
        return await response.text()


def _sample(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{series} not in /metrics"
    return float(match.group(1))


def test_standings_forget_ended_decisions_a_week_later_and_never_evict_one_in_force():
    from gateway.enforce.ladder import OK, SUSPENDED, Standing
    from gateway.enforce.standings import Standings

    standings = Standings()
    standings.latest_table.limit = 100
    suspended = Standing("customer:bad", SUSPENDED, T0, T0 + 3600, "test")
    standings.apply(suspended)
    for n in range(300):  # past the bound of latest decisions
        standings.apply(Standing(f"customer:c{n}", OK, T0 + 1, T0 + 60, "test"))
    assert len(standings.latest_table) == 100 and standings.latest_table.evictions == 201
    assert standings.in_force("customer:bad", T0 + 10) == suspended  # still suspended
    while standings.latest_table.sweep(T0 + 7 * 86400, 100) or standings.active_table.sweep(T0 + 7 * 86400, 100):
        pass
    assert len(standings.latest_table) == 100  # ended, but not a week ago yet
    assert not standings  # the suspension ended: nothing in force
    assert standings.latest_table.sweep(T0 + 60 + 7 * 86400, 100) == 100

"""One suite, every store: memory and Redis decide the same way, to the unit and the second."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import socket

import pytest

from gateway.config.limits import StateSettings
from gateway.state.memory import MemoryStore
from gateway.state.redis_store import RedisStore, connect
from gateway.state.sightings import Query, Sighting
from gateway.state.store import CONCURRENCY, QUOTA, RATE, Check, StoreUnavailable

T0 = 1_800_000_000.0


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryStore()
        return
    redis_url = request.getfixturevalue("redis_url")
    settings = StateSettings(url=redis_url, timeout="1s", key_prefix=request.getfixturevalue("key_prefix"))
    client, cluster = connect(settings)
    store = RedisStore(client, settings, cluster=cluster, use_redis_time=False)
    yield store
    await store.close()


@pytest.fixture
def key(request):
    prefix = request.getfixturevalue("key_prefix") if "redis" in request.node.callspec.id else "mem"
    tag = secrets.token_hex(4)

    def make(name: str) -> str:
        return f"{prefix}:{{c:{tag}}}:{name}"

    return make


def rate(key: str, per_second: float = 1.0, burst: int = 5, cost: float = 1, max_delay: float = 0.0,
         shadow: bool = False) -> Check:
    return Check(RATE, key, shadow, interval=1 / per_second, burst=burst, cost=cost, max_delay=max_delay)


async def hits(store, checks_factory, now: float, count: int) -> list[bool]:
    results = []
    for _ in range(count):
        outcomes = await store.evaluate("t", checks_factory(), now)
        results.append(all(outcome.allowed for outcome in outcomes))
    return results


async def test_burst_then_one_per_second(store, key):
    k = key("rate")
    assert await hits(store, lambda: [rate(k)], T0, 7) == [True] * 5 + [False] * 2
    assert await hits(store, lambda: [rate(k)], T0 + 0.999, 1) == [False]
    assert await hits(store, lambda: [rate(k)], T0 + 1.0, 2) == [True, False]
    assert await hits(store, lambda: [rate(k)], T0 + 3.0, 3) == [True, True, False]


async def test_requests_arriving_together_are_decided_in_order(store, key):
    # On Redis they share one script call; each is still decided on its own, all or nothing.
    a, b, quota_key = key("a"), key("b"), key("quota")

    def both() -> list[Check]:
        return [rate(b, burst=3), Check(QUOTA, quota_key, limit=2, cost=1, expires_at=T0 + 60)]

    calls = [store.evaluate("t", [rate(a)], T0) if i % 2 == 0 else store.evaluate("t", both(), T0)
             for i in range(12)]
    answers = [all(o.allowed for o in outcomes) for outcomes in await asyncio.gather(*calls)]
    assert answers[0::2] == [True] * 5 + [False]
    # The quota (2) rejects the third request of b, so that request takes no rate unit either.
    assert answers[1::2] == [True, True, False, False, False, False]
    remaining = (await store.evaluate("t", [rate(b, burst=3)], T0))[0]
    assert (remaining.allowed, remaining.remaining) == (True, 0)


async def test_a_bucket_means_the_same_at_any_rate(store, key):
    # What was taken stays taken when the rate changes, and drains at the rate in force.
    k = key("rate")
    assert await hits(store, lambda: [rate(k, burst=10)], T0, 10) == [True] * 10
    assert await hits(store, lambda: [rate(k, per_second=0.5, burst=10)], T0, 1) == [False]  # halved: no release
    assert await hits(store, lambda: [rate(k, per_second=0.5, burst=10)], T0 + 2, 2) == [True, False]
    assert await hits(store, lambda: [rate(k, per_second=10, burst=10)], T0 + 2.5, 6) == [True] * 5 + [False]


async def test_retry_after_and_headers_numbers(store, key):
    k = key("rate")
    first = (await store.evaluate("t", [rate(k)], T0))[0]
    assert (first.allowed, first.remaining, first.reset) == (True, 4, pytest.approx(1.0))
    for _ in range(4):
        await store.evaluate("t", [rate(k)], T0)
    rejected = (await store.evaluate("t", [rate(k)], T0 + 0.25))[0]
    assert not rejected.allowed
    assert rejected.retry_after == pytest.approx(0.75)
    assert rejected.remaining == 0
    assert rejected.reset == pytest.approx(4.75)


async def test_fractional_intervals_count_whole_units_at_real_epochs(store, key):
    k = key("rate")
    now = 1_795_295_220.526829  # a real wall-clock time: floats there are coarse
    outcomes = [(await store.evaluate("t", [rate(k, per_second=5, burst=50)], now))[0] for _ in range(3)]
    assert [o.remaining for o in outcomes] == [49, 48, 47]
    assert all(o.allowed for o in outcomes)


async def test_route_cost_takes_several_units(store, key):
    k = key("rate")
    assert await hits(store, lambda: [rate(k, burst=10, cost=4)], T0, 3) == [True, True, False]
    assert await hits(store, lambda: [rate(k, burst=10, cost=4)], T0 + 2, 1) == [True]


async def test_rejected_requests_consume_nothing(store, key):
    bucket, quota = key("rate"), key("quota")
    checks = lambda: [rate(bucket, burst=1), Check(QUOTA, quota, limit=10, cost=1, expires_at=T0 + 86400)]  # noqa: E731
    assert await hits(store, checks, T0, 3) == [True, False, False]
    outcomes = await store.evaluate("t", [Check(QUOTA, quota, limit=10, cost=1, expires_at=T0 + 86400)], T0)
    assert outcomes[0].remaining == 8  # only the first request counted against the quota


async def test_shadow_limits_never_block_and_never_consume(store, key):
    enforced, shadow = key("enforced"), key("shadow")
    checks = lambda: [rate(enforced, burst=10), rate(shadow, burst=2, shadow=True)]  # noqa: E731
    outcomes = [await store.evaluate("t", checks(), T0) for _ in range(4)]
    assert [o[1].allowed for o in outcomes] == [True, True, False, False]
    assert all(o[0].allowed for o in outcomes)
    assert outcomes[3][0].remaining == 6


async def test_delay_mode_schedules_instead_of_rejecting(store, key):
    k = key("rate")
    checks = lambda: [rate(k, burst=1, max_delay=2.0)]  # noqa: E731
    delays = [(await store.evaluate("t", checks(), T0))[0] for _ in range(4)]
    assert [(o.allowed, round(o.delay, 6)) for o in delays] == [(True, 0.0), (True, 1.0), (True, 2.0), (False, 0.0)]


async def test_concurrency_slots_and_release(store, key):
    k = key("conc")

    def slot(token: str) -> list[Check]:
        return [Check(CONCURRENCY, k, max=2, token=token, lease=600)]

    assert [o[0].allowed for o in [await store.evaluate("t", slot(t), T0) for t in "abc"]] == [True, True, False]
    await store.release("t", [(k, "a")])
    assert (await store.evaluate("t", slot("d"), T0))[0].allowed
    assert not (await store.evaluate("t", slot("e"), T0))[0].allowed


def test_a_requests_copy_of_a_shared_check_keeps_every_other_field():
    """Templates share their checks; a request's concurrency slot is a copy with its own token."""
    check = Check(CONCURRENCY, "k", True, 2.0, 3, 4.0, 5.0, 6, "old", 7.0, 8.0, True, 9.0, (b"a", b"b"))
    # Check.with_token spells out every field: one added to Check must be added there too.
    assert len(dataclasses.fields(Check)) == 14
    assert check.with_token("r1") == dataclasses.replace(check, token="r1", encoded=None)


async def test_quota_reject_and_flag(store, key):
    hard, soft = key("hard"), key("soft")
    end = T0 + 3600
    assert await hits(store, lambda: [Check(QUOTA, hard, limit=3, cost=1, expires_at=end)], T0, 4) == [True] * 3 + [False]
    rejected = (await store.evaluate("t", [Check(QUOTA, hard, limit=3, cost=1, expires_at=end)], T0))[0]
    assert rejected.retry_after == pytest.approx(3600)
    flagged = [(await store.evaluate("t", [Check(QUOTA, soft, limit=2, cost=1, flag_only=True, expires_at=end)], T0))[0]
               for _ in range(3)]
    assert [(o.allowed, o.over) for o in flagged] == [(True, False), (True, False), (True, True)]


async def test_measured_usage_counts_against_a_quota(store, key):
    k = key("bytes")
    end = T0 + 3600
    check = lambda: [Check(QUOTA, k, limit=1000, cost=0, expires_at=end)]  # noqa: E731
    assert (await store.evaluate("t", check(), T0))[0].allowed
    await store.add_usage("t", [(k, 600.0, end)])
    assert (await store.evaluate("t", check(), T0))[0].remaining == 400
    await store.add_usage("t", [(k, 400.0, end)])
    assert not (await store.evaluate("t", check(), T0))[0].allowed


async def test_state_expires_with_what_it_describes(store, key):
    k = key("rate")
    await hits(store, lambda: [rate(k, burst=2)], T0, 2)
    assert await hits(store, lambda: [rate(k, burst=2)], T0 + 10, 2) == [True, True]


def shared_store(store) -> bool:
    return isinstance(store, RedisStore)


async def test_counter_sets_add_up_under_their_index(store, key):
    index = key("usage:2027-01")
    await store.add_counters(index, {"acme": {"requests": 2, "bytes": 100.5}, "globex": {"requests": 1}}, T0 + 86400)
    await store.add_counters(index, {"acme": {"requests": 3}}, T0 + 86400)
    assert await store.read_counters(index) == {"acme": {"requests": 5.0, "bytes": 100.5},
                                                "globex": {"requests": 1.0}}
    assert await store.read_counters(key("usage:2027-02")) == {}


async def test_shared_entries_reach_the_fleet_until_they_expire_or_are_withdrawn(store, key):
    topic = key("sanctions")
    await store.share(topic, {"key": "user:acme/ann", "until": T0 + 60}, T0 + 60)
    await store.share(topic, {"key": "user:acme/bob", "until": T0 + 10}, T0 + 10)
    if not shared_store(store):
        assert await store.shared(topic, T0) is None  # one process: nothing to share with
        await store.unshare(topic, lambda entry: True)
        return
    entries = await store.shared(topic, T0)
    assert sorted(entry["key"] for entry in entries) == ["user:acme/ann", "user:acme/bob"]
    assert [entry["key"] for entry in await store.shared(topic, T0 + 30)] == ["user:acme/ann"]  # bob's expired
    await store.unshare(topic, lambda entry: entry["key"] == "user:acme/ann")
    assert await store.shared(topic, T0 + 30) == []


async def test_a_shared_entry_wakes_every_watcher(store, key):
    woken = asyncio.Event()
    watching = asyncio.create_task(store.watch_shared(woken.set))
    try:
        if not shared_store(store):
            await watching  # one process: returns at once, nobody else to hear from
            return
        await asyncio.wait_for(woken.wait(), 5)  # a first call once subscribed
        woken.clear()
        await store.share(key("grants"), {"id": "g1"}, T0 + 60)
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def test_events_append_to_a_stream_the_fleet_reads(store, key, request):
    stream = key("audit")
    appended = await store.append_events(stream, [{"event": "a", "n": 1}, {"event": "b", "n": 2}], 1000)
    assert appended is shared_store(store)  # memory has no streams: the trail keeps its own file
    if not appended:
        return
    import redis.asyncio

    reader = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        events = [fields[b"event"] for _, fields in await reader.xrange(stream)]
    finally:
        await reader.aclose()
    assert [json.loads(event)["event"] for event in events] == ["a", "b"]


async def test_sightings_answer_each_query_and_sightings_live_in_the_store(store, key):
    sightings = store.sightings()
    paths, agents = key("paths"), key("agents")
    seen = [Sighting(paths, "/a", T0, 60.0, 8), Sighting(paths, "/b", T0 + 1, 60.0, 8),
            Sighting(agents, "curl", T0, 3600.0, 8)]
    recent, older, other = Query(paths, T0 + 1), Query(paths, T0 - 60), Query(agents, T0)
    answers = await sightings.exchange(seen, [recent, older, other])
    assert answers == {recent: {"/b": T0 + 1}, older: {"/a": T0, "/b": T0 + 1}, other: {"curl": T0}}


async def test_sightings_keep_the_latest_members_to_their_cap_and_every_query_sees_every_write(store, key):
    sightings = store.sightings()
    capped, windowed = key("capped"), key("windowed")
    # More keys than one script call takes (redis_sightings.MAX_KEYS), so the writes and the
    # queries span several calls: every query still sees every sighting of the exchange.
    many = [key(f"many-{n}") for n in range(1_200)]
    seen = [Sighting(capped, f"m{n}", T0 + n, 3600.0, 3) for n in range(6)]
    seen += [Sighting(windowed, "old", T0, 10.0, 8), Sighting(windowed, "new", T0 + 30, 10.0, 8)]
    seen += [Sighting(k, "a", T0 + 1, 60.0, 8) for k in many]
    # The same member twice in one exchange keeps its latest time, whatever the order.
    seen += [Sighting(windowed, "twice", T0 + 29, 10.0, 8), Sighting(windowed, "twice", T0 + 25, 10.0, 8)]
    seen.append(Sighting(windowed, "/tickets/é", T0 + 28, 10.0, 8))  # more bytes than characters
    queries = [Query(capped, T0 - 1), Query(windowed, T0 + 20)] + [Query(k, T0) for k in many]
    answers = await sightings.exchange(seen, queries)
    assert answers[queries[0]] == {"m3": T0 + 3, "m4": T0 + 4, "m5": T0 + 5}
    assert answers[queries[1]] == {"new": T0 + 30, "twice": T0 + 29, "/tickets/é": T0 + 28}
    assert all(answers[query] == {"a": T0 + 1} for query in queries[2:])


async def test_sightings_answer_queries_of_keys_written_earlier_or_asked_twice(store, key):
    sightings = store.sightings()
    earlier, now = key("earlier"), key("now")
    await sightings.exchange([Sighting(earlier, "a", T0, 60.0, 8)], [])
    # `earlier` is only asked, `now` written and asked twice, in the one exchange.
    queries = [Query(now, T0 + 2), Query(earlier, T0 - 1), Query(now, T0), Query(key("never"), T0)]
    answers = await sightings.exchange([Sighting(now, "x", T0 + 1, 60.0, 8), Sighting(now, "y", T0 + 2, 60.0, 8)],
                                       queries)
    assert answers == {queries[0]: {"y": T0 + 2}, queries[1]: {"a": T0},
                       queries[2]: {"x": T0 + 1, "y": T0 + 2}, queries[3]: {}}


async def test_fleet_calls_to_a_redis_that_never_answers_are_bounded_and_open_the_circuit():
    # A listener that accepts connections and never answers: the calls wait at most the
    # store's timeout, raise the store's own error, and open the circuit for the next ones.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    host, port = silent.getsockname()
    settings = StateSettings(url=f"redis://{host}:{port}/0", timeout="50ms", breaker_failures=2,
                             breaker_cooldown="1h")
    client, cluster = connect(settings)
    store = RedisStore(client, settings, cluster=cluster, use_redis_time=False)
    try:
        with pytest.raises(StoreUnavailable):
            await store.share("revocations", {"jti": "x"}, T0 + 60)
        with pytest.raises(StoreUnavailable):
            await store.shared("revocations", T0)
        assert store.breaker.state == "open"
        with pytest.raises(StoreUnavailable, match="circuit open"):
            await store.unshare("grants", lambda entry: True)
    finally:
        await store.close()
        silent.close()


def test_memory_store_is_bounded():
    store = MemoryStore(max_keys=1000)
    for n in range(50_000):
        store.evaluate_now([rate(f"k{n}", burst=5)], T0)
    assert len(store) == 1000


async def test_a_large_memory_exchange_lets_requests_run_meanwhile():
    # A detection batch of tens of thousands of sightings must not hold the event loop in one
    # piece: other tasks (requests) run between its steps, and every sighting is still answered.
    from gateway.state.sightings import MemorySightings

    sightings = MemorySightings()
    seen = [Sighting(f"k{n}", "m", 1.0, 60.0, 4) for n in range(50_000)]
    turns = 0

    async def request_loop() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(request_loop())
    await asyncio.sleep(0)
    before = turns
    answers = await sightings.exchange(seen, [Query(f"k{n}", 0.0) for n in range(50_000)])
    other.cancel()
    assert turns > before + 1  # the loop turned while the exchange ran
    assert all(answer == {"m": 1.0} for answer in answers.values()) and len(answers) == 50_000

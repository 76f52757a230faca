"""Every per-key table in this process stays at its bound and forgets the least recently written
first, however many keys pass through it.

Speed is the benchmark's business (bench/run.py, many customers); these tests drive the tables
through hundreds of thousands of evictions and check what is kept, so a table that grows, or
evicts the wrong end, fails here.
"""

from __future__ import annotations

import sys

from gateway.auth.failed_logins import FailedLogins
from gateway.config.auth import FailedLoginLimit
from gateway.state.bounded import SHARD_ENTRIES, BoundedTable, shards_for
from gateway.state.memory import MemoryStore
from gateway.state.sightings import MemorySightings, Query, Sighting
from gateway.state.store import RATE, Check
from tests.support.clock import ManualClock

T0 = 1_800_000_000.0


def rate(key: str) -> Check:
    return Check(RATE, key, False, interval=1.0, burst=5, cost=1, max_delay=0.0)


def test_a_full_table_evicts_oldest_first_through_many_evictions():
    table: BoundedTable[int, int] = BoundedTable(SHARD_ENTRIES)  # one shard: exact global order
    for n in range(400_000):
        table.put(n, n)
        assert len(table) <= SHARD_ENTRIES
    assert list(table) == list(range(400_000 - SHARD_ENTRIES, 400_000))  # exactly the newest, in write order
    oldest = 400_000 - SHARD_ENTRIES
    table.put(oldest, -1)  # rewriting an entry makes it the newest
    table.put(400_000, 0)
    assert oldest in table and oldest + 1 not in table
    assert next(reversed(table)) == 400_000 and table[oldest] == -1
    assert table.evictions == 400_000 + 1 - SHARD_ENTRIES


def test_a_large_table_keeps_every_entry_up_to_its_limit_and_then_each_shards_newest():
    table: BoundedTable[str, int] = BoundedTable(200_000)  # many shards
    for n in range(200_000):
        table.put(f"k{n}", n)
    assert len(table) == 200_000 and table.evictions == 0
    assert all(table[f"k{n}"] == n for n in range(200_000))
    for n in range(200_000, 400_000):
        table.put(f"k{n}", n)
        assert len(table) <= 200_000
    assert len(table) == 200_000 and table.evictions == 200_000
    # The oldest of each shard went: the newest half is all there, and nearly all that is kept is
    # from the newest 200k (old ones left only in shards the newest wrote less into).
    assert all(f"k{n}" in table for n in range(300_000, 400_000))
    assert sum(value >= 200_000 for value in table.values()) > 0.97 * 200_000
    assert sorted(table) == sorted(f"k{value}" for value in table.values())


def test_a_large_table_written_in_one_shard_still_holds_its_limit_then_evens_out():
    table: BoundedTable[int, int] = BoundedTable(100_000)
    shards = shards_for(100_000)
    assert shards > 1
    for n in range(150_000):  # every key in the same shard
        table.put(n * shards, n)
    assert len(table) == 100_000 and table.evictions == 50_000
    assert (149_999 * shards) in table and (49_999 * shards) not in table
    # Writes to the other shards take the room of the fullest one's oldest entries.
    for n in range(100_000):
        table.put(n * shards + 1, n)
        assert len(table) <= 100_000
    assert len(table) == 100_000 and table.evictions == 150_000
    assert all((n * shards + 1) in table for n in range(100_000 - 100_000 // shards, 100_000))


def test_lowering_the_limit_of_a_large_table_shrinks_it_at_the_next_write():
    table: BoundedTable[int, int] = BoundedTable(200_000)
    for n in range(200_000):
        table.put(n, n)
    table.limit = 150_000  # the same shards, each down to its share
    table.put(200_000, 0)
    assert len(table) == 150_000 and table.evictions == 50_001
    assert all(n in table for n in range(100_000, 200_001))
    table.limit = 20_000  # fewer shards: spread again
    assert len(table) == 150_000
    table.put(200_001, 0)
    assert len(table) == 20_000 and table.evictions == 180_002
    assert all(n in table for n in range(190_000, 200_002))
    table.limit = 300_000  # raised: nothing goes
    for n in range(300_000):
        table.put(-n - 1, n)
    assert len(table) == 300_000 and table.evictions == 180_002 + 20_000


def test_lowering_the_limit_shrinks_the_table_from_the_oldest_end():
    table: BoundedTable[str, int] = BoundedTable(10)
    for n in range(10):
        table.put(f"k{n}", n)
    table.limit = 3
    table.put("new", 0)
    assert list(table) == ["k8", "k9", "new"]


def test_memory_store_forgets_the_least_recently_written_buckets_first():
    store = MemoryStore(max_keys=200_000)
    for n in range(400_000):  # 200,000 evictions from a full table
        store.evaluate_now([rate(f"c{n}")], T0)
    assert len(store) == 200_000
    # The newest customer's bucket is remembered (one unit used before), the oldest's is not.
    assert store.evaluate_now([rate("c399999")], T0)[0].remaining == 3
    assert store.evaluate_now([rate("c0")], T0)[0].remaining == 4
    assert len(store) == 200_000


async def test_sightings_forget_the_least_recently_written_keys_first():
    store = MemorySightings(max_keys=1000)
    await store.exchange([Sighting("kept", "m", T0, 3600.0, 8)], [])
    for n in range(200_000):
        if n % 500 == 0:  # written again now and then: never the oldest
            await store.exchange([Sighting("kept", "m", T0 + n, 3600.0, 8)], [])
        await store.exchange([Sighting(f"k{n}", "m", T0 + n, 3600.0, 8)], [])
    assert len(store) == 1000
    queries = [Query("kept", 0.0), Query("k199000", 0.0), Query("k199999", 0.0)]
    answers = await store.exchange([], queries)
    kept, oldest, newest = (answers[query] for query in queries)
    assert kept and newest and not oldest


def test_blocked_addresses_are_bounded_and_the_oldest_block_goes_first():
    clock = ManualClock()
    logins = FailedLogins(FailedLoginLimit(max_failures=1, block_for="1h", max_tracked_addresses=100), clock)
    for n in range(10_000):
        assert logins.record_failure(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    assert len(logins._blocked_until) == 100 and len(logins._failures) == 100
    assert logins.blocked_for("10.0.39.15") > 0  # the last one blocked (n = 9999)
    assert logins.blocked_for("10.0.39.14") > 0
    assert logins.blocked_for("10.0.38.155") == 0  # n = 9883: forgotten
    # A reload that lowers the bound applies from the next write.
    logins.settings = FailedLoginLimit(max_failures=1, block_for="1h", max_tracked_addresses=10)
    logins.record_failure("192.0.2.1")
    assert len(logins._blocked_until) == 10
    assert logins.blocked_for("10.0.39.15") > 0 and logins.blocked_for("10.0.39.5") == 0


def test_sweeping_many_passes_keeps_every_live_entry_in_its_turn_and_forgets_the_expired():
    table: BoundedTable[int, float] = BoundedTable(SHARD_ENTRIES, lambda until, now: until <= now)
    for n in range(3_000):
        table.put(n, T0 - 1.0 if n % 3 == 0 else T0 + n)  # every third has expired
    for _ in range(10 * 3_000 // 64):  # about ten passes, 64 entries a step as the sweeper goes
        table.sweep(T0, 64)
    kept = [n for n in range(3_000) if n % 3]
    assert table.expirations == 1_000 and len(table) == len(kept)
    # What a sweep keeps stays where it was written: the oldest is still the first to go.
    assert list(table) == kept
    assert all(table[n] == T0 + n for n in kept)
    table.put(-1, T0 + 1.0)
    assert next(reversed(table)) == -1


def test_a_sweep_pass_over_a_large_table_reaches_every_entry_once():
    looked: list[str] = []

    def expired(until: float, now: float) -> bool:
        looked.append(names[until])
        return until <= now

    table: BoundedTable[str, float] = BoundedTable(200_000, expired)
    names = {T0 - 1.0 - n if n % 3 == 0 else T0 + n: f"k{n}" for n in range(50_000)}
    for until, name in names.items():
        table.put(name, until)
    for _ in range(3):  # three passes of 64-entry steps: each reaches every entry left once
        looked.clear()
        before = sorted(table)
        for start in range(0, len(before), 64):
            table.sweep(T0, min(64, len(before) - start))
        assert sorted(looked) == before
    assert table.expirations == len(range(0, 50_000, 3)) and len(table) == 50_000 - table.expirations


def test_entries_written_or_deleted_while_a_sweep_is_under_way_are_handled_in_the_next_pass():
    table: BoundedTable[int, float] = BoundedTable(SHARD_ENTRIES, lambda until, now: until <= now)
    for n in range(1_000):
        table.put(n, T0 + 1.0)
    table.sweep(T0, 500)  # half way through the pass
    del table[700]  # gone before the sweep reaches it
    table.put(2_000, T0 - 1.0)  # expired, written after the pass began
    table.put(10, T0 - 1.0)  # rewritten: expired now, behind the sweep
    assert table.sweep(T0, 500) == 0  # the rest of the pass: what was there when it began
    assert 2_000 in table and 10 in table
    assert table.sweep(T0, 1_000) == 2 and len(table) == 998
    assert table.expirations == 2


def test_an_emptied_table_keeps_none_of_its_keys_alive():
    for empty in ("deleted", "cleared", "swept"):
        table: BoundedTable[str, float] = BoundedTable(SHARD_ENTRIES, lambda until, now: until <= now)
        keys = [f"customer-{n}" for n in range(1_000)]
        for key in keys:
            table.put(key, T0 - 1.0)
        referrers_before = sys.getrefcount(keys[500])
        table.sweep(T0, 300)  # a pass under way
        if empty == "deleted":
            for key in keys[300:]:
                del table[key]  # the rest go another way (a slot released, a block ended)
        elif empty == "cleared":
            table.clear()
        else:
            while table:
                table.sweep(T0, 300)
        referrers_after = sys.getrefcount(keys[500])  # outside the assert: pytest's rewriting holds its operands
        # Only this test's list refers to the key now: nothing the sweep listed holds it.
        assert not table and referrers_after == referrers_before - 1, empty


def test_keys_deleted_since_the_sweep_listed_them_do_not_slow_it_down():
    table: BoundedTable[int, float] = BoundedTable(SHARD_ENTRIES, lambda until, now: until <= now)
    for n in range(4_000):
        table.put(n, T0 + 1.0)
    table.sweep(T0, 1)  # the shard's turn begins: its 4,000 keys listed
    for n in range(4_000):
        del table[n]  # e.g. concurrency slots released
    table.put(-1, T0 - 1.0)  # one idle entry
    calls = 0
    while -1 in table:
        table.sweep(T0, 64)
        calls += 1
        assert calls <= 4_000 // 64 + 2  # the rest of the list at 64 a call, then the new turn

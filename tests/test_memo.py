"""The memos of work per address, client and path (gateway/state/memo.py): computed once while
in use, bounded with their evictions counted, shown on /metrics, and forgotten once idle on the
gateway's clock, giving their memory back."""

from __future__ import annotations

import tracemalloc

from gateway.metrics import Metrics
from gateway.state.memo import MEMO_IDLE, Memo
from gateway.state.tables import Sweeper, Tables
from tests.support.clock import T0, ManualClock
from tests.support.configs import detection_config
from tests.test_memory_tables import _metrics, _sample

MEMOS = ("memo_networks", "memo_anonymous", "memo_hashes", "memo_templates", "memo_trusted_peers")


class Counted:
    """A pure function that counts its calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, key: int) -> str:
        self.calls.append(key)
        return f"value-{key}"


def sweep_until_quiet(memo: Memo[int, str], now: float) -> int:
    forgotten = 0
    while step := memo.sweep(now, 64):
        forgotten += step
    return forgotten


def test_a_memo_computes_once_while_in_use_and_forgets_what_went_unused():
    compute = Counted()
    memo: Memo[int, str] = Memo(compute, 100, idle=60.0)
    assert [memo[n] for n in (1, 2, 1, 3, 2)] == ["value-1", "value-2", "value-1", "value-3", "value-2"]
    assert compute.calls == [1, 2, 3] and len(memo) == 3
    assert sweep_until_quiet(memo, T0) == 0  # the first sweep starts the generation
    assert sweep_until_quiet(memo, T0 + 59) == 0 and len(memo) == 3
    assert sweep_until_quiet(memo, T0 + 60) == 0  # idle long enough: a turn, nothing forgotten yet
    assert memo[1] == "value-1" and compute.calls == [1, 2, 3]  # used again: kept, not computed again
    assert sweep_until_quiet(memo, T0 + 119) == 0 and len(memo) == 3
    assert sweep_until_quiet(memo, T0 + 120) == 2  # 2 and 3 were not used for 60 s
    assert len(memo) == 1 and memo.expirations == 2 and memo.evictions == 0
    assert memo[2] == "value-2" and compute.calls == [1, 2, 3, 2]  # forgotten: computed again
    assert sweep_until_quiet(memo, T0 + 150) == 0
    assert sweep_until_quiet(memo, T0 + 180) == 1  # 1, not used since T0 + 60
    assert sweep_until_quiet(memo, T0 + 240) == 1 and len(memo) == 0 and memo.expirations == 4


def test_a_memo_not_swept_for_an_idle_period_forgets_what_it_holds_at_once():
    memo: Memo[int, str] = Memo(Counted(), 100, idle=60.0)
    for n in range(3):
        memo[n]
    assert sweep_until_quiet(memo, T0) == 0
    assert sweep_until_quiet(memo, T0 + 1000) == 3 and len(memo) == 0  # the clock jumped past the idle period


def test_a_memo_that_stood_empty_keeps_its_next_entries_for_an_idle_period():
    # The sweeper skips an empty memo, so the last sweep it saw can be long before its next entry.
    memo: Memo[int, str] = Memo(Counted(), 100, idle=60.0)
    memo[1]
    assert [sweep_until_quiet(memo, T0 + t) for t in range(0, 121, 30)] == [0, 0, 0, 0, 1]  # idle: forgotten
    assert len(memo) == 0
    memo[2]  # the next morning, say: no sweep since T0 + 120
    assert [sweep_until_quiet(memo, T0 + 5000 + t) for t in (0, 30, 59)] == [0, 0, 0]
    assert len(memo) == 1 and memo[2] == "value-2"
    assert [sweep_until_quiet(memo, T0 + 5000 + t) for t in (60, 90, 119, 120)] == [0, 0, 0, 1]


def test_a_clock_set_back_starts_the_generation_again():
    memo: Memo[int, str] = Memo(Counted(), 100, idle=60.0)
    memo[1]
    memo.sweep(T0 + 1000, 64)
    assert sweep_until_quiet(memo, T0) == 0 and sweep_until_quiet(memo, T0 + 59) == 0
    assert sweep_until_quiet(memo, T0 + 60) == 0 and len(memo) == 1  # turned
    assert sweep_until_quiet(memo, T0 + 120) == 1 and len(memo) == 0


def test_a_failed_computation_is_not_remembered():
    def parse(key: str) -> int:
        return int(key)

    memo: Memo[str, int] = Memo(parse, 10)
    for _ in range(2):
        try:
            memo["x"]
        except ValueError:
            pass
        else:
            raise AssertionError("no ValueError")
    assert len(memo) == 0 and memo["7"] == 7


def test_the_bound_holds_with_its_evictions_counted_and_shown_on_metrics():
    compute = Counted()
    memo: Memo[int, str] = Memo(compute, 100)
    for n in range(250):
        assert memo[n] == f"value-{n}"
        assert len(memo) <= 100
    assert len(memo) == 100 and memo.evictions == 150
    assert memo[249] == "value-249" and compute.calls.count(249) == 1  # the latest are kept
    tables = Tables()
    tables.add("memo_test", memo, lambda: T0)
    metrics = Metrics()
    metrics.watch_tables(tables)
    text = metrics.render().decode()
    assert _sample(text, 'fairgate_table_entries{table="memo_test"}') == 100
    assert _sample(text, 'fairgate_table_limit{table="memo_test"}') == 100
    assert _sample(text, 'fairgate_table_evictions_total{table="memo_test"}') == 150
    assert _sample(text, 'fairgate_table_expirations_total{table="memo_test"}') == 0


def test_an_idle_memo_gives_its_memory_back_through_the_background_sweep():
    clock = ManualClock()
    memo: Memo[int, str] = Memo(str, 50_000)
    tables = Tables()
    tables.add("memo_test", memo, clock.time)
    sweeper = Sweeper(tables)
    tracemalloc.start()
    try:
        empty = tracemalloc.get_traced_memory()[0]
        for n in range(20_000):
            memo[n]
        full = tracemalloc.get_traced_memory()[0]
        sweeper.tick()  # the generation starts
        clock.advance(MEMO_IDLE)
        while sweeper.tick():  # each tick within its budget, as the running gateway's
            pass
        idle = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(memo) == 0 and memo.expirations == 20_000
    # Entries and both hash tables are gone: what stays is a small fraction of the full memo.
    assert idle - empty < (full - empty) / 50, (empty, full, idle)


async def test_a_gateway_shows_its_memos_and_forgets_them_when_idle(start_gateway, upstream, client):
    clock = ManualClock()
    config = detection_config(upstream)
    config["server"]["trusted_proxies"] = ["127.0.0.1/32"]
    gateway = await start_gateway(config, clock=clock)
    # The process's memos were last swept on an earlier test's clock: catch them up to ours first,
    # or the gateway's own first tick may find them idle (an earlier clock by MEMO_IDLE or more) and
    # forget what our first requests put in them (seen: 11 of 20 networks left).
    while gateway.server.sweeper.tick():
        pass
    for n in range(20):  # anonymous browsers behind the trusted proxy, each on its own page
        headers = {"X-Forwarded-For": f"203.0.113.{n}", "User-Agent": f"Mozilla/5.0 browser-{n}"}
        async with client.get(f"{gateway.url}/echo/portal/page/{n}", headers=headers) as response:
            assert response.status == 200
    await gateway.server.state.detection.drain()
    text = await _metrics(client, gateway.admin_url)
    # The process's memos (networks, anonymous clients) are shared with earlier tests: at least ours.
    assert _sample(text, 'fairgate_table_entries{table="memo_networks"}') >= 20
    assert _sample(text, 'fairgate_table_entries{table="memo_anonymous"}') >= 20
    assert _sample(text, 'fairgate_table_entries{table="memo_templates"}') == 20
    assert _sample(text, 'fairgate_table_entries{table="memo_trusted_peers"}') == 21  # the proxy and each client
    assert _sample(text, 'fairgate_table_entries{table="memo_hashes"}') > 0
    for table in MEMOS:
        assert _sample(text, f'fairgate_table_limit{{table="{table}"}}') > 0, table
    # Idle: the process's memos may last have been swept on another test's clock (later than
    # ours: the first advance only starts their generation again); the next advance finds them
    # not swept for an idle period and forgets what they hold.
    for _ in range(2):
        clock.advance(MEMO_IDLE + 1)
        while gateway.server.sweeper.tick():
            pass
    text = await _metrics(client, gateway.admin_url)
    for table in MEMOS:
        assert _sample(text, f'fairgate_table_entries{{table="{table}"}}') == 0, table
        assert _sample(text, f'fairgate_table_expirations_total{{table="{table}"}}') > 0, table

"""The sweeper's bounds: entries per table and tick, and the loop time of a tick (an injected
timer, so no test depends on how fast this machine is)."""

from __future__ import annotations

import logging

from gateway.state.bounded import BoundedTable
from gateway.state.tables import EVICTIONS_WARN_EVERY, SWEEP_CHUNK, Sweeper, Tables
from tests.support.clock import T0, ManualClock


class SteppingTimer:
    """A perf_counter that moves `step` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def expired_tables(names: list[str], size: int) -> tuple[Tables, dict[str, BoundedTable[int, float]]]:
    tables, made = Tables(), {}
    for name in names:
        table: BoundedTable[int, float] = BoundedTable(10 * size, lambda until, now: until <= now)
        for n in range(size):
            table.put(n, T0)
        tables.add(name, table, lambda: T0 + 1)
        made[name] = table
    return tables, made


def test_a_tick_stops_once_its_time_is_spent_and_the_next_resumes_where_it_stopped():
    tables, made = expired_tables(["a", "b", "c"], 1000)
    # 0.3 ms per read of the clock, 1 ms per tick: the first chunk, then three more.
    sweeper = Sweeper(tables, budget=500, interval=0.1, full_pass=0.1, time_budget=0.001,
                      timer=SteppingTimer(0.0003))
    ticks = 0
    while any(made.values()):
        assert sweeper.tick() <= 4 * SWEEP_CHUNK
        ticks += 1
        assert ticks < 100, {name: len(table) for name, table in made.items()}
    assert ticks >= 3000 // (4 * SWEEP_CHUNK)
    assert all(table.expirations == 1000 for table in made.values())


def test_a_tick_cut_short_still_sweeps_one_chunk():
    tables, _ = expired_tables(["a"], 1000)
    sweeper = Sweeper(tables, budget=500, interval=0.1, full_pass=0.1, time_budget=0.001, timer=SteppingTimer(1.0))
    assert sweeper.tick() == SWEEP_CHUNK


def test_with_time_to_spare_a_tick_sweeps_each_tables_share():
    tables, made = expired_tables(["a", "b"], 1000)
    sweeper = Sweeper(tables, budget=300, interval=0.1, full_pass=0.1, time_budget=1.0, timer=SteppingTimer(0.0))
    assert sweeper.tick() == 600  # 300 of each
    assert [len(table) for table in made.values()] == [700, 700]


def test_a_table_that_evicts_is_named_in_the_log_with_its_setting_at_most_hourly(caplog):
    clock = ManualClock()
    tracks: BoundedTable[int, float] = BoundedTable(100, lambda until, now: until <= now)
    memo: BoundedTable[int, float] = BoundedTable(100)  # a memo: evicts by design, no setting
    tables = Tables()
    tables.add("detection_tracks", tracks, clock.time)
    tables.add("memo_hashes", memo, clock.time)
    sweeper = Sweeper(tables)

    def warned() -> list[tuple[str, int, int]]:
        said = [(r.getMessage(), r.evicted, r.limit) for r in caplog.records if r.levelno == logging.WARNING]
        caplog.clear()
        return said

    said = ("table detection_tracks is full: entries evicted before they went idle; raise detection.max_tracked",
            50, 100)
    for n in range(150):
        tracks.put(n, clock.time() + 7200)
        memo.put(n, clock.time() + 7200)
    with caplog.at_level(logging.WARNING, logger="fairgate.state"):
        sweeper.tick()
        assert warned() == [said]  # at once, the tracks only
        for n in range(150, 200):
            tracks.put(n, clock.time() + 7200)
        clock.advance(EVICTIONS_WARN_EVERY - 1)
        sweeper.tick()
        assert warned() == []  # evicted again within the hour: not said again yet
        clock.advance(1)
        sweeper.tick()
        assert warned() == [said]  # the hour is up: the 50 since
        sweeper.tick()
        assert warned() == []  # nothing evicted since


def test_a_table_a_reload_replaced_is_counted_afresh(caplog):
    clock = ManualClock()
    current: list[BoundedTable[int, float]] = [BoundedTable(100)]
    tables = Tables()
    tables.follow("token_cache", lambda: current[0], clock.time)
    sweeper = Sweeper(tables)
    for n in range(300):
        current[0].put(n, 0.0)
    with caplog.at_level(logging.WARNING, logger="fairgate.state"):
        sweeper.tick()
        current[0] = BoundedTable(100)  # a reload: a new table, its count from 0
        for n in range(150):
            current[0].put(n, 0.0)
        clock.advance(EVICTIONS_WARN_EVERY)
        sweeper.tick()
    assert [(r.getMessage(), r.evicted) for r in caplog.records] == [
        ("table token_cache is full: entries evicted before they went idle; raise auth.token_cache_size", 200),
        ("table token_cache is full: entries evicted before they went idle; raise auth.token_cache_size", 50),
    ]

"""The per-customer tables of one process, by name: what /metrics shows of them (entries,
bound, evictions, expirations) and the sweep that forgets idle entries a little at a time.

Each table is reached through a function, so a table a reload replaces (the token cache lives
in the Runtime) is always the current one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from gateway.metrics import TableCounts

log = logging.getLogger("fairgate.state")


class Swept(TableCounts, Protocol):
    """A table as /metrics reads it, that the sweeper can forget idle entries of."""

    def sweep(self, now: float, budget: int) -> int: ...


class Tables:
    """Named sources of tables; `now` is the clock each table's entries are stamped with."""

    def __init__(self) -> None:
        self._sources: dict[str, tuple[Callable[[], Swept | None], Callable[[], float]]] = {}

    def add(self, name: str, table: Swept, now: Callable[[], float]) -> None:
        self._sources[name] = ((lambda: table), now)

    def follow(self, name: str, source: Callable[[], Swept | None], now: Callable[[], float]) -> None:
        """A table some part replaces (a reload): `source` says which one is current, if any."""
        self._sources[name] = (source, now)

    def counts(self) -> Iterator[tuple[str, Swept]]:
        for name, table, _ in self:
            yield name, table

    def __iter__(self) -> Iterator[tuple[str, Swept, Callable[[], float]]]:
        for name, (source, now) in list(self._sources.items()):
            table = source()
            if table is not None:
                yield name, table, now


# One tick looks at this many entries per table at most (measured: a tick over the bench's 10
# tables at 200k customers, about 330 entries each, took a median of 1.4 ms of CPU on a loaded
# VM), and at least SWEEP_MIN.
SWEEP_BUDGET = 500
SWEEP_MIN = 64
# ... and holds the loop about this long at most: a tick stops once it has taken this much
# (checked every SWEEP_CHUNK entries), and the next one starts at the table it stopped in.
SWEEP_TIME = 0.001
SWEEP_CHUNK = 64
# A tick is due this often; each table is looked at through once per PASS seconds at most.
SWEEP_INTERVAL = 0.1
SWEEP_PASS = 60.0
# A table that evicts is smaller than what it serves (for detection: identities whose history
# is forgotten while still in use); said in the log at most this often per table, for the tables
# whose bound a config key sets (the memos evict by design).
EVICTIONS_WARN_EVERY = 3600.0
CONFIGURED_BOUNDS = {
    "rate_buckets": "state.max_memory_keys", "concurrency_slots": "state.max_memory_keys",
    "quota_counts": "state.max_memory_keys", "sightings": "state.max_sighting_keys",
    "detection_tracks": "detection.max_tracked", "token_cache": "auth.token_cache_size",
    "limit_templates": "limits.max_templates", "failed_logins": "auth.failed_logins.max_tracked_addresses",
    "blocked_addresses": "auth.failed_logins.max_tracked_addresses",
}


class Sweeper:
    """Ticks through every table: per tick at most SWEEP_BUDGET entries each and about
    SWEEP_TIME of the loop in all, paced so a table is looked at through once per SWEEP_PASS
    seconds. Never a full scan at once: the event loop is held for one short tick at a time."""

    def __init__(self, tables: Tables, budget: int = SWEEP_BUDGET, interval: float = SWEEP_INTERVAL,
                 full_pass: float = SWEEP_PASS, observe: Callable[[float], None] | None = None,
                 time_budget: float = SWEEP_TIME, timer: Callable[[], float] = time.perf_counter) -> None:
        self.tables = tables
        self._budget = budget
        self._interval = interval
        self._per_pass = max(1, round(full_pass / interval))  # ticks per pass
        self._observe = observe  # how long each tick held the loop
        self._time_budget = time_budget
        self._timer = timer
        # table -> (entries left in this pass, per tick, still owed from a tick cut short)
        self._passes: dict[str, tuple[int, int, int]] = {}
        self._resume: str | None = None  # the table a tick cut short stopped in
        self._evicted: dict[str, tuple[int, float]] = {}  # table -> evictions when last warned, when

    def tick(self) -> int:
        """One bounded step over every table; how many entries were forgotten."""
        started = self._timer()
        deadline = started + self._time_budget
        forgotten = looked = 0
        tables = list(self.tables)
        for name, table, now in self._in_turn(tables):
            size = len(table)
            if not size:
                continue
            left, per_tick, owed = self._passes.get(name, (0, 0, 0))
            if not owed:
                if left <= 0:  # a new pass, paced by the size it starts with
                    left, per_tick = size, min(self._budget, max(SWEEP_MIN, -(-size // self._per_pass)))
                left, owed = left - per_tick, per_tick
            at = now()
            # The first chunk of a tick always goes: a tick that starts late still makes progress.
            while owed and (not looked or self._timer() < deadline):
                step = min(owed, SWEEP_CHUNK)
                forgotten += table.sweep(at, step)
                owed -= step
                looked += step
            self._passes[name] = (left, per_tick, owed)
            if owed:  # out of time: the next tick starts here
                self._resume = name
                break
        else:
            self._resume = None
        self._warn_of_evictions(tables)
        if self._observe is not None:
            self._observe(self._timer() - started)
        return forgotten

    def _warn_of_evictions(self, tables: list[tuple[str, Swept, Callable[[], float]]]) -> None:
        for name, table, now in tables:
            key = CONFIGURED_BOUNDS.get(name.removeprefix("local_"))  # the Redis store's fallback: the same keys
            if key is None:
                continue
            evictions = table.evictions
            warned, at = self._evicted.get(name, (0, float("-inf")))
            if evictions < warned:  # a reload replaced the table (token cache, templates): counted afresh
                warned = 0
            if evictions > warned and (moment := now()) - at >= EVICTIONS_WARN_EVERY:
                self._evicted[name] = (evictions, moment)
                log.warning("table %s is full: entries evicted before they went idle; raise %s", name, key,
                            extra={"table": name, "limit": table.limit, "evicted": evictions - warned,
                                   "setting": key})

    def _in_turn(self, tables: list[tuple[str, Swept, Callable[[], float]]]) -> (
            Iterator[tuple[str, Swept, Callable[[], float]]]):
        """Every table, from the one the last tick stopped in, round to the one before it."""
        first = next((n for n, (name, _, _) in enumerate(tables) if name == self._resume), 0)
        return iter(tables[first:] + tables[:first])

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.tick()
            except Exception:  # a bug here must not stop the sweep for good
                log.exception("table sweep failed")

"""The garbage collector of one gateway process: tuned once it has started, its pauses timed, and
the long-lived heap kept out of its walks.

A collection of generation N walks every tracked object in generations 0..N and holds the event
loop for the whole walk. Customer state (tokens, buckets, tracks, usage) lives for minutes to
days: once promoted to the oldest generation, a full collection walks all of it, seconds at 200k
customers (docs/performance.md, "Garbage collection"). The generational freeze collects the young
generations and then `gc.freeze()`s the survivors, every `server.gc.freeze_interval`: the oldest
generation then only ever holds what was promoted since the last freeze, so every automatic
collection, full ones included, walks objects of the last interval, never the customers' state.

The price: an object that is in use when frozen and later becomes garbage held only by a
reference cycle is never found (reference counting still frees every frozen object that is not
in a cycle). `server.gc.full_collection_interval` (6 h) unfreezes and collects everything to
find those, a safety net: the request path leaves no cycles on uvloop (tests/test_gc_cycles.py),
but a path not measured could, and nothing else would ever free them. The walk holds the loop
for the whole heap (0.3 s at 20k customers).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

from gateway.config.model import GcSettings
from gateway.metrics import GcPauses

log = logging.getLogger("fairgate.server")

GcCallback = Callable[[str, dict[str, int]], None]
Observe = Callable[[float], None]


def tune_collector(settings: GcSettings) -> int:
    """Applied once, after start-up; returns how many objects were frozen."""
    if settings.thresholds is not None:
        gc.set_threshold(*settings.thresholds)  # three, as the config checked
    if not settings.freeze_after_start:
        return 0
    # Collect first: garbage frozen now would stay in memory for the life of the process.
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def freeze_survivors() -> None:
    """Collect the young generations (their cyclic garbage is freed, not frozen), then move
    every object still alive out of the collector's view. Walks only generations 0 and 1: what
    was allocated since the last freeze and is still alive."""
    gc.collect(1)
    gc.freeze()


def collect_everything() -> int:
    """Every object back in view and one full collection (the cyclic garbage frozen while in
    use), then frozen again; returns how many unreachable objects were found."""
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    return found


class GenerationalFreeze:
    """Runs `freeze_survivors` every `interval` seconds and `collect_everything` every
    `full_interval` seconds, each when set; `observe_*` get how long each step held the loop."""

    def __init__(self, interval: float | None, full_interval: float | None = None,
                 observe_freeze: Observe | None = None, observe_full: Observe | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval is None and full_interval is None:
            raise ValueError("nothing to run: neither a freeze nor a full collection interval")
        self._interval = interval
        self._full_interval = full_interval
        self._observe_freeze = observe_freeze
        self._observe_full = observe_full
        self._clock = clock
        self._full_due = None if full_interval is None else clock() + full_interval
        self.freezes = 0
        self.full_collections = 0

    def step(self) -> None:
        """A full collection when one is due, else a freeze (when freezing is on)."""
        started = time.perf_counter()
        if self._full_due is not None and self._full_interval is not None and self._clock() >= self._full_due:
            found = collect_everything()
            self._full_due = self._clock() + self._full_interval
            self.full_collections += 1
            held = time.perf_counter() - started
            if self._observe_full is not None:
                self._observe_full(held)
            log.info("full garbage collection", extra={
                "unreachable": found, "frozen_objects": gc.get_freeze_count(), "seconds": round(held, 4)})
        elif self._interval is not None:
            freeze_survivors()
            self.freezes += 1
            if self._observe_freeze is not None:
                self._observe_freeze(time.perf_counter() - started)

    async def run(self) -> None:
        every = self._interval if self._interval is not None else self._full_interval
        assert every is not None  # the constructor refused neither
        while True:
            await asyncio.sleep(every)
            self.step()


class PauseTimer:
    """Times every collection into `pauses` by generation while installed: two perf_counter
    calls and a bucket increment per collection."""

    def __init__(self, pauses: GcPauses) -> None:
        self._pauses = pauses
        self._started = 0.0
        self._callback: GcCallback = self._on_gc

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pauses.observe(info["generation"], time.perf_counter() - self._started)

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

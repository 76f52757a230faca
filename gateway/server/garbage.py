"""The garbage collector of one gateway process: tuned once it has started, its pauses timed.

A full (generation 2) collection walks every tracked object and holds the event loop for the
whole walk: with 200k customers' state, 137 ms (docs/performance.md, "Garbage collection").
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from gateway.config.model import GcSettings
from gateway.metrics import GcPauses

GcCallback = Callable[[str, dict[str, int]], None]


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

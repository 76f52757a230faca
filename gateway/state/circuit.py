"""A circuit breaker around the shared state store: after repeated failures stop asking for a
while, then let one trial through; every transition is logged and counted."""

from __future__ import annotations

import logging
from typing import Callable

from gateway.clock import Clock

log = logging.getLogger("fairgate.state")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failures_to_open: int, cooldown: float, clock: Clock,
                 on_change: Callable[[str], None] = lambda state: None) -> None:
        self._failures_to_open = failures_to_open
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self.state = CLOSED
        self._failures = 0
        self._opened_at = 0.0

    def allow(self) -> bool:
        """May a call go to the store now? In half-open state only one trial at a time."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._clock.monotonic() - self._opened_at >= self._cooldown:
            self._move(HALF_OPEN)
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        if self.state != CLOSED:
            self._move(CLOSED)

    def failed(self) -> None:
        self._failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self._failures >= self._failures_to_open):
            self._opened_at = self._clock.monotonic()
            self._move(OPEN)

    def _move(self, state: str) -> None:
        previous, self.state = self.state, state
        log.warning("state store circuit %s", state, extra={"from": previous, "to": state})
        self._on_change(state)

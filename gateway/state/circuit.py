"""A circuit breaker around the shared state store: after repeated failures stop asking for a
while, then let exactly one call through as a probe; its success closes the circuit, its failure
opens it again. Every transition is logged and counted.

Calls carry the ticket `allow()` gave them, so a failure that belongs to an earlier state (a
call admitted before the circuit opened, answering late) cannot reopen a circuit that has since
recovered, and a probe that never reports back (its caller went away) does not hold the
circuit half-open: past one cooldown another call probes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
        self._since = 0.0  # monotonic time of the last move to open, or of the probe's start
        self._epoch = 0  # bumped at every transition and every probe

    def allow(self, probe: bool = True) -> int | None:
        """A ticket if a call may go to the store now, else None. Half-open: one probe at a time;
        `probe=False` calls (background writes) never probe, so a request decides recovery."""
        if self.state == CLOSED:
            return self._epoch
        if not probe or self._clock.monotonic() - self._since < self._cooldown:
            return None
        if self.state == OPEN:
            self._move(HALF_OPEN)
        self._since = self._clock.monotonic()
        self._epoch += 1  # this call is the probe; an earlier probe's answer no longer counts
        return self._epoch

    def succeeded(self) -> None:
        """Any answer shows the store is back: close."""
        self._failures = 0
        if self.state != CLOSED:
            self._move(CLOSED)

    def failed(self, ticket: int | None = None) -> None:
        if ticket is not None and ticket != self._epoch:
            return  # admitted under an earlier state: says nothing about this one
        self._failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self._failures >= self._failures_to_open):
            self._failures = 0
            self._since = self._clock.monotonic()
            self._move(OPEN)

    def _move(self, state: str) -> None:
        previous, self.state = self.state, state
        self._epoch += 1
        log.warning("state store circuit %s", state, extra={"from": previous, "to": state})
        self._on_change(state)

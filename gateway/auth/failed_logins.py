"""Failed logins per client address: past the limit the address gets 429 for a while."""

from __future__ import annotations

from collections import deque

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.auth import FailedLoginLimit
from gateway.state.bounded import BoundedTable
from gateway.state.tables import Tables


class FailedLogins:
    def __init__(self, settings: FailedLoginLimit, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._failures: BoundedTable[str, deque[float]] = BoundedTable(0, self._failures_ended)
        self._blocked_until: BoundedTable[str, float] = BoundedTable(0, _block_ended)
        self.settings = settings  # sets both tables' limits

    def watch(self, tables: Tables) -> None:
        """Show both tables on /metrics and let the sweep forget failures and blocks that ended."""
        tables.add("failed_logins", self._failures, self._clock.monotonic)
        tables.add("blocked_addresses", self._blocked_until, self._clock.monotonic)

    def _failures_ended(self, times: deque[float], now: float) -> bool:
        return not times or now - times[-1] > self.settings.window

    @property
    def settings(self) -> FailedLoginLimit:
        return self._settings

    @settings.setter
    def settings(self, settings: FailedLoginLimit) -> None:
        # Replaced on config reload; the counts carry over.
        self._settings = settings
        self._failures.limit = self._blocked_until.limit = settings.max_tracked_addresses

    def blocked_for(self, address: str) -> float:
        """Seconds this address stays blocked; 0 when it may try."""
        until = self._blocked_until.get(address)
        if until is None:
            return 0.0
        remaining = until - self._clock.monotonic()
        if remaining <= 0:
            del self._blocked_until[address]
            return 0.0
        return remaining

    def record_failure(self, address: str) -> bool:
        """Count one failure; True when this one crossed the limit and blocked the address."""
        now = self._clock.monotonic()
        settings = self.settings
        times = self._failures.get(address)
        if times is None:
            times = deque(maxlen=settings.max_failures)
            self._failures.put(address, times)
        else:
            self._failures.move_to_end(address)
        times.append(now)
        if len(times) == settings.max_failures and now - times[0] <= settings.window:
            self._blocked_until.put(address, now + settings.block_for)
            times.clear()
            return True
        return False


def _block_ended(until: float, now: float) -> bool:
    return until <= now

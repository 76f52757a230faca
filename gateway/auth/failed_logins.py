"""Failed logins per client address: past the limit the address gets 429 for a while."""

from __future__ import annotations

from collections import OrderedDict, deque

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.auth import FailedLoginLimit


class FailedLogins:
    def __init__(self, settings: FailedLoginLimit, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings  # replaced on config reload; the counts carry over
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked_until: dict[str, float] = {}

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
            times = self._failures[address] = deque(maxlen=settings.max_failures)
            while len(self._failures) > settings.max_tracked_addresses:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(address)
        times.append(now)
        if len(times) == settings.max_failures and now - times[0] <= settings.window:
            self._blocked_until[address] = now + settings.block_for
            times.clear()
            if len(self._blocked_until) > settings.max_tracked_addresses:
                self._blocked_until.pop(next(iter(self._blocked_until)))
            return True
        return False

"""Upstream protection: a cap on requests in flight to one upstream, where each plan may fill
only its share, so the lowest-priority plans are shed first and one heavy customer cannot
starve the others. Anonymous callers (no login) have their own bounded share on top of their
plan's: however many of them stall, logged-in callers keep the rest of the cap."""

from __future__ import annotations

import math


class InFlightGate:
    __slots__ = ("capacity", "anonymous_capacity", "_levels", "in_flight", "anonymous_in_flight")

    def __init__(self, capacity: int, max_priority: int, anonymous_share: float = 1.0) -> None:
        self.capacity = capacity
        self.anonymous_capacity = capacity
        self._levels = max_priority + 1
        self.in_flight = 0
        self.anonymous_in_flight = 0
        self.set_anonymous_share(anonymous_share)

    def set_priorities(self, max_priority: int) -> None:
        """Plans changed on reload: recompute the shares."""
        self._levels = max_priority + 1

    def set_anonymous_share(self, share: float) -> None:
        self.anonymous_capacity = max(1, math.ceil(self.capacity * share))

    def share(self, priority: int) -> float:
        """In-flight requests a plan of this priority may add to: all of it for the top priority."""
        return self.capacity * (min(priority, self._levels - 1) + 1) / self._levels

    def try_enter(self, priority: int, anonymous: bool = False) -> bool:
        if self.in_flight >= self.share(priority):
            return False
        if anonymous:
            if self.anonymous_in_flight >= self.anonymous_capacity:
                return False
            self.anonymous_in_flight += 1
        self.in_flight += 1
        return True

    def leave(self, anonymous: bool = False) -> None:
        self.in_flight -= 1
        if anonymous:
            self.anonymous_in_flight -= 1

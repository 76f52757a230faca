"""Upstream protection: a cap on requests in flight to one upstream, where each plan may fill
only its share, so the lowest-priority plans are shed first and one heavy customer cannot
starve the others."""

from __future__ import annotations


class InFlightGate:
    __slots__ = ("capacity", "_levels", "in_flight")

    def __init__(self, capacity: int, max_priority: int) -> None:
        self.capacity = capacity
        self._levels = max_priority + 1
        self.in_flight = 0

    def set_priorities(self, max_priority: int) -> None:
        """Plans changed on reload: recompute the shares."""
        self._levels = max_priority + 1

    def share(self, priority: int) -> float:
        """In-flight requests a plan of this priority may add to: all of it for the top priority."""
        return self.capacity * (min(priority, self._levels - 1) + 1) / self._levels

    def try_enter(self, priority: int) -> bool:
        if self.in_flight >= self.share(priority):
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

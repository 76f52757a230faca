"""The one fake clock of the suite: time that moves only when a test says so."""

from __future__ import annotations

# A fixed wall time (2027-01-15), so that no test depends on today's date.
T0 = 1_800_000_000.0


class ManualClock:
    """Wall and monotonic time for `gateway.clock.Clock` users; `monotonic` alone serves code
    that takes a bare `Callable[[], float]` (the upstream pool)."""

    def __init__(self, wall: float = T0) -> None:
        self.wall = wall
        self.mono = 10_000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

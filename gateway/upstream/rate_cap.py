"""An upstream-wide rate cap that smooths bursts: requests over `max_rate` wait their turn in
an async leaky bucket (aiolimiter) instead of being refused, up to `max_rate_delay`; one that
would wait longer is answered 503 at once, with the wait as Retry-After.

It protects the product API from the gateway's own fleet of customers together, after each
customer's plan limits passed; it is per gateway process, like the in-flight cap.
"""

from __future__ import annotations

import math

from aiolimiter import AsyncLimiter

from gateway.config import Upstream
from gateway.problems import Problem


class RateCap:
    __slots__ = ("_limiter", "_per_second", "_max_delay", "waiting")

    def __init__(self, per_second: float, burst: int, max_delay: float) -> None:
        # aiolimiter lets `max_rate` through per `time_period`: a bucket of `burst` that leaks
        # at `per_second`.
        self._limiter = AsyncLimiter(burst, burst / per_second)
        self._per_second = per_second
        self._max_delay = max_delay
        self.waiting = 0

    @classmethod
    def for_upstream(cls, upstream: Upstream) -> RateCap | None:
        if upstream.max_rate is None:
            return None
        return cls(upstream.max_rate.per_second, upstream.max_rate_burst, upstream.max_rate_delay)

    async def admit(self, upstream: str) -> Problem | None:
        """Wait for this request's turn; a Problem instead when the wait would be too long."""
        limiter = self._limiter
        if not self.waiting and limiter.has_capacity():
            await limiter.acquire()  # does not suspend when there is capacity
            return None
        # Each request queued ahead takes 1/rate; the bucket itself frees a place within 1/rate.
        wait = (self.waiting + 1) / self._per_second
        if wait > self._max_delay:
            retry_after = max(1, math.ceil(wait))
            return Problem(503, "upstream-rate-capped", "Service Unavailable",
                           f"Requests to {upstream} are at its rate cap; retry in {retry_after} s.",
                           headers={"Retry-After": str(retry_after)})
        self.waiting += 1
        try:
            await limiter.acquire()
        finally:
            self.waiting -= 1
        return None

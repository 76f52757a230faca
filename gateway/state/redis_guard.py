"""What every Redis call off the limit script shares: the circuit breaker, a timeout, the
metrics, and Redis's errors turned into StoreUnavailable."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from redis import exceptions as redis_errors

from gateway.clock import Clock
from gateway.config.limits import StateSettings
from gateway.state import redis_wire
from gateway.state.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from gateway.state.store import StoreUnavailable

log = logging.getLogger("fairgate.state")

T = TypeVar("T")
# What a Redis call raises when the store cannot answer.
REDIS_FAILURES = (redis_errors.RedisError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class StoreMetrics:
    latency: Histogram  # seconds per round trip
    errors: Counter  # labels: kind
    circuit: Gauge  # labels: state
    fallbacks: Counter  # labels: mode


class Guard:
    def __init__(self, client: Any, settings: StateSettings, clock: Clock, metrics: StoreMetrics | None) -> None:
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown, clock, self._circuit_moved)
        # The limits' calls, one at a time, on a connection of their own (one server or Sentinel).
        self.line = redis_wire.Line(client)
        self._circuit_moved(CLOSED)

    def _circuit_moved(self, state: str) -> None:
        if self.metrics is not None:
            for name in (CLOSED, OPEN, HALF_OPEN):
                self.metrics.circuit.labels(name).set(1 if name == state else 0)

    def failed(self, exc: Exception, ticket: int) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(type(exc.__cause__ or exc).__name__).inc()
        self.breaker.failed(ticket)

    async def before_probe(self) -> None:
        """Half-open, the next call is the probe. Idle connections made before the outage may lead
        to a Redis that has since restarted: each would fail once and reopen a circuit that just
        closed, so they go first (a Cluster client keeps its pools per node and is left alone)."""
        pool = getattr(self.client, "connection_pool", None)
        if self.breaker.state == HALF_OPEN and pool is not None:
            await self.line.drop()
            await pool.disconnect(inuse_connections=False)

    async def write(self, build: Callable[[Any], object], *, must: bool = False) -> None:
        """Run a pipeline of writes; failures are logged, or raised as StoreUnavailable if `must`
        (the caller keeps what it could not write and tries again)."""
        async def written() -> None:
            # All keys of one call share the caller's hash tag, so this is one slot on a Cluster.
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            await pipe.execute()

        await self._written(written, must)

    async def _written(self, write: Callable[[], Awaitable[None]], must: bool) -> None:
        ticket = self.breaker.allow(probe=False)
        if ticket is None:
            if must:
                raise StoreUnavailable("state store circuit open")
            return  # concurrency leases expire by themselves; quota usage is lost only while Redis is down
        try:
            await asyncio.wait_for(write(), self.settings.timeout * 4)
        except REDIS_FAILURES as exc:
            self.failed(StoreUnavailable(str(exc)), ticket)
            log.warning("state store write failed", extra={"error": str(exc) or type(exc).__name__})
            if must:
                raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
            return
        self.breaker.succeeded()

    async def send(self, payload: bytes, replies: int, *, must: bool = False) -> None:
        """`write`, for commands already in RESP (redis_wire) on one server or Sentinel: an error
        reply to any of them counts as a failed write."""

        async def sent() -> None:
            for reply in await redis_wire.send(self.client, payload, replies):
                if isinstance(reply, BaseException):
                    raise reply

        await self._written(sent, must)

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """One call an admin or the fleet sync waits on (`make` starts it): refused while the
        circuit is open, bounded by the timeout; StoreUnavailable when Redis cannot answer.
        It may probe a circuit past its cooldown, so an idle gateway still learns of recovery."""
        ticket = self.breaker.allow()
        if ticket is None:
            raise StoreUnavailable("state store circuit open")
        try:
            await self.before_probe()
            result = await asyncio.wait_for(make(), self.settings.timeout * 4)
        except REDIS_FAILURES as exc:
            error = StoreUnavailable(str(exc) or type(exc).__name__)
            error.__cause__ = exc
            self.failed(error, ticket)
            raise error from exc
        self.breaker.succeeded()
        return result


def ttl_ms(expires_at: float, now: float) -> int:
    """Milliseconds from `now` until `expires_at`, both on the gateway's clock: expiry relative to
    Redis's own clock, so the two clocks need not agree (at least a second)."""
    return max(1000, math.ceil((expires_at - now) * 1000))

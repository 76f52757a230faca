"""The shared state store: Redis, Redis Cluster or Sentinel.

One object per concept, each in its own module: limit decisions batched into one script call
per event-loop turn (redis_batches, the script's layout in redis_script), writes and the
circuit breaker (redis_guard), counters, event streams and the fleet's shared entries. Every
call has a short timeout and the breaker decides when to stop asking. When Redis cannot answer
a limit decision the configured failure mode applies: `open` allows, `closed` refuses (503),
`local` falls back to per-instance memory limits. A request never waits on a dead Redis for
longer than `timeout`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.limits import StateSettings
from gateway.config.state_url import Backend
from gateway.state import redis_wire
from gateway.state.circuit import CircuitBreaker
from gateway.state.redis_batches import LimitBatches
from gateway.state.redis_counters import RedisCounters
from gateway.state.redis_fleet import RedisFleet
from gateway.state.redis_guard import Guard, StoreMetrics, ttl_ms
from gateway.state.redis_sightings import RedisSightings
from gateway.state.redis_streams import RedisStreams
from gateway.state.store import Check, Outcome, StateStore
from gateway.state.tables import Swept

# Non-decisive writes after a response, in RESP by hand (redis_wire) on one server or Sentinel.
_ZREM, _INCRBYFLOAT, _PEXPIRE = (redis_wire.text(name) for name in ("ZREM", "INCRBYFLOAT", "PEXPIRE"))


class RedisStore(StateStore):
    def __init__(
        self,
        client: Any,
        settings: StateSettings,
        *,
        cluster: bool,
        clock: Clock = SYSTEM_CLOCK,
        use_redis_time: bool = True,
        metrics: StoreMetrics | None = None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._clock = clock
        self._cluster = cluster
        self._guard = Guard(client, settings, clock, metrics)
        self._limits = LimitBatches(self._guard, cluster=cluster, use_redis_time=use_redis_time,
                                    release=self.release)
        self._counters = RedisCounters(self._guard, clock, cluster=cluster)
        self._streams = RedisStreams(self._guard)
        self._fleet = RedisFleet(self._guard)

    @classmethod
    def from_settings(cls, settings: StateSettings, clock: Clock = SYSTEM_CLOCK,
                      metrics: StoreMetrics | None = None) -> RedisStore:
        client, cluster = connect(settings)
        # A fleet decides buckets and slots on Redis's clock; a gateway given a clock of its own
        # (tests, replays) lives in that clock's time.
        return cls(client, settings, cluster=cluster, clock=clock, use_redis_time=clock is SYSTEM_CLOCK,
                   metrics=metrics)

    @property
    def breaker(self) -> CircuitBreaker:
        return self._guard.breaker

    # -- the request path -----------------------------------------------------------------

    def evaluate_now(self, checks: list[Check], now: float) -> list[Outcome] | None:
        return self._limits.known_over_limit(checks, now)

    def evaluate(self, tag: str, checks: list[Check], now: float) -> Coroutine[Any, Any, list[Outcome]]:
        # The batches' own coroutine, not one wrapping it: no extra frame per request.
        return self._limits.evaluate(tag, checks, now)

    # -- after the response ---------------------------------------------------------------

    async def release(self, tag: str, slots: list[tuple[str, str]]) -> None:
        await self._limits.local.release(tag, slots)
        if not self._cluster:
            await self._guard.send(b"".join(redis_wire.command((_ZREM, redis_wire.text(key), redis_wire.text(token)))
                                            for key, token in slots), len(slots))
            return
        await self._guard.write(lambda pipe: [pipe.zrem(key, token) for key, token in slots])

    async def add_usage(self, tag: str, usage: list[tuple[str, float, float]]) -> None:
        now = self._clock.time()
        if not self._cluster:
            commands = []
            for key, amount, expires_at in usage:
                name = redis_wire.text(key)
                commands.append(redis_wire.command((_INCRBYFLOAT, name, redis_wire.text(repr(float(amount))))))
                commands.append(redis_wire.command((_PEXPIRE, name, redis_wire.text(
                    str(ttl_ms(expires_at + 60.0, now))))))  # as the script does
            await self._guard.send(b"".join(commands), len(commands))
            return

        def pipeline(pipe: Any) -> None:
            for key, amount, expires_at in usage:
                pipe.incrbyfloat(key, amount)
                pipe.pexpire(key, ttl_ms(expires_at + 60.0, now))  # as the script does

        await self._guard.write(pipeline)

    # -- counters, streams, the fleet -----------------------------------------------------

    async def add_counters(self, index: str, counters: dict[str, dict[str, float]], expires_at: float) -> None:
        await self._counters.add(index, counters, expires_at)

    async def read_counters(self, index: str) -> dict[str, dict[str, float]]:
        return await self._counters.read(index)

    async def append_events(self, stream: str, events: list[dict[str, Any]], max_length: int) -> bool:
        await self._streams.append(stream, events, max_length)
        return True

    async def share(self, topic: str, entry: dict[str, Any], until: float) -> None:
        await self._fleet.share(topic, entry, until)

    async def unshare(self, topic: str, match: Callable[[dict[str, Any]], bool]) -> None:
        await self._fleet.unshare(topic, match)

    async def shared(self, topic: str, now: float) -> list[dict[str, Any]] | None:
        return await self._fleet.shared(topic, now)

    async def watch_shared(self, changed: Callable[[], None]) -> None:
        await self._fleet.watch(changed)

    def tables(self) -> dict[str, Swept]:
        """The `local` fallback's limit tables (its sightings table is never used: Redis keeps those)."""
        return {f"local_{name}": table for name, table in self._limits.local.tables().items() if name != "sightings"}

    def sightings(self) -> RedisSightings:
        # Off the request path, so it may wait longer than a limit decision.
        return RedisSightings(self._client, max(self._settings.timeout * 10, 0.5), cluster=self._cluster)

    async def close(self) -> None:
        if self._limits.tasks:
            await asyncio.gather(*self._limits.tasks, return_exceptions=True)
        await self._client.aclose()


def connect(settings: StateSettings) -> tuple[Any, bool]:
    """A redis.asyncio client for the URL: single server, Cluster or Sentinel; and whether it is a Cluster."""
    url = settings.parsed_url
    timeouts: dict[str, Any] = dict(socket_timeout=max(settings.timeout * 4, 0.2),
                                    socket_connect_timeout=max(settings.timeout * 4, 0.2))
    if url.backend is Backend.CLUSTER:
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # redis-py's Cluster client sends a command again after a timeout or a dropped connection,
        # when it may already have run: a limit script would take its units twice. A failure goes
        # to the breaker instead (MOVED and ASK redirections are still followed).
        return RedisCluster.from_url(f"redis://{url.rest}", retry=Retry(NoBackoff(), 0), **timeouts), True
    if url.backend is Backend.SENTINEL:
        from redis.asyncio.sentinel import Sentinel

        parts = urlsplit(settings.url)
        service, _, db = parts.path.strip("/").partition("/")
        hosts = [(host.rsplit(":", 1)[0], int(host.rsplit(":", 1)[1])) for host in parts.netloc.split(",")]
        sentinel = Sentinel(hosts, **timeouts)  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel.__init__ unannotated
        return sentinel.master_for(service or "mymaster", db=int(db or 0), **timeouts), False
    if url.backend is Backend.MEMORY:
        raise ValueError("memory:// names no Redis")
    from redis.asyncio import Redis

    return Redis.from_url(settings.url, **timeouts), False

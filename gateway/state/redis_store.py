"""The shared state store: Redis, Redis Cluster or Sentinel, one EVALSHA per request.

Checks of requests that arrive together are sent together (one pipeline per event-loop turn),
a key known to be over its limit is answered locally until its reset, every call has a short
timeout, and a circuit breaker decides when to stop asking. When Redis cannot answer the
configured failure mode applies: `open` allows, `closed` refuses (503), `local` falls back to
per-instance memory limits. A request never waits on a dead Redis for longer than `timeout`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge, Histogram
from redis import exceptions as redis_errors

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config.limits import StateSettings
from gateway.state.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from gateway.state.memory import MemoryStore
from gateway.state.redis_sightings import RedisSightings
from gateway.state.store import CONCURRENCY, QUOTA, RATE, Check, Outcome, StateStore, StoreUnavailable

log = logging.getLogger("fairgate.state")

SCRIPT = (Path(__file__).parent / "lua" / "evaluate.lua").read_text()


@dataclass(frozen=True, slots=True)
class StoreMetrics:
    latency: Histogram  # seconds per round trip
    errors: Counter  # labels: kind
    circuit: Gauge  # labels: state
    fallbacks: Counter  # labels: mode


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
        self._cluster = cluster
        self._settings = settings
        self._clock = clock
        self._use_redis_time = use_redis_time
        self._metrics = metrics
        self._sha: str | None = None
        self._script_loading: asyncio.Future | None = None
        self._pending: list[tuple[list[str], list, asyncio.Future]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._local = MemoryStore(settings.max_memory_keys)
        # (key, cost) -> wall time until which a request of that cost is known to be over the limit
        self._over_limit: dict[tuple[str, float], float] = {}
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown, clock, self._circuit_moved)
        self._circuit_moved(CLOSED)

    @classmethod
    def from_settings(cls, settings: StateSettings, clock: Clock = SYSTEM_CLOCK,
                      metrics: StoreMetrics | None = None) -> "RedisStore":
        client, cluster = connect(settings)
        return cls(client, settings, cluster=cluster, clock=clock, metrics=metrics)

    def _circuit_moved(self, state: str) -> None:
        if self._metrics is not None:
            for name in (CLOSED, OPEN, HALF_OPEN):
                self._metrics.circuit.labels(name).set(1 if name == state else 0)

    # -- the request path -----------------------------------------------------------------

    def evaluate_now(self, checks: list[Check], now: float) -> list[Outcome] | None:
        return self._known_over_limit(checks, now)

    async def evaluate(self, tag: str, checks: list[Check], now: float) -> list[Outcome]:
        local = self._known_over_limit(checks, now)
        if local is not None:
            return local
        if not self.breaker.allow():
            return await self._fall_back(checks, now)
        future = asyncio.get_running_loop().create_future()
        self._pending.append((checks, now, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        timer = asyncio.get_running_loop().call_later(self._settings.timeout, _expire, future)
        try:
            raw = await future
        except StoreUnavailable as exc:
            self._failed(exc)
            return await self._fall_back(checks, now)
        finally:
            timer.cancel()
        self.breaker.succeeded()
        outcomes = _outcomes(raw)
        self._remember_over_limit(checks, outcomes, now)
        return outcomes

    def _known_over_limit(self, checks: list[Check], now: float) -> list[Outcome] | None:
        """Reject without a round trip while an enforced check is known to stay over its limit."""
        if not self._over_limit:
            return None
        for check in checks:
            until = self._over_limit.get((check.key, check.cost))
            if until is None or check.shadow:
                continue
            if until <= now:
                del self._over_limit[(check.key, check.cost)]
                continue
            # Only the known check's numbers are exact; the others are reported as untouched.
            return [Outcome(False, 0.0, until - now, retry_after=until - now) if other is check
                    else Outcome(True, 0.0, 0.0) for other in checks]
        return None

    def _remember_over_limit(self, checks: list[Check], outcomes: list[Outcome], now: float) -> None:
        for check, outcome in zip(checks, outcomes):
            # Rate and quota rejections stay true until retry_after whatever other gateways do
            # (for requests of the same cost: a cheaper one may fit sooner); a concurrency slot
            # can free at any moment, so those are always asked.
            if not outcome.allowed and not check.shadow and check.kind in (RATE, QUOTA) and outcome.retry_after > 0:
                self._over_limit[(check.key, check.cost)] = now + outcome.retry_after
        if len(self._over_limit) > 100_000:
            self._over_limit.clear()

    async def _fall_back(self, checks: list[Check], now: float) -> list[Outcome]:
        mode = self._settings.on_failure
        if self._metrics is not None:
            self._metrics.fallbacks.labels(mode).inc()
        if mode == "closed":
            raise StoreUnavailable("state store unavailable")
        if mode == "open":
            return [Outcome(True, 0.0, 0.0) for _ in checks]
        return self._local.evaluate_now(checks, now)

    def _failed(self, exc: Exception) -> None:
        if self._metrics is not None:
            self._metrics.errors.labels(type(exc.__cause__ or exc).__name__).inc()
        self.breaker.failed()

    # -- batching -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[list[str], list, asyncio.Future]]) -> None:
        started = time.perf_counter()
        try:
            if self._sha is None:
                await self._load_script()
            results = await self._evalsha_all(batch)
            if any(isinstance(r, redis_errors.NoScriptError) for r in results):
                await self._load_script()  # Redis restarted or flushed its scripts
                results = await self._evalsha_all(batch)
        except (redis_errors.RedisError, OSError, asyncio.TimeoutError) as exc:
            for _, _, future in batch:
                _fail(future, exc)
            return
        if self._metrics is not None:
            self._metrics.latency.observe(time.perf_counter() - started)
        for (checks, _, future), result in zip(batch, results):
            if isinstance(result, Exception):
                _fail(future, result)
            elif future.cancelled():
                self._give_back_abandoned(checks, result)
            elif not future.done():
                future.set_result(result)

    def _now_arg(self, now: float) -> str:
        return "" if self._use_redis_time else repr(now)

    def _give_back_abandoned(self, checks: list[Check], result: bytes) -> None:
        """The client left while Redis decided: release any slot the script took for it."""
        outcomes = _outcomes(result)
        if any(not o.allowed and not c.shadow for c, o in zip(checks, outcomes)):
            return  # rejected: nothing was taken
        slots = [(c.key, c.token) for c, o in zip(checks, outcomes) if c.kind == CONCURRENCY and o.allowed]
        if slots:
            task = asyncio.get_running_loop().create_task(self.release("", slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _load_script(self) -> None:
        # Concurrent batches share one SCRIPT LOAD.
        if self._script_loading is None or self._script_loading.done():
            self._script_loading = asyncio.ensure_future(self._client.script_load(SCRIPT))
        try:
            self._sha = await asyncio.shield(self._script_loading)
        except BaseException:
            self._script_loading = None
            raise

    async def _evalsha_all(self, batch: list) -> list:
        if self._cluster:
            # Cluster pipelines refuse EVALSHA; concurrent calls still share connections per node.
            return await asyncio.gather(
                *(self._client.evalsha(self._sha, len(checks), *_keys_and_args(checks, self._now_arg(now)))
                  for checks, now, _ in batch),
                return_exceptions=True,
            )
        # One write and one read on a pooled connection, without redis-py's Pipeline object:
        # measured, its per-command bookkeeping cost more than the rest of the request.
        pool = self._client.connection_pool
        connection = await pool.get_connection()
        try:
            sha = _bulk(self._sha.encode())
            await connection.send_packed_command(
                b"".join(_evalsha_command(sha, checks, self._now_arg(now)) for checks, now, _ in batch),
                check_health=False,
            )
            results: list = []
            for _ in batch:
                try:
                    results.append(await connection.read_response())
                except redis_errors.ResponseError as exc:
                    results.append(exc)
            return results
        except BaseException:
            await connection.disconnect()  # replies may still be in flight: never reuse it
            raise
        finally:
            await pool.release(connection)

    # -- after the response ---------------------------------------------------------------

    async def release(self, tag: str, slots: list[tuple[str, str]]) -> None:
        await self._local.release(tag, slots)
        await self._write(lambda pipe: [pipe.zrem(key, token) for key, token in slots])

    async def add_usage(self, tag: str, usage: list[tuple[str, float, float]]) -> None:
        def commands(pipe) -> None:
            for key, amount, expires_at in usage:
                pipe.incrbyfloat(key, amount)
                pipe.pexpireat(key, int(expires_at * 1000) + 60_000)

        await self._write(commands)

    async def _write(self, build) -> None:
        if not self.breaker.allow():
            return  # concurrency leases expire by themselves; usage is lost only while Redis is down
        try:
            # All keys of one call share the caller's hash tag, so this is one slot on a Cluster.
            pipe = self._client.pipeline(transaction=False)
            build(pipe)
            await asyncio.wait_for(pipe.execute(), self._settings.timeout * 4)
        except (redis_errors.RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(StoreUnavailable(str(exc)))
            log.warning("state store write failed", extra={"error": str(exc) or type(exc).__name__})
            return
        self.breaker.succeeded()

    # -- entries shared by the fleet (revocations, sanctions) ------------------------------

    def _topic_key(self, topic: str) -> str:
        return f"{self._settings.key_prefix}:{{{topic}}}"

    async def share(self, topic: str, entry: dict, until: float) -> None:
        # Scored by expiry, so the set trims itself to what is still in force.
        await self._client.zadd(self._topic_key(topic), {json.dumps(entry, sort_keys=True): until})

    async def shared(self, topic: str, now: float) -> list[dict] | None:
        key = self._topic_key(topic)
        await self._client.zremrangebyscore(key, "-inf", now)
        members = await self._client.zrange(key, 0, -1)
        return [json.loads(member) for member in members]

    def sightings(self) -> RedisSightings:
        # Off the request path, so it may wait longer than a limit decision.
        return RedisSightings(self._client, max(self._settings.timeout * 10, 0.5))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()


def connect(settings: StateSettings) -> tuple[Any, bool]:
    """A redis.asyncio client for the URL: single server, Cluster or Sentinel."""
    url = settings.url
    timeouts = dict(socket_timeout=max(settings.timeout * 4, 0.2), socket_connect_timeout=max(settings.timeout * 4, 0.2))
    if url.startswith("redis+cluster://"):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"), **timeouts), True
    if url.startswith("redis+sentinel://"):
        from redis.asyncio.sentinel import Sentinel

        parts = urlsplit(url)
        service, _, db = parts.path.strip("/").partition("/")
        hosts = [(host.rsplit(":", 1)[0], int(host.rsplit(":", 1)[1])) for host in parts.netloc.split(",")]
        sentinel = Sentinel(hosts, **timeouts)
        return sentinel.master_for(service or "mymaster", db=int(db or 0), **timeouts), False
    from redis.asyncio import Redis

    return Redis.from_url(url, **timeouts), False


def _script_values(check: Check) -> tuple:
    shadow = "1" if check.shadow else "0"
    if check.kind == RATE:
        return 0, shadow, repr(check.interval), check.burst, repr(check.cost), repr(check.max_delay)
    if check.kind == CONCURRENCY:
        return 1, shadow, check.max, check.token, repr(check.lease), 0
    return 2, shadow, repr(check.cost), repr(check.limit), "1" if check.flag_only else "0", repr(check.expires_at)


def _keys_and_args(checks: list[Check], now: str) -> list:
    return [*(check.key for check in checks), now, *(value for check in checks for value in _script_values(check))]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _evalsha_command(sha: bytes, checks: list[Check], now: str) -> bytes:
    """EVALSHA in RESP, from pieces each check keeps encoded (templates reuse checks)."""
    keys, args = [], []
    for check in checks:
        if check.encoded is None:
            check.encoded = (_bulk(check.key.encode()),
                             b"".join(_bulk(str(value).encode()) for value in _script_values(check)))
        keys.append(check.encoded[0])
        args.append(check.encoded[1])
    count = len(checks)
    return b"".join((b"*%d\r\n$7\r\nEVALSHA\r\n" % (4 + 7 * count), sha, _bulk(str(count).encode()),
                     *keys, _bulk(now.encode()), *args))


def _outcomes(raw: bytes | str) -> list[Outcome]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    outcomes = []
    for item in text.split(";"):
        allowed, remaining, reset, retry_after, delay, over = item.split(",")
        outcomes.append(Outcome(allowed == "1", float(remaining), float(reset), float(retry_after), float(delay),
                                over == "1"))
    return outcomes


def _expire(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(StoreUnavailable("state store timed out"))


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        error = StoreUnavailable(str(exc) or type(exc).__name__)
        error.__cause__ = exc
        future.set_exception(error)

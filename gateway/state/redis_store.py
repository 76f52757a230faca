"""The shared state store: Redis, Redis Cluster or Sentinel.

The checks of requests that arrive in the same event-loop turn are decided by one EVALSHA
(on a Cluster, one per hash tag), each request atomically and in arrival order; a key known to be over its limit is answered locally until its reset, every call has a short
timeout, and a circuit breaker decides when to stop asking. When Redis cannot answer the
configured failure mode applies: `open` allows, `closed` refuses (503), `local` falls back to
per-instance memory limits. A request never waits on a dead Redis for longer than `timeout`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
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
# Requests decided by one script call at most: Redis runs a script alone, so a call stays short.
MAX_BATCH = 128


@dataclass(frozen=True, slots=True)
class StoreMetrics:
    latency: Histogram  # seconds per round trip
    errors: Counter  # labels: kind
    circuit: Gauge  # labels: state
    fallbacks: Counter  # labels: mode


@dataclass(slots=True)
class Pending:
    """A request's checks waiting for the next script call."""

    tag: str
    checks: list[Check]
    now: str  # the gateway's time in seconds (repr)
    future: asyncio.Future


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
        self._pending: list[Pending] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._local = MemoryStore(settings.max_memory_keys)
        # (key, cost, limit) -> wall time until which a request of that cost is known to be over
        # that limit (a rate or budget changed by a throttle, an exception or a reload is asked anew)
        self._over_limit: dict[tuple, float] = {}
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown, clock, self._circuit_moved)
        self._circuit_moved(CLOSED)

    @classmethod
    def from_settings(cls, settings: StateSettings, clock: Clock = SYSTEM_CLOCK,
                      metrics: StoreMetrics | None = None) -> "RedisStore":
        client, cluster = connect(settings)
        # A fleet decides buckets and slots on Redis's clock; a gateway given a clock of its own
        # (tests, replays) lives in that clock's time.
        return cls(client, settings, cluster=cluster, clock=clock, use_redis_time=clock is SYSTEM_CLOCK,
                   metrics=metrics)

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
        ticket = self.breaker.allow()
        if ticket is None:
            return await self._fall_back(checks, now)
        future = asyncio.get_running_loop().create_future()
        self._pending.append(Pending(tag, checks, repr(now), future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        try:
            raw = await future
        except StoreUnavailable as exc:
            self._failed(exc, ticket)
            return await self._fall_back(checks, now)
        self.breaker.succeeded()
        outcomes = _outcomes(raw)
        self._remember_over_limit(checks, outcomes, now)
        return outcomes

    def _known_over_limit(self, checks: list[Check], now: float) -> list[Outcome] | None:
        """Reject without a round trip while an enforced check is known to stay over its limit."""
        if not self._over_limit:
            return None
        for check in checks:
            known = _known_key(check)
            until = self._over_limit.get(known)
            if until is None or check.shadow:
                continue
            if until <= now:
                del self._over_limit[known]
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
                self._over_limit[_known_key(check)] = now + outcome.retry_after
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

    def _failed(self, exc: Exception, ticket: int) -> None:
        if self._metrics is not None:
            self._metrics.errors.labels(type(exc.__cause__ or exc).__name__).inc()
        self.breaker.failed(ticket)

    # -- batching -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        # One timer for the batch: its requests joined it within this event-loop turn.
        timer = loop.call_later(self._settings.timeout, _expire, batch)
        task = loop.create_task(self._run(batch))
        task.add_done_callback(lambda _: timer.cancel())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        calls = self._calls(batch)
        try:
            if self._sha is None:
                await self._load_script()
            replies = await self._evalsha_all(calls)
            if any(isinstance(r, redis_errors.NoScriptError) for r in replies):
                await self._load_script()  # Redis restarted or flushed its scripts
                replies = await self._evalsha_all(calls)
        except (redis_errors.RedisError, OSError, asyncio.TimeoutError) as exc:
            for pending in batch:
                _fail(pending.future, exc)
            return
        if self._metrics is not None:
            self._metrics.latency.observe(time.perf_counter() - started)
        for call, reply in zip(calls, replies):
            if isinstance(reply, Exception):
                for pending in call:
                    _fail(pending.future, reply)
                continue
            text = reply.decode() if isinstance(reply, bytes) else reply
            for pending, result in zip(call, text.split("|")):
                if pending.future.cancelled():
                    self._give_back_abandoned(pending.checks, result)
                elif not pending.future.done():
                    pending.future.set_result(result)

    def _calls(self, batch: list[Pending]) -> list[list[Pending]]:
        """Split a batch into script calls: at most MAX_BATCH requests each, one hash tag each
        on a Cluster (a call's keys must live in one slot)."""
        if self._cluster:
            by_tag: dict[str, list[Pending]] = {}
            for pending in batch:
                by_tag.setdefault(pending.tag, []).append(pending)
            groups = list(by_tag.values())
        else:
            groups = [batch]
        return [group[i:i + MAX_BATCH] for group in groups for i in range(0, len(group), MAX_BATCH)]

    def _give_back_abandoned(self, checks: list[Check], result: str) -> None:
        """The client left while Redis decided: release any slot the script took for it."""
        outcomes = _outcomes(result)
        if any(not o.allowed and not c.shadow for c, o in zip(checks, outcomes)):
            return  # rejected: nothing was taken
        slots = [(c.key, c.token) for c, o in zip(checks, outcomes) if c.kind == CONCURRENCY and o.allowed]
        if slots:
            task = asyncio.get_running_loop().create_task(self.release("", slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @property
    def _script_clock(self) -> str:
        """The script's first argument: whose clock decides buckets and slots."""
        return "redis" if self._use_redis_time else ""

    async def _load_script(self) -> None:
        # Concurrent batches share one SCRIPT LOAD.
        if self._script_loading is None or self._script_loading.done():
            self._script_loading = asyncio.ensure_future(self._client.script_load(SCRIPT))
        try:
            self._sha = await asyncio.shield(self._script_loading)
        except BaseException:
            self._script_loading = None
            raise

    async def _evalsha_all(self, calls: list[list[Pending]]) -> list:
        clock = self._script_clock
        if self._cluster:
            # Cluster pipelines refuse EVALSHA; concurrent calls still share connections per node.
            return await asyncio.gather(
                *(self._client.evalsha(self._sha, sum(len(p.checks) for p in call), *_keys_and_args(call, clock))
                  for call in calls),
                return_exceptions=True,
            )
        # One write and one read on a pooled connection, without redis-py's Pipeline object:
        # measured, its per-command bookkeeping cost more than the rest of the request.
        pool = self._client.connection_pool
        if self.breaker.state == HALF_OPEN:
            # This is the probe. Idle connections made before the outage may lead to a Redis that
            # has since restarted: each would fail once and reopen a circuit that just closed.
            await pool.disconnect(inuse_connections=False)
        connection = await pool.get_connection()
        try:
            sha = _bulk(self._sha.encode())
            clock_arg = _bulk(clock.encode())
            await connection.send_packed_command(
                b"".join(_evalsha_command(sha, clock_arg, call) for call in calls), check_health=False)
            replies: list = []
            for _ in calls:
                try:
                    replies.append(await connection.read_response())
                except redis_errors.ResponseError as exc:
                    replies.append(exc)
            return replies
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
        now = self._clock.time()

        def commands(pipe) -> None:
            for key, amount, expires_at in usage:
                pipe.incrbyfloat(key, amount)
                pipe.pexpire(key, _ttl_ms(expires_at + 60.0, now))  # as the script does

        await self._write(commands)

    async def _write(self, build, *, must: bool = False) -> None:
        """Run a pipeline of writes; failures are logged, or raised as StoreUnavailable if `must`
        (the caller keeps what it could not write and tries again)."""
        ticket = self.breaker.allow(probe=False)
        if ticket is None:
            if must:
                raise StoreUnavailable("state store circuit open")
            return  # concurrency leases expire by themselves; quota usage is lost only while Redis is down
        try:
            # All keys of one call share the caller's hash tag, so this is one slot on a Cluster.
            pipe = self._client.pipeline(transaction=False)
            build(pipe)
            await asyncio.wait_for(pipe.execute(), self._settings.timeout * 4)
        except (redis_errors.RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(StoreUnavailable(str(exc)), ticket)
            log.warning("state store write failed", extra={"error": str(exc) or type(exc).__name__})
            if must:
                raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
            return
        self.breaker.succeeded()

    # -- counters (usage) -----------------------------------------------------------------

    async def add_counters(self, index: str, counters: dict[str, dict[str, float]], expires_at: float) -> None:
        expire_ms = _ttl_ms(expires_at, self._clock.time())

        def commands(pipe) -> None:
            # The index carries the period's hash tag and every set's key starts with it: one slot.
            pipe.sadd(index, *counters)
            pipe.pexpire(index, expire_ms)
            for name, amounts in counters.items():
                key = f"{index}:{name}"
                for field, amount in amounts.items():
                    pipe.hincrbyfloat(key, field, amount)
                pipe.pexpire(key, expire_ms)

        if counters:
            await self._write(commands, must=True)

    async def read_counters(self, index: str) -> dict[str, dict[str, float]]:
        names = sorted(member.decode() for member in await self._client.smembers(index))
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(f"{index}:{name}")
        sets = await pipe.execute() if names else []
        return {name: {field.decode(): float(value) for field, value in fields.items()}
                for name, fields in zip(names, sets)}

    async def append_events(self, stream: str, events: list[dict], max_length: int) -> bool:
        def commands(pipe) -> None:
            for event in events:
                pipe.xadd(stream, {"event": json.dumps(event, sort_keys=True, default=str)}, maxlen=max_length,
                          approximate=True)

        if events:
            await self._write(commands, must=True)
        return True

    # -- entries shared by the fleet (revocations, sanctions) ------------------------------

    def _topic_key(self, topic: str) -> str:
        return f"{self._settings.key_prefix}:{{{topic}}}"

    async def share(self, topic: str, entry: dict, until: float) -> None:
        # Scored by expiry, so the set trims itself to what is still in force.
        await self._client.zadd(self._topic_key(topic), {json.dumps(entry, sort_keys=True): until})
        await self._client.publish(self._changes_channel, topic)

    @property
    def _changes_channel(self) -> str:
        return f"{self._settings.key_prefix}:shared-changes"

    async def watch_shared(self, changed) -> None:
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._changes_channel)
                changed()  # anything shared while not subscribed
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        changed()
            except (redis_errors.RedisError, OSError) as exc:
                log.debug("fleet change feed lost; periodic sync continues", extra={"error": str(exc)})
            finally:
                await pubsub.aclose()
            await asyncio.sleep(1.0)  # then subscribe again

    async def unshare(self, topic: str, match) -> None:
        key = self._topic_key(topic)
        members = [m for m in await self._client.zrange(key, 0, -1) if match(json.loads(m))]
        if members:
            await self._client.zrem(key, *members)

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


def _encoded(check: Check) -> tuple[bytes, bytes]:
    """A check's key and values in RESP, kept with the check (templates reuse checks)."""
    if check.encoded is None:
        check.encoded = (_bulk(check.key.encode()),
                         b"".join(_bulk(str(value).encode()) for value in _script_values(check)))
    return check.encoded


def _keys_and_args(call: list[Pending], clock: str) -> list:
    keys = [check.key for pending in call for check in pending.checks]
    args = [value for pending in call
            for value in (pending.now, len(pending.checks),
                          *(v for check in pending.checks for v in _script_values(check)))]
    return [*keys, clock, *args]


def _known_key(check: Check) -> tuple:
    return check.key, check.cost, check.interval, check.burst, check.limit


def _ttl_ms(expires_at: float, now: float) -> int:
    """Milliseconds from `now` until `expires_at`, both on the gateway's clock: expiry relative to
    Redis's own clock, so the two clocks need not agree (at least a second)."""
    return max(1000, math.ceil((expires_at - now) * 1000))


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _evalsha_command(sha: bytes, clock: bytes, call: list[Pending]) -> bytes:
    """One EVALSHA deciding every request of `call`, in RESP; `clock` is the first argument."""
    keys, args = [], [clock]
    for pending in call:
        args.append(_bulk(pending.now.encode()))
        args.append(_bulk(b"%d" % len(pending.checks)))
        for check in pending.checks:
            key, values = _encoded(check)
            keys.append(key)
            args.append(values)
    count = len(keys)
    return b"".join((b"*%d\r\n$7\r\nEVALSHA\r\n" % (4 + count + 2 * len(call) + 6 * count), sha,
                     _bulk(b"%d" % count), *keys, *args))


def _outcomes(text: str) -> list[Outcome]:
    outcomes = []
    for item in text.split(";"):
        allowed, remaining, reset, retry_after, delay, over = item.split(",")
        outcomes.append(Outcome(allowed == "1", float(remaining), float(reset), float(retry_after), float(delay),
                                over == "1"))
    return outcomes


def _expire(batch: list[Pending]) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(StoreUnavailable("state store timed out"))


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        error = StoreUnavailable(str(exc) or type(exc).__name__)
        error.__cause__ = exc
        future.set_exception(error)

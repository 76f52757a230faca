"""Limit decisions on Redis, batched: the checks of requests that arrive while no call is in
flight, or while one is, are decided by the next EVALSHA (on a Cluster, one per hash tag), each
request atomically and in arrival order. One call at a time: a request waits at most for the
call in flight (at most a quarter of `state.timeout`: then it goes on another connection) and
then its own, and under load each call decides every request that arrived during the one before
(measured: half the calls of one per event-loop turn). A key known to be
over its limit is answered locally until its reset; a batch has one timer, from its first
request's arrival; when Redis cannot answer, the configured failure mode applies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors

from gateway.state.memory import MemoryStore
from gateway.state.redis_guard import REDIS_FAILURES, Guard
from gateway.state.redis_script import SCRIPT, answers, bulk, evalsha_arguments, evalsha_command, outcomes
from gateway.state.store import CONCURRENCY, QUOTA, RATE, Check, Outcome, StoreUnavailable

# Requests decided by one script call at most: Redis runs a script alone, so a call stays short.
MAX_BATCH = 128
# A batch waits behind the call in flight for at most this share of `state.timeout`, then goes
# on another connection: with a slow Redis (a round trip near the timeout) waiting for the call
# in flight and then making its own would not fit the timeout.
BEHIND_SHARE = 0.25

# A check as far as its over-limit answer goes: key, cost, interval, burst, limit.
KnownKey = tuple[str, float, float, int, float]
# One script call's reply: the answers of its requests, or the error Redis gave instead.
Reply = bytes | str | BaseException


@dataclass(slots=True)
class Pending:
    """A request's checks waiting for the next script call (a redis_script.Request)."""

    tag: str
    checks: list[Check]
    now: str  # the gateway's time in seconds (repr)
    future: asyncio.Future[str]  # the script's answer for this request


class LimitBatches:
    def __init__(self, guard: Guard, *, cluster: bool, use_redis_time: bool,
                 release: Callable[[str, list[tuple[str, str]]], Coroutine[Any, Any, None]]) -> None:
        self._guard = guard
        self._client = guard.client
        self._settings = guard.settings
        self._breaker = guard.breaker
        self._cluster = cluster
        self._release = release
        # Whose clock decides buckets and slots: Redis's own, or each request's gateway time.
        self._clock_argument = "redis" if use_redis_time else ""
        self._sha: str | None = None
        self._script_loading: asyncio.Future[str] | None = None
        self._pending: list[Pending] = []
        self._pending_since = 0.0  # loop time the first pending request arrived
        self._flush_scheduled = False
        # The batch whose call is in flight (undecided); the next waits for it.
        self._calling: list[Pending] | None = None
        self._overtaking: asyncio.TimerHandle | None = None  # when the waiting batch stops waiting
        self.tasks: set[asyncio.Task[None]] = set()
        self.local = MemoryStore(self._settings.max_memory_keys, self._settings.idle_ttl)
        # (key, cost, limit) -> wall time until which a request of that cost is known to be over
        # that limit (a rate or budget changed by a throttle, an exception or a reload is asked anew)
        self._over_limit: dict[KnownKey, float] = {}

    # -- the request path -----------------------------------------------------------------

    async def evaluate(self, tag: str, checks: list[Check], now: float) -> list[Outcome]:
        local = self.known_over_limit(checks, now)
        if local is not None:
            return local
        ticket = self._breaker.allow()
        if ticket is None:
            return await self._fall_back(checks, now)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            self._pending_since = loop.time()
        self._pending.append(Pending(tag, checks, repr(now), future))
        if self._calling is None:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        elif self._overtaking is None:
            self._overtaking = loop.call_at(self._pending_since + self._settings.timeout * BEHIND_SHARE,
                                            self._overtake)
        try:
            answer = await future
        except StoreUnavailable as exc:
            self._guard.failed(exc, ticket)
            return await self._fall_back(checks, now)
        self._breaker.succeeded()
        decided = outcomes(answer)
        self._remember_over_limit(checks, decided, now)
        return decided

    def known_over_limit(self, checks: list[Check], now: float) -> list[Outcome] | None:
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

    def _remember_over_limit(self, checks: list[Check], decided: list[Outcome], now: float) -> None:
        for check, outcome in zip(checks, decided, strict=True):
            # Rate and quota rejections stay true until retry_after whatever other gateways do
            # (for requests of the same cost: a cheaper one may fit sooner); a concurrency slot
            # can free at any moment, so those are always asked.
            if not outcome.allowed and not check.shadow and check.kind in (RATE, QUOTA) and outcome.retry_after > 0:
                self._over_limit[_known_key(check)] = now + outcome.retry_after
        if len(self._over_limit) > 100_000:
            self._over_limit.clear()

    async def _fall_back(self, checks: list[Check], now: float) -> list[Outcome]:
        mode = self._settings.on_failure
        if self._guard.metrics is not None:
            self._guard.metrics.fallbacks.labels(mode).inc()
        if mode == "closed":
            raise StoreUnavailable("state store unavailable")
        if mode == "open":
            return [Outcome(True, 0.0, 0.0) for _ in checks]
        return self.local.evaluate_now(checks, now)

    # -- batching -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._calling is not None or not self._pending:
            return  # the call in flight sends this batch when it is decided
        if self._overtaking is not None:
            self._overtaking.cancel()
            self._overtaking = None
        batch, self._pending = self._pending, []
        self._calling = batch
        loop = asyncio.get_running_loop()
        # One timer for the batch, from its first request's arrival: none waits longer than the timeout.
        timer = loop.call_at(self._pending_since + self._settings.timeout, self._expire, batch)
        task = loop.create_task(self._run(batch))

        def done(_: object) -> None:
            timer.cancel()
            self._decided(batch)

        task.add_done_callback(done)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _overtake(self) -> None:
        """The call in flight is slow: the waiting batch goes now, on another connection."""
        self._overtaking = None
        if self._calling is not None and self._pending:
            self._decided(self._calling)

    def _expire(self, batch: list[Pending]) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(StoreUnavailable("state store timed out"))
        self._decided(batch)  # the next batch goes on another connection, without waiting for this one

    def _decided(self, batch: list[Pending]) -> None:
        """`batch` has its answers (or its errors): the requests that arrived meanwhile go next."""
        if self._calling is not batch:
            return
        self._calling = None
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        calls = self._calls(batch)
        try:
            if self._sha is None:
                await self._load_script()
            replies = await self._evalsha_all(calls)
            lost = [i for i, reply in enumerate(replies) if isinstance(reply, redis_errors.NoScriptError)]
            if lost:
                # A node restarted or flushed its scripts. Only its calls are sent again: the
                # others already ran, and running them twice would take their units twice.
                await self._load_script()
                for i, reply in zip(lost, await self._evalsha_all([calls[i] for i in lost]), strict=True):
                    replies[i] = reply
        except REDIS_FAILURES as exc:
            for pending in batch:
                _fail(pending.future, exc)
            return
        if self._guard.metrics is not None:
            self._guard.metrics.latency.observe(time.perf_counter() - started)
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, BaseException):
                for pending in call:
                    _fail(pending.future, reply)
                continue
            for pending, answer in zip(call, answers(reply), strict=True):
                if pending.future.cancelled():
                    self._give_back_abandoned(pending.checks, answer)
                elif not pending.future.done():
                    pending.future.set_result(answer)

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

    def _give_back_abandoned(self, checks: list[Check], answer: str) -> None:
        """The client left while Redis decided: release any slot the script took for it."""
        decided = outcomes(answer)
        if any(not o.allowed and not c.shadow for c, o in zip(checks, decided, strict=True)):
            return  # rejected: nothing was taken
        slots = [(c.key, c.token) for c, o in zip(checks, decided, strict=True) if c.kind == CONCURRENCY and o.allowed]
        if slots:
            task = asyncio.get_running_loop().create_task(self._release("", slots))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _load_script(self) -> None:
        # Concurrent batches share one SCRIPT LOAD.
        if self._script_loading is None or self._script_loading.done():
            self._script_loading = asyncio.ensure_future(self._client.script_load(SCRIPT))
        try:
            self._sha = await asyncio.shield(self._script_loading)
        except BaseException:
            self._script_loading = None
            raise

    async def _evalsha_all(self, calls: list[list[Pending]]) -> list[Reply]:
        clock = self._clock_argument
        if self._cluster:
            # Cluster pipelines refuse EVALSHA; concurrent calls still share connections per node.
            arguments = [evalsha_arguments(clock, call) for call in calls]
            return await asyncio.gather(
                *(self._client.evalsha(self._sha, len(keys), *keys, *args) for keys, args in arguments),
                return_exceptions=True,
            )
        # One write and one read on the limits' own connection (redis_wire.Line), without
        # redis-py's Pipeline object: measured, its per-command bookkeeping cost more than the
        # rest of the request.
        await self._guard.before_probe()
        sha, clock_arg = bulk(self._sha or ""), bulk(clock)
        payload = b"".join(evalsha_command(sha, clock_arg, call) for call in calls)
        return await self._guard.line.send(payload, len(calls))


def _known_key(check: Check) -> KnownKey:
    return check.key, check.cost, check.interval, check.burst, check.limit


def _fail(future: asyncio.Future[str], exc: BaseException) -> None:
    if not future.done():
        error = StoreUnavailable(str(exc) or type(exc).__name__)
        error.__cause__ = exc
        future.set_exception(error)

"""The limits stage of the request path: build the request's checks, ask the state store
once, turn the answer into a decision and headers; after the response, give back concurrency
slots and add measured usage, off the request path."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

from gateway.auth.identity import Identity
from gateway.clock import Clock
from gateway.config import Route
from gateway.limits.policy import CONCURRENCY, QUOTA, RATE, CompiledLimit, EffectiveLimits, PlanBook
from gateway.limits.stats import LimitStats
from gateway.state import store as st
from gateway.state.store import Check, Outcome, StateStore

log = logging.getLogger("fairgate.limits")

_KINDS = {RATE: st.RATE, CONCURRENCY: st.CONCURRENCY, QUOTA: st.QUOTA}
# A lost gateway's concurrency slot frees itself after this long (Redis only).
_SLOT_LEASE = 600.0
_NEAR_LIMIT = 0.1


@dataclass(slots=True)
class Admission:
    """What the limits decided for one request."""

    plan: str | None = None
    priority: int = 0
    tag: str = ""
    rejected: tuple[CompiledLimit, ...] = ()
    retry_after: float = 0.0
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    slots: list[tuple[str, str]] = field(default_factory=list)
    # quotas measured after the response: (limit, key, period end)
    metered: list[tuple[CompiledLimit, str, float]] = field(default_factory=list)


NO_LIMITS = Admission()


class Limiter:
    def __init__(
        self,
        book: PlanBook,
        store: StateStore,
        stats: LimitStats,
        clock: Clock,
        *,
        key_prefix: str,
        ratelimit_headers: bool,
        legacy_headers: bool,
    ) -> None:
        self.book = book
        self.store = store
        self._stats = stats
        self._clock = clock
        self._prefix = key_prefix
        self._ratelimit_headers = ratelimit_headers
        self._legacy_headers = legacy_headers
        self._periods: dict[str, tuple[float, str, float]] = {}  # period -> (valid until, bucket id, end)
        self._pending_slots: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self._pending_usage: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
        self._flush_scheduled = False
        self._background: set[asyncio.Task] = set()

    async def admit(self, identity: Identity | None, route: Route, client_ip: str, request_id: str) -> Admission:
        now = self._clock.time()
        customer = identity.customer if identity is not None else None
        effective = self.book.for_customer(customer, now)
        if effective is None:
            return NO_LIMITS
        if not effective.limits:
            return Admission(plan=effective.plan, priority=effective.priority)
        subject = f"c:{customer}" if customer is not None else f"ip:{client_ip}"
        if "{" in subject or "}" in subject:
            subject = subject.replace("{", "%7B").replace("}", "%7D")
        values = {
            "customer": customer,
            "user": f"{identity.issuer}:{identity.user}" if identity is not None else None,
            "client_ip": client_ip,
            "route": route.name,
        }
        admission = Admission(plan=effective.plan, priority=effective.priority, tag=subject)
        limits: list[CompiledLimit] = []
        checks: list[Check] = []
        for limit in effective.limits:
            parts = [values[part] for part in limit.key_parts]
            if None in parts:
                continue  # e.g. a per-user limit on an anonymous request
            key = f"{self._prefix}:{{{subject}}}:{limit.name}:{'|'.join(parts)}"  # type: ignore[arg-type]
            limits.append(limit)
            checks.append(self._check(limit, key, route.cost, request_id, now, admission))
        if not checks:
            return admission
        outcomes = await self.store.evaluate(subject, checks, now)
        self._decide(admission, effective, limits, checks, outcomes)
        return admission

    def _check(self, limit: CompiledLimit, key: str, cost: int, request_id: str, now: float,
               admission: Admission) -> Check:
        shadow = limit.mode == "shadow"
        if limit.kind == RATE:
            return Check(st.RATE, key, shadow, interval=limit.interval, burst=limit.burst, cost=cost,
                         max_delay=limit.max_delay if limit.mode == "delay" else 0.0)
        if limit.kind == CONCURRENCY:
            return Check(st.CONCURRENCY, key, shadow, max=limit.max, token=request_id, lease=_SLOT_LEASE)
        bucket, period_end = self._period(limit.period, now)
        key = f"{key}:{bucket}"
        if limit.metric != "requests":
            admission.metered.append((limit, key, period_end))
        return Check(st.QUOTA, key, shadow, cost=cost if limit.metric == "requests" else 0.0, limit=limit.quota,
                     flag_only=limit.action == "flag", expires_at=period_end)

    def _decide(self, admission: Admission, effective: EffectiveLimits, limits: list[CompiledLimit],
                checks: list[Check], outcomes: list[Outcome]) -> None:
        rejected = []
        items = []
        tightest: tuple[float, CompiledLimit, Outcome] | None = None
        for limit, check, outcome in zip(limits, checks, outcomes):
            if self._ratelimit_headers or self._legacy_headers:
                items.append(_ratelimit_item(limit, outcome))
            capacity = _capacity(limit)
            if limit.kind != CONCURRENCY and capacity:
                share = outcome.remaining / capacity
                if tightest is None or share < tightest[0]:
                    tightest = (share, limit, outcome)
            if not outcome.allowed:
                if check.shadow:
                    self._stats.count(effective.plan, limit.name, "shadow_rejected")
                    log.info("shadow limit would reject", extra={"plan": effective.plan, "limit": limit.name,
                                                                   "tag": admission.tag})
                else:
                    rejected.append(limit)
                    admission.retry_after = max(admission.retry_after, outcome.retry_after)
                    self._stats.count(effective.plan, limit.name, "rejected")
                continue
            if outcome.over:
                self._stats.count(effective.plan, limit.name, "over_quota")
            elif capacity and outcome.remaining <= capacity * _NEAR_LIMIT:
                self._stats.count(effective.plan, limit.name, "near_limit")
            else:
                self._stats.count(effective.plan, limit.name, "allowed")
            admission.delay = max(admission.delay, outcome.delay)
            if limit.kind == CONCURRENCY:
                admission.slots.append((check.key, check.token))
        admission.rejected = tuple(rejected)
        if rejected:
            # Nothing was consumed: no slot to give back, no usage to meter.
            admission.slots = []
            admission.metered = []
            admission.delay = 0.0
        headers = admission.headers
        if self._ratelimit_headers:
            headers["RateLimit-Policy"] = effective.policy_header
            if items:
                headers["RateLimit"] = ", ".join(items)
        if self._legacy_headers and tightest is not None:
            _, limit, outcome = tightest
            headers["X-RateLimit-Limit"] = str(_capacity(limit))
            headers["X-RateLimit-Remaining"] = str(int(outcome.remaining))
            headers["X-RateLimit-Reset"] = str(math.ceil(outcome.reset))

    def finish(self, admission: Admission, bytes_transferred: int, upstream_seconds: float) -> None:
        """After the response, however it ended: release slots, meter usage (batched)."""
        if admission.slots:
            self._pending_slots[admission.tag].extend(admission.slots)
        for limit, key, period_end in admission.metered:
            amount = bytes_transferred if limit.metric == "bytes" else upstream_seconds
            if amount:
                self._pending_usage[admission.tag].append((key, float(amount), period_end))
        if (admission.slots or admission.metered) and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        slots, self._pending_slots = self._pending_slots, defaultdict(list)
        usage, self._pending_usage = self._pending_usage, defaultdict(list)
        task = asyncio.get_running_loop().create_task(self._write_back(slots, usage))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_back(self, slots: dict, usage: dict) -> None:
        try:
            await asyncio.gather(
                *(self.store.release(tag, items) for tag, items in slots.items()),
                *(self.store.add_usage(tag, items) for tag, items in usage.items()),
            )
        except Exception as exc:  # the store logs its own failures; leases expire by themselves
            log.warning("releasing limit state failed", extra={"error": str(exc)})

    async def drain(self) -> None:
        """Wait for write-backs in progress (graceful shutdown)."""
        if self._flush_scheduled:
            self._flush()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _period(self, period: str, now: float) -> tuple[str, float]:
        cached = self._periods.get(period)
        if cached is not None and now < cached[0]:
            return cached[1], cached[2]
        local = dt.datetime.fromtimestamp(now, self.book.zone)
        if period == "day":
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            bucket = start.strftime("%Y-%m-%d")
            end_local = (start + dt.timedelta(days=1)).replace(tzinfo=None)
        else:
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            bucket = start.strftime("%Y-%m")
            end_local = (start.replace(year=start.year + 1, month=1) if start.month == 12
                         else start.replace(month=start.month + 1)).replace(tzinfo=None)
        end = end_local.replace(tzinfo=self.book.zone).timestamp()  # the zone's offset at the end, not the start
        self._periods[period] = (end, bucket, end)
        return bucket, end


def _capacity(limit: CompiledLimit) -> float:
    if limit.kind == RATE:
        return limit.burst
    if limit.kind == CONCURRENCY:
        return limit.max
    return limit.quota


def _ratelimit_item(limit: CompiledLimit, outcome: Outcome) -> str:
    remaining = int(outcome.remaining)
    if limit.kind == CONCURRENCY:
        return f'"{limit.name}";r={remaining}'
    return f'"{limit.name}";r={remaining};t={math.ceil(outcome.reset)}'

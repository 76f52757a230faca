"""Plans compiled for the request path: the effective limits of each customer, with their
exceptions applied while they last."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypedDict

from gateway.config.limits import (
    ConcurrencyLimit,
    Customer,
    LimitSettings,
    Override,
    Plan,
    QuotaLimit,
    RateLimit,
    plan_of,
)
from gateway.fleet.grants import OVERRIDE, Grants
from gateway.state.store import CONCURRENCY, RATE, Kind


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    plan: str
    name: str
    kind: Kind
    key_parts: tuple[str, ...]
    mode: str  # enforce | shadow | delay
    # rate: seconds per unit (the emission interval) and bucket size
    interval: float = 0.0
    burst: int = 0
    max_delay: float = 0.0
    # concurrency
    max: int = 0
    # quota
    metric: str = ""
    period: str = ""
    quota: float = 0.0  # the customer's budget: per unit times `quantity` when counted `per` a unit
    action: str = "reject"
    per: str = ""  # the licensed unit the plan's budget is counted per, if any
    quantity: int = 1  # the customer's licensed quantity of `per`

    # Worked out once here, read on every request (properties cost a call each time).
    # Units when full: the burst, the slots, or the budget.
    capacity: float = field(init=False, compare=False)
    # Remaining units at or below which a decision counts as near the limit (10%).
    near_limit: float = field(init=False, compare=False)
    # The start of this limit's item in the `RateLimit` header: '"name";r='
    header_start: str = field(init=False, compare=False)
    # Its decision counts' key in LimitStats.
    stats_key: tuple[str, str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        capacity = float(self.burst if self.kind == RATE else self.max if self.kind == CONCURRENCY else self.quota)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "near_limit", capacity * 0.1)
        object.__setattr__(self, "header_start", f'"{self.name}";r=')
        object.__setattr__(self, "stats_key", (self.plan, self.name))

    @property
    def policy_header_item(self) -> str:
        """This limit in `RateLimit-Policy` (IETF httpapi ratelimit-headers draft)."""
        if self.kind == RATE:
            return f'"{self.name}";q={self.burst};w={_number(self.burst * self.interval)}'
        if self.kind == CONCURRENCY:
            return f'"{self.name}";q={self.max}'
        return f'"{self.name}";q={_number(self.quota)};w={86400 if self.period == "day" else 2592000}'


class _Common(TypedDict):
    """What every compiled limit takes from its config entry, whatever its kind."""

    plan: str
    name: str
    kind: Kind
    key_parts: tuple[str, ...]
    mode: str


class _Changes(TypedDict, total=False):
    """The numbers an exception replaces."""

    interval: float
    burst: int
    max: int
    quota: float
    mode: str


# A throttled plan's cache key: customer, claimed plan, claimed licences, throttle factor.
_ThrottledKey = tuple[str | None, str | None, tuple[tuple[str, int], ...], float]


def compile_limit(plan: str, limit: RateLimit | ConcurrencyLimit | QuotaLimit) -> CompiledLimit:
    base = _Common(plan=plan, name=limit.name, kind=Kind(limit.kind), key_parts=tuple(limit.key.split("+")),
                   mode=limit.mode)
    if isinstance(limit, RateLimit):
        interval = limit.rate.period_seconds / limit.rate.count
        return CompiledLimit(**base, interval=interval, burst=limit.burst, max_delay=limit.max_delay)
    if isinstance(limit, ConcurrencyLimit):
        return CompiledLimit(**base, max=limit.max)
    return CompiledLimit(**base, metric=limit.metric, period=limit.period, quota=limit.limit, action=limit.action,
                         per=limit.per or "")


def licensed_quantity(unit: str, listed: Mapping[str, int], claimed: tuple[tuple[str, int], ...]) -> int:
    """A customer's quantity of a licensed unit: its config entry wins over its token's claim;
    with neither, one unit (check-config insists on one of them for a listed customer)."""
    if unit in listed:
        return listed[unit]
    return next((quantity for name, quantity in claimed if name == unit), 1)


def per_unit(limit: CompiledLimit, quantity: int) -> CompiledLimit:
    """A quota counted per licensed unit: the plan's budget (or an exception's) times the quantity."""
    return replace(limit, quota=limit.quota * quantity, quantity=quantity)


def apply_override(limit: CompiledLimit, override: Override) -> CompiledLimit:
    changes: _Changes = {}
    if override.rate is not None:
        changes["interval"] = override.rate.period_seconds / override.rate.count
    if override.burst is not None:
        changes["burst"] = override.burst
    if override.max is not None:
        changes["max"] = override.max
    if override.quota is not None:
        changes["quota"] = override.quota
    if override.mode is not None:
        changes["mode"] = override.mode
    return replace(limit, **changes)


@dataclass(frozen=True, slots=True)
class EffectiveLimits:
    plan: str
    priority: int
    limits: tuple[CompiledLimit, ...]
    policy_header: str
    # Wall time at which an exception starts or stops applying; recompute then.
    valid_until: float
    uses_user: bool = False
    uses_client_ip: bool = False
    uses_route: bool = False  # else a customer's checks are the same on every route of the same cost
    # The token named a plan this config does not define: the default plan applies.
    unknown_claim: bool = False


class PlanBook:
    """Effective limits per customer, recomputed only when an exception expires.

    A customer's plan: its entry under `customers`; else the plan its token names (the issuer's
    `claims.plan`), when the config defines one of that name; else `default_plan`.
    """

    def __init__(self, settings: LimitSettings, plans: dict[str, Plan], customers: dict[str, Customer],
                 grants: Grants | None = None) -> None:
        self.zone = zoneinfo.ZoneInfo(settings.time_zone)
        self._grants = grants  # exceptions granted through the admin API
        self._grants_version = grants.version if grants is not None else 0
        self._plans = {name: tuple(compile_limit(name, limit) for limit in plan.limits) for name, plan in plans.items()}
        self._priorities = {name: plan.priority for name, plan in plans.items()}
        self._customers = dict(customers)
        self._default = settings.default_plan
        # Listed customers and those with an exception granted: by customer, or by (customer,
        # claimed plan, licensed quantities) for a token that names them.
        self._cache: dict[object, EffectiveLimits] = {}
        self._cache_bound = max(100_000, 2 * len(self._customers))  # every listed customer fits
        # Everyone else's limits depend only on what the token claims, so all of them share one
        # object per claim (the commonest: none): no entry per customer, however many there are.
        self._unlisted: EffectiveLimits | None = None
        self._unlisted_claims: dict[tuple[str | None, tuple[tuple[str, int], ...]], EffectiveLimits] = {}
        # Customers with an override granted (in force when the grants last changed).
        self._granted: frozenset[str] = self._granted_customers(0.0)
        self._throttled_cache: dict[_ThrottledKey, EffectiveLimits] = {}

    @property
    def max_priority(self) -> int:
        return max(self._priorities.values(), default=0)

    def for_customer(self, customer: str | None, now: float, throttle: float = 1.0,
                     claimed: str | None = None,
                     licenses: tuple[tuple[str, int], ...] = ()) -> EffectiveLimits | None:
        """The customer's limits now; `claimed` is the plan its token names, if any, and `licenses`
        the quantities it claims (quotas counted per unit)."""
        if self._grants is not None and self._grants.version != self._grants_version:
            self._cache.clear()
            self._unlisted = None
            self._unlisted_claims.clear()
            self._throttled_cache.clear()
            self._granted = self._granted_customers(now)
            self._grants_version = self._grants.version  # after: reading the grants may expire some
        if throttle != 1.0:
            return self._throttled(customer, now, throttle, claimed, licenses)
        if customer is None or (customer not in self._customers and customer not in self._granted):
            return self._unlisted_limits(now, claimed, licenses)
        cache_key = customer if claimed is None and not licenses else (customer, claimed, licenses)
        cached = self._cache.get(cache_key)
        if cached is not None and now < cached.valid_until:
            return cached
        effective = self._compute(customer, now, claimed, licenses)
        if effective is not None:
            if len(self._cache) > self._cache_bound:
                self._cache.clear()  # bounds a churn of claims (plans, quantities) by listed customers
            self._cache[cache_key] = effective
        return effective

    def _unlisted_limits(self, now: float, claimed: str | None,
                         licenses: tuple[tuple[str, int], ...]) -> EffectiveLimits | None:
        """The limits of a customer not listed and without a granted override (or of anonymous
        callers): the same for every such customer with the same claims."""
        if claimed is None and not licenses:
            if self._unlisted is None:
                self._unlisted = self._compute(None, now, None)
            return self._unlisted
        cached = self._unlisted_claims.get((claimed, licenses))
        if cached is None:
            cached = self._compute(None, now, claimed, licenses)
            if cached is None:
                return None
            if len(self._unlisted_claims) > 10_000:
                self._unlisted_claims.clear()  # a broken issuer could claim any plan name or quantity
            self._unlisted_claims[(claimed, licenses)] = cached
        return cached

    def _granted_customers(self, now: float) -> frozenset[str]:
        if self._grants is None:
            return frozenset()
        return frozenset(grant.customer for grant in self._grants.in_force(now)
                         if grant.kind == OVERRIDE and grant.customer is not None)

    def _throttled(self, customer: str | None, now: float, factor: float, claimed: str | None,
                   licenses: tuple[tuple[str, int], ...]) -> EffectiveLimits | None:
        """The customer's limits with every rate times `factor`; the same keys, so the buckets carry on."""
        cached = self._throttled_cache.get((customer, claimed, licenses, factor))
        if cached is not None and now < cached.valid_until:
            return cached
        effective = self.for_customer(customer, now, claimed=claimed, licenses=licenses)
        if effective is None:
            return None
        limits = tuple(replace(limit, interval=limit.interval / factor) if limit.kind == RATE else limit
                       for limit in effective.limits)
        throttled = replace(effective, limits=limits,
                            policy_header=", ".join(limit.policy_header_item for limit in limits))
        if len(self._throttled_cache) > 10_000:
            self._throttled_cache.clear()
        self._throttled_cache[(customer, claimed, licenses, factor)] = throttled
        return throttled

    def _compute(self, customer: str | None, now: float, claimed: str | None,
                 licenses: tuple[tuple[str, int], ...] = ()) -> EffectiveLimits | None:
        entry = self._customers.get(customer) if customer is not None else None
        unknown_claim = entry is None and claimed is not None and claimed not in self._plans
        plan = plan_of(self._customers, self._plans, self._default, customer, claimed)
        if plan is None:
            return None
        limits = list(self._plans[plan])
        valid_until = float("inf")
        granted = self._grants.overrides(customer, now) if self._grants is not None and customer is not None else []
        for override in [*(entry.overrides if entry is not None else ()), *granted]:
            ends = _ends_at(override.until, self.zone)
            if ends is not None and now >= ends:
                continue
            if ends is not None:
                valid_until = min(valid_until, ends)
            limits = [apply_override(limit, override) if limit.name == override.limit else limit for limit in limits]
        listed = entry.licenses if entry is not None else {}
        limits = [per_unit(limit, licensed_quantity(limit.per, listed, licenses)) if limit.per else limit
                  for limit in limits]
        return EffectiveLimits(
            plan=plan,
            priority=self._priorities[plan],
            limits=tuple(limits),
            policy_header=", ".join(limit.policy_header_item for limit in limits),
            valid_until=valid_until,
            uses_user=any("user" in limit.key_parts for limit in limits),
            uses_client_ip=any("client_ip" in limit.key_parts for limit in limits),
            uses_route=any("route" in limit.key_parts for limit in limits),
            unknown_claim=unknown_claim,
        )


def _ends_at(until: dt.date | dt.datetime | None, zone: zoneinfo.ZoneInfo) -> float | None:
    if until is None:
        return None
    if isinstance(until, dt.datetime):
        return (until if until.tzinfo else until.replace(tzinfo=zone)).timestamp()
    return dt.datetime.combine(until, dt.time(), tzinfo=zone).timestamp()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"

"""The limits stage of the request path: build the request's checks, ask the state store
once, turn the answer into a decision and headers; after the response, give back concurrency
slots and add measured usage, off the request path."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict

from gateway.auth.identity import Identity
from gateway.calendar import Calendar
from gateway.clock import Clock
from gateway.config import Route
from gateway.limits.policy import CompiledLimit, EffectiveLimits, PlanBook
from gateway.limits.stats import ALLOWED, NEAR_LIMIT, OVER_QUOTA, REJECTED, SHADOW_REJECTED, LimitStats
from gateway.state.bounded import BoundedTable
from gateway.state.store import CONCURRENCY, QUOTA, RATE, Check, Outcome, StateStore

log = logging.getLogger("fairgate.limits")

# A lost gateway's concurrency slot frees itself after this long (Redis only).
_SLOT_LEASE = 600.0
# A template is rebuilt at least this often, so one an idle customer left behind expires
# (`sweep`) and a customer in steady use pays a rebuild (a few µs) every few minutes.
_TEMPLATE_TTL = 300.0
# Unknown plan names logged once each, at most this many (a broken issuer could send any).
_MAX_LOGGED_PLANS = 100

Metered = tuple[CompiledLimit, str, float]  # a quota on bytes or upstream time: its limit, key, period end
# A template's key: the customer id; or (customer, user, address, route name or cost).
TemplateKey = str | tuple[str | None, str | None, str | None, str | int]


class Admission:
    """What the limits decided for one request."""

    __slots__ = ("plan", "priority", "tag", "rejected", "retry_after", "delay", "headers", "slots", "metered")

    def __init__(self, plan: str | None = None, priority: int = 0, tag: str = "") -> None:
        self.plan = plan
        self.priority = priority
        self.tag = tag
        self.rejected: tuple[CompiledLimit, ...] = ()
        self.retry_after = 0.0
        self.delay = 0.0
        self.headers: dict[str, str] = {}
        self.slots: list[tuple[str, str]] | tuple[()] = ()  # a list once a slot is taken
        # quotas measured after the response: (limit, key, period end)
        self.metered: tuple[Metered, ...] = ()


NO_LIMITS = Admission()


class Template:
    """The checks of every request with the same plan, subject, route (and user or address
    where a limit is keyed on them), built once and reused until a quota period ends."""

    __slots__ = ("effective", "subject", "limits", "checks", "concurrency", "metered", "valid_until")

    def __init__(self, effective: EffectiveLimits, subject: str, limits: tuple[CompiledLimit, ...],
                 checks: list[Check], metered: tuple[Metered, ...], valid_until: float) -> None:
        self.effective = effective
        self.subject = subject
        self.limits = limits
        self.checks = checks
        self.concurrency = tuple(i for i, check in enumerate(checks) if check.kind == CONCURRENCY)
        self.metered = metered
        self.valid_until = valid_until


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
        max_templates: int = 100_000,
    ) -> None:
        self.book = book
        self.store = store
        self._stats = stats
        self._clock = clock
        self._prefix = key_prefix
        self._ratelimit_headers = ratelimit_headers
        self._legacy_headers = legacy_headers
        self._calendar = Calendar(book.zone)
        # Least recently built first; past the bound (a churn of anonymous addresses) the oldest go.
        self.templates: BoundedTable[TemplateKey, Template] = BoundedTable(max_templates, _template_expired)
        self._pending_slots: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self._pending_usage: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
        self._flush_scheduled = False
        self._background: set[asyncio.Task[None]] = set()
        self._logged_plans: set[tuple[str, str]] = set()
        self._ttl_second = -math.inf  # see _template_end
        self._ttl_end = 0.0

    async def admit(self, identity: Identity | None, route: Route, client_ip: str, request_id: str,
                    throttle: float = 1.0) -> Admission:
        """Decide the request's limits; `throttle` < 1 scales every rate limit down (a throttled standing)."""
        now = self._clock.time()
        customer = identity.customer if identity is not None else None
        claimed = identity.plan if identity is not None else None
        effective = self.book.for_customer(customer, now, throttle, claimed,
                                           identity.licenses if identity is not None else ())
        if identity is not None and claimed is not None and (effective is None or effective.unknown_claim):
            self._unknown_plan(identity.issuer, claimed)
        if effective is None:
            return NO_LIMITS
        if not effective.limits:
            return Admission(effective.plan, effective.priority)
        user = f"{identity.issuer}:{identity.user}" if identity is not None and effective.uses_user else None
        address = client_ip if effective.uses_client_ip or customer is None else None
        # A customer's checks differ between routes only by the route's cost, unless a limit is
        # keyed on the route: one template serves every route of the same cost.
        on_route = route.name if effective.uses_route else route.cost
        # The commonest case (a customer's own limits, routes of cost 1) is keyed by the customer
        # id alone: no tuple kept per customer. A str key never equals a tuple key.
        cache_key: TemplateKey = (customer if customer is not None and user is None and address is None
                                  and on_route == 1 else (customer, user, address, on_route))
        template = self.templates.get(cache_key)
        if template is None or template.effective is not effective or now >= template.valid_until:
            template = self._template(effective, customer, user, client_ip, route, now)
            self.templates.put(cache_key, template)
        admission = Admission(effective.plan, effective.priority, template.subject)
        checks = template.checks
        if not checks:
            return admission
        if template.concurrency:
            checks = list(checks)
            for index in template.concurrency:
                checks[index] = checks[index].with_token(request_id)
        outcomes = self.store.evaluate_now(checks, now)
        if outcomes is None:
            outcomes = await self.store.evaluate(template.subject, checks, now)
        self._decide(admission, template, checks, outcomes)
        return admission

    def _unknown_plan(self, issuer: str, plan: str) -> None:
        """A token named a plan this config does not define: counted, logged once per name."""
        self._stats.unknown_plan(issuer)
        if (issuer, plan) not in self._logged_plans and len(self._logged_plans) < _MAX_LOGGED_PLANS:
            self._logged_plans.add((issuer, plan))
            log.warning("a token names a plan the config does not define; the default plan applies",
                        extra={"issuer": issuer, "plan": plan[:100]})

    def _template(self, effective: EffectiveLimits, customer: str | None, user: str | None, client_ip: str,
                  route: Route, now: float) -> Template:
        subject = f"c:{customer}" if customer is not None else f"ip:{client_ip}"
        if "{" in subject or "}" in subject:
            subject = subject.replace("{", "%7B").replace("}", "%7D")
        values = {"customer": customer, "user": user, "client_ip": client_ip, "route": route.name}
        limits: list[CompiledLimit] = []
        checks: list[Check] = []
        metered: list[Metered] = []
        valid_until = self._template_end(now)
        for limit in effective.limits:
            parts = [value for part in limit.key_parts if (value := values[part]) is not None]
            if len(parts) < len(limit.key_parts):
                continue  # e.g. a per-user limit on an anonymous request
            key = f"{self._prefix}:{{{subject}}}:{limit.name}:{'|'.join(parts)}"
            shadow = limit.mode == "shadow"
            if limit.kind == RATE:
                check = Check(RATE, key, shadow, interval=limit.interval, burst=limit.burst, cost=route.cost,
                              max_delay=limit.max_delay if limit.mode == "delay" else 0.0)
            elif limit.kind == CONCURRENCY:
                check = Check(CONCURRENCY, key, shadow, max=limit.max, lease=_SLOT_LEASE)
            else:
                bucket, period_end = self._calendar.period(limit.period, now)
                valid_until = min(valid_until, period_end)
                key = f"{key}:{bucket}"
                if limit.metric != "requests":
                    metered.append((limit, key, period_end))
                check = Check(QUOTA, key, shadow, cost=route.cost if limit.metric == "requests" else 0.0,
                              limit=limit.quota, flag_only=limit.action == "flag", expires_at=period_end)
            self._stats.tally(limit.stats_key)  # exists from now on, for _decide
            limits.append(limit)
            checks.append(check)
        # Every limit applies (the commonest): the plan's own tuple, not a copy per template.
        kept = effective.limits if len(limits) == len(effective.limits) else tuple(limits)
        return Template(effective, subject, kept, checks[:], tuple(metered), valid_until)

    def _template_end(self, now: float) -> float:
        """When a template built now ends: `_TEMPLATE_TTL` after the start of the current second,
        one float shared by the templates built in that second (not 24 bytes more per customer)."""
        if not self._ttl_second <= now < self._ttl_second + 1.0:
            self._ttl_second = now
            self._ttl_end = now + _TEMPLATE_TTL
        return self._ttl_end

    def _decide(self, admission: Admission, template: Template, checks: list[Check],
                outcomes: list[Outcome]) -> None:
        tallies = self._stats.tallies  # every limit of a template has one (see _template)
        ratelimit_headers = self._ratelimit_headers
        rejected = []
        items = []
        tightest: tuple[float, CompiledLimit, Outcome] | None = None
        for limit, check, outcome in zip(template.limits, checks, outcomes, strict=True):
            if ratelimit_headers:
                remaining = int(outcome.remaining)
                items.append(f"{limit.header_start}{remaining}" if limit.kind == CONCURRENCY
                             else f"{limit.header_start}{remaining};t={math.ceil(outcome.reset)}")
            if not outcome.allowed:
                if check.shadow:
                    # Counted, not logged: a shadowed limit may "reject" thousands of times a second.
                    tallies[limit.stats_key][SHADOW_REJECTED] += 1
                else:
                    rejected.append(limit)
                    if outcome.retry_after > admission.retry_after:
                        admission.retry_after = outcome.retry_after
                    tallies[limit.stats_key][REJECTED] += 1
            elif outcome.over:
                tallies[limit.stats_key][OVER_QUOTA] += 1
            elif outcome.remaining <= limit.near_limit:
                tallies[limit.stats_key][NEAR_LIMIT] += 1
            else:
                tallies[limit.stats_key][ALLOWED] += 1
            if outcome.delay > admission.delay:
                admission.delay = outcome.delay
            if self._legacy_headers and limit.kind != CONCURRENCY:
                share = outcome.remaining / limit.capacity
                if tightest is None or share < tightest[0]:
                    tightest = (share, limit, outcome)
        headers = admission.headers
        if ratelimit_headers:
            headers["RateLimit-Policy"] = template.effective.policy_header
            headers["RateLimit"] = ", ".join(items)
        if tightest is not None:
            _, limit, outcome = tightest
            headers["X-RateLimit-Limit"] = str(int(limit.capacity))
            headers["X-RateLimit-Remaining"] = str(int(outcome.remaining))
            headers["X-RateLimit-Reset"] = str(math.ceil(outcome.reset))
        if rejected:
            # Nothing was consumed: no slot to give back, no usage to meter.
            admission.rejected = tuple(rejected)
            admission.delay = 0.0
            return
        if template.concurrency:
            admission.slots = [(checks[index].key, checks[index].token) for index in template.concurrency
                               if outcomes[index].allowed]
        admission.metered = template.metered

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

    async def _write_back(self, slots: dict[str, list[tuple[str, str]]],
                          usage: dict[str, list[tuple[str, float, float]]]) -> None:
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


def _template_expired(template: Template, now: float) -> bool:
    return now >= template.valid_until


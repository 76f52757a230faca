"""Plans, customers and the state store: the fair-use limits of the subscription."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Container, Mapping
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator

from gateway.config.detection import SharingAllowance
from gateway.config.enforcement import Advice
from gateway.config.state_url import StateUrl, parse_state_url
from gateway.config.types import Duration, Section, UnitName, frozen_mapping
from gateway.config.units import (
    PRICE_HINT,
    RATE_HINT,
    FixedRate,
    Rate,
    parse_duration,
    parse_fixed_rate,
    parse_price,
    parse_rate,
    parse_size,
)

_RATE_SCHEMA = WithJsonSchema(
    {"type": "string", "pattern": r"^\d+\s*/\s*(\d+(\.\d+)?)?\s*[a-z]+$", "description": RATE_HINT})
RateValue = Annotated[Rate, BeforeValidator(parse_rate), _RATE_SCHEMA]
FixedRateValue = Annotated[FixedRate, BeforeValidator(parse_fixed_rate), _RATE_SCHEMA]
KEY_PARTS = ("customer", "user", "client_ip", "route")
_KEY_RE = re.compile(rf"^({'|'.join(KEY_PARTS)})(\+({'|'.join(KEY_PARTS)}))*$")
LimitName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Price = Annotated[Decimal, BeforeValidator(parse_price),
                  WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                                            {"type": "number", "minimum": 0}], "description": PRICE_HINT})]
Quantities = Annotated[Mapping[UnitName, Annotated[int, Field(ge=1)]], AfterValidator(frozen_mapping)]


def _check_key(value: str) -> str:
    if not _KEY_RE.match(value):
        raise ValueError(f"expected one of {', '.join(KEY_PARTS)} or a '+' composite such as customer+route, "
                         f"got {value!r}")
    parts = value.split("+")
    if len(set(parts)) != len(parts):
        raise ValueError(f"a key part appears twice in {value!r}")
    return value


LimitKey = Annotated[str, BeforeValidator(lambda v: _check_key(str(v)))]


class _Limit(Advice):
    name: LimitName = Field(description="Unique within the plan; names the limit in headers, problems and metrics.")
    key: LimitKey = Field("customer", description="What is counted separately: customer, user, client_ip, route, "
                                                  "or a composite such as customer+route.")
    mode: Literal["enforce", "shadow"] = Field("enforce", description="shadow: decide and count, never block.")


class RateLimit(_Limit):
    """A token bucket (GCRA): `rate` sustained, up to `burst` at once."""

    kind: Literal["rate"]
    rate: FixedRateValue = Field(description="Sustained rate, e.g. 1/s or 600/min (calendar months not allowed).")
    burst: int = Field(ge=1, description="Requests (cost units) allowed at once from a full bucket.")
    mode: Literal["enforce", "shadow", "delay"] = Field(  # type: ignore[assignment]  # delay is for rate limits only
        "enforce", description="delay: hold a request until the bucket allows it, up to max_delay, else reject."
    )
    max_delay: Duration = Field(0.0, description="With mode delay: the longest a request is held.")

    @model_validator(mode="after")
    def _delay_needs_max_delay(self) -> RateLimit:
        if self.mode == "delay" and self.max_delay <= 0:
            raise ValueError("max_delay: mode delay needs a max_delay above 0")
        return self


class ConcurrencyLimit(_Limit):
    """Requests in flight at once."""

    kind: Literal["concurrency"]
    max: int = Field(ge=1, description="Most requests in flight at once per key.")


class Overage(Section):
    """What usage beyond a quota costs: `price` per `unit` of the quota's metric, in `currency`."""

    price: Price = Field(description="Price of one `unit` beyond the quota, e.g. \"0.05\" (quoted: a decimal).")
    unit: str | int = Field(1, description="How much of the metric one price buys: a duration for upstream_seconds "
                                           "(1min), a size for bytes (1GB), a count for requests (1000).")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code the price is in.")

    def unit_amount(self, metric: str) -> Decimal:
        """One `unit` in the metric's own units (seconds, bytes, cost units); above zero."""
        if metric == "upstream_seconds":
            amount = Decimal(str(parse_duration(self.unit)))
        elif metric == "bytes":
            amount = Decimal(parse_size(self.unit))
        elif isinstance(self.unit, int) or self.unit.isdigit():
            amount = Decimal(int(self.unit))
        else:
            raise ValueError(f"expected a whole number of requests, got {self.unit!r}")
        if amount <= 0:
            raise ValueError(f"a price is for more than nothing, got {self.unit!r}")
        return amount


class QuotaLimit(_Limit):
    """A budget per calendar day or month, in the configured time zone."""

    kind: Literal["quota"]
    metric: Literal["requests", "bytes", "upstream_seconds"] = Field(
        description="requests (weighted by route cost), request+response bytes, or the time the upstream spent "
                    "answering (the policy's 'minutes')."
    )
    period: Literal["day", "month"]
    limit: float = Field(gt=0, description="Budget per period.")
    action: Literal["reject", "flag"] = Field(
        "reject", description="reject: 429 once used up; flag: allow and count the overage (billing)."
    )
    per: UnitName | None = Field(None, description="A licensed unit (ports, seats, ...): `limit` is per unit, and "
                                                   "the customer's budget is `limit` times its quantity of it.")
    overage: Overage | None = Field(None, description="The estimated fee for usage beyond the quota.")

    @model_validator(mode="after")
    def _overage_unit(self) -> QuotaLimit:
        if self.overage is not None:
            try:
                self.overage.unit_amount(self.metric)
            except ValueError as exc:
                raise ValueError(f"overage: unit: {exc}") from None
        return self


Limit = Annotated[RateLimit | ConcurrencyLimit | QuotaLimit, Field(discriminator="kind")]


class Plan(Section):
    priority: int = Field(0, ge=0, le=100, description="When an upstream is saturated, lower priorities shed first.")
    limits: tuple[Limit, ...] = ()
    seats: int | None = Field(None, ge=1, description="Licensed users: distinct active users per month beyond it "
                                                      "are a seats finding (detection.seats).")
    sharing: SharingAllowance | None = Field(None, description="This plan's allowance for the sharing detector "
                                                               "(default: detection.sharing.allowance).")

    @model_validator(mode="after")
    def _unique_names(self) -> Plan:
        names = [limit.name for limit in self.limits]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"limits: duplicate limit names {duplicates}")
        return self


class Override(Section):
    """An exception by agreement: new numbers for one limit of the customer's plan."""

    limit: LimitName = Field(description="Name of the plan's limit this replaces numbers of.")
    rate: FixedRateValue | None = Field(None, description="A token bucket's new rate (calendar months not allowed).")
    burst: int | None = Field(None, ge=1)
    max: int | None = Field(None, ge=1)
    quota: float | None = Field(None, gt=0, description="New budget for a quota limit.")
    mode: Literal["enforce", "shadow"] | None = None
    until: dt.date | dt.datetime | None = Field(None, description="The exception ends at this date (exclusive).")

    def misfits(self, kind: str) -> list[str]:
        """The numbers given that a limit of this kind has no use for (`max` for a token bucket, ...)."""
        return [key for key in OVERRIDE_NUMBERS if getattr(self, key) is not None and key not in _FITS[kind]]


OVERRIDE_NUMBERS = ("rate", "burst", "max", "quota", "mode")
_FITS = {"rate": {"rate", "burst", "mode"}, "concurrency": {"max", "mode"}, "quota": {"quota", "mode"}}


class Customer(Section):
    plan: str = Field(description="Name of an entry in `plans`.")
    overrides: tuple[Override, ...] = ()
    licenses: Quantities = Field(default_factory=lambda: frozen_mapping({}),
                                 description="Licensed quantities by unit, e.g. {ports: 12}, for quotas counted "
                                             "`per` unit; they win over a token's claim.")


class StateSettings(Section):
    """Where limit state lives: this process's memory, or Redis shared by a fleet."""

    url: str = Field("memory://", description="memory://, redis://HOST:PORT/DB, rediss://..., "
                                              "redis+cluster://HOST:PORT, redis+sentinel://HOST:PORT/SERVICE/DB")
    key_prefix: str = Field("fairgate", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    timeout: Duration = Field(0.5, description="Longest a request waits on the state store (measured: see "
                                               "bench/store_latency.py).")
    on_failure: Literal["open", "closed", "local"] = Field(
        "local", description="Redis unreachable: open allows, closed answers 503, local limits per instance."
    )
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures that open the circuit.")
    breaker_cooldown: Duration = Field(2.0, description="How long the circuit stays open before a trial.")
    max_memory_keys: int = Field(1_000_000, ge=1000, description="Memory store bound; idle keys go first.")
    idle_ttl: Duration = Field(3600.0, ge=60.0, description="A memory-store rate bucket unused this long (and "
                                                            "full again) is forgotten by the sweep.")
    max_sighting_keys: int | None = Field(
        None, ge=1000, description="Memory store: detection sightings kept at most (keys); the least recently "
                                   "written go first. Unset: 6 x detection.max_tracked. Read at start.")

    @model_validator(mode="after")
    def _scheme(self) -> StateSettings:
        try:
            parse_state_url(self.url)
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        return self

    @property
    def parsed_url(self) -> StateUrl:
        return parse_state_url(self.url)


class LimitSettings(Section):
    default_plan: str | None = Field(None, description="Plan of callers not in `customers` (and anonymous ones).")
    time_zone: str = Field("UTC", description="IANA zone that days and months of quotas follow.")
    ratelimit_headers: bool = Field(True, description="Send RateLimit-Policy and RateLimit on every response.")
    legacy_headers: bool = Field(False, description="Also send X-RateLimit-Limit/-Remaining/-Reset.")
    # As many as the memory store keeps buckets: a bound below the customers in rotation would
    # rebuild a template on every request (measured: 2-3x the limits' CPU at 200,000 customers).
    max_templates: int = Field(1_000_000, ge=100, description="Request templates (the checks of one customer, "
                                                              "user or address and route cost) kept at most.")

    @model_validator(mode="after")
    def _zone(self) -> LimitSettings:
        try:
            zoneinfo.ZoneInfo(self.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_zone: unknown time zone {self.time_zone!r}") from None
        return self


Plans = Annotated[dict[str, Plan], AfterValidator(frozen_mapping)]
Customers = Annotated[dict[str, Customer], AfterValidator(frozen_mapping)]


def plan_of(customers: Mapping[str, Customer], plans: Container[str], default_plan: str | None,
            customer: str | None, claimed: str | None = None) -> str | None:
    """Which plan a customer is on: its entry under `customers` wins; else the plan its token
    claims (the issuer's `claims.plan`), when a plan of that name is defined; else `default_plan`."""
    entry = customers.get(customer) if customer is not None else None
    if entry is not None:
        return entry.plan
    if claimed is not None and claimed in plans:
        return claimed
    return default_plan

"""Per-limit decision counts (and tokens naming an unknown plan), kept as plain integers and
exported when /metrics is scraped."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class LimitStats(Collector):
    """fairgate_limit_decisions_total{plan, limit, result}: allowed, near_limit, rejected,
    shadow_rejected, over_quota; fairgate_unknown_plan_claims_total{issuer}: requests of unlisted
    customers whose token named a plan the config does not define (limited by `default_plan`)."""

    def __init__(self) -> None:
        self._counts: Tally[tuple[str, str, str]] = Tally()
        self._unknown_plans: Tally[str] = Tally()

    def count(self, plan: str, limit: str, result: str) -> None:
        self._counts[(plan, limit, result)] += 1

    def value(self, plan: str, limit: str, result: str) -> int:
        return self._counts[(plan, limit, result)]

    def unknown_plan(self, issuer: str) -> None:
        self._unknown_plans[issuer] += 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "fairgate_limit_decisions", "Limit decisions, by plan, limit and result.",
            labels=["plan", "limit", "result"],
        )
        for (plan, limit, result), count in list(self._counts.items()):
            family.add_metric([plan, limit, result], count)
        yield family
        unknown = CounterMetricFamily(
            "fairgate_unknown_plan_claims",
            "Requests of customers not listed under `customers` whose token named a plan the config does not "
            "define; `default_plan` applied.", labels=["issuer"])
        for issuer, count in list(self._unknown_plans.items()):
            unknown.add_metric([issuer], count)
        yield unknown

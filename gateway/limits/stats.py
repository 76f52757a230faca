"""Per-limit decision counts (and tokens naming an unknown plan), kept as plain integers and
exported when /metrics is scraped."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# The results of one limit's decision, in the order of a tally's counts.
RESULTS = ("allowed", "near_limit", "rejected", "shadow_rejected", "over_quota")
ALLOWED, NEAR_LIMIT, REJECTED, SHADOW_REJECTED, OVER_QUOTA = range(len(RESULTS))


class LimitStats(Collector):
    """fairgate_limit_decisions_total{plan, limit, result}: allowed, near_limit, rejected,
    shadow_rejected, over_quota; fairgate_unknown_plan_claims_total{issuer}: requests of unlisted
    customers whose token named a plan the config does not define (limited by `default_plan`)."""

    def __init__(self) -> None:
        # (plan, limit) -> one count per result: the request path adds to a list it looked up
        # once per limit, instead of hashing a new (plan, limit, result) key per decision.
        # Read directly by the limiter for (plan, limit)s it looked up through `tally` before.
        self.tallies: dict[tuple[str, str], list[int]] = {}
        self._unknown_plans: Tally[str] = Tally()

    def tally(self, key: tuple[str, str]) -> list[int]:
        """The counts of one (plan, limit), indexed by ALLOWED, NEAR_LIMIT, ... (kept for good)."""
        counts = self.tallies.get(key)
        if counts is None:
            counts = self.tallies[key] = [0] * len(RESULTS)
        return counts

    def count(self, plan: str, limit: str, result: str) -> None:
        self.tally((plan, limit))[RESULTS.index(result)] += 1

    def value(self, plan: str, limit: str, result: str) -> int:
        counts = self.tallies.get((plan, limit))
        return counts[RESULTS.index(result)] if counts is not None else 0

    def unknown_plan(self, issuer: str) -> None:
        self._unknown_plans[issuer] += 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "fairgate_limit_decisions", "Limit decisions, by plan, limit and result.",
            labels=["plan", "limit", "result"],
        )
        for (plan, limit), counts in list(self.tallies.items()):
            for result, count in zip(RESULTS, counts, strict=True):
                if count:  # as before: a result never seen is not exported
                    family.add_metric([plan, limit, result], count)
        yield family
        unknown = CounterMetricFamily(
            "fairgate_unknown_plan_claims",
            "Requests of customers not listed under `customers` whose token named a plan the config does not "
            "define; `default_plan` applied.", labels=["issuer"])
        for issuer, count in list(self._unknown_plans.items()):
            unknown.add_metric([issuer], count)
        yield unknown

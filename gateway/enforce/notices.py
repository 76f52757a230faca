"""What a warning says (the policy's "a warning with recommendations to adjust usage"): for each
limit or detector behind a standing, what was seen, what is allowed, a plain recommendation and
the policy clause. Written from the numbers of the limit or finding; the config may word the
recommendation and link the clause per limit and detector."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig
from gateway.config.enforcement import Advice
from gateway.detect.findings import SCRAPING, SEATS, SHARING, Finding
from gateway.enforce.ladder import _span
from gateway.limits.policy import CompiledLimit
from gateway.state.store import CONCURRENCY, RATE

# Notices a standing keeps at most: the latest sources first.
MAX_NOTICES = 5
_HEADER_ADVICE = 120  # characters of the recommendation Fair-Use-Warning carries (the bodies carry it all)

_SIGNALS = {
    "automation_agent": "an automation user agent", "no_browser_signals": "no browser headers",
    "no_browser_proof": "pages loaded without proof of a browser", "regular_cadence": "machine-regular timing",
    "enumeration": "ids walked in sequence", "crawl_breadth": "many distinct pages a minute",
    "invalid_destinations": "many requests for missing pages", "agent_rotation": "rotating user agents",
    "looping": "the same request repeated",
}


@dataclass(frozen=True, slots=True)
class Notice:
    source: str  # the limit's or detector's name
    observed: str
    allowed: str
    recommendation: str
    clause: str  # link to the policy clause
    count: int = 1  # violations of this source behind the standing

    @property
    def text(self) -> str:
        return (f"{self.source}: {self.observed} (allowed: {self.allowed}). "
                f"{self.recommendation[:1].upper()}{self.recommendation[1:]}. Policy: {self.clause}")

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "observed": self.observed, "allowed": self.allowed,
                "recommendation": self.recommendation, "policy": self.clause, "count": self.count, "text": self.text}


def merged(latest: list[dict[str, Any]], earlier: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """This batch's notices (as_json) first, then earlier ones of other sources; at most MAX_NOTICES."""
    sources = {notice["source"] for notice in latest}
    return (*latest, *(notice for notice in earlier if notice["source"] not in sources))[:MAX_NOTICES]


def header_params(notices: tuple[dict[str, Any], ...], policy: str) -> str:
    """`reasons=(...)`, a short `advice` and the `policy` clause for Fair-Use-Warning, as
    structured-field strings; the bodies and alerts carry the notices in full."""
    if not notices:
        return f", policy={_sf_string(policy)}"
    reasons = " ".join(_sf_string(notice["source"]) for notice in notices)
    return (f", reasons=({reasons}), advice={_sf_string(notices[0]['recommendation'][:_HEADER_ADVICE])}, "
            f"policy={_sf_string(notices[0].get('policy') or policy)}")


def _sf_string(text: str) -> str:
    printable = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


class NoticeBook:
    """Notices written from one config: the plans' limits, the detectors, the policy's link."""

    def __init__(self, config: GatewayConfig) -> None:
        self._policy = config.enforcement.policy
        self._advice: dict[tuple[str, str], Advice] = {
            (plan_name, limit.name): limit for plan_name, plan in config.plans.items() for limit in plan.limits}
        detection = config.detection
        self._detectors: dict[str, Advice] = {SHARING: detection.sharing, SCRAPING: detection.scraping,
                                              SEATS: detection.seats}
        self._threshold = detection.scraping.threshold
        self._windows = detection.sharing.windows

    def _clause(self, advice: Advice | None) -> str:
        return advice.clause if advice is not None and advice.clause else self._policy

    def for_limit(self, limit: CompiledLimit, count: int, throttle: float = 1.0) -> Notice:
        """`throttle` < 1: the standing throttles the plan's rates, so less is allowed from now on."""
        advice = self._advice.get((limit.plan, limit.name))
        refused = f"{_counted(count, 'requests')} refused"
        if limit.kind == RATE:
            rate = _rate(throttle / limit.interval)
            allowed = f"{rate} sustained, bursts of up to {limit.burst}"
            if throttle != 1.0:
                allowed = f"{rate} sustained while throttled (normally {_rate(1.0 / limit.interval)}), " \
                          f"bursts of up to {limit.burst}"
            recommendation = f"spread calls to at most {rate}"
        elif limit.kind == CONCURRENCY:
            allowed = f"{_counted(limit.max, 'requests')} in flight at once"
            recommendation = f"keep at most {limit.max} in flight: wait for answers before sending more"
        else:
            budget = _amount(limit.metric, limit.quota)
            allowed = f"{budget} per {limit.period}"
            if limit.per:
                allowed += f" ({_amount(limit.metric, limit.quota / limit.quantity)} x {limit.quantity} {limit.per})"
            refused = f"the {limit.period}'s {budget} used up, {refused}"
            recommendation = f"use less until the {limit.period} ends, or ask about a plan with more"
        if advice is not None and advice.recommendation:
            recommendation = advice.recommendation
        return Notice(limit.name, refused, allowed, recommendation, self._clause(advice), count)

    def _shared(self, signal: str, evidence: Any) -> str:
        """What a sharing signal measured, in words."""
        if signal == "computers":
            networks = {seen.get("network") for seen in evidence.get("seen", ())}
            return f"computers in use from {_counted(len(networks), 'networks')} at once"
        if signal == "devices":
            return f"{_counted(len(evidence.get('seen', ())), 'devices')} within {_span(self._windows.devices)}"
        if signal == "session_networks":
            return (f"one session changing networks {evidence.get('switches', '?')} times within "
                    f"{_span(self._windows.session)}")
        return "travel faster than a person can" if signal == "travel" else signal

    def for_finding(self, finding: Finding) -> Notice:
        advice = self._detectors.get(finding.detector)
        evidence = finding.evidence
        if finding.detector == SHARING:
            observed = ", ".join(self._shared(signal, evidence.get(signal, {})) for signal in finding.signals)
            allowance, windows = evidence.get("allowance", {}), self._windows
            allowed = (f"computers in use from {_counted(allowance.get('computer_networks', 0), 'networks')} at once, "
                       f"{_counted(allowance.get('devices', 0), 'devices')} within {_span(windows.devices)}, "
                       f"{_counted(allowance.get('session_switches', 0), 'network changes')} of one session "
                       f"within {_span(windows.session)} per login")
            recommendation = "use one login per person: give everyone who uses it a login of their own"
        elif finding.detector == SCRAPING:
            signals = ", ".join(_SIGNALS.get(signal, signal) for signal in finding.signals)
            observed = f"automation score {finding.score:g} from {signals}" if finding.score is not None else signals
            allowed = f"a score below {self._threshold:g}, as people in browsers and declared integrations keep"
            recommendation = ("use the API under your plan instead of automating the portal, and declare an "
                              "integration's user agent to us")
        elif finding.detector == SEATS:
            observed = f"{evidence.get('active_users', '?')} active users in {evidence.get('month', 'the month')}"
            allowed = f"{evidence.get('seats', '?')} seats"
            recommendation = "license a seat for every person who uses the service, or remove users who left"
        else:
            observed, allowed, recommendation = ", ".join(finding.signals), "-", "adjust usage to the policy"
        if advice is not None and advice.recommendation:
            recommendation = advice.recommendation
        return Notice(finding.detector, observed, allowed, recommendation, self._clause(advice))


def _rate(per_second: float) -> str:
    """1.0 -> "1 per second", 0.5 -> "30 per minute": the largest unit in which it is at least one."""
    for unit, seconds in (("second", 1), ("minute", 60)):
        if per_second * seconds >= 1:
            return f"{_short(per_second * seconds)} per {unit}"
    return f"{_short(per_second * 3600)} per hour"


def _amount(metric: str, value: float) -> str:
    if metric == "upstream_seconds":
        return f"{_short(value / 60)} minutes" if value % 60 == 0 else f"{_short(value)} s"
    if metric == "bytes":
        for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if value >= size:
                return f"{_short(value / size)} {unit}"
        return f"{_short(value)} B"
    return f"{_short(value)} requests"


def _counted(count: int, plural: str) -> str:
    return f"{count} {plural if count != 1 else plural.removesuffix('s')}"


def _short(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}".rstrip("0").rstrip(".")


"""Findings: who did what, the evidence, the score, when; counted, logged and kept for the admin API."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from prometheus_client import Counter

log = logging.getLogger("fairgate.detect")



class Detector(StrEnum):
    SHARING = "sharing"
    SCRAPING = "scraping"
    SEATS = "seats"


class Action(StrEnum):
    """What a detector does about a finding (the config's `action` values)."""

    FLAG = "flag"  # recorded and counted, nothing refused
    REAUTH = "reauth"  # the newest session signs in again
    BLOCK_NEWEST = "block_newest"
    CHALLENGE = "challenge"
    BLOCK = "block"


SHARING, SCRAPING, SEATS = Detector.SHARING, Detector.SCRAPING, Detector.SEATS


@dataclass(frozen=True, slots=True)
class Finding:
    detector: Detector
    subject: str  # "user:CUSTOMER/USER", "address:HASH" or "customer:CUSTOMER"
    customer: str | None
    user: str | None
    action: Action
    shadow: bool  # shadow mode: recorded, not applied
    at: float  # the time of the request that tipped it over
    signals: tuple[str, ...]
    score: float | None = None
    until: float | None = None  # end of a block or reauth, if any
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["signals"] = list(self.signals)
        return data


class FindingLog:
    """Where findings go: the metric, one log line each, and the most recent for the admin API."""

    def __init__(self, counter: Counter | None, keep: int = 1000) -> None:
        self._counter = counter
        self._recent: deque[Finding] = deque(maxlen=keep)
        # Called with every finding: the enforcement ladder and the audit trail.
        self.listeners: list[Callable[[Finding], None]] = []

    def record(self, finding: Finding) -> None:
        self._recent.append(finding)
        for listener in self.listeners:
            listener(finding)
        if self._counter is not None:
            self._counter.labels(finding.detector, "shadow" if finding.shadow else finding.action).inc()
        log.warning("finding", extra={"finding": finding.as_json()})

    def recent(self, *, detector: str | None = None, subject: str | None = None, customer: str | None = None,
               since: float | None = None) -> list[Finding]:
        return [f for f in self._recent
                if (detector is None or f.detector == detector) and (subject is None or f.subject == subject)
                and (customer is None or f.customer == customer) and (since is None or f.at >= since)]

"""Violations in, consequences out: limit rejections and findings are queued by the request
path and the detectors, counted in the state store (so a fleet counts together) and judged
by the ladder off the request path. Standings reach every gateway through the store; each
step is an audit event."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from prometheus_client import Counter

from gateway.audit.trail import AuditTrail
from gateway.auth.identity import Identity
from gateway.clock import Clock
from gateway.config.enforcement import EnforcementSettings
from gateway.detect.findings import Finding
from gateway.enforce.grants import Grants
from gateway.enforce.ladder import NEXT, OK, SUSPENDED, THROTTLED, Counts, Standing, judge
from gateway.enforce.standings import Standings, customer_subject, user_subject
from gateway.proxy.problems import Problem
from gateway.state.sightings import Query, Sighting, Sightings

log = logging.getLogger("fairgate.enforce")

# Earlier suspensions are remembered this long, for the doubling of repeat offenders' terms.
REPEATS_REMEMBERED = 90 * 86400.0
_FLUSH_SECONDS = 0.1
_QUEUE_LIMIT = 100_000
_REPUBLISH_SECONDS = 60.0

Share = Callable[[dict, float], Awaitable[None]]


# A finding whose detector already refused requests is a major violation; one that only flags is minor.
_MAJOR_ACTIONS = frozenset({"block", "challenge", "reauth", "block_newest"})


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # limit, sharing, scraping, seats
    severity: str  # minor, major, egregious
    subject: str
    customer: str
    user: str | None
    reason: str
    at: float
    detail: dict[str, Any] = field(default_factory=dict)


class Enforcement:
    def __init__(self, sightings: Sightings, audit: AuditTrail, clock: Clock, share: Share | None = None,
                 transitions: Counter | None = None) -> None:
        self._sightings = sightings
        self._audit = audit
        self._clock = clock
        self._share = share
        self._transitions = transitions
        self.settings = EnforcementSettings()
        self._prefix = "fairgate"
        self.standings = Standings()
        self.grants = Grants()  # replaced by GatewayState with the one the whole process shares
        self._queue: deque[Violation] = deque()
        self._ids = itertools.count()
        self._origin = f"{os.getpid()}-{os.urandom(3).hex()}"  # makes violation ids unique across a fleet
        self._tasks: set[asyncio.Task] = set()
        self._published: dict[str, float] = {}  # subject -> the `until` last shared with the fleet
        self._judging = asyncio.Lock()

    def configure(self, settings: EnforcementSettings, key_prefix: str) -> None:
        self.settings = settings
        self._prefix = key_prefix

    @property
    def applies(self) -> bool:
        """Whether standings change what requests get (enforce), or are only recorded (shadow)."""
        return self.settings.mode == "enforce"

    # -- the request path ----------------------------------------------------------------

    def standing_for(self, identity: Identity) -> Standing | None:
        return self.standings.strictest(identity.customer, identity.user, self._clock.time())

    def refusal(self, standing: Standing) -> Problem:
        until = _iso(standing.until)
        retry_after = max(1, int(standing.until - self._clock.time()))
        return Problem(
            403, "suspended", "Access Suspended",
            f"Access is suspended until {until} under the {self.settings.policy}: {standing.reason}.",
            headers={"Retry-After": str(retry_after)},
            extra={"until": until, "reason": standing.reason, "policy": self.settings.policy},
        )

    def warning(self, standing: Standing) -> str:
        """The Fair-Use-Warning header: the state, what comes next, until when, and the policy."""
        return (f'state={standing.state}, next={NEXT[standing.state]}, until="{_iso(standing.until)}", '
                f'policy="{self.settings.policy}"')

    def throttle_factor(self, standing: Standing | None) -> float:
        return self.settings.ladder.throttle_factor if standing is not None and standing.state == THROTTLED else 1.0

    def limit_rejected(self, identity: Identity | None, plan: str | None, limits: list[str]) -> None:
        if identity is None:
            return  # an anonymous caller has no standing; its address is limited as it is
        self._enqueue(Violation("limit", self._severity("limit", "minor"), customer_subject(identity.customer),
                                identity.customer, None,
                                f"{plan} plan limit {', '.join(limits)} exceeded", self._clock.time(),
                                {"limits": limits, "user": identity.user}))

    # -- findings ------------------------------------------------------------------------

    def on_finding(self, finding: Finding) -> None:
        self._audit.record("finding", **finding.as_json())
        if finding.customer is None or finding.shadow:
            return  # anonymous findings are the detectors' own business; shadowed ones change nothing
        subject = (user_subject(finding.customer, finding.user) if finding.user is not None
                   else customer_subject(finding.customer))
        severity = self._severity(finding.detector, "major" if finding.action in _MAJOR_ACTIONS else "minor")
        self._enqueue(Violation(finding.detector, severity, subject, finding.customer, finding.user,
                                f"{finding.detector} finding ({', '.join(finding.signals)})", finding.at,
                                {"action": finding.action}))

    def _severity(self, kind: str, usual: str) -> str:
        return "egregious" if kind in self.settings.ladder.egregious else usual

    def _enqueue(self, violation: Violation) -> None:
        if not self.settings.enabled:
            return
        if self.grants.exempt(violation.customer, violation.user, "ladder", violation.at):
            return  # an exception by agreement: recorded by the detectors, never held against them
        if len(self._queue) >= _QUEUE_LIMIT:
            log.error("enforcement queue full: violation dropped", extra={"subject": violation.subject})
            self._audit.record("violation_dropped", subject=violation.subject, customer=violation.customer)
            return
        self._queue.append(violation)

    # -- judging, off the request path ----------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_SECONDS)
            try:
                await self.judge_queued()
            except Exception:  # never let one bad batch stop enforcement
                log.exception("enforcement batch failed")

    async def judge_queued(self) -> None:
        async with self._judging:
            if not self._queue:
                return
            batch = list(self._queue)
            self._queue.clear()
            await self._judge(batch)

    async def _judge(self, batch: list[Violation]) -> None:
        ladder = self.settings.ladder
        now = self._clock.time()
        by_subject: dict[str, list[Violation]] = {}
        for violation in batch:
            by_subject.setdefault(violation.subject, []).append(violation)
        self._record(batch)
        # A violation queued before the subject's count started afresh (a reinstatement just
        # after a flood of 429s) is recorded, but no longer held against it.
        for subject in list(by_subject):
            current = self.standings.latest(subject)
            if current is not None and current.counts_from:
                kept = [v for v in by_subject[subject] if v.at >= current.counts_from]
                if kept:
                    by_subject[subject] = kept
                else:
                    del by_subject[subject]
        seen = []
        for subject, violations in by_subject.items():
            # A violation counts as many times as its severity weighs; past throttle_at more
            # members in one batch change no decision, so a flood writes no more than that.
            weighed = min(sum(ladder.weights.get(v.severity, 1) for v in violations), ladder.throttle_at)
            seen += [Sighting(self._key("v", subject), f"{self._origin}:{next(self._ids)}", violations[-1].at,
                              ladder.window, ladder.throttle_at * 4) for _ in range(weighed)]
        queries: list[Query] = []
        for subject in by_subject:
            current = self.standings.latest(subject)
            counts_from = current.counts_from if current is not None else 0.0
            queries += [(self._key("v", subject), max(now - ladder.window, counts_from)),
                        (self._key("t", subject), now - ladder.throttles_within),
                        (self._key("s", subject), now - REPEATS_REMEMBERED)]
        answers = await self._sightings.exchange(seen, queries)
        if answers is None:
            log.warning("enforcement: state store unavailable; violations judged on local counts")
            answers = [{} for _ in queries]
        decided = []
        for index, (subject, violations) in enumerate(by_subject.items()):
            weighed = sum(ladder.weights.get(v.severity, 1) for v in violations)
            counts = Counts(max(len(answers[3 * index]), weighed), len(answers[3 * index + 1]),
                            len(answers[3 * index + 2]))
            last = violations[-1]
            egregious = any(v.severity == "egregious" for v in violations)
            standing = judge(ladder, self.standings.latest(subject), subject, counts, egregious, last.reason, now)
            if standing is not None:
                decided.append((standing, last.customer))
        marks = []
        for standing, customer in decided:
            previous = self.standings.latest(standing.subject)
            self._take(standing, customer, previous)
            if standing.state in (THROTTLED, SUSPENDED):
                kind, window = ("t", ladder.throttles_within) if standing.state == THROTTLED else ("s", REPEATS_REMEMBERED)
                marks.append(Sighting(self._key(kind, standing.subject), f"{self._origin}:{next(self._ids)}", now, window, 64))
        if marks:
            await self._sightings.exchange(marks, [])

    def _record(self, batch: list[Violation]) -> None:
        """One audit event per subject and kind of violation in the batch, with how many there
        were and when: a client hammering into a limit is a few events a second, not thousands."""
        groups: dict[tuple, list[Violation]] = {}
        for violation in batch:
            key = (violation.subject, violation.kind, violation.severity, violation.reason,
                   tuple(sorted((k, str(v)) for k, v in violation.detail.items())))
            groups.setdefault(key, []).append(violation)
        for violations in groups.values():
            first, last = violations[0], violations[-1]
            self._audit.record("violation", violation=first.kind, severity=first.severity, subject=first.subject,
                               customer=first.customer, user=first.user, reason=first.reason, detail=first.detail,
                               count=len(violations), first_at=first.at, last_at=last.at)

    def _take(self, standing: Standing, customer: str, previous: Standing | None, by: str = "ladder",
              note: str | None = None) -> None:
        now = self._clock.time()
        was = previous.state if previous is not None and previous.in_force(now) else OK
        changed = was != standing.state or by != "ladder"
        self.standings.apply(standing)
        if changed:
            if self._transitions is not None:
                self._transitions.labels(standing.state).inc()
            self._audit.record("state_change", subject=standing.subject, customer=customer, previous=was,
                               state=standing.state, until=standing.until, reason=standing.reason, by=by,
                               shadow=not self.applies, **({"note": note} if note else {}))
            log.warning("fair-use standing changed", extra={
                "subject": standing.subject, "previous": was, "state": standing.state, "until": _iso(standing.until),
                "reason": standing.reason, "by": by})
        if by == "ladder":
            self._publish(standing, changed)

    def _publish(self, standing: Standing, changed: bool) -> None:
        if self._share is None:
            return
        # A warning extended by every batch of violations is shared at most once a minute, so
        # the fleet's set of standings stays small however hard a customer keeps violating.
        if not changed and standing.until - self._published.get(standing.subject, 0.0) < _REPUBLISH_SECONDS:
            return
        if len(self._published) >= 100_000:
            self._published.clear()
        self._published[standing.subject] = standing.until
        task = asyncio.get_running_loop().create_task(self._share_logged(standing))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _share_logged(self, standing: Standing) -> None:
        try:
            await self.share(standing)
        except Exception as exc:  # this gateway enforces it; the fleet learns of the next decision
            log.warning("sharing a standing failed", extra={"subject": standing.subject, "error": str(exc)})

    async def share(self, standing: Standing) -> None:
        """Write a standing to the fleet's store (a no-op for a store of one process); raises on failure."""
        if self._share is not None:
            # An ok decision is kept long enough to override older ones still in other gateways.
            await self._share(standing.as_entry(), max(standing.until, standing.since + self.settings.ladder.window))

    # -- admin actions ---------------------------------------------------------------------

    def reinstate(self, customer: str, by: str, note: str | None = None) -> list[Standing]:
        """Clear the customer's and its users' standings now; their counts start afresh. The
        caller shares the returned standings with the fleet."""
        now = self._clock.time()
        subjects = {s.subject for s in self.standings.subjects_of(customer)} | {customer_subject(customer)}
        cleared = []
        for subject in sorted(subjects):
            standing = Standing(subject, OK, now, now, "reinstated", counts_from=now, by=by)
            self._take(standing, customer, self.standings.latest(subject), by=by, note=note)
            cleared.append(standing)
        return cleared

    def clear_user(self, customer: str, user: str, by: str) -> Standing:
        """An allow-listed user: its own standing back to ok (locally; the grant reaches the fleet)."""
        now = self._clock.time()
        subject = user_subject(customer, user)
        standing = Standing(subject, OK, now, now, "allow-listed", counts_from=now, by=by)
        self._take(standing, customer, self.standings.latest(subject), by=by)
        return standing

    def suspend(self, customer: str, seconds: float, reason: str, by: str) -> Standing:
        """Suspend a customer now; the caller shares the returned standing with the fleet."""
        now = self._clock.time()
        subject = customer_subject(customer)
        standing = Standing(subject, SUSPENDED, now, now + seconds, reason, counts_from=now, by=by)
        self._take(standing, customer, self.standings.latest(subject), by=by)
        return standing

    def _key(self, kind: str, subject: str) -> str:
        # The subject is the hash tag: one subject's keys share a Cluster slot.
        return f"{self._prefix}:e:{{{subject}}}:{kind}"

    async def drain(self) -> None:
        await self.judge_queued()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")



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
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from prometheus_client import Counter

from gateway.audit.trail import AuditTrail
from gateway.auth.identity import Identity
from gateway.clock import Clock
from gateway.config.enforcement import EnforcementSettings
from gateway.detect.findings import Action, Finding
from gateway.enforce.ladder import BY_LADDER, NEXT, OK, SUSPENDED, THROTTLED, Counts, Standing, judge
from gateway.enforce.notices import NoticeBook, header_params, merged
from gateway.enforce.standings import Standings, customer_subject, user_subject
from gateway.fleet.grants import Grants
from gateway.fleet.sharing import Fleet
from gateway.fleet.topics import Change, Topic
from gateway.limits.policy import CompiledLimit
from gateway.problems import Problem
from gateway.state.bounded import BoundedTable
from gateway.state.sightings import Query, Sighting, Sightings
from gateway.state.tables import Tables

log = logging.getLogger("fairgate.enforce")

# Earlier suspensions are remembered this long, for the doubling of repeat offenders' terms.
REPEATS_REMEMBERED = 90 * 86400.0
_QUEUE_LIMIT = 100_000
_REPUBLISH_SECONDS = 60.0

# A finding whose detector already refused requests is a major violation; one that only flags is minor.
_MAJOR_ACTIONS = frozenset({Action.BLOCK, Action.CHALLENGE, Action.REAUTH, Action.BLOCK_NEWEST})


class _CountQueries(NamedTuple):
    """What judging one subject asks the store: its violations, throttles and suspensions."""

    violations: Query
    throttles: Query
    suspensions: Query


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
    # What the warning is written from: the refusing limits as they applied, or the finding.
    limits: tuple[CompiledLimit, ...] = ()
    finding: Finding | None = None


_REFUSALS_TRACKED = 100_000  # subjects whose recent refusals are remembered for their warning's text


class Enforcement:
    def __init__(self, sightings: Sightings, audit: AuditTrail, clock: Clock, fleet: Fleet, grants: Grants,
                 transitions: Counter | None = None) -> None:
        self._sightings = sightings
        self._audit = audit
        self._clock = clock
        self._fleet = fleet
        self._transitions = transitions
        self.settings = EnforcementSettings()
        self._prefix = "fairgate"
        self._notices: NoticeBook | None = None
        self.standings = Standings()
        self.grants = grants
        fleet.receive(Topic.STANDINGS, self.standings.sync_from)
        self._queue: deque[Violation] = deque()
        self._ids = itertools.count()
        self._origin = f"{os.getpid()}-{os.urandom(3).hex()}"  # makes violation ids unique across a fleet
        self._published: dict[str, float] = {}  # subject -> the `until` last shared with the fleet
        # subject -> (since, refusals by limit) over the ladder's window, so a warning counts every
        # refusal that led to it, also those judged in earlier batches while the subject was ok
        self._refusals: BoundedTable[str, tuple[float, dict[str, int]]] = BoundedTable(
            _REFUSALS_TRACKED, self._refusals_ended)
        self._judging = asyncio.Lock()

    def watch(self, tables: Tables) -> None:
        """Show the per-subject tables on /metrics and let the sweep forget what passed its window."""
        tables.add("enforcement_refusals", self._refusals, self._clock.time)
        tables.add("standings", self.standings.latest_table, self._clock.time)
        tables.add("standings_in_force", self.standings.active_table, self._clock.time)

    def _refusals_ended(self, entry: tuple[float, dict[str, int]], now: float) -> bool:
        return now - entry[0] > self.settings.ladder.window  # a new refusal starts a new count then

    def configure(self, settings: EnforcementSettings, key_prefix: str) -> None:
        self.settings = settings
        self._prefix = key_prefix

    def configure_notices(self, notices: NoticeBook) -> None:
        """How warnings are worded: from the plans' limits and the detectors of the config."""
        self._notices = notices

    @property
    def applies(self) -> bool:
        """Whether standings change what requests get (enforce), or are only recorded (shadow)."""
        return self.settings.mode == "enforce"

    # -- the request path ----------------------------------------------------------------

    def admit(self, identity: Identity | None) -> Standing | Problem | None:
        """What the caller's standing does to this request: the Problem to answer (suspended), the
        Standing it goes on under (warned or throttled: slowed and told), or None (nothing in force,
        or shadow mode)."""
        if identity is None or not self.standings or not self.applies:
            return None
        standing = self.standing_for(identity)
        if standing is not None and standing.state == SUSPENDED:
            return self.refusal(standing)
        return standing

    def limited(self, identity: Identity | None, plan: str | None, limits: tuple[CompiledLimit, ...],
                standing: Standing | None) -> dict[str, Any] | None:
        """A request the limits refused: counted against the caller; the warning for its problem body."""
        self.limit_rejected(identity, plan, limits)
        return self.warning_detail(standing) if standing is not None else None

    def standing_for(self, identity: Identity) -> Standing | None:
        return self.standings.strictest(identity.customer, identity.user, self._clock.time())

    def refusal(self, standing: Standing) -> Problem:
        until = _iso(standing.until)
        retry_after = max(1, int(standing.until - self._clock.time()))
        return Problem(
            403, "suspended", "Access Suspended",
            f"Access is suspended until {until} under the {self.settings.policy}: {standing.reason}.",
            headers={"Retry-After": str(retry_after)},
            extra={"until": until, "reason": standing.reason, "policy": self.settings.policy,
                   "notices": list(standing.notices)},
        )

    def warning(self, standing: Standing) -> str:
        """The Fair-Use-Warning header: the state, what comes next, until when, the limits or
        detectors behind it with the first one's advice, and the policy (its clause). Short: the
        problem bodies and alerts say the rest."""
        return (f'state={standing.state}, next={NEXT[standing.state]}, until="{_iso(standing.until)}"'
                f'{header_params(standing.notices, self.settings.policy)}')

    def warning_detail(self, standing: Standing) -> dict[str, Any]:
        """The warning in full, for the problem bodies of refusals while warned or throttled."""
        return {"fair-use-warning": {"state": standing.state, "next": NEXT[standing.state],
                                     "until": _iso(standing.until), "reason": standing.reason,
                                     "notices": list(standing.notices)}}

    def with_warning(self, problem: Problem, identity: Identity | None) -> Problem:
        """A refusal decided elsewhere (a block, a challenge) carrying the caller's warning, if any."""
        if identity is None or not self.standings or not self.applies:
            return problem
        standing = self.standing_for(identity)
        if standing is None:
            return problem
        return replace(problem, extra={**problem.extra, **self.warning_detail(standing)})

    def throttle_factor(self, standing: Standing | None) -> float:
        return self.settings.ladder.throttle_factor if standing is not None and standing.state == THROTTLED else 1.0

    def limit_rejected(self, identity: Identity | None, plan: str | None, limits: tuple[CompiledLimit, ...]) -> None:
        if identity is None:
            return  # an anonymous caller has no standing; its address is limited as it is
        names = [limit.name for limit in limits]
        self._enqueue(Violation("limit", self._severity("limit", "minor"), customer_subject(identity.customer),
                                identity.customer, None,
                                f"{plan} plan limit {', '.join(names)} exceeded", self._clock.time(),
                                {"limits": names, "user": identity.user}, limits=limits))

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
                                {"action": finding.action}, finding=finding))

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
            await asyncio.sleep(self.settings.judge_interval)
            try:
                # Shielded: a judgement holds the violations it took; shutdown cancelling this
                # loop mid-batch would lose them. The final judge_queued waits for it (the lock).
                await asyncio.shield(self.judge_queued())
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
        # Looked up by any severity a violation has: one the config does not weigh (egregious) counts once.
        weights: dict[str, int] = {severity: weight for severity, weight in ladder.weights.items()}
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
            weighed = min(sum(weights.get(v.severity, 1) for v in violations), ladder.throttle_at)
            seen += [Sighting(self._key("v", subject), f"{self._origin}:{next(self._ids)}", violations[-1].at,
                              ladder.window, ladder.throttle_at * 4) for _ in range(weighed)]
        asked: dict[str, _CountQueries] = {}
        for subject in by_subject:
            current = self.standings.latest(subject)
            counts_from = current.counts_from if current is not None else 0.0
            asked[subject] = _CountQueries(Query(self._key("v", subject), max(now - ladder.window, counts_from)),
                                           Query(self._key("t", subject), now - ladder.throttles_within),
                                           Query(self._key("s", subject), now - REPEATS_REMEMBERED))
        queries = [query for queries in asked.values() for query in queries]
        answers = await self._sightings.exchange(seen, queries)
        if answers is None:
            log.warning("enforcement: state store unavailable; violations judged on local counts")
            answers = {query: {} for query in queries}
        decided = []
        for subject, violations in by_subject.items():
            self._count_refusals(subject, violations, now)
            weighed = sum(weights.get(v.severity, 1) for v in violations)
            mine = asked[subject]
            counts = Counts(max(len(answers[mine.violations]), weighed), len(answers[mine.throttles]),
                            len(answers[mine.suspensions]))
            last = violations[-1]
            egregious = any(v.severity == "egregious" for v in violations)
            standing = judge(ladder, self.standings.latest(subject), subject, counts, egregious, last.reason, now)
            if standing is not None:
                decided.append((self._noticed(standing, violations, now), last.customer))
        marks = []
        for standing, customer in decided:
            previous = self.standings.latest(standing.subject)
            self._take(standing, customer, previous)
            if standing.state in (THROTTLED, SUSPENDED):
                kind, window = (("t", ladder.throttles_within) if standing.state == THROTTLED
                                else ("s", REPEATS_REMEMBERED))
                marks.append(Sighting(self._key(kind, standing.subject), f"{self._origin}:{next(self._ids)}", now,
                                      window, 64))
        if marks:
            await self._sightings.exchange(marks, [])

    def _count_refusals(self, subject: str, violations: list[Violation], now: float) -> None:
        since, counts = self._refusals.get(subject, (now, {}))
        current = self.standings.latest(subject)
        if now - since > self.settings.ladder.window or (current is not None and current.counts_from > since):
            since, counts = now, {}  # the window has passed, or the count started afresh (reinstated)
        for violation in violations:
            for limit in violation.limits:
                counts[limit.name] = counts.get(limit.name, 0) + 1
        self._refusals.put(subject, (since, counts))

    def _noticed(self, standing: Standing, violations: list[Violation], now: float) -> Standing:
        """The standing with what its warning says: this batch's limits and findings, with every
        refusal by each limit within the window, here or (by the notices of the standing it
        follows, while that is in force) on other gateways."""
        if self._notices is None:
            return standing
        previous = self.standings.latest(standing.subject)
        earlier = previous.notices if previous is not None and previous.in_force(now) else ()
        counts = {notice["source"]: notice["count"] for notice in earlier}
        for violation in violations:
            for limit in violation.limits:
                counts[limit.name] = counts.get(limit.name, 0) + 1
        for name, here in self._refusals.get(standing.subject, (now, {}))[1].items():
            counts[name] = max(counts.get(name, 0), here)
        # A new throttle scales the rates the violations were refused under.
        throttle = self.settings.ladder.throttle_factor if standing.state == THROTTLED else 1.0
        latest: dict[str, dict[str, Any]] = {}
        for violation in reversed(violations):  # latest first; a detector's latest finding speaks for it
            if violation.finding is not None and violation.finding.detector not in latest:
                latest[violation.finding.detector] = self._notices.for_finding(violation.finding).as_json()
            for limit in violation.limits:
                if limit.name not in latest:
                    latest[limit.name] = self._notices.for_limit(limit, counts[limit.name], throttle).as_json()
        return replace(standing, notices=merged(list(latest.values()), earlier))

    def _record(self, batch: list[Violation]) -> None:
        """One audit event per subject and kind of violation in the batch, with how many there
        were and when: a client hammering into a limit is a few events a second, not thousands."""
        groups: dict[tuple[str, str, str, str, tuple[tuple[str, str], ...]], list[Violation]] = {}
        for violation in batch:
            key = (violation.subject, violation.kind, violation.severity, violation.reason,
                   tuple(sorted((k, str(v)) for k, v in violation.detail.items())))
            groups.setdefault(key, []).append(violation)
        for violations in groups.values():
            first, last = violations[0], violations[-1]
            self._audit.record("violation", violation=first.kind, severity=first.severity, subject=first.subject,
                               customer=first.customer, user=first.user, reason=first.reason, detail=first.detail,
                               count=len(violations), first_at=first.at, last_at=last.at)

    def _take(self, standing: Standing, customer: str, previous: Standing | None, by: str = BY_LADDER,
              note: str | None = None) -> Change:
        """Apply a standing here; the change for the fleet (its audit event None if the state did
        not change: an extended warning). The ladder's are published here, admin ones by the caller."""
        now = self._clock.time()
        was = previous.state if previous is not None and previous.in_force(now) else OK
        changed = was != standing.state or by != BY_LADDER
        self.standings.apply(standing)
        change = Change(
            # An ok decision is kept long enough to override older ones still in other gateways.
            Topic.STANDINGS, standing.as_entry(), max(standing.until, standing.since + self.settings.ladder.window),
            "state_change" if changed else None,
            {"subject": standing.subject, "customer": customer, "previous": was, "state": standing.state,
             "until": standing.until, "reason": standing.reason, "by": by, "shadow": not self.applies,
             **({"note": note} if note else {}), **({"notices": list(standing.notices)} if standing.notices else {})},
        )
        if changed:
            if self._transitions is not None:
                self._transitions.labels(standing.state).inc()
            log.warning("fair-use standing changed", extra={
                "subject": standing.subject, "previous": was, "state": standing.state, "until": _iso(standing.until),
                "reason": standing.reason, "by": by})
        if by == BY_LADDER:
            self._publish(change, standing)
        return change

    def _publish(self, change: Change, standing: Standing) -> None:
        # A warning extended by every batch of violations is shared at most once a minute, so
        # the fleet's set of standings stays small however hard a customer keeps violating.
        if change.event is None and standing.until - self._published.get(standing.subject, 0.0) < _REPUBLISH_SECONDS:
            return
        if len(self._published) >= 100_000:
            self._published.clear()
        self._published[standing.subject] = standing.until
        self._fleet.publish_soon(change)

    # -- admin actions ---------------------------------------------------------------------

    def reinstate(self, customer: str, by: str, note: str | None = None) -> list[Change]:
        """Clear the customer's and its users' standings now; their counts start afresh. The
        caller publishes the returned changes."""
        now = self._clock.time()
        subjects = {s.subject for s in self.standings.subjects_of(customer)} | {customer_subject(customer)}
        cleared = []
        for subject in sorted(subjects):
            standing = Standing(subject, OK, now, now, "reinstated", counts_from=now, by=by)
            cleared.append(self._take(standing, customer, self.standings.latest(subject), by=by, note=note))
        return cleared

    def clear_user(self, customer: str, user: str, by: str) -> Standing:
        """An allow-listed user: its own standing back to ok (locally; the grant reaches the fleet)."""
        now = self._clock.time()
        subject = user_subject(customer, user)
        standing = Standing(subject, OK, now, now, "allow-listed", counts_from=now, by=by)
        change = self._take(standing, customer, self.standings.latest(subject), by=by)
        if change.event is not None:
            self._audit.record(change.event, **change.fields)
        return standing

    def suspend(self, customer: str, seconds: float, reason: str, by: str) -> Change:
        """Suspend a customer now; the caller publishes the returned change."""
        now = self._clock.time()
        subject = customer_subject(customer)
        standing = Standing(subject, SUSPENDED, now, now + seconds, reason, counts_from=now, by=by)
        return self._take(standing, customer, self.standings.latest(subject), by=by)

    def _key(self, kind: str, subject: str) -> str:
        # The subject is the hash tag: one subject's keys share a Cluster slot.
        return f"{self._prefix}:e:{{{subject}}}:{kind}"

    async def drain(self) -> None:
        await self.judge_queued()


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")



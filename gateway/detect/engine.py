"""The detectors' side of the gateway: observations queued on the request path, analysed in
batches off it, findings recorded, sanctions applied to later requests.

The request path pays for two things only: appending an Observation after the upstream
answered, and a sanction lookup that is skipped while none are in force. One batch makes one
call to the sightings store (memory, or one Redis pipeline), never one per request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import zoneinfo
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, overload

from gateway.auth.identity import Identity
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.config.detection import ScrapingAction, SharingAllowance
from gateway.detect.addresses import Hasher
from gateway.detect.findings import SCRAPING, SEATS, SHARING, Action, Finding, FindingLog
from gateway.detect.observation import PROOF, Observation, subject_of
from gateway.detect.sanctions import AUTOMATION, BLOCK, REAUTH, Sanction, SanctionKind, Sanctions, session_key, user_key
from gateway.detect.scraping import ScrapingSignals, ScrapingTrack, Signal
from gateway.detect.sharing import SharingQueries, SharingTrack, SharingWatch
from gateway.detect.travel import TravelCheck
from gateway.fleet.grants import Grants
from gateway.fleet.sharing import Fleet
from gateway.fleet.topics import Topic
from gateway.problems import Problem
from gateway.state.bounded import BoundedTable
from gateway.state.sightings import Answers, Query, Sighting, Sightings

log = logging.getLogger("fairgate.detect")

SHARING_POLICY = "one login per user; logins are not shared between people"
SCRAPING_POLICY = "no screen-scraping or automated extraction outside the permitted API use"
_MAX_ASSET_ADDRESSES = 100_000
_SEAT_WINDOW = 32 * 86400.0
_MAX_WRITTEN = 500_000
# A login's session, address and device are written again after this long: a computer in
# steady use stays "in use at once" (sharing.windows.concurrent) and a second person's first
# request meets the first person's recent sighting.
_SHARING_EVERY = 15.0
# What was written to the sightings store, as `_due` remembers it (identity, path or address, agent, ...).
Mark = tuple[str | None, ...]

@dataclass(frozen=True, slots=True)
class DetectionSetup:
    """A config's detectors compiled, ready to apply."""

    config: GatewayConfig
    salt: bytes | None
    hasher: Hasher
    sharing: SharingWatch | None
    scraping: ScrapingSignals | None
    travel: TravelCheck
    zone: zoneinfo.ZoneInfo


class _Track:
    """Per identity, in this process: least recently seen evicted past detection.max_tracked."""

    __slots__ = ("scraping", "sharing")

    def __init__(self) -> None:
        self.scraping: ScrapingTrack | None = None
        self.sharing: SharingTrack | None = None


class Detection:
    observes = True  # the request path queues what it forwards (see detect/off.py for a config without detectors)

    def __init__(self, sightings: Sightings, findings: FindingLog, clock: Clock, fleet: Fleet, grants: Grants) -> None:
        self.sightings = sightings
        self.findings = findings
        self.sanctions = Sanctions()
        self.grants = grants  # exemptions and allow-listed users and agents (admin API)
        self.dropped = 0  # observations dropped because analysis fell behind
        self._clock = clock
        self._fleet = fleet
        fleet.receive(Topic.SANCTIONS, self.sanctions.sync_from)
        self._queue: deque[Observation] = deque()
        self._tracks: BoundedTable[str, _Track] = BoundedTable(0)  # limit: detection.max_tracked
        self._asset_addresses: BoundedTable[str, float] = BoundedTable(_MAX_ASSET_ADDRESSES)
        self._seats_reported: dict[str, float] = {}
        self._written: dict[Mark, float] = {}  # what was last sent to the store, and when
        self._months: tuple[float, float, str] = (0.0, 0.0, "")  # start, end, label of the current month
        self._salt: bytes | object | None = object()
        self._analysing = asyncio.Lock()

    def configure(self, config: GatewayConfig) -> None:
        """Take a (re)loaded config; what was observed so far is kept."""
        self.apply(self.prepare(config))

    def prepare(self, config: GatewayConfig) -> DetectionSetup:
        """Compile a config's detectors, changing nothing yet (a reload applies them with the rest)."""
        settings = config.detection
        salt = settings.salt()
        hasher = Hasher(salt) if salt != self._salt else self.hasher
        prefix = config.state.key_prefix
        return DetectionSetup(
            config, salt, hasher,
            SharingWatch(settings.sharing, hasher, prefix) if settings.sharing.mode != "off" else None,
            ScrapingSignals(settings.scraping) if settings.scraping.mode != "off" else None,
            TravelCheck(settings.sharing.geoip_database, settings.sharing.max_speed_kmh),
            zoneinfo.ZoneInfo(config.limits.time_zone),
        )

    def apply(self, setup: DetectionSetup) -> None:
        config = setup.config
        settings = config.detection
        self.settings = settings
        self._tracks.limit = settings.max_tracked
        self._salt, self.hasher = setup.salt, setup.hasher
        self._prefix = config.state.key_prefix
        self._sharing = setup.sharing
        self._scraping = setup.scraping
        self._travel = setup.travel
        self._plans = config.plans
        self._config = config
        self._zone = setup.zone
        self._months = (0.0, 0.0, "")
        self._watched = frozenset(settings.scraping.actions)
        self._seats_on = settings.seats.mode != "off"
        self._queue_size = settings.queue_size
        self._scraping_actions: dict[str, ScrapingAction] = {
            cls: action for cls, action in settings.scraping.actions.items()}
        self._refusing = frozenset(cls for cls, action in settings.scraping.actions.items()
                                   if Action(action) is not Action.FLAG)

    @property
    def backlog(self) -> int:
        return len(self._queue)

    # -- the request path ---------------------------------------------------------------

    def observe_request(self, route_class: str, identity: Identity | None, client_ip: str, method: str,
                        target: str, headers: Mapping[str, str], status: int, body_digest: bytes | None,
                        offered_proof: bool = False) -> None:
        """Queue a forwarded request for analysis (`status` is the upstream's)."""
        if identity is None:
            customer = user = session = None
        else:
            customer, user, session = identity.customer, identity.user, identity.session
        self.observe(Observation(self._clock.time(), route_class, customer, user, session, client_ip, method,
                                 target, headers, status, body_digest,
                                 subject_of(customer, user, client_ip, headers), offered_proof=offered_proof))

    def observe_refused(self, route_class: str, identity: Identity, client_ip: str, method: str, target: str,
                        headers: Mapping[str, str], status: int) -> None:
        """Queue a request the gateway refused (sanction, suspension, limit): still one use of the
        login, so sharing evidence keeps growing while its sharers are refused."""
        self.observe(Observation(self._clock.time(), route_class, identity.customer, identity.user,
                                 identity.session, client_ip, method, target, headers, status, None,
                                 f"user:{identity.customer}/{identity.user}", True))

    def observe_proof(self, subject: str) -> None:
        """Queue a browser proof (a link token or a passed challenge) for `subject`."""
        self.observe(Observation(self._clock.time(), PROOF, None, None, None, "", "GET", "", {}, 200, None,
                                 subject))

    def observe(self, obs: Observation) -> None:
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                log.warning("detection is behind: observations dropped", extra={"dropped": self.dropped})
        self._queue.append(obs)

    def refusal(self, identity: Identity | None, client_ip: str, route_class: str) -> Problem | None:
        """The problem to answer instead of forwarding, if a sanction applies. Call only when
        `self.sanctions` is non-empty."""
        now = self._clock.time()
        sanctions = self.sanctions
        if identity is not None:
            if identity.session is not None:
                sanction = sanctions.get(session_key(identity.customer, identity.user, identity.session), now)
                if sanction is not None and (sanction.kind == BLOCK or identity.issued_at <= sanction.issued_before):
                    return _problem(sanction, now, "")
            subject = user_key(identity.customer, identity.user)
        else:
            subject = self._public("address:" + client_ip)
        sanction = sanctions.get(subject, now)
        if sanction is not None and route_class in self._refusing:
            return _problem(sanction, now, self._scraping_actions[route_class])
        return None

    # -- off the request path -------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                await self.drain()
            except Exception:  # a bug here must not stop detection for good
                log.exception("detection batch failed")

    async def drain(self) -> None:
        """Analyse everything observed so far."""
        async with self._analysing:
            while self._queue:
                batch, self._queue = self._queue, deque()
                await self._analyse(list(batch))

    async def _analyse(self, batch: list[Observation]) -> None:
        seen: list[Sighting] = []
        scored: dict[str, int] = {}  # subject -> requests scored in this batch
        scraped: dict[str, Observation] = {}  # subjects whose distinct paths/agents may have changed
        shared: dict[str, Observation] = {}
        seat_users: dict[str, Observation] = {}
        travelled: set[str] = set()
        grants = self.grants
        scraper, watch = self._scraping, self._sharing
        for obs in batch:
            if obs.route_class == PROOF:
                continue  # credited by the scraping detector once it reads proofs (issue 13, item 1)
            if obs.route_class == "asset":
                self._asset_fetched(obs)
            subject, agent = obs.subject, obs.headers.get("User-Agent", "")
            if grants.agents and grants.agent_allowed(agent, obs.at):
                continue  # an integration allow-listed through the admin API
            if obs.refused:
                pass  # refused by the gateway: evidence of use for sharing only
            elif scraper is not None and obs.route_class in self._watched and self._score(scraper, obs, subject, agent):
                scored[subject] = scored.get(subject, 0) + 1
                if self._due(("paths", subject, obs.target, agent, obs.session), obs.at, 6.0):
                    seen += self._scraping_sightings(obs)
                    scraped[subject] = obs
            if obs.user is None:
                continue
            # Impossible travel is judged as sharing: with that detector off there is nobody to judge it.
            if (watch is not None and self._travel.enabled
                    and self._travel.moved_too_fast(subject, obs.client_ip, obs.at)):
                travelled.add(subject)
                shared[subject] = obs
            device = watch.device_mark(obs) if watch is not None else None
            if watch is not None and watch.hop(obs, self._track(subject, "sharing")):
                shared[subject] = obs  # a session changed networks: judged at once, written or not
            # One mark for the login's session, address and device: seen the same way within
            # _SHARING_EVERY, neither its sharing sightings nor its seat can have changed.
            if not self._due((subject, obs.session, obs.client_ip, agent, device), obs.at, _SHARING_EVERY):
                continue
            if watch is not None:
                seen += watch.sightings(obs, self._track(subject, "sharing"))
                shared[subject] = obs
            if self._seats_on and obs.customer is not None and self._seats_of(obs.customer):
                seen.append(Sighting(self._seat_key(obs), obs.user, obs.at, _SEAT_WINDOW, 100_000))
                seat_users[obs.customer] = obs
        if not seen and not travelled and not shared:
            return  # nothing new anywhere: every distinct count is as it was

        queries: list[Query] = []
        asked_scraping = {subject: self._scraping_queries(obs) for subject, obs in scraped.items()}
        asked_sharing = ({subject: watch.queries(subject, obs.at) for subject, obs in shared.items()}
                         if watch is not None else {})
        asked_seats = {customer: Query(self._seat_key(obs), self._month_start(obs.at))
                       for customer, obs in seat_users.items()}
        for scraping in asked_scraping.values():
            queries += scraping
        for sharing in asked_sharing.values():
            queries += sharing
        queries += asked_seats.values()
        answers = await self.sightings.exchange(seen, queries)
        if answers is None:
            self._written.clear()  # not stored: write everything again next time
            return  # the per-request signals above still counted; distinct counts wait for the next batch

        if scraper is not None:
            for subject, obs in scraped.items():
                paths, agents = asked_scraping[subject]
                self._score_breadth(scraper, obs, scored[subject], len(answers[paths]), len(answers[agents]))
        if watch is not None:
            for subject, obs in shared.items():
                await self._judge_sharing(watch, obs, asked_sharing[subject], answers,
                                          ("travel",) if subject in travelled else ())
        for customer, obs in seat_users.items():
            self._judge_seats(customer, obs, answers[asked_seats[customer]])

    def _due(self, mark: Mark, at: float, every: float) -> bool:
        """Whether what `mark` describes should be written to the store again.

        The same identity seen again the same way (session, address, agent; or path) within
        `every` seconds is not written again: last-seen times are that coarse, a steady
        client costs the store nothing, and only an identity with something new is counted."""
        written = self._written
        last = written.get(mark)
        if last is not None and at - last < every:
            return False
        if len(written) >= _MAX_WRITTEN:
            written.clear()
        written[mark] = at
        return True

    @overload
    def _track(self, subject: str, kind: Literal["sharing"]) -> SharingTrack: ...
    @overload
    def _track(self, subject: str, kind: Literal["scraping"]) -> ScrapingTrack: ...

    def _track(self, subject: str, kind: Literal["sharing", "scraping"]) -> ScrapingTrack | SharingTrack:
        track = self._tracks.get(subject)
        if track is None:
            track = _Track()
            self._tracks.put(subject, track)
        else:
            self._tracks.move_to_end(subject)
        if kind == "sharing":
            if track.sharing is None:
                track.sharing = SharingTrack()
            return track.sharing
        if track.scraping is None:
            track.scraping = ScrapingTrack(self.settings.scraping.cadence_samples)
        return track.scraping

    # -- scraping -----------------------------------------------------------------------

    def _asset_fetched(self, obs: Observation) -> None:
        self._asset_addresses.put(obs.client_ip, obs.at)
        if obs.user is not None:
            track = self._tracks.get(obs.subject)
            if track is not None and track.scraping is not None:
                track.scraping.assets += 1

    def _score(self, scraping: ScrapingSignals, obs: Observation, subject: str, agent: str) -> bool:
        """Add this request's signals to its identity's score; False if it is never scored."""
        if scraping.agents.allowed(agent):
            return False  # an integration the customer declared
        track = self._track(subject, "scraping")
        fired = scraping.signals(obs, agent, track, obs.client_ip in self._asset_addresses)
        if fired:
            self._add_score(scraping, obs, track, fired, 1)
        return True

    def _scraping_key(self, subject: str, what: str) -> str:
        return f"{self._prefix}:d:{{{self._public(subject)}}}:{what}"

    def _scraping_sightings(self, obs: Observation) -> list[Sighting]:
        settings = self.settings.scraping
        path = obs.target.partition("?")[0]
        agent = self.hasher.hash(obs.headers.get("User-Agent", ""))
        return [Sighting(self._scraping_key(obs.subject, "paths"), path, obs.at, 60.0,
                         settings.crawl_paths_per_minute * 2),
                Sighting(self._agents_key(obs), agent, obs.at, 3600.0, settings.agents_per_hour * 2)]

    def _agents_key(self, obs: Observation) -> str:
        # Per session: people sharing a login each keep their own browser (the sharing
        # detector's business); a scraper rotating user agents does it within one session.
        return self._scraping_key(obs.subject, f"agents:{obs.session or ''}")

    def _scraping_queries(self, obs: Observation) -> tuple[Query, Query]:
        """Distinct paths within a minute, distinct agents within an hour."""
        return (Query(self._scraping_key(obs.subject, "paths"), obs.at - 60.0),
                Query(self._agents_key(obs), obs.at - 3600.0))

    def _score_breadth(self, scraping: ScrapingSignals, obs: Observation, requests: int, paths: int,
                       agents: int) -> None:
        settings = self.settings.scraping
        fired = []
        if settings.weights.crawl_breadth and paths > settings.crawl_paths_per_minute:
            fired.append(Signal("crawl_breadth", paths, settings.crawl_paths_per_minute))
        if settings.weights.agent_rotation and agents >= settings.agents_per_hour:
            fired.append(Signal("agent_rotation", agents, settings.agents_per_hour))
        if fired:
            self._add_score(scraping, obs, self._track(obs.subject, "scraping"), fired, requests)

    def _add_score(self, scraping: ScrapingSignals, obs: Observation, track: ScrapingTrack, fired: list[Signal],
                   times: int) -> None:
        settings = self.settings.scraping
        weights = scraping.weights
        track.note(obs.at, fired)
        if track.decayed(obs.at, settings.half_life) < settings.threshold / 2:
            track.acted = None  # calmed down since the last finding: a new one may fire
        score = track.score = track.score + times * sum(weights[signal.name] for signal in fired)
        if score < settings.threshold:
            return
        evidence = track.evidence(obs.at, settings.evidence_window)
        # Evidence, not a single signal: a challenge or block needs a definitive signal or
        # min_signals independent ones; anything less only flags, whatever the class says.
        convincing = (any(signal.definitive for signal in evidence)
                      or _independent(evidence) >= settings.min_signals)
        configured = Action(self._scraping_actions[obs.route_class])
        action = configured if convincing else Action.FLAG
        if (track.acted is not None and _STRENGTH[action] <= _STRENGTH[Action(track.acted)]) or self.grants.exempt(
                obs.customer, obs.user, SCRAPING, obs.at):
            return  # already reported at this strength (a stronger case may still follow)
        track.acted = action
        track.offences += convincing  # a flag is no offence: it must not lengthen a later block
        shadow = settings.mode == "shadow"
        until = None
        if convincing and self._refusing and not shadow:
            until = obs.at + min(settings.block_for * 2 ** (track.offences - 1), settings.max_block)
            self._sanction(Sanction(self._public(obs.subject), AUTOMATION, until, SCRAPING_POLICY))
        self.findings.record(Finding(
            SCRAPING, self._public(obs.subject), obs.customer, obs.user, action, shadow, obs.at,
            tuple(signal.name for signal in evidence), score=round(score, 2), until=until,
            evidence={"route_class": obs.route_class, "method": obs.method, "path": obs.target.partition("?")[0],
                      "user_agent": obs.headers.get("User-Agent", ""), "offences": track.offences,
                      "client": self.hasher.hash(obs.client_ip),
                      "signals": {signal.name: {"value": signal.value, "threshold": signal.threshold,
                                                "definitive": signal.definitive} for signal in evidence},
                      "threshold": settings.threshold, "needs": "a definitive signal or "
                                                                f"{settings.min_signals} independent signals"},
        ))

    def _public(self, subject: str) -> str:
        """A subject as findings and shared state name it: addresses only hashed."""
        if subject.startswith("address:"):
            return "address:" + self.hasher.hash(subject[len("address:"):])
        return subject

    # -- sharing ------------------------------------------------------------------------

    async def _judge_sharing(self, sharing: SharingWatch, obs: Observation, asked: SharingQueries, answers: Answers,
                             extra: tuple[str, ...]) -> None:
        settings = self.settings.sharing
        track = self._track(obs.subject, "sharing")
        verdict = sharing.verdict(obs, asked, answers, self._allowance(obs.customer), track, extra)
        if verdict is None or self.grants.exempt(obs.customer, obs.user, SHARING, obs.at):
            return
        shadow = settings.mode == "shadow"
        action, until = Action(settings.action), None
        if action != Action.FLAG and not shadow and verdict.newest_session is not None:
            until = obs.at + settings.block_for
            kind = REAUTH if action == Action.REAUTH else BLOCK
            self._sanction(Sanction(session_key(obs.customer or "", obs.user or "", verdict.newest_session), kind,
                                    until, SHARING_POLICY, issued_before=obs.at))
        elif action != Action.FLAG:
            action = Action.FLAG  # one session: nobody newer to ask
        self.findings.record(Finding(
            SHARING, obs.subject, obs.customer, obs.user, action, shadow, obs.at, verdict.signals, until=until,
            evidence={**verdict.evidence, "newest_session": verdict.newest_session},
        ))

    def _allowance(self, customer: str | None) -> SharingAllowance:
        plan = self._plans.get(self._config.plan_of(customer) or "")
        return plan.sharing if plan is not None and plan.sharing is not None else self.settings.sharing.allowance

    # -- seats --------------------------------------------------------------------------

    def _seats_of(self, customer: str) -> int | None:
        plan = self._plans.get(self._config.plan_of(customer) or "")
        return plan.seats if plan is not None else None

    def _month_of(self, at: float) -> tuple[float, float, str]:
        """Start, end and label (YYYY-MM) of the month of `at` in the quota time zone; cached."""
        start, end, _ = self._months
        if start <= at < end:
            return self._months
        local = dt.datetime.fromtimestamp(at, self._zone).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (local + dt.timedelta(days=32)).replace(day=1)
        self._months = (local.timestamp(), following.timestamp(), f"{local:%Y-%m}")
        return self._months

    def _month_start(self, at: float) -> float:
        return self._month_of(at)[0]

    def _seat_key(self, obs: Observation) -> str:
        return f"{self._prefix}:d:{{customer:{obs.customer}}}:users:{self._month_of(obs.at)[2]}"

    def _judge_seats(self, customer: str, obs: Observation, users: dict[str, float]) -> None:
        seats = self._seats_of(customer)
        if seats is None or len(users) <= seats or self.grants.exempt(customer, None, SEATS, obs.at):
            return
        month = self._month_of(obs.at)[2]
        marker = f"{customer}:{month}"
        if self._seats_reported.get(marker, -math.inf) > obs.at - 86400:
            return  # once a day per customer and month
        if len(self._seats_reported) > 100_000:
            self._seats_reported.clear()
        self._seats_reported[marker] = obs.at
        self.findings.record(Finding(
            SEATS, f"customer:{customer}", customer, None, Action.FLAG, self.settings.seats.mode == "shadow", obs.at,
            ("seats",), evidence={"month": month, "seats": seats, "active_users": len(users),
                                  "users": sorted(users)[:500]},
        ))

    # -- sanctions ------------------------------------------------------------------------

    def _sanction(self, sanction: Sanction) -> None:
        self.sanctions.add(sanction)
        self._fleet.publish_soon(sanction.as_change())


_STRENGTH = {Action.FLAG: 0, Action.CHALLENGE: 1, Action.BLOCK: 2}


def _independent(evidence: list[Signal]) -> int:
    """Distinct signals, those measuring what another one already does counted once."""
    names = {signal.name for signal in evidence}
    return len(names) - sum(1 for signal in evidence if signal.overlaps in names)


def _problem(sanction: Sanction, now: float, scraping_action: str) -> Problem:
    retry_after = str(max(1, math.ceil(sanction.until - now)))
    until = dt.datetime.fromtimestamp(sanction.until, dt.UTC).isoformat(timespec="seconds")
    if sanction.kind == REAUTH:
        return Problem(401, "reauthentication-required", "Unauthorized",
                       f"This login is in use elsewhere ({sanction.policy}); sign in again.",
                       {"WWW-Authenticate": 'Bearer realm="fairgate", error="invalid_token", '
                                            'error_description="sign in again"'},
                       {"policy": sanction.policy})
    if sanction.kind == BLOCK:
        return Problem(403, "session-blocked", "Forbidden",
                       f"This session is blocked until {until} ({sanction.policy}).",
                       {"Retry-After": retry_after}, {"policy": sanction.policy, "until": until})
    if scraping_action == Action.CHALLENGE or sanction.kind == SanctionKind.CHALLENGE:
        return Problem(403, "automation-challenge", "Forbidden",
                       f"This traffic looks automated ({sanction.policy}). Use the API under your plan, or "
                       "contact support if this is a mistake.", {}, {"policy": sanction.policy})
    return Problem(403, "automation-blocked", "Forbidden",
                   f"Automated access is blocked until {until} ({sanction.policy}).",
                   {"Retry-After": retry_after}, {"policy": sanction.policy, "until": until})

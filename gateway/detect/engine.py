"""The detectors' side of the gateway: observations queued on the request path, analysed in
batches off it by the detectors (sharing, scraping, seats), sanctions applied to later requests.

The request path pays for two things only: appending an Observation after the upstream
answered, and a sanction lookup that is skipped while none are in force. One batch makes one
call to the sightings store (memory, or one Redis pipeline), never one per request, and yields
to the event loop after each millisecond of work. With `detection.worker` the batches are
analysed in a process of their own instead (worker.py), and what it found is done here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zoneinfo
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.auth.identity import Identity
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.config.limits import StateSettings
from gateway.detect.addresses import NETWORKS, Hasher
from gateway.detect.context import Context
from gateway.detect.detector import Detector
from gateway.detect.findings import Finding, FindingLog
from gateway.detect.observation import ANONYMOUS, PROOF, Observation, subject_of
from gateway.detect.refusals import automation_blocked, challenge, session_problem
from gateway.detect.sanctions import BLOCK, CHALLENGE, Sanction, Sanctions, session_key, user_key
from gateway.detect.scraping import PAGE_CLASSES, ScrapingSignals
from gateway.detect.scraping_detector import SCRAPING_POLICY, ScrapingDetector
from gateway.detect.seats import SeatsDetector
from gateway.detect.sharing import SharingWatch
from gateway.detect.sharing_detector import SHARING_POLICY, SharingDetector
from gateway.detect.travel import TravelCheck
from gateway.detect.worker import WorkerLink, encode_config
from gateway.fleet.grants import Grants
from gateway.fleet.sharing import Fleet
from gateway.fleet.topics import Topic
from gateway.problems import Problem
from gateway.state.sightings import Answers, Sighting, Sightings
from gateway.state.tables import Swept, Tables

log = logging.getLogger("fairgate.detect")

__all__ = ["SCRAPING_POLICY", "SHARING_POLICY", "Detection", "DetectionSetup"]

# A batch yields to the event loop once it held it this long (issue 14: no background step
# holds the loop over 2 ms); the clock is read every _PACE_EVERY observations or verdicts, well
# under a millisecond of work (measured: 160-240 us of CPU an observation with every detector
# on, on a loaded 2-vCPU VM), so a step ends within about 2 ms whatever the machine's speed.
_HOLD = 0.001
_PACE_EVERY = 4
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


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
    worker_config: bytes | None = None  # what a detection worker is told of the config (detection.worker)


class Detection:
    observes = True  # the request path queues what it forwards (see detect/off.py for a config without detectors)
    feeds_worker = True  # False in the detection worker itself

    def __init__(self, sightings: Sightings, findings: FindingLog, clock: Clock, fleet: Fleet | None,
                 grants: Grants) -> None:
        self.sightings = sightings
        self.findings = findings
        self.sanctions = Sanctions()
        self.grants = grants  # exemptions and allow-listed users and agents (admin API)
        self.dropped = 0  # observations dropped because analysis fell behind
        self._clock = clock
        self._fleet = fleet  # None in a detection worker: the gateway shares what it sanctions
        if fleet is not None:
            fleet.receive(Topic.SANCTIONS, self.sanctions.sync_from)
        self._queue: deque[Observation] = deque()
        self._ctx = Context(findings, self.sanctions, grants, self._sanction)
        self._detectors: tuple[Detector, ...] = ()
        self._scraping: ScrapingDetector | None = None
        self._salt: bytes | object | None = object()
        self._analysing = asyncio.Lock()
        self._worker: WorkerLink | None = None  # detection.worker: the analysis runs there
        self._configured = False
        self._state_at_start: StateSettings | None = None  # what a worker opens, whatever a reload says

    def configure(self, config: GatewayConfig) -> None:
        """Take a (re)loaded config; what was observed so far is kept."""
        self.apply(self.prepare(config))

    def prepare(self, config: GatewayConfig, salt: bytes | None = None) -> DetectionSetup:
        """Compile a config's detectors, changing nothing yet (a reload applies them with the rest);
        `salt` instead of the config's (a worker takes its gateway's)."""
        settings = config.detection
        salt = salt if salt is not None else settings.salt()
        hasher = Hasher(salt) if salt != self._salt else self.hasher
        prefix = config.state.key_prefix
        # Encoded here, not in apply: a config that cannot be sent is rejected with the rest of the reload.
        told = (encode_config(config, hasher.salt, self._state_at_start)
                if self.feeds_worker and (settings.worker or self._worker is not None) else None)
        return DetectionSetup(
            config, salt, hasher,
            SharingWatch(settings.sharing, hasher, prefix) if settings.sharing.mode != "off" else None,
            ScrapingSignals(settings.scraping) if settings.scraping.mode != "off" else None,
            TravelCheck(settings.sharing.geoip_database, settings.sharing.max_speed_kmh),
            zoneinfo.ZoneInfo(config.limits.time_zone),
            told,
        )

    def apply(self, setup: DetectionSetup) -> None:
        settings = setup.config.detection
        self.settings = settings
        self._salt, self.hasher = setup.salt, setup.hasher
        ctx = self._ctx
        ctx.configure(setup.config, setup.hasher)
        detectors: list[Detector] = []
        scraping = None
        if setup.scraping is not None:
            scraping = ScrapingDetector(ctx, setup.scraping)
            scraping.carry(self._scraping)
            detectors.append(scraping)
        if setup.sharing is not None:
            detectors.append(SharingDetector(ctx, setup.sharing, setup.travel))
        if settings.seats.mode != "off":
            detectors.append(SeatsDetector(ctx, setup.zone))
        self._scraping, self._detectors = scraping, tuple(detectors)
        self._queue_size = settings.queue_size
        actions = settings.scraping.actions if scraping is not None else {}
        self._blocking = frozenset(cls for cls, action in actions.items() if action == "block")
        self._challenging = frozenset(cls for cls, action in actions.items() if action == "challenge")
        self._configure_worker(setup)

    def _configure_worker(self, setup: DetectionSetup) -> None:
        """The first config decides whether the analysis runs in a worker process."""
        wanted = setup.config.detection.worker and bool(self._detectors)
        if not self._configured and wanted:
            self._worker = WorkerLink(self._received, self.sanctions, self.grants)
        elif self._configured and wanted != (self._worker is not None):
            log.warning("detection.worker (and whether any detector is on, with it) takes effect only on restart")
        if not self._configured:
            self._state_at_start = setup.config.state
        self._configured = True
        if self._worker is not None and setup.worker_config is not None:  # `prepare` encoded it for the worker
            self._worker.configure(setup.config, setup.worker_config)

    @property
    def backlog(self) -> int:
        return len(self._queue)

    @property
    def worker_starts(self) -> int:
        return self._worker.starts if self._worker is not None else 0

    @property
    def tracked(self) -> int:
        """Identities with state (at most detection.max_tracked), in this process or its worker."""
        return self._worker.tracked if self._worker is not None else len(self._ctx.tracks)

    def watch(self, tables: Tables) -> None:
        """The per-identity tables: shown on /metrics, and swept once idle past every window;
        and the memos of work per address, client and path, swept once unused for MEMO_IDLE."""
        ctx, now = self._ctx, self._clock.time
        tables.follow("detection_tracks", lambda: self._local_or_worker("detection_tracks", ctx.tracks), now)
        for name in ("detection_bulk_days", "detection_bulk_readers", "detection_networks", "memo_templates"):
            tables.follow(name, lambda name=name: self._local_or_worker(name, self._scraping_table(name)), now)  # type: ignore[misc]  # lambda default binds the name
        tables.follow("detection_sightings", lambda: self._local_or_worker("sightings", None), now)
        # The process's own memos: shared by every Gateway in it (tests), each of which sweeps them.
        tables.add("memo_networks", NETWORKS, now)
        tables.add("memo_anonymous", ANONYMOUS, now)
        tables.follow("memo_hashes", lambda: self._hashes(), now)

    def _local_or_worker(self, name: str, local: Swept | None) -> Swept | None:
        """A table of this process's, or as the worker last reported its own of that name."""
        return self._worker.tables.get(name) if self._worker is not None else local

    def _hashes(self) -> Swept | None:
        hasher: Hasher | None = getattr(self, "hasher", None)  # none before the first config
        return hasher.hashes if hasher is not None else None

    def _scraping_table(self, name: str) -> Swept | None:
        return self._scraping.tables()[name] if self._scraping is not None else None

    def public(self, subject: str) -> str:
        """A subject as findings and sanctions name it (anonymous networks hashed)."""
        return self._ctx.public(subject)

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
        login (sharing evidence keeps growing while its sharers are refused) and still its timing
        (a tight loop mostly meets the rate limit)."""
        self.observe(Observation(self._clock.time(), route_class, identity.customer, identity.user,
                                 identity.session, client_ip, method, target, headers, status, None,
                                 user_key(identity.customer, identity.user), True))

    def observe_proof(self, subject: str) -> None:
        """Queue a browser proof (a link token or a passed challenge) for `subject`."""
        self.observe(Observation(self._clock.time(), PROOF, None, None, None, "", "GET", "", _NO_HEADERS, 200,
                                 None, subject))

    def observe(self, obs: Observation) -> None:
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                log.warning("detection is behind: observations dropped", extra={"dropped": self.dropped})
        self._queue.append(obs)

    def refusal(self, identity: Identity | None, client_ip: str, route_class: str,
                headers: Mapping[str, str] = _NO_HEADERS) -> Problem | None:
        """The problem to answer instead of forwarding, if a sanction applies. Call only when
        `self.sanctions` is non-empty; `headers` name an anonymous client (its fingerprint)."""
        now = self._clock.time()
        sanctions = self.sanctions
        if identity is not None:
            if identity.session is not None:
                sanction = sanctions.get(session_key(identity.customer, identity.user, identity.session), now)
                if sanction is not None and (sanction.kind == BLOCK or identity.issued_at <= sanction.issued_before):
                    return session_problem(sanction, now)
            subject = user_key(identity.customer, identity.user)
        else:
            subject = self._ctx.public(subject_of(None, None, client_ip, headers))
        sanction = sanctions.get(subject, now)
        if sanction is None:
            return None
        if sanction.kind == CHALLENGE:
            # One signal: pages are challenged on a class that refuses, the API never.
            refuses = route_class in self._blocking or route_class in self._challenging
            return challenge(sanction) if refuses and route_class in PAGE_CLASSES else None
        if route_class in self._blocking:  # a block follows the login to every class set to block
            return automation_blocked(sanction, now)
        if route_class in self._challenging:
            return challenge(sanction)
        return None

    # -- off the request path -------------------------------------------------------------

    async def run(self) -> None:
        if self._worker is not None:
            try:
                await self._worker.start()  # now, not with the first batch
            except Exception:  # the first batch tries again
                log.exception("detection worker did not start")
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                # Shielded: a drain holds the batch it took, so shutdown cancelling this loop
                # mid-batch would lose its findings; it goes to its end and the final drain waits
                # for it (the lock).
                await asyncio.shield(self.drain())
            except Exception:  # a bug here must not stop detection for good
                log.exception("detection batch failed")

    async def drain(self) -> None:
        """Analyse everything observed so far."""
        async with self._analysing:
            while self._queue:
                batch, self._queue = self._queue, deque()
                await self._analyse(batch)

    async def _analyse(self, batch: deque[Observation]) -> None:
        if self._worker is not None:
            try:
                self.dropped += await self._worker.analyse(batch, self._clock.time())
            except asyncio.CancelledError:  # cut off: the batch is lost, and counted
                self.dropped += len(batch)
                raise
            return
        seen: list[Sighting] = []
        grants, detectors, clock, ctx = self.grants, self._detectors, time.perf_counter, self._ctx
        since = clock()
        for n, obs in enumerate(batch, 1):
            if n % _PACE_EVERY == 0 and clock() - since >= _HOLD:
                await asyncio.sleep(0)  # other requests run between chunks
                since = clock()
            ctx.recent = None
            agent = obs.agent = obs.headers.get("User-Agent", "")
            if grants.agents and obs.route_class != PROOF and grants.agent_allowed(agent, obs.at):
                continue  # an integration allow-listed through the admin API
            for detector in detectors:
                detector.observe(obs, seen)
        ctx.recent = None
        await asyncio.sleep(0)
        queries = [query for detector in detectors for query in detector.queries()]
        answers: Answers | None = {}  # nothing new anywhere: every distinct count is as it was
        if seen or queries:
            answers = await self.sightings.exchange(seen, queries)
            if answers is None:
                ctx.forget_written()  # per-request signals above still counted; distinct counts wait
        judged, since = 0, clock()
        for detector in detectors:
            for _ in detector.judge(answers):  # every detector judges, and starts its next batch afresh
                ctx.recent = None
                judged += 1
                if judged % _PACE_EVERY == 0 and clock() - since >= _HOLD:
                    await asyncio.sleep(0)
                    since = clock()

    # -- sanctions ------------------------------------------------------------------------

    def _sanction(self, sanction: Sanction) -> None:
        self.sanctions.add(sanction)
        if self._fleet is not None:
            self._fleet.publish_soon(sanction.as_change())

    def _received(self, events: list[Sanction | Finding], recheck: bool = False) -> None:
        """What the worker's detectors did with a batch, in their order, done here. `recheck`: the
        grants changed while the worker held the batch, and what they now exempt is left out, as
        the detectors here would have (each makes a sanction just before its finding: the finding
        left out takes its sanction along)."""
        held: Sanction | None = None
        for event in events:
            if isinstance(event, Sanction):
                if held is not None:
                    self._sanction(held)
                held = event
            elif recheck and self._exempt_now(event):
                if held is not None:  # the worker took it into its own table: it is told this one's
                    self.sanctions.retell(held.key)
                held = None
            else:
                if held is not None:
                    self._sanction(held)
                    held = None
                self.findings.record(event)
        if held is not None:
            self._sanction(held)

    def _exempt_now(self, finding: Finding) -> bool:
        grants = self.grants
        if grants.exempt(finding.customer, finding.user, finding.detector, finding.at):
            return True
        agent = finding.evidence.get("user_agent")
        return bool(grants.agents) and isinstance(agent, str) and grants.agent_allowed(agent, finding.at)

    def finishing(self, grace: float) -> None:
        """The gateway stops: its last drain waits for the worker `grace` seconds at most."""
        if self._worker is not None:
            self._worker.finishing(grace)

    async def close(self) -> None:
        """Stop the worker process, if any (after the last `drain`)."""
        if self._worker is not None:
            await self._worker.close()

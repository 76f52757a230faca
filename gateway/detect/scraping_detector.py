"""The scraping detector: per-request signals scored per identity (signals in scraping.py),
distinct paths and agents through the sightings store, bulk reads per login and day, and
ids walked by a crowd of anonymous clients. A score over the threshold is a finding, and the
evidence decides what it does: a definitive signal or min_signals independent ones take the
route class's action; one signal challenges on pages (never the API) or only flags."""

from __future__ import annotations

from collections.abc import Iterator

from gateway.detect.bulk import BulkReads
from gateway.detect.context import Context
from gateway.detect.crowd import CrowdWalks
from gateway.detect.findings import SCRAPING, Action, Finding
from gateway.detect.marks import due
from gateway.detect.networks import NetworkMemory
from gateway.detect.observation import PROOF, Observation, network_part
from gateway.detect.sanctions import AUTOMATION, CHALLENGE, Sanction
from gateway.detect.scraping import PAGE_CLASSES, Record, ScrapingSignals, ScrapingTrack, Signal
from gateway.state.sightings import Answers, Query, Sighting
from gateway.state.tables import Swept

SCRAPING_POLICY = "no screen-scraping or automated extraction outside the permitted API use"
_STRENGTH = {Action.FLAG: 0, Action.CHALLENGE: 1, Action.BLOCK: 2}
_REFUSING = (Action.CHALLENGE, Action.BLOCK)
# The same request (path and query, agent, session) is written to the sightings again after this long.
_PATHS_EVERY = 6.0
_NO_RECORD: Record = ("", ())


class ScrapingDetector:
    def __init__(self, ctx: Context, signals: ScrapingSignals) -> None:
        self._ctx = ctx
        self._signals = signals
        settings = signals.settings
        self._actions: dict[str, Action] = {cls: Action(action) for cls, action in settings.actions.items()}
        self._bulk = BulkReads(settings)
        self._crowd = CrowdWalks(settings)
        self._networks = NetworkMemory(settings.network_memory)
        self._scored: dict[str, int] = {}  # subject -> requests scored in this batch
        self._scraped: dict[str, Observation] = {}  # subjects whose distinct paths/agents may have changed
        self._asked: dict[str, tuple[Query, Query]] = {}

    def carry(self, before: ScrapingDetector | None) -> None:
        """A reload keeps what was learnt of days, crowds and networks."""
        if before is not None:
            self._bulk, self._crowd, self._networks = before._bulk, before._crowd, before._networks
            self._bulk.settings = self._crowd.settings = self._signals.settings
            self._networks.keep_for = self._signals.settings.network_memory

    def tables(self) -> dict[str, Swept]:
        """Its per-login and per-network tables, by the name /metrics shows."""
        return {"detection_bulk_days": self._bulk.days, "detection_bulk_readers": self._bulk.readers,
                "detection_networks": self._networks.offences_table, "memo_templates": self._signals.templates}

    # -- one observation ------------------------------------------------------------------

    def observe(self, obs: Observation, seen: list[Sighting]) -> None:
        ctx, subject = self._ctx, obs.subject
        if obs.route_class == PROOF:
            self._proof(subject, obs.at)
            return
        if obs.route_class not in self._actions:
            return
        agent = obs.agent
        if self._signals.agents.allowed(agent):
            return  # an integration the customer declared
        track = ctx.scraping_track(subject, obs.at)
        if ctx.sanctions and obs.user is not None and not obs.refused:
            self._blocked_elsewhere(obs, track)
        if obs.refused:
            fired = self._signals.signals(obs, agent, track, _NO_RECORD)
            if fired:
                self._add_score(obs, track, fired, 1)
            return
        record = self._signals.templates[obs.target]  # once, for enumeration and records
        fired = self._signals.signals(obs, agent, track, record)
        fired += self._records(obs, track, record)
        if fired:
            self._add_score(obs, track, fired, 1)
        self._scored[subject] = self._scored.get(subject, 0) + 1
        written = due(track.written, hash((obs.target, agent, obs.session)), obs.at, _PATHS_EVERY, ctx.epoch)
        if written is not None:
            track.written = written
            paths, agents = self._key(subject, "paths"), self._key(subject, f"agents:{obs.session or ''}")
            settings = self._signals.settings
            # Agents per session: people sharing a login each keep their own browser (the sharing
            # detector's business); a scraper rotating user agents does it within one session.
            seen.append(Sighting(paths, obs.target.partition("?")[0], obs.at, 60.0,
                                 settings.crawl_paths_per_minute * 2))
            seen.append(Sighting(agents, ctx.hasher.hash(agent), obs.at, 3600.0, settings.agents_per_hour * 2))
            self._scraped[subject] = obs
            # Asked after the batch; made here, inside the observations' paced loop.
            self._asked[subject] = (Query(paths, obs.at - 60.0), Query(agents, obs.at - 3600.0))

    def _proof(self, subject: str, at: float) -> None:
        track = self._ctx.scraping_track(subject, at)
        sanction = self._ctx.sanctions.get(self._ctx.public(subject), at) if self._ctx.sanctions else None
        if sanction is not None and sanction.kind == CHALLENGE:
            track.proven()  # a challenge passed (the handler lets the browser through on its pass)
        else:
            track.proofs += 1

    def _records(self, obs: Observation, track: ScrapingTrack, record: Record) -> list[Signal]:
        """Bulk reads per login and the crowd's walks, from the record (template and ids) read."""
        weights = self._signals.weights
        if obs.status >= 400 or not (weights["bulk_extraction"] or weights["crowd_enumeration"]):
            return []
        template, numbers = record
        if not numbers:
            return []
        fired = []
        if obs.user is not None:
            if weights["bulk_extraction"]:
                track.reads, over = self._bulk.read(track.reads, obs.customer or "", obs.user,
                                                    hash((template, numbers)), obs.at)
                if over is not None:
                    fired.append(Signal("bulk_extraction", f"{over[0]} records today", over[1]))
        elif weights["crowd_enumeration"] and track.proofs == 0:
            walk = self._crowd.read(template, numbers, obs.subject, obs.at)
            if walk is not None:
                fired.append(Signal("crowd_enumeration", f"{walk[0]} ids in sequence by {walk[1]} clients",
                                    f"{self._signals.settings.crowd_run} by {self._signals.settings.crowd_clients}",
                                    overlaps="enumeration"))
        return fired

    def _blocked_elsewhere(self, obs: Observation, track: ScrapingTrack) -> None:
        """A login blocked for scraping, seen on a class that only flags: one finding per block."""
        if self._actions[obs.route_class] is not Action.FLAG:
            return
        ctx = self._ctx
        sanction = ctx.sanctions.get(ctx.public(obs.subject), obs.at)
        if sanction is None or sanction.kind != AUTOMATION or track.noted_block == sanction.until:
            return
        track.noted_block = sanction.until
        ctx.findings.record(Finding(
            SCRAPING, obs.subject, obs.customer, obs.user, Action.FLAG, ctx.settings.scraping.mode == "shadow",
            obs.at, ("blocked_elsewhere",), until=sanction.until,
            evidence={"route_class": obs.route_class, "method": obs.method, "path": obs.target.partition("?")[0],
                      "block": {"until": sanction.until, "policy": sanction.policy},
                      "note": "this login is blocked for scraping on the classes set to block; this class only "
                              "flags"}))

    # -- distinct paths and agents ----------------------------------------------------------

    def _key(self, subject: str, what: str) -> str:
        return f"{self._ctx.prefix}:d:{{{self._ctx.public(subject)}}}:{what}"

    def queries(self) -> list[Query]:
        """Distinct paths within a minute, distinct agents within an hour."""
        return [query for asked in self._asked.values() for query in asked]

    def judge(self, answers: Answers | None) -> Iterator[None]:
        scraped, scored, asked = self._scraped, self._scored, self._asked
        self._scraped, self._scored, self._asked = {}, {}, {}
        if answers is None:
            return
        settings = self._signals.settings
        weights = self._signals.weights
        for subject, obs in scraped.items():
            paths, agents = (len(answers[query]) for query in asked[subject])
            fired = []
            if weights["crawl_breadth"] and paths > settings.crawl_paths_per_minute:
                fired.append(Signal("crawl_breadth", paths, settings.crawl_paths_per_minute))
            if weights["agent_rotation"] and agents >= settings.agents_per_hour:
                fired.append(Signal("agent_rotation", agents, settings.agents_per_hour))
            if fired:
                self._add_score(obs, self._ctx.scraping_track(subject, obs.at), fired, scored.get(subject, 1))
            yield

    # -- the finding ------------------------------------------------------------------------

    def _add_score(self, obs: Observation, track: ScrapingTrack, fired: list[Signal], times: int) -> None:
        ctx, settings, weights = self._ctx, self._signals.settings, self._signals.weights
        track.note(obs.at, fired)
        if track.decayed(obs.at, settings.half_life) < settings.threshold / 2:
            track.acted = None  # calmed down since the last finding: a new one may fire
        score = track.score = track.score + times * sum(weights[signal.name] for signal in fired)
        if score < settings.threshold:
            return
        evidence = track.evidence(obs.at, settings.evidence_window)
        network = network_part(obs.subject)
        blocks = self._blocks(evidence, anonymous=network is not None)
        action = self._decide(obs.route_class, blocks)
        if (track.acted is not None and _STRENGTH[action] <= _STRENGTH[Action(track.acted)]) or ctx.grants.exempt(
                obs.customer, obs.user, SCRAPING, obs.at):
            return  # already reported at this strength (a stronger case may still follow)
        track.acted = action
        if action is Action.BLOCK or (action is Action.CHALLENGE and blocks):
            if network is not None and not track.offences:
                track.offences = self._networks.offences(network, obs.at)  # a rotating client comes back
            track.offences += 1  # a flag or a one-signal challenge is no offence: it must not lengthen a block
        shadow = settings.mode == "shadow"
        until = None
        public = ctx.public(obs.subject)
        if action in _REFUSING and not shadow:
            if blocks:
                until = obs.at + min(settings.block_for * 2 ** (track.offences - 1), settings.max_block)
                ctx.sanction(Sanction(public, AUTOMATION, until, SCRAPING_POLICY))
            else:
                until = obs.at + settings.challenge_for
                ctx.sanction(Sanction(public, CHALLENGE, until, SCRAPING_POLICY))
            if network is not None:
                self._networks.offended(network, track.offences, obs.at)
        ctx.findings.record(Finding(
            SCRAPING, public, obs.customer, obs.user, action, shadow, obs.at,
            tuple(signal.name for signal in evidence), score=round(score, 2), until=until,
            evidence={"route_class": obs.route_class, "method": obs.method, "path": obs.target.partition("?")[0],
                      "user_agent": obs.agent, "offences": track.offences,
                      "client": ctx.hasher.hash(obs.client_ip),
                      **({"network": ctx.hasher.hash(network)} if network is not None else {}),
                      "signals": {signal.name: {"value": signal.value, "threshold": signal.threshold,
                                                "definitive": signal.definitive} for signal in evidence},
                      "threshold": settings.threshold, "needs": "a definitive signal or "
                                                                f"{settings.min_signals} independent signals"},
        ))

    def _blocks(self, evidence: list[Signal], *, anonymous: bool) -> bool:
        """Evidence, not a single signal: a definitive signal or min_signals independent ones. An
        anonymous client is a network and a browser's fingerprint, which other people behind a
        carrier NAT or campus /24 with the same browser share: only a definitive signal blocks it
        (the rest is a challenge, which their browsers pass by themselves)."""
        if any(signal.definitive for signal in evidence):
            return True
        return not anonymous and _independent(evidence) >= self._signals.settings.min_signals

    def _decide(self, route_class: str, blocks: bool) -> Action:
        """Block-level evidence takes the class's action; less challenges a page on a class that
        refuses (a browser passes by itself) and only flags the API (programs are not challenged)."""
        configured = self._actions[route_class]
        if blocks:
            return configured
        if configured in _REFUSING and route_class in PAGE_CLASSES:
            return Action.CHALLENGE
        return Action.FLAG


def _independent(evidence: list[Signal]) -> int:
    """Distinct signals, those measuring what another one already does counted once."""
    names = {signal.name for signal in evidence}
    return len(names) - sum(1 for signal in evidence if signal.overlaps in names)

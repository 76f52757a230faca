"""The sharing detector: a login's sessions, networks and devices written as sightings, judged
against the plan's allowance once the batch's distinct counts are back (see sharing.py)."""

from __future__ import annotations

from collections.abc import Iterator

from gateway.config.detection import SharingAllowance
from gateway.detect.context import Context
from gateway.detect.findings import SHARING, Action, Finding
from gateway.detect.marks import due
from gateway.detect.observation import Observation
from gateway.detect.sanctions import BLOCK, REAUTH, Sanction, session_key
from gateway.detect.sharing import SharingQueries, SharingWatch
from gateway.detect.travel import TravelCheck
from gateway.state.sightings import Answers, Query, Sighting

SHARING_POLICY = "one login per user; logins are not shared between people"
# A login's session, address and device are written again after this long: a computer in
# steady use stays "in use at once" (sharing.windows.concurrent) and a second person's first
# request meets the first person's recent sighting.
_SHARING_EVERY = 15.0


class SharingDetector:
    def __init__(self, ctx: Context, watch: SharingWatch, travel: TravelCheck) -> None:
        self._ctx = ctx
        self._watch = watch
        self._travel = travel
        self._shared: dict[str, Observation] = {}
        self._travelled: set[str] = set()
        self._asked: dict[str, SharingQueries] = {}

    def observe(self, obs: Observation, seen: list[Sighting]) -> None:
        if obs.user is None:
            return
        ctx, watch, subject = self._ctx, self._watch, obs.subject
        if self._travel.enabled and self._travel.moved_too_fast(subject, obs.client_ip, obs.at):
            self._travelled.add(subject)
            self._share(obs)
        track = ctx.sharing_track(subject, obs.at)
        if watch.hop(obs, track):
            self._share(obs)  # a session changed networks: judged at once, written or not
        # One mark for the login's session, address and device: seen the same way within
        # _SHARING_EVERY, its sharing sightings cannot have changed.
        mark = hash((obs.session, obs.client_ip, obs.agent, watch.device_mark(obs)))
        written = due(track.shared, mark, obs.at, _SHARING_EVERY, ctx.epoch)
        if written is not None:
            track.shared = written
            seen += watch.sightings(obs, track)
            self._share(obs)

    def _share(self, obs: Observation) -> None:
        """Judge the login after this batch; its questions are made here, a few microseconds
        inside the observations' paced loop rather than all at once after it."""
        self._shared[obs.subject] = obs
        self._asked[obs.subject] = self._watch.queries(obs.subject, obs.at)

    def queries(self) -> list[Query]:
        return [query for asked in self._asked.values() for query in asked]

    def judge(self, answers: Answers | None) -> Iterator[None]:
        shared, travelled, asked = self._shared, self._travelled, self._asked
        self._shared, self._travelled, self._asked = {}, set(), {}
        if answers is None:
            return
        for subject, obs in shared.items():
            self._judge(obs, asked[subject], answers, ("travel",) if subject in travelled else ())
            yield

    def _judge(self, obs: Observation, asked: SharingQueries, answers: Answers, extra: tuple[str, ...]) -> None:
        ctx = self._ctx
        settings = ctx.settings.sharing
        track = ctx.sharing_track(obs.subject, obs.at)
        verdict = self._watch.verdict(obs, asked, answers, self._allowance(obs.customer), track, extra)
        if verdict is None or ctx.grants.exempt(obs.customer, obs.user, SHARING, obs.at):
            return
        shadow = settings.mode == "shadow"
        action, until = Action(settings.action), None
        if action != Action.FLAG and not shadow and verdict.newest_session is not None:
            until = obs.at + settings.block_for
            kind = REAUTH if action == Action.REAUTH else BLOCK
            ctx.sanction(Sanction(session_key(obs.customer or "", obs.user or "", verdict.newest_session), kind,
                                  until, SHARING_POLICY, issued_before=obs.at))
        elif action != Action.FLAG:
            action = Action.FLAG  # one session: nobody newer to ask
        ctx.findings.record(Finding(
            SHARING, obs.subject, obs.customer, obs.user, action, shadow, obs.at, verdict.signals, until=until,
            evidence={**verdict.evidence, "newest_session": verdict.newest_session},
        ))

    def _allowance(self, customer: str | None) -> SharingAllowance:
        config = self._ctx.config
        plan = config.plans.get(config.plan_of(customer) or "")
        return plan.sharing if plan is not None and plan.sharing is not None else config.detection.sharing.allowance

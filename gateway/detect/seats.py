"""Bureau use: more distinct active users per customer in a month than the plan's seats."""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Iterator

from gateway.detect.context import Context
from gateway.detect.findings import SEATS, Action, Finding
from gateway.detect.marks import due
from gateway.detect.observation import Observation
from gateway.state.sightings import Answers, Query, Sighting

_SEAT_WINDOW = 32 * 86400.0
_MAX_REPORTED = 100_000
_SEAT_EVERY = 15.0


class SeatsDetector:
    def __init__(self, ctx: Context, zone: zoneinfo.ZoneInfo) -> None:
        self._ctx = ctx
        self._zone = zone
        self._months: tuple[float, float, str] = (0.0, 0.0, "")  # start, end, label of the current month
        self._reported: dict[str, float] = {}
        self._pending: dict[str, tuple[Observation, Query]] = {}
        # Seats per plan, looked up once per config rather than per observation.
        config = ctx.config
        self._seats = {name: plan.seats for name, plan in config.plans.items()}

    def observe(self, obs: Observation, seen: list[Sighting]) -> None:
        if obs.customer is None or obs.user is None or self._seats_of(obs.customer) is None:
            return
        track = self._ctx.track(obs.subject, obs.at)
        written = due(track.seat, 0, obs.at, _SEAT_EVERY, self._ctx.epoch)
        if written is None:
            return  # written lately: the month's distinct users cannot have changed
        track.seat = written
        key = self._key(obs)
        seen.append(Sighting(key, obs.user, obs.at, _SEAT_WINDOW, 100_000))
        self._pending[obs.customer] = (obs, Query(key, self._month_of(obs.at)[0]))

    def queries(self) -> list[Query]:
        return [query for _, query in self._pending.values()]

    def judge(self, answers: Answers | None) -> Iterator[None]:
        pending, self._pending = self._pending, {}
        if answers is None:
            return
        for customer, (obs, query) in pending.items():
            self._judge(customer, obs, answers[query])
            yield

    def _seats_of(self, customer: str) -> int | None:
        return self._seats.get(self._ctx.config.plan_of(customer) or "")

    def _month_of(self, at: float) -> tuple[float, float, str]:
        """Start, end and label (YYYY-MM) of the month of `at` in the quota time zone; cached."""
        start, end, _ = self._months
        if start <= at < end:
            return self._months
        local = dt.datetime.fromtimestamp(at, self._zone).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (local + dt.timedelta(days=32)).replace(day=1)
        self._months = (local.timestamp(), following.timestamp(), f"{local:%Y-%m}")
        return self._months

    def _key(self, obs: Observation) -> str:
        return f"{self._ctx.prefix}:d:{{customer:{obs.customer}}}:users:{self._month_of(obs.at)[2]}"

    def _judge(self, customer: str, obs: Observation, users: dict[str, float]) -> None:
        ctx = self._ctx
        seats = self._seats_of(customer)
        if seats is None or len(users) <= seats or ctx.grants.exempt(customer, None, SEATS, obs.at):
            return
        month = self._month_of(obs.at)[2]
        marker = f"{customer}:{month}"
        if self._reported.get(marker, -math.inf) > obs.at - 86400:
            return  # once a day per customer and month
        if len(self._reported) > _MAX_REPORTED:
            self._reported.clear()
        self._reported[marker] = obs.at
        ctx.findings.record(Finding(
            SEATS, f"customer:{customer}", customer, None, Action.FLAG, ctx.settings.seats.mode == "shadow", obs.at,
            ("seats",), evidence={"month": month, "seats": seats, "active_users": len(users),
                                  "users": sorted(users)[:500]},
        ))

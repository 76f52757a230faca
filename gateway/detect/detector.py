"""The one shape every detector has, so the engine only queues, batches and runs them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from gateway.detect.observation import Observation
from gateway.state.sightings import Answers, Query, Sighting


class Detector(Protocol):
    """One batch: `observe` each observation (per-request signals at once; what needs distinct
    counts is written as sightings and asked as queries), then `judge` with the store's answers
    to every detector's queries, made in one exchange. A detector keeps its own state."""

    def observe(self, obs: Observation, seen: list[Sighting]) -> None:
        """Take one observation; append what to write to the sightings store to `seen`."""

    def queries(self) -> list[Query]:
        """What this batch's judgement needs from the store."""

    def judge(self, answers: Answers | None) -> Iterator[None]:
        """Judge this batch's subjects (`answers` None: the store was unavailable) and start over,
        yielding after each subject: the engine lets the event loop run every few of them."""

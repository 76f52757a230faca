"""Sightings: which members (sessions, networks, devices, paths, users) a key was seen with,
and when last. The detectors' shared state, bounded per key and in time.

Memory here; Redis in redis_sightings.py (a capped sorted set per key, with a TTL).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

from gateway.state.bounded import BoundedTable


@dataclass(frozen=True, slots=True)
class Sighting:
    key: str
    member: str
    at: float
    window: float  # members older than this are forgotten
    cap: int  # members kept per key at most; the least recently seen go first


class Query(NamedTuple):
    """Which members of `key` were seen at or after `since`."""

    key: str
    since: float


Answers = dict[Query, dict[str, float]]  # per query asked: {member: last seen}


class Sightings(ABC):
    @abstractmethod
    async def exchange(self, seen: list[Sighting], queries: list[Query]) -> Answers | None:
        """Record `seen`, then answer each query with {member: last seen} for members seen at
        or after `since`, keyed by the query. None when the store cannot answer now."""


class MemorySightings(Sightings):
    def __init__(self, max_keys: int = 200_000) -> None:
        self._sets: BoundedTable[str, dict[str, float]] = BoundedTable(max_keys)  # least recently written first

    def __len__(self) -> int:
        return len(self._sets)

    async def exchange(self, seen: list[Sighting], queries: list[Query]) -> Answers:
        for sighting in seen:
            self._record(sighting)
        return {query: {member: at for member, at in self._sets.get(query.key, {}).items() if at >= query.since}
                for query in queries}

    def _record(self, sighting: Sighting) -> None:
        members = self._sets.get(sighting.key)
        if members is None:
            members = {}
        if members.get(sighting.member, -1.0) < sighting.at:
            members[sighting.member] = sighting.at
        if len(members) > sighting.cap:
            horizon = sighting.at - sighting.window
            members = {m: at for m, at in members.items() if at >= horizon}
            while len(members) > sighting.cap:
                del members[min(members, key=members.__getitem__)]
        self._sets.put(sighting.key, members)

"""Sightings: which members (sessions, networks, devices, paths, users) a key was seen with,
and when last. The detectors' shared state, bounded per key and in time.

Memory here; Redis in redis_sightings.py (a capped sorted set per key, with a TTL).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

from gateway.state.bounded import BoundedTable


# Not frozen: a batch makes a few per request once its customers come back less often than the
# detectors' marks last (20,000 customers at the bench's rate), and a frozen dataclass's
# __init__ sets each field through object.__setattr__ (measured 3.4x the time of this one's).
@dataclass(slots=True)
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


# Most keys only ever see one member (one session, one device, one agent per login), so one
# member is kept as (until, member, last seen): 64 bytes, where a dict of one is 184 more.
# Two or more are (until, {member: last seen}). `until`: when the newest falls out of its window.
_One = tuple[float, str, float]
_Many = tuple[float, dict[str, float]]
_Members = _One | _Many


# An exchange yields once it has held the loop this long (checked every _CHECK sightings or
# questions, about 2 us each): a count alone (256 per step) held it 3-7 ms on a loaded machine.
_HOLD = 0.001
_CHECK = 32


class MemorySightings(Sightings):
    def __init__(self, max_keys: int = 200_000) -> None:
        # Least recently written first; a key whose every member left its window is swept.
        self.table: BoundedTable[str, _Members] = BoundedTable(max_keys, _forgotten)

    def __len__(self) -> int:
        return len(self.table)

    async def exchange(self, seen: list[Sighting], queries: list[Query]) -> Answers:
        # A detection batch of a few thousand sightings held the loop tens of milliseconds in
        # one piece (issue 14): paced by time, yielding between steps.
        deadline = time.perf_counter() + _HOLD
        for n, sighting in enumerate(seen, 1):
            self._record(sighting)
            if n % _CHECK == 0 and time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + _HOLD
        sets = self.table
        answers: Answers = {}
        for n, query in enumerate(queries, 1):
            if n % _CHECK == 0 and time.perf_counter() >= deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + _HOLD
            entry = sets.get(query.key)
            if entry is None:
                answers[query] = {}
            elif len(entry) == 3:
                answers[query] = {entry[1]: entry[2]} if entry[2] >= query.since else {}
            else:
                answers[query] = {member: at for member, at in entry[1].items() if at >= query.since}
        return answers

    def _record(self, sighting: Sighting) -> None:
        entry = self.table.get(sighting.key)
        until = sighting.at + sighting.window
        if entry is None:
            self.table.put(sighting.key, (until, sighting.member, sighting.at))
            return
        until = max(until, entry[0])
        if len(entry) == 3:
            if entry[1] == sighting.member:
                self.table.put(sighting.key, (until, sighting.member, max(entry[2], sighting.at)))
                return
            members = {entry[1]: entry[2]}
        else:
            members = entry[1]
        if members.get(sighting.member, -1.0) < sighting.at:
            members[sighting.member] = sighting.at
        if len(members) > sighting.cap:
            horizon = sighting.at - sighting.window
            members = {m: at for m, at in members.items() if at >= horizon}
            while len(members) > sighting.cap:
                del members[min(members, key=members.__getitem__)]
        self.table.put(sighting.key, (until, members))


def _forgotten(entry: _Members, now: float) -> bool:
    return entry[0] <= now

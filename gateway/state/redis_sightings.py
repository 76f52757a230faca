"""Sightings in Redis: one sorted set per key (member -> last seen), trimmed to its window and
cap on every write and expiring with its window, so a fleet shares them within bounds.

One exchange is one script call (lua/sightings.lua, sent with EVAL: a few calls a second, off
the request path, so no script cache to keep loaded) on a single server or Sentinel, in slices
of a bounded size so Redis is never held long; a Cluster spreads the keys over slots that one
script cannot span, so there the same commands go as redis-py's pipeline."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from redis import exceptions as redis_errors

from gateway.state import redis_wire
from gateway.state.sightings import Answers, Query, Sighting, Sightings

log = logging.getLogger("fairgate.state")

SCRIPT = (Path(__file__).parent / "lua" / "sightings.lua").read_text()
_EVAL = redis_wire.text("EVAL")
_SCRIPT = redis_wire.text(SCRIPT)
# Keys written or queried by one script call at most (each costs Redis a few us while it runs
# alone: 512 keys, a few ms at worst).
MAX_KEYS = 512

Written = tuple[str, list[Sighting]]  # a key and what was seen of it


class RedisSightings(Sightings):
    def __init__(self, client: Any, timeout: float, *, cluster: bool = False) -> None:
        self._client = client
        self._timeout = timeout
        self._cluster = cluster

    async def exchange(self, seen: list[Sighting], queries: list[Query]) -> Answers | None:
        by_key: dict[str, list[Sighting]] = defaultdict(list)
        for sighting in seen:
            by_key[sighting.key].append(sighting)
        try:
            if self._cluster:
                replies = await asyncio.wait_for(self._pipeline(by_key, queries), self._timeout)
            else:
                replies = await asyncio.wait_for(self._scripts(list(by_key.items()), queries), self._timeout)
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            log.warning("detector state unavailable", extra={"error": str(exc) or type(exc).__name__})
            return None
        if self._cluster:
            return {query: {_text(member): float(at) for member, at in reply}
                    for query, reply in zip(queries, replies, strict=True)}
        # Flat lists member, last seen, ...: zipped by C functions, not a comprehension a pair.
        return {query: dict(zip(map(bytes.decode, flat[::2]), map(float, flat[1::2]), strict=True))
                for query, flat in zip(queries, replies, strict=True)}

    async def _scripts(self, written: list[Written], queries: list[Query]) -> list[list[bytes]]:
        """The queries' replies, each a flat list member, last seen, ...; every call in one write."""
        # The writes fill the first calls and the queries the rest: Redis runs the calls of one
        # write in order, so every query sees every sighting of this exchange, as in the pipeline.
        calls: list[bytes] = []
        w = q = 0
        while w < len(written) or q < len(queries):
            taken = written[w:w + MAX_KEYS]
            asked = queries[q:q + MAX_KEYS - len(taken)]
            calls.append(_call(taken, asked))
            w, q = w + len(taken), q + len(asked)
        if not calls:
            return []
        replies = await redis_wire.send(self._client, b"".join(calls), len(calls))
        answers: list[list[bytes]] = []
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
            answers += reply
        return answers

    async def _pipeline(self, by_key: dict[str, list[Sighting]], queries: list[Query]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for key, sightings in by_key.items():
            horizon, cap, ttl_ms = _trim(sightings)
            pipe.zadd(key, {s.member: s.at for s in sightings}, gt=True)
            pipe.zremrangebyscore(key, "-inf", horizon)
            pipe.zremrangebyrank(key, 0, -(cap + 1))
            pipe.pexpire(key, ttl_ms)
        writes = len(pipe)  # the replies before the queries' own
        for query in queries:
            pipe.zrangebyscore(query.key, repr(query.since), "+inf", withscores=True)
        replies = await pipe.execute()
        return list(replies[writes:])


def _trim(sightings: list[Sighting]) -> tuple[str, int, int]:
    """A key's horizon (members last seen before it go), cap and TTL, from its latest sighting."""
    latest = sightings[0].at if len(sightings) == 1 else max(s.at for s in sightings)
    window, cap = sightings[-1].window, sightings[-1].cap
    return f"({latest - window!r}", cap, _ttl_ms(window)


def _call(written: list[Written], queries: list[Query]) -> bytes:
    """One EVAL of sightings.lua: its keys, then its arguments in the script's order."""
    keys = [key for key, _ in written]
    shapes: dict[tuple[float, int], str] = {}  # (window, cap) -> its number in the script
    values: list[str] = []
    for _, sightings in written:
        window, cap = sightings[-1].window, sightings[-1].cap
        shape = shapes.get((window, cap))
        if shape is None:
            shape = shapes[window, cap] = str(len(shapes) + 1)
        if len(sightings) == 1:  # most keys: one member seen once in a batch
            values += (shape, "1", repr(sightings[0].at), sightings[0].member)
            continue
        members: dict[str, float] = {}
        for sighting in sightings:  # one pair a member: its latest time (ZADD GT keeps the greatest anyway)
            if members.get(sighting.member, -math.inf) < sighting.at:
                members[sighting.member] = sighting.at
        values += (shape, str(len(members)))
        for member, at in members.items():
            values += (repr(at), member)
    head = [str(len(written)), str(len(shapes))]
    for window, cap in shapes:
        head += (repr(float(window)), str(cap), str(_ttl_ms(window)))
    # A query of a key written in this call names it by its place in KEYS (the detectors ask
    # about the keys they write); any other key is added to KEYS.
    place = {key: str(n) for n, key in enumerate(keys, 1)}
    for query in queries:
        known = place.get(query.key)
        if known is None:
            keys.append(query.key)
            known = place[query.key] = str(len(keys))
        values += (known, repr(query.since))
    return b"*%d\r\n%s%s%s%s%s" % (3 + len(keys) + len(head) + len(values), _EVAL, _SCRIPT,
                                    redis_wire.text(str(len(keys))), redis_wire.texts(keys),
                                    redis_wire.texts(head + values))


def _ttl_ms(window: float) -> int:
    """A key outlives its latest sighting by its window and a second."""
    return math.ceil(window * 1000) + 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

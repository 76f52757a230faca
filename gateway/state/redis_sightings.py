"""Sightings in Redis: one sorted set per key (member -> last seen), trimmed to its window and
cap on every write and expiring with its window, so a fleet shares them within bounds."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from typing import Any

from redis import exceptions as redis_errors

from gateway.state.sightings import Answers, Query, Sighting, Sightings

log = logging.getLogger("fairgate.state")


class RedisSightings(Sightings):
    def __init__(self, client: Any, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def exchange(self, seen: list[Sighting], queries: list[Query]) -> Answers | None:
        by_key: dict[str, list[Sighting]] = defaultdict(list)
        for sighting in seen:
            by_key[sighting.key].append(sighting)
        pipe = self._client.pipeline(transaction=False)
        for key, sightings in by_key.items():
            latest = max(s.at for s in sightings)
            window, cap = sightings[-1].window, sightings[-1].cap
            pipe.zadd(key, {s.member: s.at for s in sightings}, gt=True)
            pipe.zremrangebyscore(key, "-inf", f"({latest - window!r}")
            pipe.zremrangebyrank(key, 0, -(cap + 1))
            pipe.pexpire(key, math.ceil(window * 1000) + 1000)
        writes = len(pipe)  # the replies before the queries' own
        for query in queries:
            pipe.zrangebyscore(query.key, repr(query.since), "+inf", withscores=True)
        try:
            replies = await asyncio.wait_for(pipe.execute(), self._timeout)
        except (TimeoutError, redis_errors.RedisError, OSError) as exc:
            log.warning("detector state unavailable", extra={"error": str(exc) or type(exc).__name__})
            return None
        return {query: {_text(member): float(at) for member, at in reply}
                for query, reply in zip(queries, replies[writes:], strict=True)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Entries the fleet shares (revocations, sanctions, standings, grants): one sorted set per
topic scored by expiry, and a pub/sub channel that tells every gateway when one changed.

Every call goes through the store's breaker and timeout: a Redis that cannot answer is a
StoreUnavailable, which the callers answer (a 503 to an admin, a later sync for the fleet)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from gateway.state.redis_guard import REDIS_FAILURES, Guard

log = logging.getLogger("fairgate.state")


class RedisFleet:
    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._client = guard.client
        self._prefix = guard.settings.key_prefix

    @property
    def changes_channel(self) -> str:
        return f"{self._prefix}:shared-changes"

    def _topic_key(self, topic: str) -> str:
        return f"{self._prefix}:{{{topic}}}"

    async def share(self, topic: str, entry: dict[str, Any], until: float) -> None:
        async def share() -> None:
            # Scored by expiry, so the set trims itself to what is still in force.
            await self._client.zadd(self._topic_key(topic), {json.dumps(entry, sort_keys=True): until})
            await self._client.publish(self.changes_channel, topic)

        await self._guard.call(share)

    async def unshare(self, topic: str, match: Callable[[dict[str, Any]], bool]) -> None:
        key = self._topic_key(topic)

        async def unshare() -> None:
            members = [m for m in await self._client.zrange(key, 0, -1) if match(json.loads(m))]
            if members:
                await self._client.zrem(key, *members)

        await self._guard.call(unshare)

    async def shared(self, topic: str, now: float) -> list[dict[str, Any]]:
        key = self._topic_key(topic)

        async def shared() -> list[dict[str, Any]]:
            await self._client.zremrangebyscore(key, "-inf", now)
            return [json.loads(member) for member in await self._client.zrange(key, 0, -1)]

        return await self._guard.call(shared)

    async def watch(self, changed: Callable[[], None]) -> None:
        """Call `changed` at every message on the changes channel, until cancelled; a lost
        subscription is taken up again a second later (the periodic sync covers the gap)."""
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.changes_channel)
                changed()  # anything shared while not subscribed
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        changed()
            except REDIS_FAILURES as exc:
                log.debug("fleet change feed lost; periodic sync continues", extra={"error": str(exc)})
            finally:
                await pubsub.aclose()
            await asyncio.sleep(1.0)  # then subscribe again

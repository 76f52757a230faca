"""Named counter sets on Redis (usage: one index per month, one hash per customer)."""

from __future__ import annotations

from typing import Any

from gateway.clock import Clock
from gateway.state.redis_guard import Guard, ttl_ms


class RedisCounters:
    def __init__(self, guard: Guard, clock: Clock) -> None:
        self._guard = guard
        self._clock = clock

    async def add(self, index: str, counters: dict[str, dict[str, float]], expires_at: float) -> None:
        expire_ms = ttl_ms(expires_at, self._clock.time())

        def commands(pipe: Any) -> None:
            # The index carries the period's hash tag and every set's key starts with it: one slot.
            pipe.sadd(index, *counters)
            pipe.pexpire(index, expire_ms)
            for name, amounts in counters.items():
                key = f"{index}:{name}"
                for field, amount in amounts.items():
                    pipe.hincrbyfloat(key, field, amount)
                pipe.pexpire(key, expire_ms)

        if counters:
            await self._guard.write(commands, must=True)

    async def read(self, index: str) -> dict[str, dict[str, float]]:
        client = self._guard.client
        names = sorted(member.decode() for member in await client.smembers(index))
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(f"{index}:{name}")
        sets = await pipe.execute() if names else []
        return {name: {field.decode(): float(value) for field, value in fields.items()}
                for name, fields in zip(names, sets, strict=True)}

"""Named counter sets on Redis (usage: one index per month, one hash per customer).

On one server (or Sentinel) an add is one script call per slice of sets (lua/counters.lua, sent
with EVAL: one flush a second, off the request path), written by hand; a Cluster gets the same
commands as redis-py's pipeline (an index and its sets share one slot either way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.clock import Clock
from gateway.state import redis_wire
from gateway.state.redis_guard import Guard, ttl_ms

SCRIPT = (Path(__file__).parent / "lua" / "counters.lua").read_text()
_EVAL = redis_wire.text("EVAL")
_SCRIPT = redis_wire.text(SCRIPT)
# Sets one script call adds to at most (each about 7 fields: about 1 ms of Redis at worst).
MAX_SETS = 100


class RedisCounters:
    def __init__(self, guard: Guard, clock: Clock, *, cluster: bool = False) -> None:
        self._guard = guard
        self._clock = clock
        self._cluster = cluster

    async def add(self, index: str, counters: dict[str, dict[str, float]], expires_at: float) -> None:
        if not counters:
            return
        expire_ms = ttl_ms(expires_at, self._clock.time())
        if not self._cluster:
            names = list(counters)
            calls = [_call(index, {name: counters[name] for name in names[start:start + MAX_SETS]}, expire_ms)
                     for start in range(0, len(names), MAX_SETS)]
            await self._guard.send(b"".join(calls), len(calls), must=True)
            return

        def commands(pipe: Any) -> None:
            # The index carries the period's hash tag and every set's key starts with it: one slot.
            pipe.sadd(index, *counters)
            pipe.pexpire(index, expire_ms)
            for name, amounts in counters.items():
                key = f"{index}:{name}"
                for field, amount in amounts.items():
                    pipe.hincrbyfloat(key, field, amount)
                pipe.pexpire(key, expire_ms)

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


def _call(index: str, counters: dict[str, dict[str, float]], expire_ms: int) -> bytes:
    # Every key and argument as text formatted at once (redis_wire.texts): a flush has about
    # seven fields a customer, which one `text` each made the bulk of a flush's CPU.
    values = [index, *(f"{index}:{name}" for name in counters), str(expire_ms)]
    for amounts in counters.values():
        values.append(str(len(amounts)))
        for field, amount in amounts.items():
            values += (field, repr(float(amount)))
    return b"*%d\r\n%s%s%s%s" % (3 + len(values), _EVAL, _SCRIPT, redis_wire.text(str(1 + len(counters))),
                                  redis_wire.texts(values))

"""The embedded state store: this process's memory, bounded, no server needed."""

from __future__ import annotations

import math
from collections import OrderedDict

from gateway.state.store import CONCURRENCY, QUOTA, RATE, Check, Outcome, StateStore


class MemoryStore(StateStore):
    """Values expire with what they describe; past `max_keys` the least recently used go."""

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self._max_keys = max_keys
        # key -> [value, expires_at]; rate: TAT, concurrency: {token: True}, quota: used
        self._data: OrderedDict[str, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    async def evaluate(self, tag: str, checks: list[Check], now: float) -> list[Outcome]:
        return self.evaluate_now(checks, now)

    def evaluate_now(self, checks: list[Check], now: float) -> list[Outcome]:
        outcomes = []
        blocked = False
        for check in checks:
            outcome = self._decide(check, now)
            outcomes.append(outcome)
            if not outcome.allowed and not check.shadow:
                blocked = True
        if not blocked:
            for check, outcome in zip(checks, outcomes):
                if outcome.allowed:
                    self._consume(check, outcome, now)
        return outcomes

    def _value(self, key: str, now: float):
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._data[key]
            return None
        return entry[0]

    def _decide(self, check: Check, now: float) -> Outcome:
        kind = check.kind
        if kind == RATE:
            return gcra(self._value(check.key, now), now, check.interval, check.burst, check.cost, check.max_delay)
        if kind == CONCURRENCY:
            slots = self._value(check.key, now)
            used = len(slots) if slots else 0
            allowed = used + 1 <= check.max
            return Outcome(allowed, float(check.max - used - (1 if allowed else 0)), 0.0,
                           retry_after=0.0 if allowed else 1.0)
        used = self._value(check.key, now) or 0.0
        return quota(used, check.cost, check.limit, check.flag_only, check.expires_at - now)

    def _consume(self, check: Check, outcome: Outcome, now: float) -> None:
        key = check.key
        if check.kind == RATE:
            tat = now + outcome.reset
            self._put(key, tat, tat)
        elif check.kind == CONCURRENCY:
            slots = self._value(key, now) or {}
            slots[check.token] = True
            self._put(key, slots, now + check.lease)
        elif check.cost:
            self._put(key, (self._value(key, now) or 0.0) + check.cost, check.expires_at)

    def _put(self, key: str, value, expires_at: float) -> None:
        data = self._data
        data[key] = [value, expires_at]
        data.move_to_end(key)
        if len(data) > self._max_keys:
            data.popitem(last=False)

    async def release(self, tag: str, slots: list[tuple[str, str]]) -> None:
        for key, token in slots:
            entry = self._data.get(key)
            if entry is not None:
                entry[0].pop(token, None)
                if not entry[0]:
                    del self._data[key]

    async def add_usage(self, tag: str, usage: list[tuple[str, float, float]]) -> None:
        for key, amount, expires_at in usage:
            entry = self._data.get(key)
            self._put(key, (entry[0] if entry is not None else 0.0) + amount, expires_at)


# Wall-clock seconds near 1.8e9 carry ~2e-7 s of float error; decisions and counts allow for it.
_EPSILON = 1e-6


def gcra(tat: float | None, now: float, interval: float, burst: int, cost: float, max_delay: float) -> Outcome:
    """The generic cell rate algorithm: one theoretical arrival time per key.

    A bucket of `burst` units refills one unit per `interval`. `reset` is how long until it is
    full again once this request is counted (so the new TAT is now + reset).
    """
    if tat is None or tat < now:
        tat = now
    new_tat = tat + cost * interval
    window = burst * interval
    allow_at = new_tat - window
    if allow_at <= now + _EPSILON:
        return Outcome(True, math.floor((window - (new_tat - now)) / interval + 1e-3), new_tat - now)
    if max_delay > 0 and allow_at - now <= max_delay:
        return Outcome(True, 0.0, new_tat - now, delay=allow_at - now)
    return Outcome(False, max(0.0, math.floor((window - (tat - now)) / interval + 1e-3)), tat - now,
                   retry_after=allow_at - now)


def quota(used: float, cost: float, limit: float, flag_only: bool, until_end: float) -> Outcome:
    """A period budget; a zero-cost check (bytes, upstream time) passes while budget remains."""
    fits = used + cost <= limit and (cost > 0 or used < limit)
    remaining = max(0.0, limit - used - (cost if fits else 0.0))
    if fits:
        return Outcome(True, remaining, until_end)
    if flag_only:
        return Outcome(True, 0.0, until_end, over=True)
    return Outcome(False, remaining, until_end, retry_after=until_end)

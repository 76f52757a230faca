"""The embedded state store: this process's memory, bounded, no server needed."""

from __future__ import annotations

import math

from gateway.state.bounded import BoundedTable
from gateway.state.counters import CounterSets
from gateway.state.sightings import MemorySightings
from gateway.state.store import CONCURRENCY, RATE, Check, Outcome, StateStore
from gateway.state.tables import Swept


class MemoryStore(StateStore):
    """One table per kind of state. Each entry lives only as long as what it describes; past
    `max_keys` entries per table the least recently written go first.

    A sweep (state/tables.py) forgets what no longer matters: a quota's count once its period
    ended, a concurrency lease once it ran out, and a rate bucket idle for `idle_ttl` and full
    again. Full again is what makes forgetting a bucket safe: a forgotten bucket reads as full,
    so one forgotten while still owed units would hand its customer a fresh burst beyond the
    plan. The sweep cannot know the rate of a bucket's next check (a throttle slows it), so it
    waits for the bucket to drain at the slowest rate this store has seen, and at least
    `idle_ttl`. The size bound alone evicts without asking: it is sized (`state.max_memory_keys`)
    well above the customers in use, and `fairgate_table_evictions_total` says when it is not.

    A rate bucket (units taken, when) and a quota count (used, period end) are each two floats
    kept as one `complex` (real, imaginary): 32 bytes in one object, where a tuple of two floats
    was 56 bytes and a float of 24 more allocated with it on every write (issue 14: memory per
    customer). A complex holds both doubles exactly.
    """

    def __init__(self, max_keys: int = 1_000_000, idle_ttl: float = 3600.0, max_sighting_keys: int = 200_000) -> None:
        self.idle_ttl = idle_ttl
        self._slowest = 0.0  # the longest seconds-per-unit of any rate check so far
        # rate: units taken + when * 1j (gcra)
        self._buckets: BoundedTable[str, complex] = BoundedTable(max_keys, self._bucket_drained)
        # concurrency: tokens, lease end
        self._slots: BoundedTable[str, tuple[dict[str, bool], float]] = BoundedTable(max_keys, _ended)
        # quota: used + period end * 1j
        self._used: BoundedTable[str, complex] = BoundedTable(max_keys, _period_ended)
        self._counters = CounterSets()  # index -> counter set (usage: a month's)
        self._sightings = MemorySightings(max_sighting_keys)

    def sightings(self) -> MemorySightings:
        """One table for every detector and the enforcement (their keys never meet)."""
        return self._sightings

    def tables(self) -> dict[str, Swept]:
        return {"rate_buckets": self._buckets, "concurrency_slots": self._slots, "quota_counts": self._used,
                "sightings": self._sightings.table, "usage_counters": self._counters}

    def _bucket_drained(self, bucket: complex, now: float) -> bool:
        units, at = bucket.real, bucket.imag
        idle = now - at
        return idle >= self.idle_ttl and idle >= units * self._slowest

    def __len__(self) -> int:
        return len(self._buckets) + len(self._slots) + len(self._used)

    async def evaluate(self, tag: str, checks: list[Check], now: float) -> list[Outcome]:
        return self.evaluate_now(checks, now)

    def evaluate_now(self, checks: list[Check], now: float) -> list[Outcome]:
        if len(checks) == 1 and checks[0].kind == RATE:
            # One token bucket, the commonest plan: decide and consume in one step (measured:
            # about twice the decisions per second of the general path; same rules).
            check = checks[0]
            if check.interval > self._slowest:
                self._slowest = check.interval
            outcome, taken = gcra(self._buckets.get(check.key), now, check.interval, check.burst, check.cost,
                                  check.max_delay)
            if outcome.allowed:
                self._buckets.put(check.key, complex(taken, now))
            return [outcome]
        # Every check decided in one pass, each table read once: what a check would write is
        # kept beside its outcome and written only if no enforced check rejected.
        outcomes: list[Outcome] = []
        writes: list[float] = []
        consume = True
        buckets, slots, used = self._buckets, self._slots, self._used
        for check in checks:
            kind = check.kind
            if kind == RATE:
                if check.interval > self._slowest:
                    self._slowest = check.interval
                outcome, taken = gcra(buckets.get(check.key), now, check.interval, check.burst, check.cost,
                                      check.max_delay)
                writes.append(taken)
            elif kind == CONCURRENCY:
                entry = slots.get(check.key)
                in_use = len(entry[0]) if entry is not None and entry[1] > now else 0
                allowed = in_use + 1 <= check.max
                outcome = Outcome(allowed, float(check.max - in_use - (1 if allowed else 0)), 0.0,
                                  retry_after=0.0 if allowed else 1.0)
                writes.append(0.0)
            else:
                period = used.get(check.key)
                spent = period.real if period is not None and period.imag > now else 0.0
                outcome = quota(spent, check.cost, check.limit, check.flag_only, check.expires_at - now)
                writes.append(spent)
            outcomes.append(outcome)
            if not outcome.allowed and not check.shadow:
                consume = False  # an enforced rejection: nothing is consumed
        if consume:
            for check, outcome, write in zip(checks, outcomes, writes, strict=True):
                if outcome.allowed:
                    self._consume(check, write, now)
        return outcomes

    def _consume(self, check: Check, write: float, now: float) -> None:
        """Write what `evaluate_now` decided: a rate check's units taken, a quota's amount spent
        before this request (a concurrency check reads its slots again: `write` is unused)."""
        key = check.key
        if check.kind == RATE:
            self._buckets.put(key, complex(write, now))
        elif check.kind == CONCURRENCY:
            entry = self._slots.get(key)
            tokens = entry[0] if entry is not None and entry[1] > now else {}
            tokens[check.token] = True
            self._slots.put(key, (tokens, now + check.lease))
        elif check.cost:
            self._used.put(key, complex(write + check.cost, check.expires_at))

    async def release(self, tag: str, slots: list[tuple[str, str]]) -> None:
        for key, token in slots:
            entry = self._slots.get(key)
            if entry is not None:
                entry[0].pop(token, None)
                if not entry[0]:
                    del self._slots[key]

    async def add_usage(self, tag: str, usage: list[tuple[str, float, float]]) -> None:
        for key, amount, expires_at in usage:
            entry = self._used.get(key)
            used = entry.real if entry is not None and entry.imag == expires_at else 0.0
            self._used.put(key, complex(used + amount, expires_at))

    async def add_counters(self, index: str, counters: dict[str, dict[str, float]], expires_at: float) -> None:
        self._counters.add(index, counters, expires_at, _RETENTION)

    async def read_counters(self, index: str) -> dict[str, dict[str, float]]:
        counter_set = self._counters.sets.get(index)
        return counter_set.read() if counter_set is not None else {}


def _ended(entry: tuple[object, float], now: float) -> bool:
    return entry[1] <= now


def _period_ended(entry: complex, now: float) -> bool:
    return entry.imag <= now


# Counter sets whose period ended this long before a new one starts are dropped.
_RETENTION = 400 * 86400.0


# Wall-clock seconds near 1.8e9 carry ~2e-7 s of float error; decisions and counts allow for it.
_EPSILON = 1e-6


def gcra(bucket: complex | None, now: float, interval: float, burst: int, cost: float,
         max_delay: float) -> tuple[Outcome, float]:
    """The generic cell rate algorithm, its state kept as units taken + when * 1j (one complex).

    A bucket of `burst` units refills one unit per `interval`. The state counts units, not a
    theoretical arrival time in seconds, so it means the same at any rate: when the rate changes
    (a throttle, a reinstatement, an exception, a reload) the units already taken drain at the
    new rate from now on, and the change neither releases nor withholds any. Returns the outcome
    and the units the bucket holds once this request counts (`reset` is how long they take to
    drain).
    """
    owed = 0.0  # seconds until the bucket is full again, at this rate
    if bucket is not None:
        units, at = bucket.real, bucket.imag
        owed = units * interval - (now - at if now > at else 0.0)
        if owed < 0.0:
            owed = 0.0
    after = owed + cost * interval
    window = burst * interval
    wait = after - window  # until this request fits
    if wait <= _EPSILON:
        return Outcome(True, math.floor((window - after) / interval + 1e-3), after), after / interval
    if max_delay > 0 and wait <= max_delay:
        return Outcome(True, 0.0, after, delay=wait), after / interval
    return (Outcome(False, max(0.0, math.floor((window - owed) / interval + 1e-3)), owed, retry_after=wait),
            owed / interval)


def quota(used: float, cost: float, limit: float, flag_only: bool, until_end: float) -> Outcome:
    """A period budget; a zero-cost check (bytes, upstream time) passes while budget remains."""
    fits = used + cost <= limit and (cost > 0 or used < limit)
    remaining = max(0.0, limit - used - (cost if fits else 0.0))
    if fits:
        return Outcome(True, remaining, until_end)
    if flag_only:
        return Outcome(True, 0.0, until_end, over=True)
    return Outcome(False, remaining, until_end, retry_after=until_end)

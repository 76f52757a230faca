"""The state store interface: what a batch of limit checks asks, and what it answers.

A store decides all checks of one request atomically: if any enforced check rejects, nothing
is consumed. Memory and Redis implement exactly the same rules (the Redis side in Lua).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from gateway.state.sightings import Sightings
    from gateway.state.tables import Swept



class Kind(StrEnum):
    """What a limit counts: the config's `kind`, the plans' compiled limits and the store's checks."""

    RATE = "rate"
    CONCURRENCY = "concurrency"
    QUOTA = "quota"


# The members under module names: the request path compares against these (reading an attribute
# of an Enum class goes through its metaclass, measured ~0.2 us a comparison).
RATE, CONCURRENCY, QUOTA = Kind.RATE, Kind.CONCURRENCY, Kind.QUOTA
T = TypeVar("T")


@dataclass(slots=True)
class Check:
    kind: Kind
    key: str
    shadow: bool = False
    # rate (GCRA): seconds per unit, bucket size, units this request takes, longest hold
    interval: float = 0.0
    burst: int = 0
    cost: float = 1.0
    max_delay: float = 0.0
    # concurrency: slots, this request's slot id, how long a slot outlives a lost gateway
    max: int = 0
    token: str = ""
    lease: float = 0.0
    # quota: budget, allow past it (flag only), end of the period (wall time)
    limit: float = 0.0
    flag_only: bool = False
    expires_at: float = 0.0
    # A store's own encoding of this check, kept with it: templates reuse checks.
    encoded: tuple[bytes, bytes] | None = None

    def with_token(self, token: str) -> Check:
        """This check for one request's concurrency slot: a copy with `token` and no encoding
        (a template's checks are shared). Spelt out: `dataclasses.replace` measured ~7x the
        cost of this constructor call, once per request of a plan with a concurrency limit."""
        return Check(self.kind, self.key, self.shadow, self.interval, self.burst, self.cost, self.max_delay,
                     self.max, token, self.lease, self.limit, self.flag_only, self.expires_at, None)


@dataclass(slots=True)
class Outcome:
    allowed: bool
    remaining: float
    reset: float  # seconds until the limit is fully available again
    retry_after: float = 0.0  # when not allowed
    delay: float = 0.0  # delay mode: hold the request this long
    over: bool = False  # a flag-only quota is exceeded


def shared_entries(kind: Callable[..., T], entries: list[dict[str, Any]]) -> Iterator[T]:
    """Entries read back from `StateStore.shared` as objects; one written by a different version
    (other fields) is skipped: its own gateway still enforces it."""
    for entry in entries:
        try:
            yield kind(**entry)
        except TypeError:
            continue


class StoreUnavailable(Exception):
    """The store cannot answer now (timeout, connection, open circuit)."""


class StateStore(ABC):
    def evaluate_now(self, checks: list[Check], now: float) -> list[Outcome] | None:
        """The answer without waiting, when the store has it at hand (memory; a key Redis is
        known to be over its limit); None means: ask `evaluate`."""
        return None

    @abstractmethod
    async def evaluate(self, tag: str, checks: list[Check], now: float) -> list[Outcome]:
        """Decide all checks at `now` in one atomic step; consume only if none enforced rejects."""

    @abstractmethod
    async def release(self, tag: str, slots: list[tuple[str, str]]) -> None:
        """Give back concurrency slots: (key, token) pairs."""

    @abstractmethod
    async def add_usage(self, tag: str, usage: list[tuple[str, float, float]]) -> None:
        """Add measured usage to quotas after a response: (key, amount, period end)."""

    @abstractmethod
    async def add_counters(self, index: str, counters: dict[str, dict[str, float]], expires_at: float) -> None:
        """Add amounts to named counter sets, {name: {field: amount}}, listed under `index`
        (usage: one index per month, one set per customer); all expire at `expires_at`."""

    @abstractmethod
    async def read_counters(self, index: str) -> dict[str, dict[str, float]]:
        """Every counter set listed under `index`."""

    async def append_events(self, stream: str, events: list[dict[str, Any]], max_length: int) -> bool:
        """Append events to a stream the fleet reads; False when this store has no streams (memory)."""
        return False

    async def share(self, topic: str, entry: dict[str, Any], until: float) -> None:
        """Make an entry (a revocation, a sanction) visible to the whole fleet until `until`; a
        no-op for a store of one process."""
        return None

    async def unshare(self, topic: str, match: Callable[[dict[str, Any]], bool]) -> None:
        """Withdraw the entries of `topic` that `match` (a sanction lifted by an allow-list entry)."""
        return None

    async def shared(self, topic: str, now: float) -> list[dict[str, Any]] | None:
        """Every entry of `topic` still in force; None for a store of one process."""
        return None

    async def watch_shared(self, changed: Callable[[], None]) -> None:
        """Call `changed` whenever any gateway shares an entry, until cancelled (so the fleet learns
        of it in milliseconds, not at the next periodic sync); returns at once for a store of one
        process."""
        return None

    def tables(self) -> dict[str, Swept]:
        """The per-key tables this store keeps in this process, by name (none for a server's store)."""
        return {}

    def sightings(self) -> Sightings:
        """Where the detectors keep what they saw: in this store's memory or server."""
        from gateway.state.sightings import MemorySightings

        return MemorySightings()

    async def close(self) -> None:
        return None

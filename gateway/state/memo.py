"""A memo of a pure function whose keys come and go with customers (an address, a path, a
client's headers): bounded, visible on /metrics, forgotten when idle, and read on a hit at the
cost of a dict lookup.

Why not functools.lru_cache: it is never swept, so after an idle period it still holds every
address and path of the busy hour, and those small strings keep CPython's arenas from going
back to the OS (issue 14: clearing the lru_caches took 20k customers from ~94% to ~29% of the
feed's growth kept after idle); /metrics cannot see it either.

How: two generations. The memo itself is the recent one, a dict whose `__missing__` looks in the
old one before computing, so a hit is a plain dict lookup (`memo[key]`, or `memo.__getitem__`
bound once: a C call, no Python frame, no clock read, no list to reorder). Every `idle` seconds
a sweep makes the recent generation the old one; what is used again moves back on its first use;
`idle` seconds later what is left of the old one was not used since, and is forgotten a sweep
budget at a time. So an entry is forgotten between `idle` and about 2 x `idle` after its last use
(earlier only if the clock jumps; a memo forgetting early only costs computing a value again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

# An entry not used for this long may be forgotten (and is, by 2 x MEMO_IDLE). A memo's entries
# are cheap to compute again (microseconds), so this only needs to be long next to the gaps
# between one client's requests, and short next to an idle night.
MEMO_IDLE = 600.0


class Memo(dict[K, V]):
    """`memo[key]` is `compute(key)`, worked out once while the key is in use. At most `limit`
    entries: past it the old generation's entries go first (`evictions`), then the recent one
    becomes the old one. `expirations` counts the entries a sweep forgot as idle.

    `len()` counts both generations (what the memo holds, as /metrics shows it)."""

    def __init__(self, compute: Callable[[K], V], limit: int, idle: float = MEMO_IDLE) -> None:
        super().__init__()
        self._compute = compute
        self.limit = limit
        self.idle = idle
        self.evictions = 0
        self.expirations = 0
        self._old: dict[K, V] = {}
        # On the sweep's clock: when the recent generation began, when the old one may go, the last sweep.
        self._turned_at = self._drain_at = 0.0
        self._swept_at: float | None = None
        self._behind = False  # the sweep did not look for an idle period: the recent generation may go too

    def __missing__(self, key: K) -> V:
        old = self._old
        if key in old:  # used again since the last turn: back into the recent generation
            value = old.pop(key)
        else:
            value = self._compute(key)  # an exception is not remembered, as with lru_cache
            if dict.__len__(self) + len(old) >= self.limit:
                self._make_room()
            elif not old and not dict.__len__(self):
                # Empty until now: the sweeper skips an empty memo, so its last sweep may be an
                # idle period ago, and the next would take this entry for that old. Start afresh.
                self._swept_at = None
                self._behind = False
        self[key] = value
        return value

    def __len__(self) -> int:
        return dict.__len__(self) + len(self._old)

    def _make_room(self) -> None:
        if not self._old:
            # The recent generation is full: it becomes the old one (a copy of its hash table,
            # in C; measured in the report), once per `limit` new keys.
            self._turn()
        self._old.popitem()  # the last in: a popitem is O(1), a dict's first key is not (see bounded.py)
        self.evictions += 1

    def _turn(self) -> None:
        self._old = dict(self)
        self.clear()  # frees the recent generation's hash table: it starts small again

    def sweep(self, now: float, budget: int) -> int:
        """Forget up to `budget` entries of the old generation once it is `idle` old (none of them
        was used since it turned); turn once the old one is gone and the recent one is `idle` old.
        Returns how many were forgotten."""
        if self._swept_at is None or now < self._swept_at:
            self._turned_at = self._drain_at = now  # the first sweep, or a clock set back: start here
        elif now - self._swept_at >= self.idle:
            # Not looked at for a whole idle period (no sweeper ran, or the clock
            # jumped): what it holds may be that old, and it cannot tell, so all of it may go now.
            self._behind = True
        self._swept_at = now
        if not self._old and dict.__len__(self) and (self._behind or now - self._turned_at >= self.idle):
            self._turn()
            self._turned_at = now
            self._drain_at = now if self._behind else now + self.idle
            self._behind = False
        old = self._old
        if not old or now < self._drain_at:
            return 0
        forgotten = min(budget, len(old))
        for _ in range(forgotten):
            old.popitem()
        if not old:
            self._old = {}  # an emptied dict keeps the hash table it grew to; a new one is small
        self.expirations += forgotten
        return forgotten

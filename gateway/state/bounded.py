"""A table of at most `limit` entries that forgets the least recently written first, in O(1),
and forgets idle entries by itself when swept.

Why not a plain dict and `del d[next(iter(d))]`: CPython leaves a deleted entry's slot in
place until the dict is next resized, and iteration skips those slots from the start, so
"the first key" of a dict that keeps evicting costs time proportional to what was evicted
before it (measured: 200k evictions from a 200k-entry dict took 11.6 s, 0.23 s here).
OrderedDict keeps its order in a linked list, so the oldest entry is one step away; it costs
about 53 bytes per entry more than a dict.

Why a sweep rebuilds a table that shrank: a dict never gives back its hash table when entries
are deleted, only when it grows again (issue 14: after the idle sweep every table was empty and
still held the table sized for its 200k entries, 3 MB for the sightings at 20k customers).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")

Expired = Callable[[V, float], bool]  # (entry, now) -> whether it may be forgotten


class BoundedTable(OrderedDict[K, V]):
    """Reads are a dict's. `put` writes an entry as the newest; past `limit` the oldest go.
    A caller that counts reads as use too calls `move_to_end(key)` on a hit.

    `evictions` counts entries pushed out by the bound (a table too small for its load shows
    here), `expirations` those `sweep` forgot because `expired` said so."""

    def __init__(self, limit: int, expired: Expired[V] | None = None) -> None:
        super().__init__()
        self.limit = limit  # may be changed (a reload); the table shrinks at the next put
        self.evictions = 0
        self.expirations = 0
        self._expired = expired
        self._peak = 0  # the most entries a sweep has seen since the table was last rebuilt

    def put(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
            self.evictions += 1

    def sweep(self, now: float, budget: int) -> int:
        """Look at up to `budget` entries from the oldest end: forget the expired ones, move the
        others to the newest end. Returns how many were forgotten.

        Moving what is still in use round makes each call O(budget) whatever the table holds and
        whatever mix of lifetimes it has (an entry kept for a month does not stop the sweep from
        reaching the idle ones behind it); a sweep pass reaches every entry once in len/budget
        calls. The price: an entry the sweep moved looks newer than it is to the size bound.

        Moved with `move_to_end`, never popped and written again: a write of a key takes a new
        slot of the hash table's entries (a deleted one's is only reclaimed by a resize), so a
        sweep that wrote back what it kept resized the whole table once per half a pass or so,
        in one C call of O(len) inside a step of 64 entries (issue 14: sweep steps of 100-500 ms
        of wall time at 200k customers; bench/stalls.py names it). `move_to_end` only relinks
        the order, and a forgotten entry is only deleted: the sweep never resizes."""
        expired = self._expired
        if expired is None:
            return 0
        self._peak = max(self._peak, len(self))
        forgotten = 0
        move_to_end = self.move_to_end
        for _ in range(min(budget, len(self))):
            key = next(iter(self))  # the oldest: one step along the order's linked list
            if expired(self[key], now):
                del self[key]
                forgotten += 1
            else:
                move_to_end(key)
        self.expirations += forgotten
        if forgotten and len(self) * SHRINK < self._peak and len(self) <= REBUILD_MAX:
            self._rebuild()
        return forgotten

    def _rebuild(self) -> None:
        """The same entries in the same order, in a hash table sized for them."""
        entries = list(self.items())
        self.clear()  # frees the hash table and the order's node array
        self.update(entries)
        self._peak = len(self)


# A table is rebuilt once a sweep leaves fewer than 1/SHRINK of the most entries it held, and
# at most REBUILD_MAX: a rebuild holds the loop for O(len) (measured on the loaded 2-vCPU VM,
# CPU time: 3,000 entries 1.4 ms, 25,000 entries 18 ms), so a table that shrank to 25k from 200k
# keeps its hash table until it is nearly empty; idle is what this is for.
SHRINK = 8
REBUILD_MAX = 1024

"""A table of at most `limit` entries that forgets the least recently written first, and forgets
idle entries by itself when swept.

Why plain dicts in shards: a dict keeps insertion order, so popping a key and writing it again
makes it the newest, and the first key is the oldest. An OrderedDict does the same with a linked
list beside its dict, about 53 bytes per entry more (issue 14: a customer has a dozen entries
across the tables, so 650 bytes of the RSS per customer). What a dict lacks: CPython leaves a
deleted entry's slot in place until the dict is next resized, and iteration skips those slots
from the start, so "the first key" costs time proportional to what was deleted before it since
the last resize. Unsharded that was ruinous (200k evictions from a 200k-entry dict took 11.6 s);
in a shard of at most SHARD_ENTRIES the skipped slots are at most a few thousand: a write that
evicts costs about 1 us more than with an OrderedDict (bench/table_growth_micro.py, a table of
200k at its bound: 1.7 against 0.8 us per new key), and eviction is the exception (the bounds
are set above the load, and a table that evicts is named in the log). Compacting a shard every
few hundred evictions cost more than it saved. The token cache, which evicts and demotes as a
matter of course, keeps OrderedDicts (auth/token_cache.py).

Why a large table is split in shards: a dict grows its hash table in one C call of O(len), and
so does a table at its bound that evicts and inserts, or that rewrites its entries (each insert,
and a rewrite pops and inserts, takes a new slot; a deleted one's is only reclaimed by a
resize). At 200k entries that call held the event loop for tens of ms (issue 14: 42 ms of a 62
ms hold in the detection drain, up to 186 ms at first sight). Keys are spread by hash over a
power of two of dicts, at most SHARD_ENTRIES each at the limit, so a resize is of one shard,
never of the whole table. The trade-off: the least recently written entry goes first within its
shard, so for a table of more than one shard the global order is approximate (an evicted entry
is among the oldest of its shard, not of all), and iteration is shard by shard; a read costs a
Python call more than a dict's. A table of at most SHARD_ENTRIES keeps exact global order, and
every table keeps every entry up to its limit and never more.

Why a sweep rebuilds a table that shrank: a dict never gives back its hash table when entries
are deleted, only when it grows again (issue 14: after the idle sweep every table was empty and
still held the table sized for its 200k entries, 3 MB for the sightings at 20k customers).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, MutableMapping
from itertools import islice
from operator import itemgetter
from typing import TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

_ABSENT: object = object()

Expired = Callable[[V, float], bool]  # (entry, now) -> whether it may be forgotten

# A shard holds at most this many entries at the table's limit. Measured (bench/table_growth_micro.py,
# CPU time on the loaded 2-vCPU VM, 200k entries): the longest put growing the table or writing at
# its limit took 24-38 ms unsharded, 1.3-2.0 ms with shards of 6,250 (at most 8,192), 0.8-1.1 ms
# with shards of 3,125 (at most 4,096): the margin under issue 14's 2 ms. At most MAX_SHARDS of
# them (a table with no real bound, 2**62, gets that many and lets each grow): 512 keeps the
# default sightings bound (1.5M keys: 6 per tracked identity) at 2,930 a shard.
SHARD_ENTRIES = 4096
MAX_SHARDS = 512


def shards_for(limit: int) -> int:
    """The power of two of shards that keeps each at most SHARD_ENTRIES at `limit`."""
    count = 1
    while count < MAX_SHARDS and count * SHARD_ENTRIES < limit:
        count *= 2
    return count


class BoundedTable(MutableMapping[K, V]):
    """Reads are a mapping's (`get`, `[]`, `in`, iteration). `put` writes an entry as the newest;
    past `limit` the oldest go.
    A caller that counts reads as use too calls `move_to_end(key)` on a hit.

    `evictions` counts entries pushed out by the bound (a table too small for its load shows
    here), `expirations` those `sweep` forgot because `expired` said so."""

    __slots__ = ("_shards", "_mask", "_share", "_limit", "_len", "evictions", "expirations",
                 "_expired", "_peak", "_turn", "_pending", "_next")

    def __init__(self, limit: int, expired: Expired[V] | None = None) -> None:
        self._shards: list[dict[K, V]] = [{}]
        self._mask = 0
        self._len = 0
        self._limit = self._share = 0
        self.limit = limit
        self.evictions = 0
        self.expirations = 0
        self._expired = expired
        self._peak = 0  # the most entries a sweep has seen since the table was last rebuilt
        self._turn = 0  # the shard the sweep is in, its keys as its turn began, and the next to look at
        self._pending: list[K] = []
        self._next = 0

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, limit: int) -> None:
        """May be changed (a reload): the table shrinks at the next put. A change of the number
        of shards spreads the entries again, once, in O(len); the tables a reload sizes are
        empty when they are first given their limit."""
        self._limit = limit
        count = shards_for(limit)
        if count != len(self._shards):
            # In about the order they were written: each shard's own order, interleaved by rank.
            ranked = [(rank / len(shard), entry) for shard in self._shards for rank, entry in enumerate(shard.items())]
            ranked.sort(key=itemgetter(0))
            entries = [entry for _, entry in ranked]
            self._shards = [{} for _ in range(count)]
            self._mask = count - 1
            self._turn = self._next = 0
            self._pending = []
            for key, value in entries:
                self._shards[hash(key) & self._mask][key] = value
        self._share = limit // count

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + sys.getsizeof(self._shards) + sum(map(sys.getsizeof, self._shards))

    def __len__(self) -> int:
        return self._len

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & self._mask]

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & self._mask][key]

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V | D, /) -> V | D: ...

    def get(self, key: K, default: object = None, /) -> object:
        return self._shards[hash(key) & self._mask].get(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        """Writes without the bound and without making an entry that was there the newest."""
        shard = self._shards[hash(key) & self._mask]
        size = len(shard)
        shard[key] = value
        self._len += len(shard) - size

    def __delitem__(self, key: K) -> None:
        del self._shards[hash(key) & self._mask][key]
        self._len -= 1
        if not self._len:  # the sweep's list holds only deleted keys now: let them go
            self._pending, self._next = [], 0

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def __reversed__(self) -> Iterator[K]:
        for shard in reversed(self._shards):
            yield from reversed(shard)

    def clear(self) -> None:
        for shard in self._shards:
            shard.clear()
        self._len = 0
        self._pending, self._next = [], 0

    def move_to_end(self, key: K) -> None:
        """Makes `key` the newest."""
        shard = self._shards[hash(key) & self._mask]
        shard[key] = shard.pop(key)

    def put(self, key: K, value: V) -> None:
        shard = self._shards[hash(key) & self._mask]
        if shard.pop(key, _ABSENT) is _ABSENT:
            shard[key] = value
            self._len += 1
            if self._len > self._limit:
                self._evict(shard)
        else:  # written again: now the newest
            shard[key] = value

    def _evict(self, written: dict[K, V]) -> None:
        """Down to the limit, each shard's oldest first. At the limit a write replaces the oldest
        entry of its own shard, or if that shard holds less than its share, of the fullest: the
        shards stay even and every one keeps its share of the limit."""
        share = self._share
        if self._len - self._limit > 1:  # a lowered limit: every shard down to its share at once
            keep = share + 1 if self._limit % len(self._shards) else share  # the rest one at a time
            for shard in self._shards:
                excess = len(shard) - keep
                for key in list(islice(shard, max(excess, 0))):
                    del shard[key]
                if excess > 0:
                    self._len -= excess
                    self.evictions += excess
        while self._len > self._limit:
            victim = written if len(written) > share else max(self._shards, key=len)
            del victim[next(iter(victim))]
            self._len -= 1
            self.evictions += 1

    def sweep(self, now: float, budget: int) -> int:
        """Look at up to `budget` entries: forget the expired ones. Returns how many were forgotten.

        The shards take their turns: when a shard's turn comes the sweep takes a list of its keys
        (O(SHARD_ENTRIES) at most) and goes through that list `budget` at a time, so each call is
        O(budget), plus a step for each empty shard it passes, whatever the table holds and
        whatever mix of lifetimes it has (an entry kept for a month does not stop the sweep from
        reaching the idle ones behind it); a pass reaches once every entry that was there when its
        shard's turn came. What is kept is left where it is: the sweep does not change which
        entries are oldest to the size bound, and a forgotten entry is only deleted, so the sweep
        never resizes a shard."""
        expired = self._expired
        if expired is None:
            return 0
        self._peak = max(self._peak, self._len)
        # Keys listed for this turn may have been deleted since (a slot released, a block
        # ended): they take budget too, or a few live entries would make the sweep crawl.
        budget = min(budget, self._len + len(self._pending) - self._next)
        forgotten = turns = 0
        shards = self._shards
        while budget > 0 and turns <= len(shards):
            pending, start = self._pending, self._next
            if start >= len(pending):  # this shard's turn is over: the next one's, as it is now
                self._turn = (self._turn + 1) & self._mask
                self._pending, self._next = list(shards[self._turn]), 0
                turns += 1
                continue
            shard = shards[self._turn]
            stop = min(start + budget, len(pending))
            for key in pending[start:stop]:
                if key in shard and expired(shard[key], now):  # a key deleted since the list was made is skipped
                    del shard[key]
                    forgotten += 1
            budget -= stop - start
            self._next = stop
        self._len -= forgotten
        self.expirations += forgotten
        if self._next >= len(self._pending) or not self._len:
            self._pending, self._next = [], 0  # keeps no key of a finished turn, or of an empty table, alive
        if forgotten and self._len * SHRINK < self._peak and self._len <= REBUILD_MAX:
            self._rebuild()
        return forgotten

    def _rebuild(self) -> None:
        """The same entries in the same order, in hash tables sized for them."""
        self._shards = [dict(shard) for shard in self._shards]
        self._peak = self._len


# A table is rebuilt once a sweep leaves fewer than 1/SHRINK of the most entries it held, and
# at most REBUILD_MAX: a rebuild holds the loop for O(len) (measured on the loaded 2-vCPU VM,
# CPU time: 3,000 entries 1.4 ms, 25,000 entries 18 ms), so a table that shrank to 25k from 200k
# keeps its hash table until it is nearly empty; idle is what this is for.
SHRINK = 8
REBUILD_MAX = 1024

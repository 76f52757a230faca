"""Verified tokens remembered until they expire, so a repeated token costs a lookup."""

from __future__ import annotations

from collections import OrderedDict

from gateway.auth.identity import Identity

_Entry = tuple[Identity, float]  # identity, valid until

# The share of the capacity that tokens seen at least twice may hold; the rest is the
# probation segment, where first sightings wait for a second.
_PROTECTED_SHARE = 0.8


class CacheCounts:
    """Lookups answered from the cache and not, since start (they outlive the cache a reload replaces)."""

    __slots__ = ("hits", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0


class TokenCache:
    """A segmented LRU from token to Identity; entries are checked against the clock on every hit.

    Why segmented: with a plain LRU, one burst of new tokens (a login wave, a client minting a
    token per request) pushes out every token in steady use, and a working set one entry
    larger than the capacity never hits at all. Here a token enters a probation segment;
    seen again, it moves to the protected segment (at most 80% of the capacity), whose least
    recent entries step back to probation rather than out. Only probation's oldest are
    evicted, so a one-off scan churns probation and leaves the tokens in use alone, while a
    rotation that fits in the capacity hits on every pass after the first. 2Q would do as well
    (CLOCK alone is no more scan-resistant than LRU); this is two OrderedDicts, O(1) per
    operation, and a hit costs what an LRU hit costs (one lookup, one move).
    """

    __slots__ = ("_probation", "_protected", "_capacity", "_protected_capacity", "counts")

    def __init__(self, capacity: int, counts: CacheCounts | None = None) -> None:
        self._probation: OrderedDict[str, _Entry] = OrderedDict()
        self._protected: OrderedDict[str, _Entry] = OrderedDict()
        self._capacity = capacity
        self._protected_capacity = int(capacity * _PROTECTED_SHARE)
        self.counts = counts if counts is not None else CacheCounts()

    def get(self, token: str, now: float) -> Identity | None:
        entry = self._protected.get(token)
        if entry is not None:
            if now >= entry[1]:
                del self._protected[token]
                self.counts.misses += 1
                return None
            self._protected.move_to_end(token)
            self.counts.hits += 1
            return entry[0]
        entry = self._probation.pop(token, None)
        if entry is None or now >= entry[1]:
            self.counts.misses += 1
            return None
        self._protect(token, entry)
        self.counts.hits += 1
        return entry[0]

    def put(self, token: str, identity: Identity, valid_until: float) -> None:
        if self._capacity == 0:
            return
        entry = (identity, valid_until)
        if token in self._protected:
            self._protected[token] = entry
            self._protected.move_to_end(token)
            return
        self._probation[token] = entry
        self._probation.move_to_end(token)
        if len(self._probation) + len(self._protected) > self._capacity:
            self._probation.popitem(last=False)  # never empty here: protected holds less than the capacity

    def _protect(self, token: str, entry: _Entry) -> None:
        self._protected[token] = entry
        if len(self._protected) > self._protected_capacity:
            demoted, demoted_entry = self._protected.popitem(last=False)
            self._probation[demoted] = demoted_entry

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

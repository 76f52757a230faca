"""Verified tokens remembered until they expire, so a repeated token costs a lookup."""

from __future__ import annotations

import sys
from collections import OrderedDict
from hashlib import blake2b

from gateway.auth.identity import Identity
from gateway.state.bounded import REBUILD_MAX, SHRINK, shards_for

# The identity alone when its issuer's slack gives its valid-until (`expires_at + slack`, the
# same float): every token the authenticator caches (valid until expiry plus the issuer's
# leeway), so no tuple and float per token (96 bytes, and one object fewer for the garbage
# collector to walk: the tuple holds a tracked Identity, so it stays tracked). Otherwise
# (identity, valid until).
_Entry = Identity | tuple[Identity, float]

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
    operation, and a hit costs what an LRU hit costs (one lookup, one move). Not plain dicts as
    in state/bounded.py: once protected is full every promotion demotes its oldest, and a dict's
    first key is a scan past the slots that hits left in front (bench/token_cache_micro.py, 200,000
    tokens in rotation through the default 250,000: 1.3-1.6 us per get, flat, against 1.1 rising
    to 1.9-2.2 us in four passes).

    Entries are keyed by a 16-byte digest of the token, not the token (a JWT is 200-1,000
    characters; the digest is a 49-byte object), and forgotten by `sweep` once expired.

    Why in shards (by the digest's first byte, at most SHARD_ENTRIES tokens each at capacity):
    an OrderedDict grows its hash table and node index in one C call of O(len), which held the
    event loop for 42 ms at 200k tokens seen for the first time (issue 14, bench/stalls.py), as
    bounded.py's tables did. Recency is then each shard's own, and each shard holds its share
    of the capacity: a digest spreads tokens evenly, so the cache fills to within a few percent
    of its capacity before the first eviction (20,000 in 8 shards: 99.4%).
    """

    __slots__ = ("_shards", "_mask", "_capacity", "counts", "_slack", "_turn")

    def __init__(self, capacity: int, counts: CacheCounts | None = None) -> None:
        self._capacity = capacity
        self.counts = counts if counts is not None else CacheCounts()
        self._slack: dict[str, float] = {}  # issuer -> valid until minus expires_at, as first put
        count = shards_for(capacity)
        share, rest = divmod(capacity, count)
        self._shards = [_Segments(share + (1 if n < rest else 0), self.counts, self._slack) for n in range(count)]
        self._mask = count - 1
        self._turn = 0  # the shard the next sweep starts in

    @property
    def limit(self) -> int:
        return self._capacity

    @property
    def evictions(self) -> int:
        return sum(shard.evictions for shard in self._shards)

    @property
    def expirations(self) -> int:
        return sum(shard.expirations for shard in self._shards)

    def get(self, token: str, now: float) -> Identity | None:
        digest = _digest(token)
        return self._shards[digest[0] & self._mask].get(digest, now)

    def put(self, token: str, identity: Identity, valid_until: float) -> None:
        if self._capacity == 0:
            return
        slack = self._slack.setdefault(identity.issuer, valid_until - identity.expires_at)
        digest = _digest(token)
        self._shards[digest[0] & self._mask].put(
            digest, identity if identity.expires_at + slack == valid_until else (identity, valid_until))

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + sum(shard.size() for shard in self._shards)

    def sweep(self, now: float, budget: int) -> int:
        """Forget expired entries among up to `budget` of the least recent, shard after shard
        from where the last sweep stopped (`_Segments.sweep` says how within one)."""
        forgotten = 0
        shards = self._shards
        for _ in range(len(shards)):
            if budget <= 0:
                break
            shard = shards[self._turn]
            self._turn = (self._turn + 1) & self._mask
            looked = min(budget, len(shard))
            if looked:
                forgotten += shard.sweep(now, looked)
            budget -= max(looked, 1)
        return forgotten


class _Segments:
    """One shard of the cache: its probation and protected segments."""

    __slots__ = ("_probation", "_protected", "_capacity", "_protected_capacity", "counts", "evictions",
                 "expirations", "_peak", "_slack")

    def __init__(self, capacity: int, counts: CacheCounts, slack: dict[str, float]) -> None:
        self._probation: OrderedDict[bytes, _Entry] = OrderedDict()
        self._protected: OrderedDict[bytes, _Entry] = OrderedDict()
        self._capacity = capacity
        self._protected_capacity = int(capacity * _PROTECTED_SHARE)
        self.counts = counts
        self.evictions = 0
        self.expirations = 0
        self._peak = 0  # the most entries a sweep has seen since the segments were last rebuilt
        self._slack = slack  # the cache's, shared by its shards

    def get(self, token: bytes, now: float) -> Identity | None:
        # _unpack written out: a method call per hit measured 1,400 instructions (callgrind).
        entry = self._protected.get(token)
        if entry is not None:
            if isinstance(entry, tuple):
                identity, valid_until = entry
            else:
                identity, valid_until = entry, entry.expires_at + self._slack[entry.issuer]
            if now >= valid_until:
                del self._protected[token]
                self.counts.misses += 1
                return None
            self._protected.move_to_end(token)
            self.counts.hits += 1
            return identity
        entry = self._probation.pop(token, None)
        if entry is None:
            self.counts.misses += 1
            return None
        identity, valid_until = self._unpack(entry)
        if now >= valid_until:
            self.counts.misses += 1
            return None
        self._protect(token, entry)
        self.counts.hits += 1
        return identity

    def _unpack(self, entry: _Entry) -> tuple[Identity, float]:
        if isinstance(entry, tuple):
            return entry
        return entry, entry.expires_at + self._slack[entry.issuer]

    def put(self, token: bytes, entry: _Entry) -> None:
        if token in self._protected:
            self._protected[token] = entry
            self._protected.move_to_end(token)
            return
        self._probation[token] = entry
        self._probation.move_to_end(token)
        if len(self._probation) + len(self._protected) > self._capacity:
            self._probation.popitem(last=False)  # never empty here: protected holds less than the capacity
            self.evictions += 1

    def _protect(self, token: bytes, entry: _Entry) -> None:
        self._protected[token] = entry
        if len(self._protected) > self._protected_capacity:
            demoted, demoted_entry = self._protected.popitem(last=False)
            self._probation[demoted] = demoted_entry

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def size(self) -> int:
        return sys.getsizeof(self._probation) + sys.getsizeof(self._protected)

    def sweep(self, now: float, budget: int) -> int:
        """Forget expired entries among up to `budget` of each segment's least recent; the
        others keep their place (a segment's order is its recency, which eviction reads).

        Once the shard has shrunk well below its peak (tokens expired after an idle period), the
        segments are rebuilt: a dict keeps the hash table of its largest size until it grows
        again (state/bounded.py says why and when, in the same terms)."""
        self._peak = max(self._peak, len(self))
        forgotten = 0
        for segment in (self._probation, self._protected):
            gone = [token for token, entry in _first(segment, budget) if now >= self._unpack(entry)[1]]
            for token in gone:
                del segment[token]
            forgotten += len(gone)
        self.expirations += forgotten
        if forgotten and len(self) * SHRINK < self._peak and len(self) <= REBUILD_MAX:
            self._probation = OrderedDict(self._probation)
            self._protected = OrderedDict(self._protected)
            self._peak = len(self)
        return forgotten


def _digest(token: str) -> bytes:
    # 128 bits: two tokens with the same key would share an identity, so not Python's hash.
    # surrogatepass: a header decoded with surrogates (bytes that are not UTF-8) is still a key,
    # one to one with the string; the verifier, not the cache, rejects such a token.
    return blake2b(token.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _first(segment: OrderedDict[bytes, _Entry], count: int) -> list[tuple[bytes, _Entry]]:
    items: list[tuple[bytes, _Entry]] = []
    for item in segment.items():
        if len(items) == count:
            break
        items.append(item)
    return items

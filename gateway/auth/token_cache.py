"""Verified tokens remembered until they expire, so a repeated token costs a lookup."""

from __future__ import annotations

from collections import OrderedDict

from gateway.auth.identity import Identity


class TokenCache:
    """A bounded LRU from token to Identity. Entries are checked against the clock on every hit."""

    __slots__ = ("_entries", "_capacity")

    def __init__(self, capacity: int) -> None:
        self._entries: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self._capacity = capacity

    def get(self, token: str, now: float) -> Identity | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        identity, valid_until = entry
        if now >= valid_until:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return identity

    def put(self, token: str, identity: Identity, valid_until: float) -> None:
        if self._capacity == 0:
            return
        self._entries[token] = (identity, valid_until)
        self._entries.move_to_end(token)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

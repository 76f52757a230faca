"""A map for the per-identity tables that mostly hold one entry (a login's one session, one id
template, one request repeated): the one entry in a slot, a dict from the second entry on.

Why: a track exists for every identity seen, and each of its maps exists with it; a dict of
one entry is 184 bytes where this is 48 and a 2-tuple (measured with tracemalloc on the
memory bench, issue 14). Insertion order is kept, as a dict's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Few(Generic[K, V]):
    __slots__ = ("_one", "_many")

    def __init__(self) -> None:
        self._one: tuple[K, V] | None = None
        self._many: dict[K, V] | None = None

    def __len__(self) -> int:
        if self._many is not None:
            return len(self._many)
        return 0 if self._one is None else 1

    def __contains__(self, key: object) -> bool:
        if self._many is not None:
            return key in self._many
        return self._one is not None and self._one[0] == key

    def __iter__(self) -> Iterator[K]:
        if self._many is not None:
            return iter(self._many)
        return iter(() if self._one is None else (self._one[0],))

    def __getitem__(self, key: K) -> V:
        if self._many is not None:
            return self._many[key]
        if self._one is not None and self._one[0] == key:
            return self._one[1]
        raise KeyError(key)

    def get(self, key: K) -> V | None:
        if self._many is not None:
            return self._many.get(key)
        if self._one is not None and self._one[0] == key:
            return self._one[1]
        return None

    def __setitem__(self, key: K, value: V) -> None:
        if self._many is not None:
            self._many[key] = value
        elif self._one is None or self._one[0] == key:
            self._one = (key, value)
        else:
            self._many = {self._one[0]: self._one[1], key: value}
            self._one = None

    def pop(self, key: K) -> V | None:
        """The entry's value and the entry gone; None if there was none."""
        if self._many is not None:
            return self._many.pop(key, None)
        if self._one is not None and self._one[0] == key:
            value, self._one = self._one[1], None
            return value
        return None

    def keep(self, wanted: Callable[[V], bool]) -> None:
        """Drop the entries whose value is not `wanted`; a single one left goes back to the slot."""
        if self._many is None:
            if self._one is not None and not wanted(self._one[1]):
                self._one = None
            return
        kept = [(key, value) for key, value in self._many.items() if wanted(value)]
        self._one = kept[0] if len(kept) == 1 else None
        self._many = dict(kept) if len(kept) > 1 else None

    def __delitem__(self, key: K) -> None:
        if key not in self:
            raise KeyError(key)
        self.pop(key)

    def items(self) -> Iterator[tuple[K, V]]:
        if self._many is not None:
            return iter(self._many.items())
        return iter(() if self._one is None else (self._one,))

    def clear(self) -> None:
        self._one = self._many = None

"""Maps for the per-identity tables that mostly hold one entry (a login's one session, one id
template, one request repeated): None while empty, the one entry as a (key, value) tuple, a
dict from the second entry on. Functions, not a class: the map lives in its track's slot and
is replaced by what `put` and the others return.

Why: a track exists for every identity seen, and each of its maps with it. A dict of one entry
is 184 bytes where a 2-tuple is 56 (measured with tracemalloc on the memory bench, issue 14);
and an object around the tuple (as this module was first written) costs its own 48 bytes and is
one more object for the garbage collector to walk, four times per login. A tuple of atoms is
not walked at all once the collector has seen it. Insertion order is kept, as a dict's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar, Union

K = TypeVar("K")
V = TypeVar("V")

Few = Union[tuple[K, V], dict[K, V], None]  # noqa: UP007  # a generic alias subscripted at runtime (Few[str, int])


def size(few: Few[K, V]) -> int:
    if few is None:
        return 0
    return len(few) if isinstance(few, dict) else 1


def get(few: Few[K, V], key: K) -> V | None:
    if few is None:
        return None
    if isinstance(few, dict):
        return few.get(key)
    return few[1] if few[0] == key else None


def has(few: Few[K, V], key: K) -> bool:
    if few is None:
        return False
    return key in few if isinstance(few, dict) else few[0] == key


def put(few: Few[K, V], key: K, value: V) -> Few[K, V]:
    """The map with `key` set to `value` (a new key goes last)."""
    if few is None:
        return (key, value)
    if isinstance(few, dict):
        few[key] = value
        return few
    if few[0] == key:
        return (key, value)
    return {few[0]: few[1], key: value}


def pop(few: Few[K, V], key: K) -> tuple[Few[K, V], V | None]:
    """The map without `key`, and its value (None if it had none). A dict stays a dict: a key
    popped is often put back at once (to move it last)."""
    if few is None:
        return None, None
    if isinstance(few, dict):
        return few, few.pop(key, None)
    if few[0] == key:
        return None, few[1]
    return few, None


def first(few: Few[K, V]) -> K:
    """The oldest key of a map that is not empty."""
    if isinstance(few, dict):
        return next(iter(few))
    if few is None:
        raise KeyError("an empty map has no first key")
    return few[0]


def items(few: Few[K, V]) -> Iterator[tuple[K, V]]:
    if few is None:
        return iter(())
    return iter(few.items()) if isinstance(few, dict) else iter((few,))


def keep(few: Few[K, V], wanted: Callable[[V], bool]) -> Few[K, V]:
    """The map without the entries whose value is not `wanted`; a single one left is a tuple again."""
    if few is None:
        return None
    if not isinstance(few, dict):
        return few if wanted(few[1]) else None
    kept = [(key, value) for key, value in few.items() if wanted(value)]
    if len(kept) > 1:
        return dict(kept)
    return kept[0] if kept else None

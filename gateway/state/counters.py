"""The memory store's counter sets (usage: per month, {customer: {field: amount}}), with the
counters of customers idle for a while packed into pages of bytes.

Why pack: these counters outlive every other per-customer entry (a month and its retention).
Kept as a dict per customer and a float per field, they were the last objects alive in the
pymalloc arenas that the idle sweep had emptied of everything else, and an arena goes back to
the OS only once every block in it is free: 20,000 customers' counters (about 8 MB) kept 82 MB
of arenas (issue 14; `bench/memory_per_customer.py --idle-report`). A page is one `bytes`
object, the marshalled counters of up to a sweep budget of customers: a few kB, so malloc's
rather than pymalloc's (which takes up to 512 bytes), and no object per customer or field.

Packed counters are never looked up: a customer written again gets a new entry of what it
adds from then on, and a read sums the pages and the entries. A customer idle and back again
has a record in several pages, each with only the fields written in between (a day's, most
often); a read that finds the pages holding more than twice the records there are customers
packs them again, merged.
"""

from __future__ import annotations

import marshal
from array import array
from itertools import chain

Counters = dict[str, dict[str, float]]  # name (a customer) -> field -> amount

# One customer's counters not packed yet: its field names, in the order first written, and the
# amounts in an array of doubles beside them. A dict of 5 fields and their 5 floats was 304
# bytes (the bench's day: requests, units, bytes in and out, upstream time); this is 176 with
# the names' tuple shared (`_SHARED`), and a field more costs 8 bytes where it cost about 60
# (a float and a dict slot; a customer active all month holds a day's 5 fields 30 times). A
# tuple of a tuple of strings and an array holds nothing the garbage collector walks, so it is
# not tracked (a dict of floats was not either).
_Record = tuple[tuple[str, ...], "array[float]"]
# Field tuples shared between customers that wrote the same fields in the same order (most do:
# a day's fields come together), at most this many; the memo starts again once full.
_SHARED = 1024

# Counters not written for this long are packed. Hours rather than the store's idle_ttl: a
# customer back after each pack adds a record, and an hourly job should not add one an hour.
PACK_AFTER = 6 * 3600.0


class CounterSet:
    """One index's counters. The entries are in two generations: `recent`, written since the
    last turn, and `older`, not written since. Each generation knows when it was last written
    (to the sweep's clock: the store has none, and the sweep runs every 100 ms); the older one
    is packed once it has not been written for PACK_AFTER, then the generations turn. A write to
    an older entry moves it back to recent. So counters are packed after PACK_AFTER to twice
    that without a write."""

    __slots__ = ("expires_at", "_recent", "_older", "_recent_written", "_older_written", "_pages", "_records",
                 "_fields")

    def __init__(self, expires_at: float) -> None:
        self.expires_at = expires_at
        self._recent: dict[str, _Record] = {}
        self._older: dict[str, _Record] = {}
        self._fields: dict[tuple[str, ...], tuple[str, ...]] = {}  # field tuples shared (_SHARED)
        # when each generation was last written; None: before any sweep, so from the first
        self._recent_written: float | None = None
        self._older_written: float | None = None
        self._pages: list[bytes] = []
        self._records = 0  # customers' records in the pages (one customer may have several)

    def __len__(self) -> int:
        return len(self._recent) + len(self._older)

    def add(self, counters: Counters, now: float | None) -> None:
        """`now`: the sweep's latest time, if it ran yet."""
        recent, older = self._recent, self._older
        self._recent_written = now
        for name, amounts in counters.items():
            record = recent.get(name)
            if record is None:
                record = older.pop(name, None)
                if record is None:
                    record = ((), array("d"))
                recent[name] = record
            fields, values = record
            known = fields
            for field, amount in amounts.items():
                try:
                    values[fields.index(field)] += amount  # interned names: compared by identity first
                except ValueError:
                    fields += (field,)
                    values.append(amount)
            if fields is not known:
                recent[name] = (self._shared(fields), values)

    def _shared(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        held = self._fields
        shared = held.get(fields)
        if shared is None:
            if len(held) >= _SHARED:
                held.clear()
            shared = held[fields] = fields
        return shared

    def read(self) -> Counters:
        packed: Counters = {}
        for page in self._pages:
            _merge(packed, marshal.loads(page))
        if self._records > 2 * len(packed):
            self._pages, self._records = _pack(packed), len(packed)
        totals: Counters = {}
        unpacked = ((name, dict(zip(*record, strict=True))) for name, record in chain(self._older.items(),
                                                                                       self._recent.items()))
        for name, fields in chain(packed.items(), unpacked):
            held = totals.get(name)
            if held is None:
                totals[name] = dict(fields)
            else:
                for field, amount in fields.items():
                    held[field] = held.get(field, 0.0) + amount
        return totals

    def pack(self, now: float, budget: int) -> int:
        """Pack up to `budget` customers' counters idle long enough into one page, turning the
        generations when the older one is all packed. Returns how many were packed."""
        if not self._older and self._recent:
            self._older, self._recent = self._recent, {}  # the emptied dict (and its table) goes
            self._older_written, self._recent_written = self._recent_written, None
        older = self._older
        if not older or budget <= 0:
            return 0
        if self._older_written is None:
            self._older_written = now
        if now - self._older_written < PACK_AFTER:
            return 0
        page = {name: dict(zip(*record, strict=True))
                for name, record in (older.popitem() for _ in range(min(budget, len(older))))}
        self._pages.append(marshal.dumps(page))
        self._records += len(page)
        if not older:
            self._older = {}  # a dict keeps the table of its largest size
        return len(page)


def _merge(into: Counters, counters: Counters) -> None:
    for name, fields in counters.items():
        held = into.get(name)
        if held is None:
            into[name] = fields
        else:
            for field, amount in fields.items():
                held[field] = held.get(field, 0.0) + amount


def _pack(counters: Counters, per_page: int = 500) -> list[bytes]:
    names = list(counters)
    return [marshal.dumps({name: counters[name] for name in names[start:start + per_page]})
            for start in range(0, len(names), per_page)]


class CounterSets:
    """Every index's counter set, as one table the background sweep reaches (`usage_counters`
    on /metrics): its entries are the customers' counters not packed yet, and `expirations`
    counts those the sweep packed. Nothing is evicted: these are what usage bills by."""

    limit = 2**62
    evictions = 0

    def __init__(self) -> None:
        self.sets: dict[str, CounterSet] = {}
        self.expirations = 0
        self.now: float | None = None  # the latest sweep's clock

    def add(self, index: str, counters: Counters, expires_at: float, retention: float) -> None:
        sets = self.sets
        counter_set = sets.get(index)
        if counter_set is None:
            # A new period: the ones that expired go (usage keeps a bounded number of months).
            for old in [key for key, held in sets.items() if held.expires_at <= expires_at - retention]:
                del sets[old]
            counter_set = sets[index] = CounterSet(expires_at)
        counter_set.add(counters, self.now)

    def __len__(self) -> int:
        return sum(len(counter_set) for counter_set in self.sets.values())

    def sweep(self, now: float, budget: int) -> int:
        self.now = now
        packed = 0
        for counter_set in self.sets.values():
            packed += counter_set.pack(now, budget - packed)
            if packed >= budget:
                break
        self.expirations += packed
        return packed
